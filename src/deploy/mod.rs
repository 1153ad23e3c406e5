//! `fleetnix deploy`: put the planned configuration on nodes.
//!
//! - [`selector`]: which nodes (`worker-01`, `@role`, `--all`);
//! - [`program`]: a node's deploy as data, an ordered list of steps; [`build`] chooses by the
//!   node's OS: [`nixos`] (`nixos-rebuild` over SSH with pinned host keys ([`hostkeys`]) and the
//!   rollback guard ([`guard`]) that keeps `switch` from locking the operator out) or [`probe`]
//!   then [`linux`] (plain Linux: install script, `tailscale up`, agent unit, nftables);
//! - [`drain`]: a node that runs an agent is drained on the bus before its activation and
//!   undrained after the health gate;
//! - `execute`: runs a node's program (its reboot path in `reboot_run.rs`, the drain steps in
//!   `drain_run.rs`); [`dryrun`]: prints the same program (`--dry-run`);
//! - [`schedule`]: many nodes concurrently; [`report`]: steps, outcomes, events, the summary;
//! - [`rollout`]: `--canary`, `--batch`, `--max-failures` (waves of the scheduler);
//! - [`plan`]: `fleetnix plan` (what a deploy would change) and deploy's skipping of unchanged nodes;
//! - [`flake`]: `--override-input` and the one `nix eval` of every node's system.
//!
//! Processes, SSH and quoting live in [`crate::exec`].
//!
//! Executors read only the [`crate::spec::NodeSpec`]s; nothing here parses YAML.
//!
//! Executor. Imports: `model`, `spec`, `outputs`, `secrets`, `tailscale`, `health` (the gate),
//! `exec` and the foundations.

pub mod build;
pub mod drain;
pub(crate) mod drain_run;
pub mod dryrun;
pub mod evalcache;
pub(crate) mod execute;
pub(crate) mod failure;
pub mod flake;
pub mod gate;
pub mod guard;
pub mod hostkeys;
pub mod linux;
pub mod nixos;
pub mod plan;
pub mod preflight;
pub mod probe;
pub mod program;
pub mod reboot;
pub(crate) mod reboot_run;
pub mod report;
pub mod rollout;
pub mod schedule;
pub mod selector;

use crate::exec::process::locate;
use crate::exec::quote;
use crate::exec::ssh::SshConfig;
use crate::model::{Fleet, NodeName, Settings};
use crate::outputs::{self, Change, RenderError};
use crate::secret::Secret;
use crate::secrets::source::{KeyContext, KeyError, KeySource};
use crate::secrets::{SecretId, SecretKind};
use crate::spec::NodeSpec;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `nixos-rebuild` does with the new configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Activate now and make it the boot default (guarded by the rollback timer).
    #[default]
    Switch,
    /// Make it the boot default only.
    Boot,
    /// Activate now, but not for the next boot.
    Test,
}

impl Action {
    /// The `nixos-rebuild` sub-command.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
        }
    }
}

/// Where the system closure is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildOn {
    /// On the operator's machine, then copied (`nixos-rebuild`'s default).
    #[default]
    Local,
    /// On the node itself (`--build-host` = the target).
    Target,
}

/// Environment variables that override where tools are found (tests use them).
pub mod env {
    /// The `ssh` binary.
    pub const SSH: &str = "FLEETNIX_SSH";
    /// The `nixos-rebuild` binary.
    pub const NIXOS_REBUILD: &str = "FLEETNIX_NIXOS_REBUILD";
    /// The `tailscale` CLI (set it empty to not consult `tailscale status`).
    pub const TAILSCALE: &str = "FLEETNIX_TAILSCALE";
    /// The auth key for non-NixOS nodes.
    pub const AUTHKEY: &str = crate::secret::env::AUTHKEY;
    /// Tailscale's install script URL (mirrors, tests).
    pub const INSTALL_URL: &str = "FLEETNIX_TAILSCALE_INSTALL_URL";
    /// The `nix` binary (evaluation, `nix store diff-closures`).
    pub const NIX: &str = "FLEETNIX_NIX";
    /// The `git` binary (the last committed render).
    pub const GIT: &str = "FLEETNIX_GIT";
    /// The `strace` binary (what an evaluation read, for the evaluation cache; empty: none).
    pub const STRACE: &str = "FLEETNIX_STRACE";
}

