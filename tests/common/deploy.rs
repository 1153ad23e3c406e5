//! Set-ups the deploy tests share: a fleet of NixOS-like namespace hosts `n1`…`nN`
//! ([`nixos_fleet`]), the check that a halted rollout touched nobody ([`assert_halted`]),
//! fleetnix's pinned `NIX_SSHOPTS` for a hand-run `nixos-rebuild` ([`pinned_sshopts`]), and a
//! fleet deployed with the real nixos-rebuild of the pinned nixpkgs ([`RealFleet`]).

use super::netns::{Host, Net};
use super::rebuild_ng::{real_nixos_host, real_nixos_rebuild, write_flake};
use super::{deploy_cmd, lines, nixos_host, state_dir, write_fleet, NodeSpec, Ran};
use fleetnix::exec::ssh::{SshConfig, SshTarget};
use std::path::{Path, PathBuf};

/// `count` NixOS-like hosts ([`nixos_host`]) named `n1`…`n<count>`, pinned to their real host
/// keys, in a fleet under `root` with node timeout `timeout` seconds; `n1` is the control plane
/// (it hosts the catalog's services).
pub fn nixos_fleet(net: &mut Net, root: &Path, count: usize, timeout: u32) -> Vec<Host> {
    let hosts: Vec<Host> = (1..=count)
        .map(|i| nixos_host(net, &format!("n{i}")))
        .collect();
    let specs: Vec<NodeSpec> = hosts.iter().map(NodeSpec::for_host).collect();
    write_fleet(root, &specs, timeout, false);
    hosts
}

/// Each of `nodes` was never started because the rollout halted (its summary row says
/// `skipped (halted)` and names `why`), and nothing reached it: the fake nixos-rebuild (recording
/// into `<root>/rec`) never ran for it and the host saw no activation.
pub fn assert_halted(r: &Ran, net: &Net, root: &Path, nodes: &[&str], why: &str) {
    let rec = root.join("rec");
    for n in nodes {
        let row = r.row(n);
        assert!(
            row.contains("skipped (halted)") && row.contains(why),
            "{n} not halted by {why}: {row}\n{r}"
        );
        assert!(
            !rec.join(format!("nixos-rebuild.{n}.argv")).exists(),
            "{n} was touched"
        );
        assert!(
            lines(&state_dir(net, n).join("activations")).is_empty(),
            "{n} was activated"
        );
    }
}

/// The `NIX_SSHOPTS` fleetnix gives nixos-rebuild for `destination`, pinned by the known-hosts
/// file `known_hosts`: the namespace client key, a 5 s connect timeout and, with `control`, a
/// shared connection on that socket.
pub fn pinned_sshopts(
    net: &Net,
    destination: &str,
    known_hosts: &Path,
    control: Option<PathBuf>,
) -> String {
    let ssh = SshConfig {
        program: "ssh".into(),
        identity: Some(net.client_key().to_path_buf()),
        connect_timeout: 5,
    };
    let target = SshTarget {
        destination: destination.to_string(),
        known_hosts: known_hosts.to_path_buf(),
        sudo: false,
        control,
    };
    fleetnix::deploy::nixos::nix_sshopts(&ssh, &target)
}

/// Namespace hosts made by [`real_nixos_host`] in a fleet (node timeout 5 s) with the test
/// flake ([`write_flake`]), deployed with the real nixos-rebuild. Fields drop in order: the
/// repository first, the namespaces last.
pub struct RealFleet {
    /// The repository root (a temp dir).
    pub root: tempfile::TempDir,
    /// The real `nixos-rebuild` wrapper.
    pub rebuild: PathBuf,
    /// The hosts, in the order their names were given.
    pub hosts: Vec<Host>,
    /// The namespaces the hosts live in.
    pub net: Net,
}

impl RealFleet {
    /// Hosts `names`, each pinned to its real host key. `None`: the test is skipped (no
    /// namespaces here, or no pinned nixpkgs to take nixos-rebuild from).
    pub fn new(names: &[&str]) -> Option<RealFleet> {
        RealFleet::with(names, |_, _| {})
    }

    /// [`RealFleet::new`], with `adjust` changing the node specs (e.g. pinning another host's
    /// key) before the fleet is written.
    pub fn with(
        names: &[&str],
        adjust: impl FnOnce(&[Host], &mut [NodeSpec]),
    ) -> Option<RealFleet> {
        let mut net = Net::new()?;
        let hosts: Vec<Host> = names.iter().map(|n| real_nixos_host(&mut net, n)).collect();
        let root = tempfile::tempdir().expect("root");
        let mut specs: Vec<NodeSpec> = hosts.iter().map(NodeSpec::for_host).collect();
        adjust(&hosts, &mut specs);
        let rebuild = real_nixos_rebuild(&net.dir().join("nixos-rebuild-ng"))?;
        write_fleet(root.path(), &specs, 5, false);
        write_flake(root.path(), names);
        Some(RealFleet {
            root,
            rebuild,
            hosts,
            net,
        })
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `fleetnix deploy ARGS` as [`deploy_cmd`] runs it, with the real nixos-rebuild.
    pub fn deploy(&self, args: &[&str]) -> Ran {
        Ran::of(
            deploy_cmd(&self.net, self.root(), args).env("FLEETNIX_NIXOS_REBUILD", &self.rebuild),
        )
    }
}
