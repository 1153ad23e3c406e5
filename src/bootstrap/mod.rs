//! `fleetnix bootstrap NODE --ssh USER@HOST`: bring a fresh VM (public address, root SSH, no
//! Tailscale) into the fleet.
//!
//! | # | step | what | done when |
//! |---|---|---|---|
//! | 1 | `host-key` | pin the VM's SSH host key by its fingerprint (`ssh-keyscan`, nothing else is sent) | nodes.yml has `host_key` |
//! | 2 | `record` | write `host_key` into nodes.yml (comments and order kept) | same |
//! | 2 | `secret` | encrypt the node's auth key to it (`secrets/<node>/tailscale-authkey.age`) | the secret is up to date |
//! | 2 | `hardware` | when the VM runs NixOS: write `hosts/<node>/hardware-configuration.nix` (its `nixos-generate-config --show-hardware-config`) and `hosts/<node>/boot.nix` (its boot loader) | the hardware configuration exists |
//! | 3 | `install` | deploy's own runner over the public address: the non-NixOS installer, or a first `nixos-rebuild` | the node is in the tailnet |
//! | 4 | `join` | wait until `tailscale status` shows the node (bounded) | it does |
//! | 4 | `address` | its address vs. `tailscale_ip`: set it through the API, or record the assigned one | they agree |
//! | 5 | `handover` | drop the public-address pin: from now on the node is reached over Tailscale | no pin left |
//!
//! Every step checks before it acts, so a re-run after success changes nothing and a re-run after
//! a failure resumes; a failure names its step and how to resume ([`BootstrapError`]).

pub mod authkey;
pub mod hostkey;

use crate::deploy::runner::{self, Cancel, Outcome};
use crate::deploy::transport::{NodeLog, SshTransport};
use crate::deploy::{ensure_rendered, DeployOptions, RenderMode};
use crate::manifest::{self, edit};
use crate::model::{Fleet, NodeName};
use crate::plan::{self, authkey_file};
use crate::secrets::{self, State};
use crate::tailscale::{Tailscale, TailscaleStatus};
use crate::tsapi;
use authkey::{BootstrapKey, KeySources};
use hostkey::{Fingerprint, ScannedKey};
use secrecy::SecretString;
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A step of the bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Pin the host key by its fingerprint.
    HostKey,
    /// Record it in nodes.yml.
    Record,
    /// Encrypt the auth key to it.
    Secret,
    /// Write the node's hardware configuration from the VM (when it runs NixOS).
    Hardware,
    /// Install Tailscale (non-NixOS) or the first `nixos-rebuild`, over the public address.
    Install,
    /// Wait for the node in `tailscale status`.
    Join,
    /// Reconcile its Tailscale address with the manifest.
    Address,
    /// Stop using the public address.
    Handover,
}

impl Step {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::HostKey => "host-key",
            Step::Record => "record",
            Step::Secret => "secret",
            Step::Hardware => "hardware",
            Step::Install => "install",
            Step::Join => "join",
            Step::Address => "address",
            Step::Handover => "handover",
        }
    }

    /// The step's number in `fleetnix bootstrap`'s description (1–5).
    pub fn number(self) -> u8 {
        match self {
            Step::HostKey => 1,
            Step::Record | Step::Secret | Step::Hardware => 2,
            Step::Install => 3,
            Step::Join | Step::Address => 4,
            Step::Handover => 5,
        }
    }
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It changed something.
    Done,
    /// Already as wanted; nothing changed.
    Unchanged,
    /// Not needed this time (e.g. the install when the node is already in the tailnet).
    Skipped,
}

impl Status {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Unchanged => "unchanged",
            Status::Skipped => "skipped",
        }
    }
}

/// One finished step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// What it did.
    pub status: Status,
    /// One line about it.
    pub detail: String,
}

/// The result of a successful bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The node.
    pub node: String,
    /// Its Tailscale address now.
    pub tailscale_ip: IpAddr,
    /// Every step, in order.
    pub steps: Vec<StepReport>,
}

impl Report {
    /// Did any step change anything?
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| s.status == Status::Done)
    }
}

/// Progress, as it happens. Printing is the caller's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step starts.
    Started(Step),
    /// A step finished.
    Finished(StepReport),
    /// Progress of deploy's runner during [`Step::Install`].
    Deploy(runner::Event),
    /// Something worth telling.
    Note(String),
}

/// Why a bootstrap stopped.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Before the first step: bad options, an unknown node, no `tailscale` here.
    #[error("{0}")]
    Setup(String),
    /// A step failed. Steps before it are done; re-running resumes here.
    #[error("step {} ({}) failed: {reason}\n  to resume: {resume}", step.number(), step.as_str())]
    Step {
        /// The failing step.
        step: Step,
        /// What went wrong.
        reason: String,
        /// What to do, then re-run.
        resume: String,
    },
}

fn fail(step: Step, reason: impl Into<String>, resume: impl Into<String>) -> BootstrapError {
    BootstrapError::Step {
        step,
        reason: reason.into(),
        resume: resume.into(),
    }
}

