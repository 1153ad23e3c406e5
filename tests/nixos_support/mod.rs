//! Real NixOS evaluation for the tests: the pinned nixpkgs and agenix of `FLEETNIX_TEST_NIXPKGS`
//! (set by `.ci/run` to `../shared/nixos-eval`, the only thing outside the repository a test
//! reads), a copy of this repository's files to use as a `path:` flake, `nix flake check
//! --no-build`, and the evaluated values of every node of a flake, read back in one `nix eval`
//! (one nixpkgs import per batch).
#![allow(dead_code)] // each test binary uses a different subset

use crate::common::{repo, required_tool, skip, Ran};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The variable naming the folder with `nixpkgs.tar.xz` and `agenix/`.
pub const PINNED_ENV: &str = "FLEETNIX_TEST_NIXPKGS";

/// The auth key the example's (and the test fleets') secrets hold: obviously not a real one.
pub use crate::common::demo_authkey;

/// The pinned inputs and the `nix` binary.
pub struct Pinned {
    /// The folder of `FLEETNIX_TEST_NIXPKGS`.
    pub dir: PathBuf,
    /// `nix`.
    pub nix: PathBuf,
}

/// The pinned inputs, or [`skip`] (a failure under `CI`) saying why there are none.
pub fn pinned() -> Option<Pinned> {
    let nix = required_tool("nix", "Debian package nix-bin")?;
    let Some(dir) = std::env::var_os(PINNED_ENV).map(PathBuf::from) else {
        return skip(&format!(
            "{PINNED_ENV} is not set: it names the folder holding nixpkgs.tar.xz and agenix/ for offline NixOS evaluation (.ci/run sets it to ../shared/nixos-eval)"
        ));
    };
    for f in ["nixpkgs.tar.xz", "agenix/flake.nix"] {
        if !dir.join(f).is_file() {
            return skip(&format!("{PINNED_ENV}={} has no {f}", dir.display()));
        }
    }
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    Some(Pinned { dir, nix })
}

impl Pinned {
    /// `nix <args…>` with flakes enabled and the evaluation cache off (every run evaluates).
    pub fn nix(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.nix);
        c.args(["--extra-experimental-features", "nix-command flakes"])
            .args(args)
            .args(["--option", "eval-cache", "false", "--no-write-lock-file"]);
        c
    }

    /// `--override-input` arguments: nixpkgs and agenix pinned, plus `extra` (name, flake ref).
    pub fn overrides(&self, extra: &[(&str, String)]) -> Vec<String> {
        let mut v = vec![
            "--override-input".to_string(),
            "nixpkgs".into(),
            format!("file://{}", self.dir.join("nixpkgs.tar.xz").display()),
            "--override-input".into(),
            "agenix".into(),
            format!("path:{}", self.dir.join("agenix").display()),
        ];
        for (name, r) in extra {
            v.extend(["--override-input".to_string(), name.to_string(), r.clone()]);
        }
        v
    }

    /// `nix flake check --no-build` of the flake at `dir` (a `path:` flake) with the pinned
    /// inputs and `extra` overrides; the run and how long it took.
    pub fn flake_check(&self, dir: &Path, extra: &[(&str, String)]) -> (Ran, Duration) {
        let mut c = self.nix(&["flake", "check", "--no-build"]);
        c.args(self.overrides(extra))
            .arg(format!("path:{}", dir.display()));
        let t = Instant::now();
        let ran = Ran::of(&mut c);
        (ran, t.elapsed())
    }

    /// Every node of the flake at `dir`, evaluated in one `nix eval` (see [`NodeValues`]);
    /// panics with Nix's message when evaluation fails. `package` gives the agent a stub
    /// package, as an operator's module would.
    pub fn eval_nodes(
        &self,
        dir: &Path,
        extra: &[(&str, String)],
    ) -> (BTreeMap<String, NodeValues>, Duration) {
        let mut c = self.nix(&["eval", "--json"]);
        c.args(self.overrides(extra))
            .arg(format!("path:{}#nixosConfigurations", dir.display()))
            .args(["--apply", READ_BACK]);
        let t = Instant::now();
        let ran = Ran::of(&mut c);
        let took = t.elapsed();
        assert_eq!(
            ran.code,
            Some(0),
            "nix eval of {} failed:\n{ran}",
            dir.display()
        );
        let values = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("nix eval output: {e}\n{ran}"));
        (values, took)
    }
}

