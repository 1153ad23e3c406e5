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
        .position(|l| l == "systemctl stop fleetnix-rollback.timer")
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
