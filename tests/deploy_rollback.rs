//! The rollback guard of `switch`, end to end on namespace hosts that look like NixOS where it
//! matters: fake generations (`switch-to-configuration` records calls, `sw/bin` holds
//! coreutils), their own `/run` (`current-system`, the guard's lock and markers), a boot
//! default, and a fake `systemd-run` that, like the real one on NixOS, runs units with an
//! empty environment whose PATH holds no coreutils (no systemd runs there).

mod common;

use common::netns::Net;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `(running, profile, boot default)` all on generation `n`.
fn all_on(n: &str) -> (String, String, String) {
    (n.into(), n.into(), n.into())
}

/// A fake generation's path, as the node reports it.
fn gen_path(net: &Net, name: &str, n: u32) -> String {
    state_dir(net, name)
        .join(format!("gens/{n}"))
        .display()
        .to_string()
}

/// The guard's lock on the host (in its own `/run`).
fn lock(net: &Net, name: &str) -> PathBuf {
    state_dir(net, name).join("run/fleetnix/lock")
}

#[test]
fn reconnect_failure_after_activation_rolls_back_to_the_previous_generation() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    // The new generation cuts SSH off when activated (the old one starts sshd again).
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "5"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    // Seen done on the node over a new connection, not assumed.
    assert!(
        row.contains("rolled back")
            && row.contains("the guard fired")
            && row.contains(&gen_path(&net, "n1", 1)),
        "{row}"
    );
    // Activated with `test` (never the default), then the guard re-activated generation 1,
    // in a unit whose PATH has no coreutils.
    assert_eq!(lines(&state.join("activations")), ["2 test", "1 test"]);
    assert_eq!(generations(&net, "n1"), all_on("1"));
    let log = std::fs::read_to_string(state.join("systemd.log")).expect("systemd log");
    assert!(log.contains("on-active=5 /bin/sh -c"), "{log}");
    assert!(log.contains("fired fleetnix-rollback-"), "{log}");
    assert!(!log.contains("failed with exit code"), "{log}");
    assert!(!lock(&net, "n1").exists(), "the rollback releases the lock");
}

#[test]
fn confirmed_switch_disarms_the_guard_and_only_then_sets_the_boot_default() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    let row = r.row("n1");
    assert!(row.contains("guard disarmed"), "{row}");
    // build (nothing on the node changes), activate with `test`, confirm, then `boot`.
    let argv = lines(&root.path().join("rec/nixos-rebuild.n1.argv"));
    assert_eq!(argv[0], "build", "{argv:?}");
    assert_eq!(lines(&state.join("activations")), ["2 test", "2 boot"]);
    assert_eq!(generations(&net, "n1"), all_on("2"));
    // Armed before activation, its own timer stopped after.
    let log = lines(&state.join("systemd.log"));
    let armed = log
        .iter()
        .position(|l| l.contains("on-active=30"))
        .expect("armed");
    let unit = log[armed]
        .split_whitespace()
        .find_map(|w| w.strip_prefix("unit="))
        .expect("unit")
        .to_string();
    assert!(
        unit.starts_with("fleetnix-rollback-") && unit.len() > 20,
        "{unit}"
    );
    let activated = log
        .iter()
        .position(|l| l.contains("unit=fleetnix-activate-"))
        .expect("activated");
    let stopped = log
        .iter()
        .rposition(|l| *l == format!("systemctl stop {unit}.timer"))
        .expect("disarmed");
    assert!(armed < activated && activated < stopped, "{log:?}");
    assert!(!state.join(format!("units/{unit}.timer")).exists());
    assert!(
        !lock(&net, "n1").exists(),
        "the confirmation releases the lock"
    );
    // The node's /run holds what the guard left: this deploy's markers only.
    assert!(state
        .join("run/fleetnix")
        .join(format!("{}.default", &unit["fleetnix-rollback-".len()..]))
        .exists());

    // --no-rollback: plain `nixos-rebuild switch`, no guard.
    let r = Ran::of(&mut deploy_cmd(&net, root.path(), &["n1", "--no-rollback"]));
    assert_eq!(r.code, Some(0), "{r}");
    let argv = lines(&root.path().join("rec/nixos-rebuild.n1.argv"));
    assert_eq!(argv[0], "switch");
    assert_eq!(
        lines(&state.join("activations")),
        ["2 test", "2 boot", "3 switch"]
    );
    assert_eq!(generations(&net, "n1"), all_on("3"));
    assert_eq!(
        lines(&state.join("systemd.log")).len(),
        log.len(),
        "no guard calls"
    );
}