/// The `--apply` function of [`Pinned::eval_nodes`]: for each node, its complete system's
/// drvPath (every NixOS module and assertion evaluated) and the values the manifest decides. The
/// agent gets a stub package (`extendModules`), as a fleet's own module would give it, so its
/// unit exists (the shipped node's warning is checked in `nix flake check`'s output).
const READ_BACK: &str = r#"
cs: builtins.mapAttrs (name: shipped:
  let
    withAgent = shipped.extendModules {
      modules = [ ({ pkgs, ... }: { services.omp-agent.package = pkgs.writeShellScriptBin "omp" "exit 0"; }) ];
    };
    cfg = withAgent.config;
    fw = cfg.networking.firewall;
  in {
    drvPath = cfg.system.build.toplevel.drvPath;
    hostName = cfg.networking.hostName;
    stateVersion = cfg.system.stateVersion;
    upFlags = cfg.services.tailscale.extraUpFlags;
    authKeyFile = cfg.services.tailscale.authKeyFile;
    authKeyParameters = cfg.services.tailscale.authKeyParameters;
    autoconnectScript = cfg.systemd.services.tailscaled-autoconnect.script;
    setFlags = cfg.services.tailscale.extraSetFlags;
    setScript = cfg.systemd.services.tailscaled-set.script;
    tailscaleEnabled = cfg.services.tailscale.enable;
    firewallEnabled = fw.enable;
    tcp = fw.allowedTCPPorts;
    udp = fw.allowedUDPPorts;
    tcpRanges = builtins.length fw.allowedTCPPortRanges;
    interfaces = builtins.mapAttrs (_: i: { tcp = i.allowedTCPPorts; udp = i.allowedUDPPorts; }) fw.interfaces;
    execStart = cfg.systemd.services.omp-agent.serviceConfig.ExecStart;
    agentPackage = "${cfg.services.omp-agent.package}";
    natsEnabled = cfg.services.nats.enable;
    ageSecrets = builtins.mapAttrs (_: s: { path = s.path; file = baseNameOf (toString s.file); }) cfg.age.secrets;
  }) cs
"#;

/// What [`Pinned::eval_nodes`] reads back of one node.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeValues {
    /// `config.system.build.toplevel.drvPath`.
    pub drv_path: String,
    /// `networking.hostName`.
    pub host_name: String,
    /// `system.stateVersion`.
    pub state_version: String,
    /// `services.tailscale.extraUpFlags`.
    pub up_flags: Vec<String>,
    /// `services.tailscale.authKeyFile`.
    pub auth_key_file: String,
    /// `services.tailscale.authKeyParameters` (each null unless set).
    pub auth_key_parameters: AuthKeyParameters,
    /// The script of `tailscaled-autoconnect.service` (its `tailscale up` line).
    pub autoconnect_script: String,
    /// `services.tailscale.extraSetFlags`.
    pub set_flags: Vec<String>,
    /// The script of `tailscaled-set.service` (`tailscale set <flags>` at every start).
    pub set_script: String,
    /// `services.tailscale.enable`.
    pub tailscale_enabled: bool,
    /// `networking.firewall.enable`.
    pub firewall_enabled: bool,
    /// `networking.firewall.allowedTCPPorts` (every interface).
    pub tcp: Vec<u16>,
    /// `networking.firewall.allowedUDPPorts` (every interface).
    pub udp: Vec<u16>,
    /// How many TCP port ranges are open on every interface.
    pub tcp_ranges: usize,
    /// `networking.firewall.interfaces.<name>.allowed{TCP,UDP}Ports`.
    pub interfaces: BTreeMap<String, Ports>,
    /// The agent unit's `ExecStart` (with the stub package).
    pub exec_start: String,
    /// The stub package's store path.
    pub agent_package: String,
    /// `services.nats.enable`.
    pub nats_enabled: bool,
    /// `age.secrets.<name>`: the decrypted path and the `.age` file's name.
    pub age_secrets: BTreeMap<String, AgeSecret>,
}

/// `services.tailscale.authKeyParameters`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthKeyParameters {
    /// `baseURL`.
    #[serde(rename = "baseURL")]
    pub base_url: Option<String>,
    /// `ephemeral`.
    pub ephemeral: Option<bool>,
    /// `preauthorized`.
    pub preauthorized: Option<bool>,
}

/// Ports opened on one interface.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Ports {
    /// TCP.
    pub tcp: Vec<u16>,
    /// UDP.
    pub udp: Vec<u16>,
}

/// One `age.secrets.<name>`.
#[derive(Debug, Deserialize)]
pub struct AgeSecret {
    /// Where agenix decrypts it on the node.
    pub path: String,
    /// The `.age` file's name.
    pub file: String,
}