/// `USER@HOST` of `--ssh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshDest {
    /// The login.
    pub user: String,
    /// An IP address (IPv6 optionally in brackets) or a DNS name.
    pub host: String,
}

impl std::str::FromStr for SshDest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, host) = s
            .rsplit_once('@')
            .ok_or("--ssh takes USER@HOST, e.g. root@203.0.113.7")?;
        let user_ok = !user.is_empty()
            && user.len() <= 32
            && user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c))
            && !user.starts_with(['-', '.']);
        if !user_ok {
            return Err(format!(
                "{user:?} is not a login name (lowercase letters, digits, `_`, `-`, `.`)"
            ));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host_ok = !bare.is_empty()
            && bare.len() <= 253
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            && !bare.starts_with('-')
            && (!bare.contains(':') || bare.parse::<std::net::Ipv6Addr>().is_ok());
        if !host_ok {
            return Err(format!(
                "{host:?} is not a host name or IP address (a port is not accepted: use port 22)"
            ));
        }
        Ok(SshDest {
            user: user.to_string(),
            host: bare.to_string(),
        })
    }
}

impl SshDest {
    /// The address to connect to: the host if it is an IP, else its first DNS answer (resolved
    /// once; every later connection uses that address, so the pinned key stays tied to it).
    pub async fn resolve(&self) -> Result<IpAddr, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), 22))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        addrs
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| format!("{} has no address", self.host))
    }
}

/// Asks the operator whether to trust a host key no fingerprint was given for.
pub trait HostKeyPrompt: Send + Sync {
    /// `keys` are what the VM offers (recordable ones first); the index of the accepted key, or
    /// `None` to abort.
    fn accept(&self, node: &str, address: &IpAddr, keys: &[ScannedKey]) -> Option<usize>;
}

/// Everything a bootstrap needs. Build with [`BootstrapOptions::new`], then adjust.
pub struct BootstrapOptions {
    /// Directory of nodes.yml, fleet.yml, services.yml.
    pub fleet_dir: PathBuf,
    /// The label of generated files' headers (as `fleetnix render` writes it).
    pub sources_label: String,
    /// Deploy's options (root, SSH, `nixos-rebuild`, install URL, guard); their state directory
    /// is replaced by `<root>/.fleetnix/bootstrap` and the tailnet is not asked for host keys.
    pub deploy: DeployOptions,
    /// Login on the VM's public address.
    pub ssh_user: String,
    /// The VM's public address.
    pub address: IpAddr,
    /// The expected host key fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// `ssh-keyscan`.
    pub keyscan: PathBuf,
    /// This machine's `tailscale` CLI.
    pub tailscale: Tailscale,
    /// Operator-supplied auth key sources.
    pub keys: KeySources,
    /// The Tailscale API (mints auth keys, sets the device's address), if a token was given.
    pub api: Option<tsapi::Client>,
    /// Expiry of a minted auth key.
    pub mint_expiry: Duration,
    /// How long to wait for the node in `tailscale status` (and for an address change).
    pub wait_timeout: Duration,
    /// Pause between two `tailscale status` calls.
    pub poll_interval: Duration,
}

/// Environment variable overriding where `ssh-keyscan` is.
pub const KEYSCAN_ENV: &str = "FLEETNIX_SSH_KEYSCAN";

/// Default `--wait-timeout`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

impl BootstrapOptions {
    /// Defaults: deploy's options for `root`, `ssh-keyscan` from [`KEYSCAN_ENV`] or PATH, a 300 s
    /// wait polled every second, no key sources, no API.
    pub fn new(
        root: &Path,
        fleet_dir: &Path,
        fleet: &Fleet,
        ssh_user: &str,
        address: IpAddr,
        tailscale: Tailscale,
    ) -> Self {
        let deploy = DeployOptions::new(root, &fleet.settings);
        BootstrapOptions {
            fleet_dir: fleet_dir.to_path_buf(),
            sources_label: String::new(),
            deploy,
            ssh_user: ssh_user.to_string(),
            address,
            fingerprint: None,
            keyscan: crate::deploy::locate(KEYSCAN_ENV, "ssh-keyscan")
                .unwrap_or_else(|| PathBuf::from("ssh-keyscan")),
            tailscale,
            keys: KeySources::default(),
            api: None,
            mint_expiry: Duration::from_secs(crate::acl::apply::AUTHKEY_EXPIRY_SECONDS),
            wait_timeout: DEFAULT_WAIT,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// `<root>/.fleetnix/bootstrap`: the public-address pin, logs.
    pub fn state_dir(&self) -> PathBuf {
        self.deploy.root.join(".fleetnix").join("bootstrap")
    }

    /// The known_hosts file pinning the VM's key for its public address.
    pub fn public_pin(&self, node: &NodeName) -> PathBuf {
        self.state_dir().join("known_hosts").join(node.as_str())
    }
}

/// `user@address` for ssh (IPv6 in brackets).
fn ssh_target(user: &str, ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{user}@{v4}"),
        IpAddr::V6(v6) => format!("{user}@[{v6}]"),
    }
}

/// The node's device, if it is in the tailnet and online (or is this machine).
fn joined<'a>(status: &'a TailscaleStatus, node: &str) -> Option<&'a crate::tailscale::PeerStatus> {
    status
        .find(node)
        .filter(|d| d.is_self || d.peer.online)
        .map(|d| d.peer)
}

