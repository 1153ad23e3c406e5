//! Rolling deploys end to end (`--canary`, `--batch`, `--max-failures`): NixOS-like namespace
//! hosts behind real sshd, the fake nixos-rebuild, and activations observed on the hosts.

mod common;

use common::deploy::{assert_halted, nixos_fleet};
use common::netns::Net;
use common::*;

/// Five NixOS-like hosts `n1`…`n5` (node timeout 5 s).
const HOSTS: usize = 5;
const TIMEOUT: u32 = 5;

/// Replaces host `name`'s `switch-to-configuration` (new generations copy it) with `script`.
fn activation(net: &Net, name: &str, script: &str) {
    write_script(
        &state_dir(net, name).join("gens/1/bin/switch-to-configuration"),
        script,
    );
}

const FAILING: &str =
    "#!/bin/sh\necho 'activation failed: unit omp-agent.service failed' >&2\nexit 1\n";

#[test]
fn a_failed_canary_halts_the_rollout_before_any_other_node_is_touched() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    nixos_fleet(&mut net, root.path(), HOSTS, TIMEOUT);
    activation(&net, "n1", FAILING);
    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["--all", "--force", "--action", "test", "--canary", "1"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.row("n1").contains("FAILED"), "{r}");
    assert!(root.path().join("rec/nixos-rebuild.n1.argv").exists());
    assert_halted(&r, &net, root.path(), &["n2", "n3", "n4", "n5"], "canary");
    // --json says the same.
    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &[
            "--all", "--force", "--action", "test", "--canary", "1", "--json",
        ],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let outcomes: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["failed", "halted", "halted", "halted", "halted"]);
}

#[test]
fn max_failures_stops_starting_nodes_once_exceeded() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    nixos_fleet(&mut net, root.path(), HOSTS, TIMEOUT);
    activation(&net, "n1", FAILING);
    activation(&net, "n2", FAILING);
    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &[
            "--all",
            "--force",
            "--action",
            "test",
            "--batch",
            "1",
            "--max-failures",
            "1",
        ],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    // n1 failed (1 is allowed), n2 failed (2 > 1): the rest never started.
    assert!(r.row("n1").contains("FAILED"), "{r}");
    assert!(r.row("n2").contains("FAILED"), "{r}");
    for n in ["n3", "n4", "n5"] {
        assert!(r.row(n).contains("skipped (halted)"), "{r}");
        assert!(lines(&state_dir(&net, n).join("activations")).is_empty());
    }
}

#[test]
fn batch_bounds_the_nodes_activating_at_once_as_seen_on_the_hosts() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    nixos_fleet(&mut net, root.path(), HOSTS, TIMEOUT);
    let shared = net.dir().join("activating");
    std::fs::create_dir_all(&shared).expect("dir");
    let seen = net.dir().join("concurrency");
    // Each activation marks itself active for 1 s and records how many are active with it.
    for i in 1..=5 {
        activation(
            &net,
            &format!("n{i}"),
            &format!(
                "#!/bin/sh\nset -eu\ntouch '{d}/n{i}'\nls '{d}' | wc -l >> '{seen}'\nsleep 1\nrm -f '{d}/n{i}'\n\
                 echo \"x $1\" >> \"$(cat /nix/var/nix/profiles/.fleetnix-test-host)/activations\"\n",
                d = shared.display(),
                seen = seen.display()
            ),
        );
    }
    let max_seen = |args: &[&str]| {
        let _ = std::fs::remove_file(&seen);
        let r = Ran::of(&mut deploy_cmd(&net, root.path(), args));
        assert_eq!(r.code, Some(0), "{r}");
        let counts: Vec<usize> = lines(&seen)
            .iter()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert_eq!(counts.len(), 5, "every host activated once: {counts:?}");
        counts.into_iter().max().unwrap_or(0)
    };
    let batched = max_seen(&["--all", "--force", "--action", "test", "--batch", "2"]);
    assert!(
        batched <= 2,
        "{batched} hosts activating at once with --batch 2"
    );
    // The observation does see more when nothing bounds it (--parallel 10).
    let unbounded = max_seen(&["--all", "--force", "--action", "test"]);
    assert!(
        unbounded >= 3,
        "{unbounded} hosts activating at once without --batch"
    );
}
