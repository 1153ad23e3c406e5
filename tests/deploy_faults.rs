//! Faults mid-run: of 5 hosts one loses its sshd and one its link while nixos-rebuild is about
//! to connect. The other 3 succeed, the summary names exactly the 2 failures and why, exit 1,
//! and the dead link fails within node_timeout_seconds + 2 s.

mod common;

use common::deploy::nixos_fleet;
use common::netns::Net;
use common::*;
use std::time::{Duration, Instant};

const TIMEOUT: u64 = 3;

#[test]
fn killed_sshd_and_dead_link_fail_alone_and_fast() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    let hosts = nixos_fleet(&mut net, root.path(), 5, TIMEOUT as u32);
    let go = root.path().join("go");
    let child = deploy_cmd(&net, root.path(), &["--all", "--action", "test"])
        .env("FAKE_REBUILD_WAIT_FOR", &go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleetnix starts");
    // Every node has connected once and is inside nixos-rebuild: now break two of them.
    let rec = root.path().join("rec");
    wait_for(
        "all 5 nodes to reach nixos-rebuild",
        Duration::from_secs(30),
        || (1..=5).all(|i| rec.join(format!("nixos-rebuild.n{i}.started")).exists()),
    );
    net.kill_sshd(&hosts[1]);
    net.link_down(&hosts[3]);
    std::fs::write(&go, "").expect("go");
    let released = Instant::now();
    let r = Ran::from(child.wait_with_output().expect("fleetnix finishes"));
    let elapsed = released.elapsed();
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        elapsed <= Duration::from_secs(TIMEOUT + 2),
        "the dead link took {elapsed:?} to fail (limit {TIMEOUT}s + 2s)\n{}",
        r.stdout
    );
    let row = |n: &str| r.row(n);
    for n in ["n1", "n3", "n5"] {
        assert!(row(n).contains(" ok "), "{}", row(n));
        let i: usize = n[1..].parse().expect("index");
        assert_eq!(
            lines(&state_dir(&net, n).join("activations")),
            ["2 test"],
            "host {i}"
        );
    }
    let n2 = row("n2");
    assert!(
        n2.contains("FAILED") && n2.contains("[rebuild]") && n2.contains("Connection refused"),
        "{n2}"
    );
    let n4 = row("n4");
    assert!(
        n4.contains("FAILED") && n4.contains("[rebuild]") && n4.contains("timed out"),
        "{n4}"
    );
    assert!(r.stdout.contains("3/5 node(s) succeeded"), "{r}");
    eprintln!("{}", r.stdout);
    for n in ["n2", "n4"] {
        assert!(lines(&state_dir(&net, n).join("activations")).is_empty());
    }
}
