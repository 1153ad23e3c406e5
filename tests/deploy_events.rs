//! The order of a deploy's progress events (`fleetnix deploy -v` prints each step a node
//! enters): a guarded `switch` announces its steps in program order, each once, the health
//! gate before the confirmation. NixOS-like namespace hosts behind real sshd, the fake
//! nixos-rebuild (see tests/deploy_gate.rs for the gate's verdicts themselves).

mod common;

use common::systemd_host::SystemdNet;
use common::*;

/// The steps `deploy -v` announced for `node`, in the order printed (`<node>: <step>` lines
/// on stderr whose second part is a step name).
fn announced(stderr: &str, node: &str) -> Vec<String> {
    const STEPS: [&str; 14] = [
        "host-key",
        "connect",
        "install",
        "tailscale-up",
        "agent",
        "firewall",
        "rebuild",
        "drain",
        "arm-guard",
        "activate",
        "health-gate",
        "confirm",
        "boot-default",
        "undrain",
    ];
    let prefix = format!("{node}: ");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|s| STEPS.contains(s))
        .map(str::to_string)
        .collect()
}

/// `n1`'s `-v` lines and its log's section headers both name exactly `expected`, in order.
fn assert_steps(r: &Ran, root: &std::path::Path, expected: &[&str]) {
    assert_eq!(announced(&r.stderr, "n1"), expected, "{r}");
    assert_eq!(log_steps(root, "n1"), expected);
}

/// The `## <step>` headers of a node's log, in order.
fn log_steps(root: &std::path::Path, node: &str) -> Vec<String> {
    let log = root.join(format!(".fleetnix/logs/{node}.log"));
    lines(&log)
        .into_iter()
        .filter_map(|l| l.strip_prefix("## ").map(str::to_string))
        .collect()
}

#[test]
fn a_gated_switch_announces_the_gate_then_the_confirmation_each_once() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    sys.nixos_fleet(root.path(), 1, 2);
    let r = Ran::of(&mut deploy_cmd(&sys, root.path(), &["n1", "--force", "-v"]));
    assert_eq!(r.code, Some(0), "{r}");
    let expected = [
        "host-key",
        "connect",
        "rebuild",
        "drain",
        "arm-guard",
        "activate",
        "health-gate",
        "confirm",
    ];
    // The node's log has the same sections, in the same order.
    assert_steps(&r, root.path(), &expected);
}

#[test]
fn without_the_gate_the_confirmation_follows_the_activation() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    sys.nixos_fleet(root.path(), 1, 2);
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--no-health-gate", "-v"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    let expected = [
        "host-key",
        "connect",
        "rebuild",
        "drain",
        "arm-guard",
        "activate",
        "confirm",
    ];
    assert_steps(&r, root.path(), &expected);
}

#[test]
fn a_node_failing_its_gate_never_announces_the_confirmation() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    sys.nixos_fleet(root.path(), 1, 2);
    // The new generation stops the agent: the gate fails and rolls the node back at once.
    std::fs::write(sys.state(&sys.host("n1")).join("breaks-agent"), "").expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "-v", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.row("n1").contains("[health-gate]"), "{r}");
    let expected = [
        "host-key",
        "connect",
        "rebuild",
        "drain",
        "arm-guard",
        "activate",
        "health-gate",
    ];
    assert_steps(&r, root.path(), &expected);
}
