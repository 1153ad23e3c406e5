//! The dry run and the runner share one program: against test hosts (a NixOS-like host with a
//! real systemd and the rollback guard, a plain Linux namespace host with the fake install script and CLI), the steps
//! the runner executed (written to each node's log as `#> ` lines holding the step's listing,
//! `#- ` for a step whose condition ruled it out) equal the steps `--dry-run` printed, once the
//! run's values (guard id, running and built generations) are written as the dry run's
//! placeholders.

mod common;

use common::systemd_host::SystemdNet;
use common::*;
use std::path::{Path, PathBuf};

/// The numbered steps of `node`'s section of a dry run: every line after its `SSH = ` line up
/// to its `log:` line.
fn printed_steps(dry: &str, node: &str) -> String {
    let start = dry
        .find(&format!("\n{node} ("))
        .unwrap_or_else(|| panic!("{node} in the dry run:\n{dry}"));
    let section = &dry[start + 1..];
    let mut out = String::new();
    let mut inside = false;
    for line in section.lines() {
        if line.starts_with("  log: ") {
            break;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("  SSH = ") {
            inside = true;
        }
    }
    assert!(!out.is_empty(), "no steps for {node}:\n{section}");
    out
}

/// The steps the runner wrote into `node`'s log: (executed and skipped in order, skipped only).
fn logged_steps(root: &Path, node: &str) -> (String, String, String) {
    let log = std::fs::read_to_string(root.join(format!(".fleetnix/logs/{node}.log")))
        .unwrap_or_else(|e| panic!("{node}'s log: {e}"));
    let mut all = String::new();
    let mut skipped = String::new();
    for line in log.lines() {
        if let Some(l) = line.strip_prefix("#> ") {
            all.push_str(l);
            all.push('\n');
        } else if let Some(l) = line.strip_prefix("#- ") {
            all.push_str(l);
            all.push('\n');
            skipped.push_str(l);
            skipped.push('\n');
        }
    }
    (all, skipped, log)
}

#[test]
fn the_runner_executes_exactly_the_steps_the_dry_run_prints() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let nixos = sys.nixos_host("n1");
    let ubuntu = ubuntu_host(&mut sys, "ubuntu-01");
    let root = tempfile::tempdir().expect("root");
    let mut u = NodeSpec::for_host(&ubuntu);
    u.os = "linux";
    write_fleet(root.path(), &[NodeSpec::for_host(&nixos), u], 5, false);
    let url = format!("file://{}", fakes().join("tailscale-install.sh").display());
    let key = fake_authkey();
    let args = ["--all", "--force", "--install-url", url.as_str()];

    let deployed = Ran::of(deploy_cmd(&sys, root.path(), &args).env("TAILSCALE_AUTHKEY", &key));
    assert_eq!(deployed.code, Some(0), "{deployed}");
    let mut dry_args = args.to_vec();
    dry_args.push("--dry-run");
    let dry = Ran::of(deploy_cmd(&sys, root.path(), &dry_args).env("TAILSCALE_AUTHKEY", &key));
    assert_eq!(dry.code, Some(0), "{dry}");

    // NixOS, guarded switch: every printed step ran, in order, with the run's values in place
    // of the placeholders.
    let (ran, skipped, log) = logged_steps(root.path(), "n1");
    // No bus password here: the drain step ran and noted it; the undrain had nothing to undo.
    assert!(
        skipped.starts_with(
            "  8. once the health gate passed and the deploy is confirmed: undrain n1"
        ) && skipped.lines().count() == 1,
        "{log}"
    );
    assert!(
        log.contains("drain: not drained (no NATS password for _registry"),
        "{log}"
    );
    let guard = log
        .lines()
        .find_map(|l| l.strip_prefix("# guard "))
        .unwrap_or_else(|| panic!("no guard line:\n{log}"));
    let (unit, rest) = guard.split_once(": running ").expect("guard line");
    let (running, built) = rest.split_once(", activating ").expect("guard line");
    let id = unit.strip_prefix("fleetnix-rollback-").expect("guard unit");
    assert!(!running.is_empty() && !built.is_empty() && running != built);
    let ran = ran
        .replace(id, "ID")
        .replace(built, "NEW_SYSTEM")
        .replace(running, "RUNNING_SYSTEM");
    let printed = printed_steps(&dry.stdout, "n1");
    assert_eq!(ran, printed);
    for step in [
        "  1. connect",
        "  2. nixos-rebuild build",
        "  3. drain n1's tasks",
        "  4. take the node's lock",
        "  5. activate",
        "  6. health gate (before the confirmation",
        "  7. confirm over a NEW connection",
        "  8. once the health gate passed and the deploy is confirmed: undrain n1",
    ] {
        assert!(ran.contains(step), "{step} missing:\n{ran}");
    }
    assert_eq!(
        sys.generations(&nixos),
        ("2".into(), "2".into(), "2".into())
    );

    // Plain Linux: probe, install, tailscale up, agent, firewall ran; `tailscale set` was
    // skipped (the node was not up yet: `up` set every pref) and so was the NATS password step
    // (none stored); together they are the printed steps, in order.
    let (ran, skipped, log) = logged_steps(root.path(), "ubuntu-01");
    let printed = printed_steps(&dry.stdout, "ubuntu-01");
    assert_eq!(ran, printed);
    assert!(
        skipped.starts_with("  4. if up as this node: tailscale set")
            && skipped.contains("\n  6. install the agent's NATS password"),
        "{skipped}"
    );
    let numbered = |text: &str| {
        text.lines()
            .filter(|l| {
                l.strip_prefix("  ")
                    .and_then(|r| r.split_once(". "))
                    .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
            })
            .count()
    };
    assert_eq!(numbered(&skipped), 2, "two skipped steps: {skipped}");
    assert_eq!(numbered(&printed), 7, "{printed}");
    for step in [
        "  1. probe",
        "  2. if tailscale is missing",
        "  3. if not up as this node",
        "  5. install omp-agent.service",
        "  7. install fleetnix-firewall.service",
    ] {
        let executed: String = log
            .lines()
            .filter_map(|l| l.strip_prefix("#> "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(executed.contains(step), "{step} did not run:\n{log}");
    }
    assert!(!log.contains(&key), "auth key in the log");
    let state: PathBuf = sys.dir().join("state-ubuntu-01");
    assert_eq!(
        lines(&state.join("ts-up.calls")).len(),
        1,
        "tailscale up ran once"
    );
}
