//! The rollback guard of `switch`, end to end on hosts that boot a real systemd
//! (`tests/common/systemd_host.rs`) and look like NixOS where it matters: units get NixOS's
//! `PATH` (systemd's programs only, no coreutils), so the guard's timer, its rollback and the
//! activation run as transient units of the real systemd exactly as on NixOS; fake generations
//! (`switch-to-configuration` records calls, `sw/bin` holds coreutils), the guard's lock and
//! markers in the host's own `/run`, a boot loader's default on its disk, and real reboots.

mod common;

use common::systemd_host::{gen_path, SystemdNet};
use common::*;
use std::time::{Duration, Instant};

/// `(running, profile, boot default)` all on generation `n`.
fn all_on(n: &str) -> (String, String, String) {
    (n.into(), n.into(), n.into())
}

/// The guard's lock on the host (in its own `/run`).
const LOCK: &str = "/run/fleetnix/lock";

/// What systemd itself said about the guard's units since the boot (PID 1's messages).
fn units_journal(sys: &SystemdNet, host: &common::netns::Host) -> Vec<String> {
    sys.journal(host, "_PID=1")
        .lines()
        .filter(|l| l.contains("fleetnix-"))
        .map(String::from)
        .collect()
}

#[test]
fn reconnect_failure_after_activation_rolls_back_to_the_previous_generation() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let state = sys.state(&host);
    // The new generation stops sshd when activated (the old one starts it again).
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--rollback-grace", "5"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    // Seen done on the node over a new connection, not assumed.
    assert!(
        row.contains("rolled back")
            && row.contains("the guard fired")
            && row.contains(&gen_path(1)),
        "{row}"
    );
    // Activated with `test` (never the default), then the guard's timer re-activated
    // generation 1 from a unit whose PATH holds no coreutils.
    assert_eq!(sys.activations(&host), ["2 test", "1 test"]);
    assert_eq!(sys.generations(&host), all_on("1"));
    let journal = units_journal(&sys, &host);
    let fired = journal
        .iter()
        .find(|l| l.starts_with("Started fleetnix-rollback-") && l.contains(".service"))
        .unwrap_or_else(|| panic!("the timer never started its rollback: {journal:#?}"));
    let unit = fired["Started ".len()..]
        .split_whitespace()
        .next()
        .expect("unit");
    assert!(
        journal
            .iter()
            .any(|l| l.starts_with(&format!("{unit}: Deactivated successfully"))),
        "{journal:#?}"
    );
    assert!(
        !journal.iter().any(|l| l.contains("Failed with result")),
        "{journal:#?}"
    );
    let armed = sys.journal(&host, "");
    assert!(
        !armed.contains("command not found") && !armed.contains(": not found"),
        "{armed}"
    );
    assert!(!sys.exists(&host, LOCK), "the rollback releases the lock");
    assert!(
        sys.exec(&host, "systemctl is-active --quiet ssh.service")
            .code
            == Some(0)
    );
}

#[test]
fn confirmed_switch_disarms_the_guard_and_only_then_sets_the_boot_default() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    let row = r.row("n1");
    assert!(row.contains("guard disarmed"), "{row}");
    // build (nothing on the node changes), activate with `test`, confirm, then `boot`.
    let argv = lines(&root.path().join("rec/nixos-rebuild.n1.argv"));
    assert_eq!(argv[0], "build", "{argv:?}");
    assert_eq!(sys.activations(&host), ["2 test", "2 boot"]);
    assert_eq!(sys.generations(&host), all_on("2"));
    // Armed before activation, its own timer stopped after, and never fired.
    let journal = units_journal(&sys, &host);
    let armed = journal
        .iter()
        .position(|l| l.starts_with("Started fleetnix-rollback-") && l.contains(".timer"))
        .unwrap_or_else(|| panic!("armed: {journal:#?}"));
    let unit = journal[armed]["Started ".len()..]
        .split_whitespace()
        .next()
        .expect("unit")
        .trim_end_matches(".timer")
        .to_string();
    assert!(
        unit.starts_with("fleetnix-rollback-") && unit.len() > 20,
        "{unit}"
    );
    let activated = journal
        .iter()
        .position(|l| l.starts_with("Started fleetnix-activate-"))
        .unwrap_or_else(|| panic!("activated: {journal:#?}"));
    let stopped = journal
        .iter()
        .rposition(|l| {
            l.starts_with(&format!("Stopped {unit}.timer"))
                || l.starts_with(&format!("{unit}.timer: Deactivated"))
        })
        .unwrap_or_else(|| panic!("disarmed: {journal:#?}"));
    assert!(armed < activated && activated < stopped, "{journal:#?}");
    assert!(
        !journal
            .iter()
            .any(|l| l.starts_with(&format!("Started {unit}.service"))),
        "{journal:#?}"
    );
    let timer = sys.exec(&host, &format!("systemctl is-active {unit}.timer"));
    assert_eq!(timer.stdout.trim(), "inactive", "{timer}");
    assert!(
        !sys.exists(&host, LOCK),
        "the confirmation releases the lock"
    );
    // The node's /run holds what the guard left: this deploy's markers only.
    assert!(sys.exists(
        &host,
        &format!(
            "/run/fleetnix/{}.default",
            &unit["fleetnix-rollback-".len()..]
        )
    ));

    // --no-rollback: plain `nixos-rebuild switch`, no guard.
    let r = Ran::of(&mut deploy_cmd(&sys, root.path(), &["n1", "--no-rollback"]));
    assert_eq!(r.code, Some(0), "{r}");
    let argv = lines(&root.path().join("rec/nixos-rebuild.n1.argv"));
    assert_eq!(argv[0], "switch");
    assert_eq!(sys.activations(&host), ["2 test", "2 boot", "3 switch"]);
    assert_eq!(sys.generations(&host), all_on("3"));
    assert_eq!(units_journal(&sys, &host), journal, "no guard units");
}