/// Everything a deploy needs besides the plans. Built with [`DeployOptions::new`], then adjusted.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// `switch`, `boot` or `test`.
    pub action: Action,
    /// Where to build.
    pub build_on: BuildOn,
    /// Nodes deployed at once.
    pub parallel: usize,
    /// Stop starting nodes after the first failure.
    pub fail_fast: bool,
    /// Stop starting nodes once more than this many failed (`--max-failures`); `None`: never.
    pub max_failures: Option<usize>,
    /// Arm the rollback guard for `switch`.
    pub rollback: bool,
    /// How long the node waits for the post-activation confirmation before rolling back.
    pub rollback_grace: Duration,
    /// `node_timeout_seconds`: SSH connect timeout and the limit of short remote steps.
    pub node_timeout: Duration,
    /// `retry_on_node_failure`: retry an unreachable node once.
    pub retry: bool,
    /// Limit of long steps (`nixos-rebuild`, install script, `tailscale up`).
    pub step_timeout: Duration,
    /// Repository root holding `flake.nix` (absolute).
    pub root: PathBuf,
    /// Where logs and known_hosts files go (`<root>/.fleetnix`).
    pub state_dir: PathBuf,
    /// Tailscale's install script URL.
    pub install_url: String,
    /// SSH settings.
    pub ssh: SshConfig,
    /// Share one SSH connection per node for every step before the guard's confirmation
    /// (`ControlMaster=auto`, `--ssh-multiplex`). Off by default: with a shared connection a
    /// link that dies mid-run is only noticed by keep-alives (15 s) plus a new connection
    /// attempt, not within `node_timeout_seconds`.
    pub multiplex: bool,
    /// `nixos-rebuild`, if found.
    pub nixos_rebuild: Option<PathBuf>,
    /// `tailscale` CLI for `status --json` host keys, if found.
    pub tailscale: Option<PathBuf>,
    /// `--override-input INPUT URL` pairs, passed to every Nix evaluation and to `nixos-rebuild`.
    pub override_inputs: Vec<flake::OverrideInput>,
    /// A guarded `switch` checks the node's health after activation, before the guard is
    /// disarmed ([`gate`]); `--no-health-gate` turns it off.
    pub health_gate: bool,
    /// Target systems evaluated before the run ([`plan::targets_to_skip`]): a NixOS node
    /// whose connect step reads one of these as its running system stops there, `unchanged`.
    pub skip_if_running: std::sync::Arc<std::collections::BTreeMap<crate::model::NodeName, String>>,
    /// `--reboot`: whether a guarded switch reboots the node into the new generation.
    pub reboot: reboot::RebootMode,
    /// How long a rebooting node may take until SSH answers again (`--reboot-timeout`).
    pub reboot_timeout: Duration,
    /// The bus's side of draining a node's tasks before its activation or reboot and
    /// undraining it after ([`drain`]); `None`: none given (each drain is then a note).
    pub drain: Option<std::sync::Arc<dyn drain::Drain>>,
    /// Drain nodes that run an agent around an activation (`--no-drain` turns it off).
    pub drain_enabled: bool,
    /// How long a drain waits for the node's running tasks (`--drain-timeout`; the fleet's
    /// `task_timeout_seconds` by default).
    pub drain_timeout: Duration,
}

/// Default `--parallel`.
pub const DEFAULT_PARALLEL: u16 = 10;

