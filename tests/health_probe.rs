//! Health sweeps against loopback listeners: healthy, degraded (refused / silent port),
//! down (offline, missing, every port silent), all probes concurrent.

mod common;
mod health_common;

use fleetnix::health::{sweep, NodeState, PortOutcome, Presence, ProbeOptions, StateTracker};
use fleetnix::model::NodeName;
use health_common::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn name(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}

#[tokio::test]
async fn classifies_healthy_degraded_down_in_about_one_timeout() {
    let (a1, _h1) = open_listener(LO, 0).await;
    let (a2, _h2) = open_listener(LO, 0).await;
    let (b1, _h3) = open_listener(LO, 0).await;
    let b2 = closed_port(LO);
    let (c1, _h4) = open_listener(LO, 0).await;
    let c2 = silent_listener(LO, 0);
    let d1 = silent_listener(LO, 0);
    let d2 = silent_listener(LO, 0);
    let e1 = silent_listener(LO, 0);
    let f1 = silent_listener(LO, 0);

    let dir = tempfile::tempdir().unwrap();
    let fleet = write_fleet(
        dir.path(),
        &[
            N::new("cp", "100.64.1.1", &["control-plane", "ra"]),
            N::new("degraded-refused", "100.64.1.2", &["rb"]),
            N::new("degraded-silent", "100.64.1.3", &["rc"]),
            N::new("down-silent", "100.64.1.4", &["rd"]),
            N::new("down-offline", "100.64.1.5", &["re"]),
            N::new("down-missing", "100.64.1.6", &["rf"]),
            N::new("worker-noports", "100.64.1.7", &["rg"]),
        ],
        &[
            ("sa1", a1.port(), "ra"),
            ("sa2", a2.port(), "ra"),
            ("sb1", b1.port(), "rb"),
            ("sb2", b2, "rb"),
            ("sc1", c1.port(), "rc"),
            ("sc2", c2.addr.port(), "rc"),
            ("sd1", d1.addr.port(), "rd"),
            ("sd2", d2.addr.port(), "rd"),
            ("se1", e1.addr.port(), "re"),
            ("sf1", f1.addr.port(), "rf"),
        ],
        1,
        "round_robin",
    );
    let ts = tailnet(
        &fleet,
        &[
            "cp",
            "degraded-refused",
            "degraded-silent",
            "down-silent",
            "worker-noports",
        ],
        &["down-offline"],
    );
    let timeout = Duration::from_millis(700);
    let mut opts = ProbeOptions::for_fleet(&fleet).with_timeout(timeout);
    assert_eq!(opts.timeout, timeout);
    for n in &fleet.nodes {
        opts = opts.with_address(n.name.clone(), LO);
    }
    let t = Instant::now();
    let r = sweep(&fleet, Some(&ts), &opts).await;
    let took = t.elapsed();

    let st = |n: &str| r.nodes.iter().find(|x| x.name.as_str() == n).unwrap();
    assert_eq!(st("cp").state, NodeState::Healthy, "{:?}", st("cp"));
    assert_eq!(st("cp").probes.len(), 2);
    assert_eq!(st("degraded-refused").state, NodeState::Degraded);
    assert_eq!(
        st("degraded-refused").probes[1].outcome,
        PortOutcome::Refused
    );
    assert!(st("degraded-refused")
        .reason
        .as_deref()
        .unwrap()
        .contains("sb2"));
    assert_eq!(st("degraded-silent").state, NodeState::Degraded);
    assert_eq!(st("degraded-silent").probes[0].outcome, PortOutcome::Open);
    assert_eq!(
        st("degraded-silent").probes[1].outcome,
        PortOutcome::TimedOut
    );
    assert_eq!(st("down-silent").state, NodeState::Down);
    assert_eq!(st("down-silent").presence, Presence::Online);
    assert_eq!(st("down-offline").state, NodeState::Down);
    assert_eq!(st("down-offline").presence, Presence::Offline);
    assert!(
        st("down-offline").probes.is_empty(),
        "offline nodes are not probed"
    );
    assert_eq!(st("down-missing").state, NodeState::Down);
    assert_eq!(st("down-missing").presence, Presence::Missing);
    assert_eq!(st("worker-noports").state, NodeState::Healthy);
    // Sorted by name, deterministic.
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    // 3 silent probes run at once: one timeout, not three.
    assert!(took >= timeout, "silent ports must be waited for: {took:?}");
    assert!(
        took < timeout * 2,
        "probes must run concurrently: {took:?} for a {timeout:?} timeout"
    );
    assert_eq!(
        r.healthy(),
        [name("cp"), name("worker-noports")].into_iter().collect()
    );
    assert!(!r.all_healthy());
}

#[tokio::test]
async fn without_tailnet_state_ports_decide() {
    let (a1, _h) = open_listener(LO, 0).await;
    let s = silent_listener(LO, 0);
    let dir = tempfile::tempdir().unwrap();
    let fleet = write_fleet(
        dir.path(),
        &[
            N::new("cp", "100.64.1.1", &["control-plane", "ra"]),
            N::new("w", "100.64.1.2", &["rb"]),
        ],
        &[("sa", a1.port(), "ra"), ("sb", s.addr.port(), "rb")],
        1,
        "round_robin",
    );
    let opts = ProbeOptions::for_fleet(&fleet)
        .with_timeout(Duration::from_millis(300))
        .with_address(name("cp"), LO)
        .with_address(name("w"), LO);
    let r = sweep(&fleet, None, &opts).await;
    assert_eq!(r.state_of("cp"), Some(NodeState::Healthy));
    assert_eq!(r.state_of("w"), Some(NodeState::Down));
    assert_eq!(r.nodes[0].presence, Presence::Unknown);
    assert_eq!(r.nodes[0].address, LO);
}

#[test]
fn tracker_reports_changes_only() {
    use NodeState::*;
    let mut t = StateTracker::new();
    let first = t.update(&report(&[("a", Healthy), ("b", Down)]));
    assert_eq!(first.len(), 2);
    assert_eq!(first[1].from, None);
    assert!(t.update(&report(&[("a", Healthy), ("b", Down)])).is_empty());
    let ch = t.update(&report(&[("a", Degraded), ("b", Down)]));
    assert_eq!(ch.len(), 1);
    assert_eq!(
        (ch[0].node.as_str(), ch[0].from, ch[0].to),
        ("a", Some(Healthy), Degraded)
    );
}