#[test]
fn reboot_before_confirmation_boots_the_old_generation() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let state = sys.state(&host);
    // Activation stops sshd; before the guard fires, the node reboots (for real: its systemd
    // goes down with the transient timer, /run is new, the boot loader starts its default).
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);
    let child = deploy_cmd(&sys, root.path(), &["n1", "--rollback-grace", "40"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleetnix starts");
    wait_for("activation", Duration::from_secs(30), || {
        sys.activations(&host) == ["2 test"]
            && sys.readlink(&host, "/run/current-system") == Some(gen_path(2))
    });
    sys.reboot(&host);
    assert_eq!(sys.boots(&host), 2);

    let r = Ran::from(child.wait_with_output().expect("fleetnix finishes"));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("rolled back") && row.contains("restarted before the confirmation"),
        "{row}"
    );
    assert_eq!(sys.generations(&host), all_on("1"));
    assert_eq!(
        sys.readlink(&host, "/run/booted-system"),
        Some(gen_path(1)),
        "booted the boot default"
    );
    assert_eq!(sys.activations(&host), ["2 test"], "no rollback was needed");
    assert!(
        !sys.exists(&host, LOCK),
        "the lock was in /run: gone with the reboot"
    );
    // The timer died with the reboot: nothing of the guard runs or fires after it.
    let units = sys.exec_ok(
        &host,
        "systemctl list-units --all --no-legend 'fleetnix-rollback-*' 'fleetnix-activate-*'",
    );
    assert!(units.trim().is_empty(), "{units}");
}

#[test]
fn a_node_rebooted_into_an_unconfirmed_boot_default_is_restored_by_its_own_guard() {
    // Issue 24: with `deploy --reboot`, the new generation becomes the boot default BEFORE the
    // reboot, so the transient timer above (gone with /run) cannot protect it; the boot guard
    // (a unit at boot on the node's disk) must, without a confirmation within its bound, make
    // the previous generation the boot default again and reboot.
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    // Any generation but the first comes back without SSH: its sshd does not start (a
    // drop-in on the host's disk; the container cannot take its own link down).
    sys.exec_ok(
        &host,
        &format!(
            "mkdir -p /etc/systemd/system/ssh.service.d && printf '%s\\n' '[Service]' \
             'ExecStartPre=/bin/sh -c \"test $$(/usr/bin/readlink /run/booted-system) = {}\"' \
             > /etc/systemd/system/ssh.service.d/fleetnix-test.conf && systemctl daemon-reload",
            common::systemd_host::gen_path(1)
        ),
    );
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);
    let before = sys.boots(&host);
    let started = Instant::now();
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &[
            "n1",
            "--reboot",
            "always",
            "--rollback-grace",
            "5",
            "--reboot-timeout",
            "5",
        ],
    ));
    // The node came back without SSH: the deploy fails, and the node's own guard, within its
    // bound, boots generation 1 again.
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.row("n1").contains("[reboot]"), "{r}");
    sys.wait_for_reboot(&host, before + 1, started);
    wait_for("the node-side guard", Duration::from_secs(60), || {
        sys.generations(&host) == all_on("1")
    });
}

#[test]
fn arm_failure_leaves_profile_and_boot_default_on_the_running_generation() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    // Fault: systemd-run fails as when the manager refuses a transient unit (a `systemd-run`
    // first on the root's PATH that answers with systemd's own error; tests/README.md).
    let fault = sys.root(&host).join("usr/local/bin/systemd-run");
    std::fs::create_dir_all(fault.parent().expect("dir")).expect("dir");
    write_script(
        &fault,
        "#!/bin/sh
echo 'Failed to start transient timer unit: Access denied' >&2
exit 1
",
    );
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &sys,
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
    assert!(sys.activations(&host).is_empty());
    assert_eq!(sys.generations(&host), all_on("1"));
    assert!(!sys.exists(&host, LOCK), "a failed arm releases the lock");

    // Once systemd-run works again, the next deploy goes through.
    std::fs::remove_file(&fault).expect("fault");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(sys.activations(&host), ["3 test", "3 boot"]);
    assert_eq!(sys.generations(&host), all_on("3"));
}