impl DeployOptions {
    /// Defaults for a fleet rooted at `root`: failure settings from the fleet, tools located
    /// through their `FLEETNIX_*` variables or `PATH`.
    pub fn new(root: &Path, settings: &Settings) -> Self {
        let timeout = settings.failure.node_timeout_seconds.max(1);
        DeployOptions {
            action: Action::Switch,
            build_on: BuildOn::Local,
            parallel: usize::from(DEFAULT_PARALLEL),
            fail_fast: false,
            max_failures: None,
            rollback: true,
            rollback_grace: guard::DEFAULT_GRACE,
            node_timeout: Duration::from_secs(u64::from(timeout)),
            retry: settings.failure.retry_on_node_failure,
            step_timeout: Duration::from_secs(3600),
            root: root.to_path_buf(),
            state_dir: root.join(".fleetnix"),
            install_url: std::env::var(env::INSTALL_URL)
                .unwrap_or_else(|_| linux::DEFAULT_INSTALL_URL.to_string()),
            ssh: SshConfig {
                program: locate(env::SSH, "ssh").unwrap_or_else(|| PathBuf::from("ssh")),
                identity: None,
                connect_timeout: timeout,
            },
            multiplex: false,
            nixos_rebuild: locate(env::NIXOS_REBUILD, "nixos-rebuild"),
            tailscale: locate(env::TAILSCALE, "tailscale"),
            override_inputs: Vec::new(),
            health_gate: true,
            skip_if_running: Default::default(),
            reboot: reboot::RebootMode::Never,
            reboot_timeout: Duration::from_secs(600),
            drain: None,
            drain_enabled: true,
            drain_timeout: Duration::from_secs(u64::from(
                settings.failure.task_timeout_seconds.max(1),
            )),
        }
    }

    /// Rejects values that cannot be passed on safely (paths with NUL/newlines, `#`/`?` in
    /// the flake root, a zero parallelism).
    pub fn check(&self) -> Result<(), DeployError> {
        let bad = |e: crate::exec::quote::UnsafeValue| DeployError::Options(e.to_string());
        if self.parallel == 0 {
            return Err(DeployError::Options("--parallel must be at least 1".into()));
        }
        let root = self.root.to_string_lossy();
        quote::check_no_nul("the repository root", &root).map_err(bad)?;
        if root.contains(['#', '?']) {
            return Err(DeployError::Options(format!(
                "the repository root {root} contains `#` or `?`, which a flake reference cannot hold"
            )));
        }
        quote::check_no_nul("the state directory", &self.state_dir.to_string_lossy())
            .map_err(bad)?;
        quote::check_no_nul("the install script URL", &self.install_url).map_err(bad)?;
        crate::http::check_https(
            "the install script URL (--install-url / FLEETNIX_TAILSCALE_INSTALL_URL)",
            &self.install_url,
        )
        .map_err(DeployError::Options)?;
        if let Some(id) = &self.ssh.identity {
            quote::check_no_nul("the SSH identity", &id.to_string_lossy()).map_err(bad)?;
        }
        self.check_ssh_paths().map_err(DeployError::Options)
    }

    /// The paths that go into SSH options (and so into `NIX_SSHOPTS`, which Nix 2.8 splits on
    /// whitespace with no quote removal) must hold no whitespace: the known_hosts files move
    /// to the XDG state directory when the repository path has some; anything else is refused.
    fn check_ssh_paths(&self) -> Result<(), String> {
        let local = self.state_dir.join("known_hosts");
        if hostkeys::has_whitespace(&local.to_string_lossy()) {
            hostkeys::state_known_hosts_dir().map_err(|e| {
                format!(
                    "the repository path {} holds whitespace, which ssh and NIX_SSHOPTS cannot carry, so the pinned known_hosts files go to the XDG state directory instead, but {e}",
                    self.root.display()
                )
            })?;
        }
        if let Some(id) = &self.ssh.identity {
            if hostkeys::has_whitespace(&id.to_string_lossy()) {
                return Err(format!(
                    "--ssh-identity {} holds whitespace: it goes into NIX_SSHOPTS, which Nix splits on whitespace without removing quotes; use a path without whitespace (e.g. a symlink)",
                    id.display()
                ));
            }
        }
        Ok(())
    }

    /// The pinned known_hosts file of a node: `<state dir>/known_hosts/<node>`, or, when that
    /// path holds whitespace (a repository under `~/My Fleet`), under the XDG state directory
    /// ([`hostkeys::state_known_hosts_dir`]; [`DeployOptions::check`] refuses the deploy when
    /// that is unusable too).
    pub fn known_hosts_path(&self, node: &NodeName) -> PathBuf {
        let local = self.state_dir.join("known_hosts");
        if !hostkeys::has_whitespace(&local.to_string_lossy()) {
            return local.join(node.as_str());
        }
        hostkeys::state_known_hosts_dir()
            .unwrap_or(local)
            .join(node.as_str())
    }

