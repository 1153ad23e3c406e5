//! Shared helpers of the integration tests: the namespace test hosts ([`netns`]), fleet
//! repositories for them, and the fakes under `tests/fakes/`.
#![allow(dead_code)] // each test binary uses a different subset

pub mod netns;

use netns::{Host, HostOptions, Net};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fleetnix binary under test.
pub fn fleetnix_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleetnix"))
}

/// `tests/fakes`.
pub fn fakes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes")
}

/// An obviously fake auth key, built at run time.
pub fn fake_authkey() -> String {
    format!("tskey-auth-{}-{}", "FAKEtestkey", std::process::id())
}

/// One node of a test fleet.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Name.
    pub name: String,
    /// Address.
    pub addr: String,
    /// `os:` value.
    pub os: &'static str,
    /// `host_key:` value, if any.
    pub host_key: Option<String>,
    /// Roles.
    pub roles: Vec<&'static str>,
}

impl NodeSpec {
    /// A NixOS node for a test host, pinned to its real key.
    pub fn for_host(h: &Host) -> Self {
        NodeSpec {
            name: h.name.clone(),
            addr: h.addr.to_string(),
            os: "nixos",
            host_key: Some(h.host_key.clone()),
            roles: vec!["glm-worker"],
        }
    }
}

/// Writes a fleet repository (fleet/*.yml; services.yml from the example fleet) under `root`.
/// The control plane is the first node (it gets the catalog's control-plane roles too).
pub fn write_fleet(root: &Path, nodes: &[NodeSpec], timeout: u32, retry: bool) {
    let fleet = root.join("fleet");
    std::fs::create_dir_all(&fleet).expect("fleet dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(repo.join("fleet/services.yml"), fleet.join("services.yml"))
        .expect("services.yml");
    let mut y = String::from("nodes:\n");
    for (i, n) in nodes.iter().enumerate() {
        let mut roles = n.roles.clone();
        if i == 0 {
            // The catalog's services need their roles hosted somewhere: on the control plane.
            roles.extend(["control-plane", "litellm-proxy", "temporal", "langfuse"]);
        }
        y.push_str(&format!(
            "  - name: {}\n    tailscale_ip: {}\n    os: {}\n    roles: [{}]\n    resources: {{ cpu: 2, ram_gb: 4 }}\n",
            n.name,
            n.addr,
            n.os,
            roles.join(", ")
        ));
        if let Some(k) = &n.host_key {
            y.push_str(&format!("    host_key: \"{k}\"\n"));
        }
    }
    std::fs::write(fleet.join("nodes.yml"), y).expect("nodes.yml");
    std::fs::write(
        fleet.join("fleet.yml"),
        format!(
            "control_plane: {cp}\nnats_url: nats://{ip}:4222\ncontrol_plane_port: 4000\ntailnet: \"-\"\n\
             operators:\n  group: group:operators\n  members: [ops@example.com]\n  keys: []\n\
             ntfy:\n  topic: fleet-alerts\n  port: 8090\n\
             fleet:\n  node_timeout_seconds: {timeout}\n  retry_on_node_failure: {retry}\n  failover_strategy: round_robin\n  alert_on_node_down: false\n",
            cp = nodes[0].name,
            ip = nodes[0].addr
        ),
    )
    .expect("fleet.yml");
}

/// Host options of a NixOS test host: a fake system profile (generation 1 active, whose
/// `switch-to-configuration` records calls) bound over `/nix/var/nix/profiles`, and the fake
/// `systemd-run`/`systemctl` first on PATH. Call before [`Net::add_host`] with the host's future dir.
pub fn nixos_host(net: &mut Net, name: &str) -> Host {
    let profiles = net.dir().join(format!("profiles-{name}"));
    let state = net.dir().join(format!("state-{name}"));
    std::fs::create_dir_all(state.join("gens/1/bin")).expect("gens");
    std::fs::create_dir_all(&profiles).expect("profiles");
    std::fs::copy(
        fakes().join("switch-to-configuration"),
        state.join("gens/1/bin/switch-to-configuration"),
    )
    .expect("fake switch-to-configuration");
    std::os::unix::fs::symlink(state.join("gens/1"), profiles.join("system-1-link")).expect("link");
    std::os::unix::fs::symlink("system-1-link", profiles.join("system")).expect("link");
    std::fs::write(
        profiles.join(".fleetnix-test-host"),
        state.display().to_string(),
    )
    .expect("marker");
    let host = net.add_host(
        name,
        HostOptions {
            os_release: Some("NAME=NixOS\nID=nixos\n".into()),
            path_prefix: vec![fakes().join("host-bin")],
            env: vec![("FAKE_HOST_DIR".into(), state.display().to_string())],
            binds: vec![(profiles, PathBuf::from("/nix/var/nix/profiles"))],
            ..Default::default()
        },
    );
    // The fake nixos-rebuild finds sshd's pid file through the state dir.
    std::os::unix::fs::symlink(host.dir.join("sshd.pid"), state.join("sshd.pid"))
        .expect("pid link");
    host
}

/// The state dir of a host made by [`nixos_host`] (activations, systemd.log).
pub fn state_dir(net: &Net, name: &str) -> PathBuf {
    net.dir().join(format!("state-{name}"))
}

/// Lines of a file, or none if it does not exist.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// `fleetnix --root <root> deploy <args>` inside the hub, with the fake nixos-rebuild recording
/// into `<root>/rec` and the tailnet host-key lookup disabled.
pub fn deploy_cmd(net: &Net, root: &Path, args: &[&str]) -> Command {
    let rec = root.join("rec");
    std::fs::create_dir_all(&rec).expect("rec dir");
    let mut c = net.command(fleetnix_bin());
    c.arg("--root")
        .arg(root)
        .arg("deploy")
        .args(args)
        .arg("--ssh-identity")
        .arg(net.client_key())
        .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
        .env("FLEETNIX_TAILSCALE", "")
        .env("FAKE_RECORD_DIR", &rec)
        .env_remove("TAILSCALE_AUTHKEY");
    c
}