fn ips(list: &[IpAddr]) -> String {
    list.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

struct Run<'a> {
    opts: &'a BootstrapOptions,
    events: Option<mpsc::UnboundedSender<Event>>,
    steps: Vec<StepReport>,
    log: NodeLog,
}

impl Run<'_> {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn start(&self, step: Step) {
        self.log.line(&format!("## {}", step.as_str()));
        self.emit(Event::Started(step));
    }

    fn finish(&mut self, step: Step, status: Status, detail: impl Into<String>) {
        let r = StepReport {
            step,
            status,
            detail: detail.into(),
        };
        self.log
            .line(&format!("= {} {}", r.status.as_str(), r.detail));
        self.emit(Event::Finished(r.clone()));
        self.steps.push(r);
    }

    fn note(&self, text: String) {
        self.log.line(&format!("note: {text}"));
        self.emit(Event::Note(text));
    }

    fn resume_cmd(&self, node: &str) -> String {
        format!(
            "re-run `fleetnix bootstrap {node} --ssh {}` (finished steps are skipped)",
            ssh_target(&self.opts.ssh_user, &self.opts.address)
        )
    }

    async fn status(&self) -> Result<TailscaleStatus, String> {
        self.opts
            .tailscale
            .status()
            .await
            .map_err(|e| e.to_string())
    }

    /// Polls `tailscale status` until `done` holds, at most `wait_timeout`.
    async fn wait_for<T>(
        &self,
        mut done: impl FnMut(&TailscaleStatus) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + self.opts.wait_timeout;
        let mut last = String::new();
        loop {
            match self.status().await {
                Ok(s) => {
                    if let Some(t) = done(&s) {
                        return Ok(t);
                    }
                }
                Err(e) => last = format!(" (last error: {e})"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last);
            }
            tokio::time::sleep(self.opts.poll_interval.min(left)).await;
        }
    }
}