    /// The log file of a node.
    pub fn log_path(&self, node: &NodeName) -> PathBuf {
        self.state_dir.join("logs").join(format!("{node}.log"))
    }

    /// Is the rollback guard used for this deploy?
    pub fn guarded(&self) -> bool {
        self.rollback && self.action == Action::Switch
    }
}

/// Where non-NixOS nodes get their Tailscale auth key: [`EnvAuthKey`] (`TAILSCALE_AUTHKEY`) or
/// [`SecretsAuthKey`] (that, else the node's `.age` file). Both resolve through
/// [`KeySource::resolve_local`], the one way every command reads a key.
pub trait AuthKeySource: Send + Sync {
    /// The auth key for `node`, or why there is none.
    fn authkey(&self, node: &NodeName) -> Result<Secret, KeyError>;
    /// Where the key would come from, for dry runs (never the key; nothing is decrypted).
    fn describe(&self, node: &NodeName) -> String;
    /// The node's NATS password for its agent, if one is stored (`fleetnix secrets set-nats`).
    fn nats_password(&self, _node: &NodeName) -> Result<Option<Secret>, KeyError> {
        Ok(None)
    }
}

/// Is `TAILSCALE_AUTHKEY` set to something other than blanks? (Blank counts as unset.)
fn env_authkey_set() -> bool {
    std::env::var_os(env::AUTHKEY).is_some_and(|v| !v.to_string_lossy().trim().is_empty())
}

/// The key in `TAILSCALE_AUTHKEY`, if it is set and not blank.
fn env_authkey(node: &NodeName) -> Option<Result<Secret, KeyError>> {
    if !env_authkey_set() {
        return None;
    }
    let id = SecretId::new(node.clone(), SecretKind::TailscaleAuthkey);
    Some(
        KeySource::Env
            .resolve_local(&KeyContext::new(&id, Path::new(".")))
            .map(|r| r.key),
    )
}

/// Auth key from `TAILSCALE_AUTHKEY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvAuthKey;

impl AuthKeySource for EnvAuthKey {
    fn authkey(&self, node: &NodeName) -> Result<Secret, KeyError> {
        env_authkey(node).unwrap_or(Err(KeyError::NoEnvKey))
    }
    fn describe(&self, _node: &NodeName) -> String {
        format!("${}", env::AUTHKEY)
    }
}

/// Auth key from `TAILSCALE_AUTHKEY` if it is set, else from the node's
/// `secrets/<node>/tailscale-authkey.age`, decrypted in memory with the operator's identity
/// ([`KeySource::Decrypt`]) only when the node needs `tailscale up`.
#[derive(Debug)]
pub struct SecretsAuthKey {
    root: PathBuf,
    /// `None`: no `--identity` and no `$HOME` for the default (an error only if one is needed).
    identity: Option<PathBuf>,
    /// One decryption at a time, so passphrase prompts of parallel nodes do not interleave.
    lock: std::sync::Mutex<()>,
}