#[test]
fn the_systemd_run_stand_in_gives_units_no_coreutils() {
    // What the guard's tests stand on: like systemd on NixOS, a unit's PATH holds only the
    // systemd stand-ins, whatever the caller's PATH.
    let dir = tempfile::tempdir().expect("dir");
    let run = |script: &str| {
        Ran::of(
            std::process::Command::new(fakes().join("host-bin/systemd-run"))
                .args(["--wait", "--pipe", "/bin/sh", "-c", script])
                .env("FAKE_HOST_DIR", dir.path()),
        )
    };
    let target = dir.path().join("made-by-touch");
    let r = run(&format!("touch {}", target.display()));
    assert_eq!(r.code, Some(127), "touch must not be found: {r}");
    assert!(!target.exists());
    let r = run("echo \"$PATH\"");
    assert_eq!(
        r.stdout.trim(),
        fakes().join("host-bin").display().to_string(),
        "{r}"
    );
}

#[test]
fn reboot_before_confirmation_boots_the_old_generation() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    // Activation cuts SSH off; before the guard fires, the node loses power.
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);
    let child = deploy_cmd(&net, root.path(), &["n1", "--rollback-grace", "40"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleetnix starts");
    wait_for("activation", Duration::from_secs(30), || {
        generations(&net, "n1").0 == "2"
    });
    // The reboot: every process dies (transient timers with them), /run is empty again, and
    // the boot loader starts its default generation, which brings sshd back.
    net.power_off(&host);
    reboot_state(&state);
    net.power_on(&host);

    let r = Ran::from(child.wait_with_output().expect("fleetnix finishes"));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("rolled back") && row.contains("restarted before the confirmation"),
        "{row}"
    );
    assert_eq!(generations(&net, "n1"), all_on("1"));
    assert_eq!(
        lines(&state.join("activations")),
        ["2 test"],
        "no rollback was needed"
    );
}

/// What a reboot does to a test host's files: `/run` emptied (but for sshd's directory), and
/// `/run/current-system` = the boot default.
fn reboot_state(state: &Path) {
    let run = state.join("run");
    for e in std::fs::read_dir(&run).expect("run").flatten() {
        if e.file_name() != "sshd" {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p).expect("clear /run");
            } else {
                std::fs::remove_file(&p).expect("clear /run");
            }
        }
    }
    let _ = std::fs::remove_dir_all(state.join("units"));
    let boot = std::fs::read_to_string(state.join("boot-default")).expect("boot default");
    std::os::unix::fs::symlink(
        state.join("gens").join(boot.trim()),
        run.join("current-system"),
    )
    .expect("current-system");
}

#[test]
fn arm_failure_leaves_profile_and_boot_default_on_the_running_generation() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    std::fs::write(state.join("fail-systemd-run"), "").expect("knob");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("FAILED")
            && row.contains("[arm-guard]")
            && row.contains("nothing was activated"),
        "{row}"
    );
    assert!(lines(&state.join("activations")).is_empty());
    assert_eq!(generations(&net, "n1"), all_on("1"));
    assert!(!lock(&net, "n1").exists(), "a failed arm releases the lock");

    // Once systemd-run works again, the next deploy goes through.
    std::fs::remove_file(state.join("fail-systemd-run")).expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(lines(&state.join("activations")), ["3 test", "3 boot"]);
    assert_eq!(generations(&net, "n1"), all_on("3"));
}