/// Bootstraps `node` (see the module docs). `prompt` is asked when no fingerprint was given
/// (interactive use); without one, an unverified key is refused. Reads the fleet from
/// `opts.fleet_dir` and re-reads it after editing nodes.yml.
pub async fn bootstrap(
    node: &str,
    opts: &BootstrapOptions,
    prompt: Option<&dyn HostKeyPrompt>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<Report, BootstrapError> {
    let setup = BootstrapError::Setup;
    opts.deploy.check().map_err(|e| setup(e.to_string()))?;
    let mut fleet = manifest::load(&opts.fleet_dir).map_err(|e| setup(e.to_string()))?;
    let nodes_yml = fleet.sources.nodes.clone();
    let Some(n) = fleet.node(node) else {
        let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(setup(format!(
            "no node `{node}` in {} (nodes: {}): declare it there first",
            nodes_yml.display(),
            names.join(", ")
        )));
    };
    let name = n.name.clone();
    let log_path = opts.state_dir().join(format!("{name}.log"));
    let log = NodeLog::create(&log_path)
        .map_err(|e| setup(format!("cannot write {}: {e}", log_path.display())))?;
    log.line(&format!(
        "# fleetnix bootstrap {name} --ssh {}",
        ssh_target(&opts.ssh_user, &opts.address)
    ));
    let mut run = Run {
        opts,
        events,
        steps: Vec::new(),
        log,
    };
    let status = run.status().await.map_err(|e| {
        setup(format!(
            "cannot read this machine's `tailscale status` ({e}): bootstrap waits for the node to appear there, so run it from a machine on the tailnet (or set {})",
            crate::tailscale::TAILSCALE_ENV
        ))
    })?;
    let already = joined(&status, name.as_str()).cloned();
    let resume = run.resume_cmd(name.as_str());
    let resume_fp = format!(
        "re-run `fleetnix bootstrap {name} --ssh {} --host-key-fingerprint SHA256:…`",
        ssh_target(&opts.ssh_user, &opts.address)
    );

    // 1. host-key
    run.start(Step::HostKey);
    let n = fleet
        .node(name.as_str())
        .cloned()
        .ok_or_else(|| setup("node vanished".into()))?;
    let pinned = match &n.host_key {
        Some(k) => {
            // Validated by the manifest, so it has a fingerprint.
            let fp = Fingerprint::of_key(k).ok_or_else(|| {
                fail(
                    Step::HostKey,
                    format!(
                        "host_key of {name} in {} is not a public key",
                        nodes_yml.display()
                    ),
                    "fix it in nodes.yml",
                )
            })?;
            if let Some(given) = &opts.fingerprint {
                if *given != fp {
                    return Err(fail(
                        Step::HostKey,
                        format!(
                            "{} already pins {name}'s host key, with fingerprint {fp}, not the given {given}; nothing was sent to the host",
                            nodes_yml.display()
                        ),
                        format!(
                            "if the VM was reinstalled, delete host_key of {name} from {} and {resume}; otherwise check the fingerprint",
                            nodes_yml.display()
                        ),
                    ));
                }
            }
            run.finish(
                Step::HostKey,
                Status::Unchanged,
                format!("pinned by {} ({fp})", nodes_yml.display()),
            );
            k.to_string()
        }
        None => {
            let (keys, from) = match already.as_ref().filter(|p| !p.ssh_host_keys.is_empty()) {
                // Keys the tailnet publishes came over Tailscale's authenticated control plane.
                Some(p) => (
                    hostkey::parse_keyscan(
                        &p.ssh_host_keys
                            .iter()
                            .map(|k| format!("tailnet {k}\n"))
                            .collect::<String>(),
                    ),
                    "tailscale status".to_string(),
                ),
                None => {
                    let keys = hostkey::scan(
                        &opts.keyscan,
                        &opts.address,
                        opts.deploy.ssh.connect_timeout,
                        &run.log,
                    )
                    .await
                    .map_err(|e| {
                        fail(
                            Step::HostKey,
                            e,
                            format!("check that the VM is up and {} is its public address, then {resume}", opts.address),
                        )
                    })?;
                    (keys, opts.address.to_string())
                }
            };
            let chosen = match &opts.fingerprint {
                Some(fp) => keys.iter().find(|k| k.fingerprint == *fp).ok_or_else(|| {
                    fail(
                        Step::HostKey,
                        format!(
                            "none of the host keys {from} offers ({}) has the fingerprint {fp}: a typo, the wrong VM, or someone in between; nothing was sent to the host",
                            hostkey::describe(&keys)
                        ),
                        format!(
                            "read the fingerprint on the VM's console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and {resume_fp}"
                        ),
                    )
                })?,
                None => {
                    let refuse = |why: &str| {
                        fail(
                            Step::HostKey,
                            format!(
                                "{why}: refusing to trust the unverified host key {from} offers ({}); nothing was sent to the host",
                                hostkey::describe(&keys)
                            ),
                            format!(
                                "read the fingerprint on the VM's console (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and {resume_fp}"
                            ),
                        )
                    };
                    let Some(p) = prompt else {
                        return Err(refuse("no --host-key-fingerprint given and not interactive"));
                    };
                    let i = p
                        .accept(name.as_str(), &opts.address, &keys)
                        .ok_or_else(|| refuse("the key was not accepted"))?;
                    keys.get(i)
                        .ok_or_else(|| refuse("the key was not accepted"))?
                }
            };
            if !chosen.recordable() {
                return Err(fail(
                    Step::HostKey,
                    format!(
                        "the matching key is {} ({}), which secrets cannot be encrypted to",
                        chosen.kind(),
                        chosen.fingerprint
                    ),
                    format!("{resume_fp}, giving the fingerprint of the VM's ssh-ed25519 key"),
                ));
            }
            run.finish(
                Step::HostKey,
                Status::Done,
                format!(
                    "{} {} from {from} matches{}",
                    chosen.kind(),
                    chosen.fingerprint,
                    if opts.fingerprint.is_some() {
                        " the given fingerprint"
                    } else {
                        " (accepted interactively)"
                    }
                ),
            );
            chosen.key.clone()
        }
    };

    // 2. record
    run.start(Step::Record);
    if n.host_key.is_none() {
        let (_, f) = edit::set_host_key(&opts.fleet_dir, name.as_str(), &pinned).map_err(|e| {
            fail(
                Step::Record,
                e.to_string(),
                format!(
                    "add `host_key: \"{pinned}\"` to {name} in {} by hand, then {resume}",
                    nodes_yml.display()
                ),
            )
        })?;
        fleet = f;
        run.finish(
            Step::Record,
            Status::Done,
            format!("host_key of {name} written to {}", nodes_yml.display()),
        );
    } else {
        run.finish(
            Step::Record,
            Status::Unchanged,
            format!("already in {}", nodes_yml.display()),
        );
    }

    // 2. secret
    run.start(Step::Secret);
    let held: Option<SecretString> =
        secret_step(&mut run, &fleet, &name, already.is_some(), &resume).await?;

    // 2. hardware
    run.start(Step::Hardware);
    hardware_step(&mut run, &fleet, &name, &pinned, already.is_some(), &resume).await?;

    // 3. install
    run.start(Step::Install);
    if let Some(p) = &already {
        run.finish(
            Step::Install,
            Status::Skipped,
            format!(
                "already in the tailnet as {}: not contacted over its public address",
                ips(&p.tailscale_ips)
            ),
        );
    } else {
        install_step(&mut run, &fleet, &name, &pinned, held, &resume).await?;
    }

    // 4. join
    run.start(Step::Join);
    let device = match already {
        Some(p) => {
            run.finish(
                Step::Join,
                Status::Unchanged,
                format!(
                    "in the tailnet as {} ({})",
                    p.host_name,
                    ips(&p.tailscale_ips)
                ),
            );
            p
        }
        None => {
            let started = Instant::now();
            let p = run
                .wait_for(|s| joined(s, name.as_str()).cloned())
                .await
                .map_err(|last| {
                    fail(
                        Step::Join,
                        format!(
                            "{name} did not show up online in `tailscale status` within {}s{last}",
                            opts.wait_timeout.as_secs()
                        ),
                        format!(
                            "look at the VM (`journalctl -u tailscaled`, `tailscale status` there); once it is in the tailnet, {resume}"
                        ),
                    )
                })?;
            run.finish(
                Step::Join,
                Status::Done,
                format!(
                    "in the tailnet as {} ({}) after {:.1}s",
                    p.host_name,
                    ips(&p.tailscale_ips),
                    started.elapsed().as_secs_f64()
                ),
            );
            p
        }
    };

    // 4. address
    run.start(Step::Address);
    let want = fleet
        .node(name.as_str())
        .map(|n| n.tailscale_ip)
        .ok_or_else(|| setup("node vanished".into()))?;
    let final_ip = address_step(&mut run, &name, &device, want, &resume).await?;

    // 5. handover
    run.start(Step::Handover);
    let pin = opts.public_pin(&name);
    match std::fs::remove_file(&pin) {
        Ok(()) => run.finish(
            Step::Handover,
            Status::Done,
            format!(
                "public-address pin removed: from now on {name} is reached over Tailscale at {final_ip} (`fleetnix deploy {name}`)"
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => run.finish(
            Step::Handover,
            Status::Unchanged,
            format!("{name} is reached over Tailscale at {final_ip} (`fleetnix deploy {name}`)"),
        ),
        Err(e) => {
            return Err(fail(
                Step::Handover,
                format!("cannot remove {}: {e}", pin.display()),
                format!("remove it, then {resume}"),
            ))
        }
    }
    Ok(Report {
        node: name.to_string(),
        tailscale_ip: final_ip,
        steps: run.steps,
    })
}

/// Step 2b: make sure the node's `.age` auth key exists and is encrypted to its host key.
/// Returns the key when this run holds it (for the installer).
async fn secret_step(
    run: &mut Run<'_>,
    fleet: &Fleet,
    name: &NodeName,
    in_tailnet: bool,
    resume: &str,
) -> Result<Option<SecretString>, BootstrapError> {
    let opts = run.opts;
    let root = &opts.deploy.root;
    let file = authkey_file(name);
    let err = |e: String| fail(Step::Secret, e, format!("fix the cause, then {resume}"));
    let state = secrets::status(fleet, root)
        .map_err(|e| err(e.to_string()))?
        .into_iter()
        .find(|s| s.node == name.as_str())
        .map(|s| s.state)
        .unwrap_or(State::Missing);
    let supplied = opts.keys.supplied().map_err(err)?;
    let reencryptable = matches!(state, State::Stale | State::Unrecorded);

    // Which key, if any, is to be written, and where it came from.
    let (key, origin) = if let Some((k, from)) =
        supplied.filter(|_| !in_tailnet || state != State::UpToDate)
    {
        (k, format!("the auth key from {from}"))
    } else if state == State::UpToDate {
        let why = if in_tailnet {
            "the node is in the tailnet; kept"
        } else {
            "kept"
        };
        run.finish(
            Step::Secret,
            Status::Unchanged,
            format!("{file} is encrypted to {name}'s host key ({why})"),
        );
        return Ok(None);
    } else if let Some(r) = opts.keys.decrypt(root, name).filter(|_| reencryptable) {
        (
            r.map_err(err)?,
            format!("the key in {file} (decrypted with --identity)"),
        )
    } else if let (Some(api), false) = (&opts.api, in_tailnet) {
        let n = fleet
            .node(name.as_str())
            .ok_or_else(|| err("node vanished".into()))?;
        let minted = crate::acl::apply::mint_authkey(api, fleet, n, opts.mint_expiry.as_secs())
            .await
            .map_err(|e| {
                fail(
                    Step::Secret,
                    format!("minting an auth key through the Tailscale API: {e}"),
                    format!("fix the token or pass a key (TAILSCALE_AUTHKEY / --authkey-file), then {resume}"),
                )
            })?;
        (
            minted.key,
            format!(
                "a one-off auth key minted through the API (id {}, expires in {}s)",
                minted.id,
                opts.mint_expiry.as_secs()
            ),
        )
    } else if in_tailnet {
        run.finish(
            Step::Secret,
            Status::Skipped,
            format!(
                "{file} is {}; the node is already in the tailnet, so no key was minted: `fleetnix secrets set-authkey {name}` or `fleetnix secrets rekey` when needed",
                state.label()
            ),
        );
        return Ok(None);
    } else {
        return Err(fail(
            Step::Secret,
            format!("no Tailscale auth key for {name} ({file} is {})", state.label()),
            format!(
                "set TAILSCALE_AUTHKEY, pass --authkey-file FILE, set {} (or --token-file) to mint one, or pass --identity FILE to re-use {file}; then {resume}",
                tsapi::TOKEN_ENV
            ),
        ));
    };
    let report = secrets::set_authkey(fleet, root, std::slice::from_ref(name), &key)
        .map_err(|e| err(e.to_string()))?;
    for w in &report.warnings {
        run.note(w.clone());
    }
    if let Some(s) = report.skipped.first() {
        return Err(err(format!("{}: {} ({})", s.node, s.reason, s.fix)));
    }
    run.finish(
        Step::Secret,
        Status::Done,
        format!("{origin} encrypted to {file}"),
    );
    Ok(Some(key))
}

/// What the VM prints for the hardware step: `nixos-generate-config --show-hardware-config`, a
/// separator line, then its boot loader (`efi`, or `bios <disk>`). Exit 3: not NixOS.
const HARDWARE_SCRIPT: &str = r#"set -eu
. /etc/os-release 2>/dev/null || true
if [ "${ID:-}" != nixos ]; then echo "not NixOS (ID=${ID:-unknown})"; exit 3; fi
nixos-generate-config --show-hardware-config
echo '#### fleetnix boot loader'
if [ -d /sys/firmware/efi ]; then echo efi; else
  disk=$(lsblk -no pkname "$(findmnt -no SOURCE /)" 2>/dev/null | head -n 1 || true)
  echo "bios /dev/${disk:-vda}"
fi
"#;

/// The separator line of [`HARDWARE_SCRIPT`]'s output.
const BOOT_MARKER: &str = "#### fleetnix boot loader";

/// `hosts/<node>/boot.nix` for the boot loader the VM reported (`efi` or `bios /dev/<disk>`).
fn boot_module(node: &NodeName, reported: &str) -> Option<String> {
    let head = format!(
        "# Boot loader of {node}, as fleetnix bootstrap found it on the VM ({reported}); `nixos-generate-config`\n# leaves it to configuration.nix, so it lives here, next to hardware-configuration.nix.\n"
    );
    let body = match reported.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["efi"] => "{\n  boot.loader.systemd-boot.enable = true;\n  boot.loader.efi.canTouchEfiVariables = true;\n}\n".to_string(),
        ["bios", disk]
            if disk.starts_with("/dev/")
                && disk[5..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c)) =>
        {
            format!(
                "{{\n  boot.loader.grub.enable = true;\n  boot.loader.grub.device = {};\n}}\n",
                crate::nix::string(disk)
            )
        }
        _ => return None,
    };
    Some(head + &body)
}

/// Step 2c: the node's hardware configuration, read from the VM when it runs NixOS (over the
/// public address, with the pinned key) and written to `hosts/<node>/`.
async fn hardware_step(
    run: &mut Run<'_>,
    fleet: &Fleet,
    name: &NodeName,
    pinned: &str,
    in_tailnet: bool,
    resume: &str,
) -> Result<(), BootstrapError> {
    let opts = run.opts;
    let root = &opts.deploy.root;
    let rel = crate::hosts::hardware_path(name);
    let node = fleet
        .node(name.as_str())
        .ok_or_else(|| BootstrapError::Setup("node vanished".into()))?;
    if !crate::hosts::may_run_nixos(node) {
        run.finish(
            Step::Hardware,
            Status::Skipped,
            "os: linux: no NixOS configuration".to_string(),
        );
        return Ok(());
    }
    if root.join(&rel).is_file() {
        run.finish(
            Step::Hardware,
            Status::Unchanged,
            format!("{} exists", rel.display()),
        );
        return Ok(());
    }
    if in_tailnet {
        run.finish(
            Step::Hardware,
            Status::Skipped,
            format!(
                "the node is already in the tailnet, so it is not contacted over its public address: write {} with `{}`",
                rel.display(),
                crate::hosts::generate_command(node)
            ),
        );
        return Ok(());
    }
    let err = |e: String| fail(Step::Hardware, e, format!("fix the cause, then {resume}"));
    let pin = opts.public_pin(name);
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    }
    let known = crate::deploy::hostkeys::known_hosts(&opts.address, &[pinned.to_string()]);
    crate::fsutil::write_atomic(&pin, known.as_bytes(), 0o644)
        .map_err(|e| err(format!("{}: {e}", pin.display())))?;
    let target = crate::deploy::transport::SshTarget {
        destination: ssh_target(&opts.ssh_user, &opts.address),
        known_hosts: pin,
        sudo: opts.ssh_user != "root",
        control: None,
    };
    let transport = SshTransport {
        config: opts.deploy.ssh.clone(),
    };
    let timeout = Duration::from_secs(u64::from(opts.deploy.ssh.connect_timeout) + 60);
    let out = crate::deploy::transport::Transport::run(
        &transport,
        &target,
        HARDWARE_SCRIPT,
        None,
        timeout,
        &run.log,
    )
    .await
    .map_err(|e| err(e.to_string()))?;
    if out.code == Some(3) {
        run.finish(
            Step::Hardware,
            Status::Skipped,
            format!(
                "the VM is {}: once it runs NixOS, write {} with `{}`",
                out.stdout.trim(),
                rel.display(),
                crate::hosts::generate_command(node)
            ),
        );
        return Ok(());
    }
    if !out.success() {
        return Err(err(format!(
            "`nixos-generate-config --show-hardware-config` on {} failed: {}",
            opts.address,
            out.last_line()
        )));
    }
    let (hardware, boot) = out
        .stdout
        .split_once(&format!("{BOOT_MARKER}\n"))
        .ok_or_else(|| err("the VM's answer has no boot loader line".into()))?;
    crate::nix::check_syntax(hardware).map_err(|e| {
        err(format!(
            "the VM's hardware configuration is not valid Nix ({}); nothing was written",
            e.join("; ")
        ))
    })?;
    let boot = boot_module(name, boot.trim()).ok_or_else(|| {
        err(format!(
            "the VM reported an unknown boot loader `{}`; nothing was written",
            boot.trim().escape_debug()
        ))
    })?;
    let boot_rel = rel.with_file_name("boot.nix");
    for (path, text) in [(&boot_rel, boot.as_str()), (&rel, hardware)] {
        // boot.nix is only written along a new hardware configuration; an existing one is kept.
        if path == &boot_rel && root.join(path).exists() {
            continue;
        }
        let full = root.join(path);
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        crate::fsutil::write_atomic(&full, text.as_bytes(), 0o644)
            .map_err(|e| err(format!("{}: {e}", full.display())))?;
    }
    run.finish(
        Step::Hardware,
        Status::Done,
        format!(
            "{} and {} written from the VM (`nixos-generate-config --show-hardware-config`); commit them",
            rel.display(),
            boot_rel.display()
        ),
    );
    Ok(())
}

