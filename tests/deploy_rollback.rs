//! The rollback guard of `switch`, end to end on a namespace host with fake generations
//! (`switch-to-configuration` records calls) and a fake systemd-run/systemctl (no systemd there).

mod common;

use common::netns::Net;
use common::*;
use std::time::Duration;

fn profile(net: &Net, name: &str) -> String {
    let p = net.dir().join(format!("profiles-{name}/system"));
    std::fs::read_link(p)
        .expect("profile link")
        .display()
        .to_string()
}

#[test]
fn reconnect_failure_after_activation_rolls_back_to_the_previous_generation() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let state = state_dir(&net, "n1");
    // The new generation cuts SSH off when activated.
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
    assert!(
        row.contains("rolled back") && row.contains("system-1-link"),
        "{row}"
    );

    // The guard fires on the node and reactivates generation 1.
    wait_for(
        "the guard to reactivate generation 1",
        Duration::from_secs(20),
        || lines(&state.join("activations")).contains(&"1 switch".to_string()),
    );
    assert_eq!(
        lines(&state.join("activations")),
        ["2 boot", "2 switch", "1 switch"]
    );
    assert_eq!(profile(&net, "n1"), "system-1-link");
    let log = std::fs::read_to_string(state.join("systemd.log")).expect("systemd log");
    assert!(log.contains("on-active=5 /bin/sh -c"), "{log}");
    assert!(log.contains("fired fleetnix-rollback"), "{log}");
}

#[test]
fn confirmed_switch_disarms_the_guard() {
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
    assert_eq!(lines(&state.join("activations")), ["2 boot", "2 switch"]);
    assert_eq!(profile(&net, "n1"), "system-2-link");
    // Armed before activation, stopped after: the timer job is gone.
    let log = lines(&state.join("systemd.log"));
    let armed = log
        .iter()
        .position(|l| l.contains("on-active=30"))
        .expect("armed");
    let activated = log
        .iter()
        .position(|l| l.contains("unit=fleetnix-activate"))
        .expect("activated");
    let stopped = log
        .iter()
        .rposition(|l| l == "systemctl stop fleetnix-rollback.timer")
        .expect("disarmed");
    assert!(armed < activated && activated < stopped, "{log:?}");
    assert!(!state.join("units/fleetnix-rollback.timer").exists());

    // --no-rollback: plain `nixos-rebuild switch`, no guard.
    let r = Ran::of(&mut deploy_cmd(&net, root.path(), &["n1", "--no-rollback"]));
    assert_eq!(r.code, Some(0), "{r}");
    let argv = lines(&root.path().join("rec/nixos-rebuild.n1.argv"));
    assert_eq!(argv[0], "switch");
    assert_eq!(
        lines(&state.join("activations")),
        ["2 boot", "2 switch", "3 switch"]
    );
    assert_eq!(
        lines(&state.join("systemd.log")).len(),
        log.len(),
        "no guard calls"
    );
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
    wait_for(
        "the guard to reactivate generation 1",
        Duration::from_secs(20),
        || lines(&state.join("activations")).contains(&"1 switch".to_string()),
    );
    assert_eq!(profile(&net, "n1"), "system-1-link");

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
    // The confirmation: the shared connection is closed first, then only new connections.
    let confirm: Vec<_> = cmds.iter().filter(|(s, _)| s == "confirm").collect();
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