#[test]
fn two_concurrent_deploys_to_one_node_do_not_disarm_each_other() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    // Two operators, two repositories, one node.
    let (a, b) = (
        tempfile::tempdir().expect("root a"),
        tempfile::tempdir().expect("root b"),
    );
    for root in [&a, &b] {
        write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);
    }
    // A's activation is held until B has tried everything it can.
    std::fs::write(state.join("hold-activation"), "").expect("hold");
    let first = deploy_cmd(&net, a.path(), &["n1", "--rollback-grace", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleetnix starts");
    wait_for("A's activation", Duration::from_secs(30), || {
        state.join("activation-held").exists()
    });
    let rb = Ran::of(&mut deploy_cmd(
        &net,
        b.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    std::fs::remove_file(state.join("hold-activation")).expect("release");
    let ra = Ran::from(first.wait_with_output().expect("fleetnix finishes"));

    assert_eq!(rb.code, Some(1), "{rb}");
    let row = rb.row("n1");
    assert!(
        row.contains("[arm-guard]")
            && row.contains("another fleetnix deploy")
            && row.contains("holds the lock"),
        "{row}"
    );
    assert_eq!(ra.code, Some(0), "{ra}");
    assert!(ra.row("n1").contains("guard disarmed"), "{ra}");
    // B built generation 3 but never activated it; A's generation 2 is confirmed.
    assert_eq!(lines(&state.join("activations")), ["2 test", "2 boot"]);
    assert_eq!(generations(&net, "n1"), all_on("2"));
    // One timer was armed (A's) and only A's confirmation stopped it.
    let log = lines(&state.join("systemd.log"));
    let armed: Vec<_> = log
        .iter()
        .filter(|l| l.contains("unit=fleetnix-rollback-"))
        .collect();
    let stops: Vec<_> = log
        .iter()
        .filter(|l| l.starts_with("systemctl stop"))
        .collect();
    assert_eq!(armed.len(), 1, "{log:?}");
    assert_eq!(stops.len(), 1, "{log:?}");
    assert!(!lock(&net, "n1").exists());
}

#[test]
fn a_failed_rollback_is_reported_as_such_and_blocks_the_next_deploy() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    // The new generation cuts SSH off; re-activating the old one starts sshd, then fails.
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    std::fs::write(state.join("fail-1"), "").expect("knob");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "5"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(row.contains("rollback FAILED"), "{row}");
    assert!(
        row.contains("switch-to-configuration test")
            && row.contains("journalctl -u fleetnix-rollback-"),
        "{row}"
    );
    assert!(
        !row.contains("rolled back") && !row.contains("disarmed"),
        "{row}"
    );
    assert_eq!(lines(&state.join("activations")), ["2 test", "1 test"]);

    // The lock stays: nobody deploys over a node in an unknown state.
    assert!(lock(&net, "n1").exists());
    std::fs::remove_file(state.join("fail-1")).expect("knob");
    std::fs::remove_file(state.join("break-ssh-on-switch")).expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("[arm-guard]") && row.contains("FAILED on this node"),
        "{row}"
    );
}

#[test]
fn a_failed_boot_default_after_confirmation_is_reported_with_what_runs_and_what_boots() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    // Installing the boot entry of generation 2 fails (e.g. a full /boot).
    std::fs::write(state.join("fail-2-boot"), "").expect("knob");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("FAILED")
            && row.contains("[boot-default]")
            && row.contains("a reboot would return to")
            && row.contains(&gen_path(&net, "n1", 1)),
        "{row}"
    );
    // Confirmed (no rollback), running 2, still booting 1.
    assert_eq!(lines(&state.join("activations")), ["2 test", "2 boot"]);
    let (running, _, boot) = generations(&net, "n1");
    assert_eq!((running.as_str(), boot.as_str()), ("2", "1"));
    assert!(!lock(&net, "n1").exists());
}

#[test]
fn a_failed_activation_rolls_back_at_once_and_says_how_that_ended() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    std::fs::write(state.join("fail-2-test"), "").expect("knob");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("FAILED")
            && row.contains("[activate]")
            && row.contains("activating generation 2 failed")
            && row.contains("rolled back to")
            && row.contains("seen done"),
        "{row}"
    );
    // Well within the grace period: the timer was not waited for.
    assert_eq!(lines(&state.join("activations")), ["2 test", "1 test"]);
    assert_eq!(generations(&net, "n1"), all_on("1"));
    assert!(!lock(&net, "n1").exists());
    assert!(lines(&state.join("systemd.log"))
        .iter()
        .all(|l| !l.starts_with("fired ")));

    // The same with an old generation that cannot be re-activated: rollback FAILED.
    std::fs::write(state.join("fail-3-test"), "").expect("knob");
    std::fs::write(state.join("fail-1"), "").expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("rollback FAILED") && row.contains("activating generation 3 failed"),
        "{row}"
    );
    assert!(!row.contains("rolled back"), "{row}");
    // And the node stays locked for the next deploy, whatever the time.
    let r = Ran::of(&mut deploy_cmd(&net, root.path(), &["n1"]));
    assert!(r.row("n1").contains("FAILED on this node"), "{r}");
}