/// Step 3: deploy's runner (the same code path as `fleetnix deploy`) on a plan whose access is
/// the public address and the pinned key.
async fn install_step(
    run: &mut Run<'_>,
    fleet: &Fleet,
    name: &NodeName,
    pinned: &str,
    held: Option<SecretString>,
    resume: &str,
) -> Result<(), BootstrapError> {
    let opts = run.opts;
    let root = &opts.deploy.root;
    let plans = plan::plan(fleet);
    let rendered = ensure_rendered(fleet, root, &plans, &opts.sources_label, RenderMode::Write)
        .map_err(|e| {
            fail(
                Step::Install,
                e.to_string(),
                format!("fix the cause, then {resume}"),
            )
        })?;
    if let crate::deploy::RenderState::Rendered(files) = rendered {
        run.note(format!("rendered {} stale file(s) first", files.len()));
    }
    let mut plan = plans
        .into_iter()
        .find(|p| p.name == *name)
        .ok_or_else(|| BootstrapError::Setup("node vanished".into()))?;
    plan.access.address = opts.address;
    plan.access.ssh_user = crate::model::SshLogin::parse(&opts.ssh_user)
        .map_err(|e| BootstrapError::Setup(format!("the login `{}`: {e}", opts.ssh_user)))?;
    plan.access.ssh_target = ssh_target(&opts.ssh_user, &opts.address);
    plan.access.host_key = Some(
        crate::model::HostKey::parse(pinned)
            .map_err(|e| BootstrapError::Setup(format!("the pinned host key: {e}")))?,
    );
    let mut dopts = opts.deploy.clone();
    dopts.state_dir = opts.state_dir();
    dopts.tailscale = None;
    dopts.parallel = 1;
    dopts.fail_fast = false;
    let transport = SshTransport {
        config: dopts.ssh.clone(),
    };
    let log_path = dopts.log_path(name);
    let authkeys = Arc::new(BootstrapKey {
        key: Mutex::new(held),
        root: root.clone(),
        sources: opts.keys.clone(),
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = run.events.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if let Some(f) = &forward {
                let _ = f.send(Event::Deploy(e));
            }
        }
    });
    let summary = runner::deploy(
        vec![plan],
        dopts,
        transport,
        authkeys,
        Some(tx),
        Cancel::default(),
    )
    .await;
    let _ = forwarder.await;
    let Some(r) = summary.nodes.first() else {
        return Err(fail(
            Step::Install,
            "deploy reported nothing",
            resume.to_string(),
        ));
    };
    match r.outcome {
        Outcome::Succeeded => {
            run.finish(
                Step::Install,
                Status::Done,
                format!("{} over {}: {}", r.action, opts.address, r.detail),
            );
            Ok(())
        }
        Outcome::Unchanged => {
            run.finish(Step::Install, Status::Unchanged, r.detail.clone());
            Ok(())
        }
        Outcome::RolledBack
        | Outcome::RollbackFailed
        | Outcome::Failed
        | Outcome::Skipped
        | Outcome::Halted => Err(fail(
            Step::Install,
            format!(
                "{}{}: {} (log: {})",
                r.outcome.as_str(),
                r.step
                    .map(|s| format!(" at {}", s.as_str()))
                    .unwrap_or_default(),
                r.detail,
                log_path.display()
            ),
            format!("fix the cause, then {resume}"),
        )),
    }
}