/// The words of a systemd `ExecStart` as `lib.escapeShellArgs` writes them ('…' quoting).
pub fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if !quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Checks one node's evaluated values against its plan: Tailscale flags and auth key, role ports
/// on `tailscale0` only, the agent's arguments, nats-server only on the control plane, the state
/// version, the secrets' files.
pub fn assert_follows_plan(v: &NodeValues, p: &fleetnix::spec::NodeSpec) {
    let node = p.name.as_str();
    assert!(
        v.drv_path.starts_with("/nix/store/") && v.drv_path.ends_with(".drv"),
        "{node}: {}",
        v.drv_path
    );
    assert_eq!(v.host_name, node);
    assert!(v.tailscale_enabled && v.firewall_enabled, "{node}");
    let tags = p.tags.join(",");
    assert_eq!(
        v.up_flags,
        [
            "--ssh".to_string(),
            "--accept-routes".into(),
            format!("--hostname={node}"),
            format!("--advertise-tags={tags}"),
        ],
        "{node}"
    );
    assert_eq!(v.auth_key_file, "/run/agenix/tailscale-authkey", "{node}");
    // Prefs a running node keeps applying: every up flag but --advertise-tags.
    assert_eq!(v.set_flags, p.set_flags(), "{node}");
    assert_eq!(&v.up_flags[..3], &v.set_flags[..], "{node}");
    let set_line = v
        .set_script
        .lines()
        .find(|l| l.contains("/bin/tailscale set "))
        .unwrap_or_else(|| panic!("{node}: no `tailscale set` in {}", v.set_script));
    let words = shell_words(set_line.trim());
    assert!(words[0].ends_with("/bin/tailscale"), "{node}: {set_line}");
    let mut want = vec!["set".to_string()];
    want.extend(p.set_flags());
    assert_eq!(words[1..], want[..], "{node}: {set_line}");
    // What the autoconnect unit gives `tailscale up --auth-key`: the stored key, plus
    // ?ephemeral=false&preauthorized=true for an OAuth client secret (tailscale_auth).
    let oauth = p.tailscale_auth == fleetnix::model::TailscaleAuth::OauthClient;
    let (params, suffix) = if oauth {
        (
            AuthKeyParameters {
                base_url: None,
                ephemeral: Some(false),
                preauthorized: Some(true),
            },
            "?ephemeral=false&preauthorized=true",
        )
    } else {
        (
            AuthKeyParameters {
                base_url: None,
                ephemeral: None,
                preauthorized: None,
            },
            "",
        )
    };
    assert_eq!(v.auth_key_parameters, params, "{node}");
    let up = format!("tailscale up --auth-key \"$(cat /run/agenix/tailscale-authkey){suffix}\" ");
    assert!(
        v.autoconnect_script.contains(&up),
        "{node}: no `{up}` in the autoconnect unit:\n{}",
        v.autoconnect_script
    );
    assert!(
        v.up_flags
            .iter()
            .any(|f| f.starts_with("--advertise-tags=tag:")),
        "{node}: {:?}",
        v.up_flags
    );
    // Nothing on every interface but Tailscale's WireGuard port; role ports on tailscale0 only.
    assert_eq!(
        v.tcp,
        Vec::<u16>::new(),
        "{node}: TCP open on every interface"
    );
    assert_eq!(v.tcp_ranges, 0, "{node}");
    assert_eq!(v.udp, [fleetnix::spec::TAILSCALE_UDP_PORT], "{node}");
    let mut want = BTreeMap::new();
    want.insert(
        "tailscale0".to_string(),
        Ports {
            tcp: p.tcp_ports.clone(),
            udp: p.udp_ports.clone(),
        },
    );
    assert_eq!(v.interfaces, want, "{node}");
    let mut argv = vec![format!("{}/bin/omp", v.agent_package)];
    argv.extend(p.agent.argv());
    assert_eq!(shell_words(&v.exec_start), argv, "{node}: {}", v.exec_start);
    assert_eq!(v.nats_enabled, p.is_control_plane, "{node}: nats-server");
    assert_eq!(
        Some(v.state_version.as_str()),
        p.state_version.as_deref(),
        "{node}"
    );
    let key = &v.age_secrets["tailscale-authkey"];
    assert_eq!(
        (key.path.as_str(), key.file.as_str()),
        ("/run/agenix/tailscale-authkey", "tailscale-authkey.age")
    );
    assert_eq!(v.age_secrets["nats-password"].file, "nats-password.age");
}

/// The evaluation warning a node without an agent package gets (instead of a crash-looping
/// unit), as `nix flake check` prints it.
pub fn agent_warning(node: &str) -> String {
    format!("services.omp-agent.package is not set (and nixpkgs has no `omp`), so the OMP agent of {node} is not installed.")
}

/// Copies this repository's files (tracked or not ignored, as git lists them) into `dest`, to be
/// used as a `path:` flake: what a clone holds, without `target/`.
pub fn copy_repo(dest: &Path) {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files: {out:?}");
    for rel in out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).expect("utf-8 path"));
        let from = repo().join(rel);
        // Deleted in the worktree but still tracked: not part of what is tested.
        if !from.is_file() {
            continue;
        }
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().expect("a file has a parent")).expect("mkdir");
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// The example's hardware configuration for another node (a small cloud VM).
pub fn vm_hardware(node: &str) -> String {
    std::fs::read_to_string(repo().join("hosts/worker-01/hardware-configuration.nix"))
        .expect("example hardware configuration")
        .replace("worker-01", node)
}