/// The `$ …` command lines a node's log holds under each `## <step>` header.
fn commands_by_step(log: &str) -> Vec<(String, String)> {
    let mut step = String::new();
    let mut out = Vec::new();
    for l in log.lines() {
        if let Some(s) = l.strip_prefix("## ") {
            step = s.to_string();
        } else if let Some(c) = l.strip_prefix("$ ") {
            out.push((step.clone(), c.to_string()));
        }
    }
    out
}

/// The value of `ControlPath=` in a logged command line.
fn control_path(cmd: &str) -> Option<String> {
    let rest = &cmd[cmd.find("ControlPath=")? + "ControlPath=".len()..];
    Some(
        rest.chars()
            .take_while(|c| !c.is_whitespace() && *c != '\'')
            .collect(),
    )
}

/// Processes whose command line mentions `needle` (an ssh master shows its socket path).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                found.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn multiplexed_switch_confirms_on_a_new_connection_and_still_rolls_back() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    // Activation kills the host's sshd listener: the shared connection's session survives
    // that, only a NEW connection fails. The guard must roll back all the same.
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["n1", "--rollback-grace", "5", "--ssh-multiplex"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.row("n1").contains("rolled back"), "{r}");
    assert_eq!(lines(&state.join("activations")), ["2 test", "1 test"]);
    assert_eq!(generations(&net, "n1"), all_on("1"));

    let log = std::fs::read_to_string(root.path().join(".fleetnix/logs/n1.log")).expect("log");
    let cmds = commands_by_step(&log);
    // Connect, arm and activate share one connection; nixos-rebuild gets it through NIX_SSHOPTS.
    let shared: Vec<_> = cmds
        .iter()
        .filter(|(s, _)| ["connect", "arm-guard", "activate"].contains(&s.as_str()))
        .collect();
    assert_eq!(shared.len(), 3, "{log}");
    let socket = control_path(&shared[0].1).expect("a control path");
    assert!(socket.len() <= 86 && socket.ends_with("/0"), "{socket}");
    for (step, c) in &shared {
        assert!(c.contains("-o ControlMaster=auto"), "{step}: {c}");
        assert_eq!(control_path(c).as_deref(), Some(socket.as_str()), "{c}");
        // The pinning options apply to the master (whichever command opens it).
        assert!(c.contains("StrictHostKeyChecking=yes") && c.contains("UserKnownHostsFile="));
    }
    let sshopts =
        std::fs::read_to_string(root.path().join("rec/nixos-rebuild.n1.sshopts")).expect("sshopts");
    assert!(
        sshopts.contains(&format!("ControlPath={socket}"))
            && sshopts.contains("StrictHostKeyChecking=yes"),
        "{sshopts}"
    );
    // The gate and the confirmation: the shared connection is closed first, then only new connections.
    let confirm: Vec<_> = cmds
        .iter()
        .filter(|(s, _)| s == "health-gate" || s == "confirm")
        .collect();
    assert!(
        confirm[0].1.contains("-O exit") && confirm[0].1.contains(&socket),
        "{confirm:?}"
    );
    assert!(confirm.len() >= 2, "{confirm:?}");
    for (_, c) in &confirm[1..] {
        assert!(
            c.contains("-o ControlMaster=no -o ControlPath=none"),
            "confirm must use a new connection: {c}"
        );
    }
    // Nothing left behind: no master process, no socket, no control directory.
    let dir = std::path::Path::new(&socket)
        .parent()
        .expect("socket dir")
        .to_path_buf();
    assert!(!dir.exists(), "{} left behind", dir.display());
    let needle = dir.display().to_string();
    wait_for("the ssh master to exit", Duration::from_secs(5), || {
        processes_mentioning(&needle).is_empty()
    });
}