/// Step 4b: the node's Tailscale address against `tailscale_ip`. Returns the address in force.
async fn address_step(
    run: &mut Run<'_>,
    name: &NodeName,
    device: &crate::tailscale::PeerStatus,
    want: IpAddr,
    resume: &str,
) -> Result<IpAddr, BootstrapError> {
    let opts = run.opts;
    if device.tailscale_ips.contains(&want) {
        run.finish(
            Step::Address,
            Status::Unchanged,
            format!("{want}, as tailscale_ip in nodes.yml says"),
        );
        return Ok(want);
    }
    let Some(got) = device
        .tailscale_ips
        .iter()
        .find(|ip| ip.is_ipv4() == want.is_ipv4())
        .copied()
    else {
        return Err(fail(
            Step::Address,
            format!(
                "`tailscale status` shows no {} address for {name}",
                if want.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
            format!("check the node in the admin console, then {resume}"),
        ));
    };
    match (&opts.api, want) {
        (Some(api), IpAddr::V4(v4)) if !device.id.is_empty() => {
            api.set_device_ipv4(&device.id, v4).await.map_err(|e| {
                fail(
                    Step::Address,
                    format!("setting {name}'s address to {want} through the Tailscale API: {e}"),
                    format!("fix the cause, then {resume}; or run without an API token to record the assigned {got} in nodes.yml instead"),
                )
            })?;
            run.wait_for(|s| {
                joined(s, name.as_str())
                    .filter(|p| p.tailscale_ips.contains(&want))
                    .map(|_| ())
            })
            .await
            .map_err(|last| {
                fail(
                    Step::Address,
                    format!(
                        "the API accepted {want} for {name}, but `tailscale status` still does not show it after {}s{last}",
                        opts.wait_timeout.as_secs()
                    ),
                    resume.to_string(),
                )
            })?;
            run.finish(
                Step::Address,
                Status::Done,
                format!("the tailnet gave {got}; set to {want} (tailscale_ip in nodes.yml) through the Tailscale API"),
            );
            Ok(want)
        }
        _ => {
            let (_, _) = edit::set_tailscale_ip(&opts.fleet_dir, name.as_str(), got).map_err(|e| {
                fail(
                    Step::Address,
                    e.to_string(),
                    format!(
                        "set tailscale_ip of {name} to {got} by hand (or give an API token to change the device's address to {want}), then {resume}"
                    ),
                )
            })?;
            run.finish(
                Step::Address,
                Status::Done,
                format!(
                    "the tailnet gave {got}, not {want}; no API token to change it, so tailscale_ip in nodes.yml is now {got}: run `fleetnix render` and redeploy the nodes that use it"
                ),
            );
            Ok(got)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_destinations() {
        let d: SshDest = "root@203.0.113.7".parse().unwrap();
        assert_eq!((d.user.as_str(), d.host.as_str()), ("root", "203.0.113.7"));
        let d: SshDest = "admin@[2001:db8::1]".parse().unwrap();
        assert_eq!(d.host, "2001:db8::1");
        assert!("vm.example.com".parse::<SshDest>().is_err());
        assert!("-oProxyCommand=x@h".parse::<SshDest>().is_err());
        assert!("root@-oProxyCommand=x".parse::<SshDest>().is_err());
        assert!("root@h:2222".parse::<SshDest>().is_err());
        assert!("root@h;id".parse::<SshDest>().is_err());
        assert!("ro ot@h".parse::<SshDest>().is_err());
    }

    #[test]
    fn boot_loader_modules_are_nix_and_refuse_odd_disks() {
        let n = NodeName::parse("vm-01").unwrap();
        let efi = boot_module(&n, "efi").unwrap();
        assert!(efi.contains("boot.loader.systemd-boot.enable = true;"));
        let bios = boot_module(&n, "bios /dev/vda").unwrap();
        assert!(bios.contains("boot.loader.grub.device = \"/dev/vda\";"));
        for text in [&efi, &bios] {
            crate::nix::check_syntax(text).unwrap();
        }
        for odd in [
            "bios /dev/$(id)",
            "bios /etc/passwd",
            "bios",
            "uefi",
            "bios /dev/vda x",
            "",
        ] {
            assert_eq!(boot_module(&n, odd), None, "{odd}");
        }
    }

    #[test]
    fn targets_bracket_ipv6() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ssh_target("root", &v6), "root@[2001:db8::1]");
    }
}