impl SecretsAuthKey {
    /// Secrets under `root/secrets/`, decrypted with the identity file `identity` (an
    /// operator's SSH or age private key).
    pub fn new(root: &Path, identity: &Path) -> Self {
        SecretsAuthKey {
            root: root.to_path_buf(),
            identity: Some(identity.to_path_buf()),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// `--identity` if given, else [`crate::secret::default_identity`] (`~/.ssh/id_ed25519`,
    /// `~` expanded). Without `$HOME` only a node that needs the `.age` file fails.
    pub fn with_identity(root: &Path, identity: Option<PathBuf>) -> Self {
        SecretsAuthKey {
            root: root.to_path_buf(),
            identity: crate::secrets::identity_or_default(identity).ok(),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// The identity, or why there is none.
    fn identity(&self) -> Result<PathBuf, KeyError> {
        match &self.identity {
            Some(p) => Ok(p.clone()),
            None => Ok(crate::secrets::identity_or_default(None)?),
        }
    }

    /// `node`'s secret of `kind` decrypted with the identity, one decryption at a time.
    fn decrypt(&self, node: &NodeName, kind: SecretKind) -> Result<Secret, KeyError> {
        let id = SecretId::new(node.clone(), kind);
        // A poisoned lock only means another node's decryption panicked; the guard holds no data.
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        KeySource::Decrypt(self.identity()?)
            .resolve_local(&KeyContext::new(&id, &self.root))
            .map(|r| r.key)
    }
}

impl AuthKeySource for SecretsAuthKey {
    fn authkey(&self, node: &NodeName) -> Result<Secret, KeyError> {
        if let Some(k) = env_authkey(node) {
            return k;
        }
        self.decrypt(node, SecretKind::TailscaleAuthkey)
            .map_err(|e| match e {
                KeyError::Secrets(source) => KeyError::NotInEnv { source },
                e => e,
            })
    }

    fn nats_password(&self, node: &NodeName) -> Result<Option<Secret>, KeyError> {
        let id = SecretId::new(node.clone(), SecretKind::NatsPassword);
        if !self.root.join(id.age_path()).is_file() {
            return Ok(None);
        }
        self.decrypt(node, SecretKind::NatsPassword).map(Some)
    }

    fn describe(&self, node: &NodeName) -> String {
        if env_authkey_set() {
            return format!("${}", env::AUTHKEY);
        }
        let file = SecretId::new(node.clone(), SecretKind::TailscaleAuthkey).age_path();
        if self.root.join(&file).is_file() {
            match &self.identity {
                Some(identity) => format!("{file} decrypted with {}", identity.display()),
                None => format!("{file}, but $HOME is not set: pass --identity"),
            }
        } else {
            format!(
                "nowhere: ${} is not set and {file} does not exist (`fleetnix secrets set-authkey {node}` or `fleetnix authkey mint {node}`)",
                env::AUTHKEY
            )
        }
    }
}

/// Errors that stop a deploy before any node is touched.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The targets did not select nodes.
    #[error(transparent)]
    Selector(#[from] selector::SelectorError),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Rendered files are stale and `--no-render` forbids writing them.
    #[error("rendered files are out of date ({}); run `fleetnix render` or deploy without --no-render", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "))]
    Stale {
        /// The stale, missing or orphaned files.
        files: Vec<PathBuf>,
    },
    /// An option cannot be used.
    #[error("{0}")]
    Options(String),
}

/// How to treat stale rendered files before deploying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderMode {
    /// Render them (default).
    Write,
    /// Refuse to deploy (`--no-render`).
    Refuse,
    /// Only report (`--dry-run`).
    Report,
}

/// The state of the rendered files after [`ensure_rendered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderState {
    /// Everything was current.
    Current,
    /// These files were written or removed.
    Rendered(Vec<PathBuf>),
    /// These files would be written or removed (dry run).
    WouldRender(Vec<PathBuf>),
}

/// Makes sure the rendered files (`nix/nodes/*.nix`, the bus module) match the manifest
/// (`render --check` semantics) before deploying. `plans` must be the whole fleet's, so orphans are found.
pub fn ensure_rendered(
    fleet: &Fleet,
    root: &Path,
    plans: &[NodeSpec],
    sources: &str,
    mode: RenderMode,
) -> Result<RenderState, DeployError> {
    let rendered = outputs::render_fleet(fleet, plans, sources)?;
    let changes = outputs::compare(root, &rendered)?;
    let stale: Vec<PathBuf> = changes
        .iter()
        .filter(|(_, c)| *c != Change::Unchanged)
        .map(|(p, _)| p.clone())
        .collect();
    if stale.is_empty() {
        return Ok(RenderState::Current);
    }
    match mode {
        RenderMode::Refuse => Err(DeployError::Stale { files: stale }),
        RenderMode::Report => Ok(RenderState::WouldRender(stale)),
        RenderMode::Write => {
            outputs::apply(root, &rendered, &changes)?;
            Ok(RenderState::Rendered(stale))
        }
    }
}