#[test]
fn two_concurrent_deploys_to_one_node_do_not_disarm_each_other() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let state = sys.state(&host);
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
    let first = deploy_cmd(&sys, a.path(), &["n1", "--rollback-grace", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleetnix starts");
    wait_for("A's activation", Duration::from_secs(30), || {
        state.join("activation-held").exists()
    });
    let rb = Ran::of(&mut deploy_cmd(
        &sys,
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
    assert_eq!(sys.activations(&host), ["2 test", "2 boot"]);
    assert_eq!(sys.generations(&host), all_on("2"));
    // One timer was armed (A's), A's confirmation stopped it, and it never fired.
    let journal = units_journal(&sys, &host);
    let armed: Vec<_> = journal
        .iter()
        .filter(|l| l.starts_with("Started fleetnix-rollback-") && l.contains(".timer"))
        .collect();
    assert_eq!(armed.len(), 1, "{journal:#?}");
    assert!(
        !journal
            .iter()
            .any(|l| l.starts_with("Started fleetnix-rollback-") && l.contains(".service")),
        "{journal:#?}"
    );
    assert!(!sys.exists(&host, LOCK));
}

#[test]
fn a_failed_rollback_is_reported_as_such_and_blocks_the_next_deploy() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let state = sys.state(&host);
    // The new generation stops sshd; re-activating the old one starts sshd, then fails.
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    std::fs::write(state.join("fail-1"), "").expect("knob");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &sys,
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
    assert_eq!(sys.activations(&host), ["2 test", "1 test"]);
    // systemd itself holds the rollback's service as failed, and the journal the report names
    // has its output.
    let failed = sys.exec_ok(
        &host,
        "systemctl list-units --failed --no-legend 'fleetnix-rollback-*'",
    );
    assert!(
        failed.contains("fleetnix-rollback-") && failed.contains("failed"),
        "{failed}"
    );
    let journal = sys.journal(&host, "-u 'fleetnix-rollback-*'");
    assert!(
        journal.contains("activating generation 1 failed"),
        "{journal}"
    );

    // The lock stays: nobody deploys over a node in an unknown state.
    assert!(sys.exists(&host, LOCK));
    std::fs::remove_file(state.join("fail-1")).expect("knob");
    std::fs::remove_file(state.join("break-ssh-on-switch")).expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
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
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    // Installing the boot entry of generation 2 fails (e.g. a full /boot).
    std::fs::write(sys.state(&host).join("fail-2-boot"), "").expect("knob");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--rollback-grace", "30"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("FAILED")
            && row.contains("[boot-default]")
            && row.contains("a reboot would return to")
            && row.contains(&gen_path(1)),
        "{row}"
    );
    // Confirmed (no rollback), running 2, still booting 1.
    assert_eq!(sys.activations(&host), ["2 test", "2 boot"]);
    let (running, _, boot) = sys.generations(&host);
    assert_eq!((running.as_str(), boot.as_str()), ("2", "1"));
    assert!(!sys.exists(&host, LOCK));
    // And a reboot does return to it.
    sys.reboot(&host);
    assert_eq!(
        sys.readlink(&host, "/run/current-system"),
        Some(gen_path(1))
    );
}

#[test]
fn a_failed_activation_rolls_back_at_once_and_says_how_that_ended() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let state = sys.state(&host);
    std::fs::write(state.join("fail-2-test"), "").expect("knob");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &sys,
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
    assert_eq!(sys.activations(&host), ["2 test", "1 test"]);
    assert_eq!(sys.generations(&host), all_on("1"));
    assert!(!sys.exists(&host, LOCK));
    let journal = units_journal(&sys, &host);
    assert!(
        !journal
            .iter()
            .any(|l| l.starts_with("Started fleetnix-rollback-") && l.contains(".service")),
        "the timer never fired: {journal:#?}"
    );

    // The same with an old generation that cannot be re-activated: rollback FAILED.
    std::fs::write(state.join("fail-3-test"), "").expect("knob");
    std::fs::write(state.join("fail-1"), "").expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
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
    let r = Ran::of(&mut deploy_cmd(&sys, root.path(), &["n1"]));
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
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let state = sys.state(&host);
    // Activation kills the host's sshd listener: the shared connection's session survives
    // that, only a NEW connection fails. The guard must roll back all the same.
    std::fs::write(state.join("break-ssh-on-switch"), "").expect("marker");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 2, false);

    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--rollback-grace", "5", "--ssh-multiplex"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.row("n1").contains("rolled back"), "{r}");
    assert_eq!(sys.activations(&host), ["2 test", "1 test"]);
    assert_eq!(sys.generations(&host), all_on("1"));

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
