//! `fleetnix::health::watch` driven as a library: a recording sink, the fake `tailscale`
//! (through a wrapper, so the process environment is untouched), loopback listeners for the
//! service ports and the ntfy stand-in. The sink changes the tailnet between sweeps, so the
//! sequence is exact without any sleep.

mod common;
mod health_common;

use common::fake_tailscale_reporting;
use fleetnix::health::alert::{Alerter, Ntfy};
use fleetnix::health::{watch, NodeState, WatchEvent, WatchOptions};
use fleetnix::tailscale::Tailscale;
use health_common::*;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::time::Duration;

const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// What the sink saw, owned.
#[derive(Debug, PartialEq)]
enum Seen {
    AlertFailed(usize),
    Sweep(
        Vec<(String, NodeState)>,
        Vec<(String, Option<NodeState>, NodeState)>,
    ),
    NoTailnet(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tracks_states_alerts_and_survives_a_lost_tailnet() {
    let (a, _ha) = open_listener(LO, 0).await;
    let (b, _hb) = open_listener(LO, 0).await;
    let stub = NtfyStub::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let fleet = write_fleet(
        &dir.path().join("fleet"),
        &[
            N::new("cp", "100.64.1.1", &["control-plane", "ra"]),
            N::new("worker-02", "100.64.1.3", &["rb"]),
        ],
        &[("sa", a.port(), "ra"), ("sb", b.port(), "rb")],
        1,
        "round_robin",
    );
    let status = dir.path().join("status.json");
    let write = |online: &[&str], offline: &[&str]| {
        let tmp = dir.path().join("status.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_string(&tailnet(&fleet, online, offline)).unwrap(),
        )
        .unwrap();
        std::fs::rename(&tmp, &status).unwrap();
    };
    write(&["cp", "worker-02"], &[]);

    let mut opts = WatchOptions::new(&fleet, Duration::from_millis(10));
    opts.count = Some(5);
    opts.tailscale = Some(Tailscale {
        bin: fake_tailscale_reporting(&dir.path().join("tailscale"), &status),
        timeout: Duration::from_secs(10),
    });
    for n in &fleet.nodes {
        opts.probe = opts.probe.with_address(n.name.clone(), LO);
    }
    opts.alerter = Some(Alerter::new(
        Ntfy::new(
            &stub.url(),
            &fleet.settings.ntfy.topic,
            None,
            Duration::from_secs(5),
        )
        .unwrap(),
    ));

    let mut seen: Vec<Seen> = Vec::new();
    let mut sweeps = 0;
    let mut sink = |e: WatchEvent<'_>| {
        match e {
            WatchEvent::AlertFailed { pending, .. } => {
                seen.push(Seen::AlertFailed(pending));
                return ControlFlow::Continue(());
            }
            WatchEvent::NoTailnet { error, .. } => seen.push(Seen::NoTailnet(error)),
            WatchEvent::Sweep {
                report,
                transitions,
                ..
            } => seen.push(Seen::Sweep(
                report
                    .nodes
                    .iter()
                    .map(|n| (n.name.to_string(), n.state))
                    .collect(),
                transitions
                    .iter()
                    .map(|t| (t.node.to_string(), t.from, t.to))
                    .collect(),
            )),
        }
        sweeps += 1;
        // The tailnet for the next sweep.
        match sweeps {
            1 => write(&["cp"], &["worker-02"]),
            2 => std::fs::remove_file(&status).unwrap(),
            3 => write(&["cp"], &["worker-02"]),
            4 => write(&["cp", "worker-02"], &[]),
            _ => {}
        }
        ControlFlow::Continue(())
    };
    let n = watch(&fleet, opts, &mut sink, std::future::pending()).await;
    assert_eq!(n, 5);

    use NodeState::{Down, Healthy};
    let both = |w2| vec![("cp".to_string(), Healthy), ("worker-02".to_string(), w2)];
    let w2 = |from, to| vec![("worker-02".to_string(), from, to)];
    assert_eq!(seen.len(), 6, "{seen:#?}");
    assert_eq!(
        seen[0],
        Seen::Sweep(
            both(Healthy),
            vec![
                ("cp".to_string(), None, Healthy),
                ("worker-02".to_string(), None, Healthy)
            ]
        )
    );
    // The down alert meets the stand-in's one 503: kept for the next sweep.
    assert_eq!(seen[1], Seen::AlertFailed(1));
    assert_eq!(seen[2], Seen::Sweep(both(Down), w2(Some(Healthy), Down)));
    match &seen[3] {
        Seen::NoTailnet(e) => assert!(e.contains("tailscaled"), "{e}"),
        other => panic!("expected no tailnet, got {other:?}"),
    }
    // States survived the gap: still down is no transition.
    assert_eq!(seen[4], Seen::Sweep(both(Down), vec![]));
    assert_eq!(seen[5], Seen::Sweep(both(Healthy), w2(Some(Down), Healthy)));
    let titles: Vec<String> = stub
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.headers["x-title"].clone())
        .collect();
    assert_eq!(
        titles,
        [
            "fleetnix: worker-02 is down",
            "fleetnix: worker-02 recovered"
        ]
    );
    assert_eq!(stub.received.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn watch_stops_when_the_sink_breaks_or_stop_fires() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = write_fleet(
        &dir.path().join("fleet"),
        &[N::new("cp", "100.64.1.1", &["control-plane"])],
        &[],
        1,
        "round_robin",
    );
    let status = dir.path().join("status.json");
    std::fs::write(
        &status,
        serde_json::to_string(&tailnet(&fleet, &["cp"], &[])).unwrap(),
    )
    .unwrap();
    let opts = || {
        let mut o = WatchOptions::new(&fleet, Duration::from_millis(10));
        o.tailscale = Some(Tailscale {
            bin: fake_tailscale_reporting(&dir.path().join("tailscale"), &status),
            timeout: Duration::from_secs(10),
        });
        o
    };
    // The sink breaks on its third event (e.g. stdout closed).
    let mut events = 0;
    let mut sink = |_e: WatchEvent<'_>| {
        events += 1;
        if events == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    assert_eq!(
        watch(&fleet, opts(), &mut sink, std::future::pending()).await,
        3
    );
    // A stop that has already fired ends the watch after the sweep in progress.
    let mut events = 0;
    let mut sink = |_e: WatchEvent<'_>| {
        events += 1;
        ControlFlow::Continue(())
    };
    assert_eq!(
        watch(&fleet, opts(), &mut sink, std::future::ready(())).await,
        1
    );
    assert_eq!(events, 1);
}

/// The router's view in a watch: read on every sweep next to the probes; a bus that never
/// answers costs a sweep at most the probe timeout (plus the backstop) and is reported missing,
/// while the probes' states stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reads_the_routers_view_each_sweep_and_bounds_a_silent_bus() {
    use fleetnix::health::router::RouterRead;
    use fleetnix::health::{RouterEntry, RouterSource, RouterStatus};
    use fleetnix::model::NodeName;

    /// Answers the first read with one entry; never answers after that.
    struct FirstOnly(u32);
    impl RouterSource for FirstOnly {
        fn read(&mut self) -> RouterRead<'_> {
            self.0 += 1;
            if self.0 > 1 {
                return Box::pin(std::future::pending());
            }
            Box::pin(async {
                Ok(vec![RouterEntry {
                    node: NodeName::parse("worker-02").unwrap(),
                    state: NodeState::Down,
                    reason: Some("no heartbeat for 9.6s".into()),
                    since: "2026-12-04T10:00:00.000Z".into(),
                    last_heartbeat: Some("2026-12-04T10:00:00.000Z".into()),
                    in_flight: 2,
                    capacity: 4,
                    draining: true,
                }])
            })
        }
    }

    let (a, _ha) = open_listener(LO, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let fleet = write_fleet(
        &dir.path().join("fleet"),
        &[
            N::new("cp", "100.64.1.1", &["control-plane", "ra"]),
            N::new("worker-02", "100.64.1.3", &["ra"]),
        ],
        &[("sa", a.port(), "ra")],
        1,
        "round_robin",
    );
    let status = dir.path().join("status.json");
    std::fs::write(
        &status,
        serde_json::to_string(&tailnet(&fleet, &["cp", "worker-02"], &[])).unwrap(),
    )
    .unwrap();
    let mut opts = WatchOptions::new(&fleet, Duration::from_millis(10));
    opts.count = Some(2);
    opts.tailscale = Some(Tailscale {
        bin: fake_tailscale_reporting(&dir.path().join("tailscale"), &status),
        timeout: Duration::from_secs(10),
    });
    for n in &fleet.nodes {
        opts.probe = opts.probe.with_address(n.name.clone(), LO);
    }
    opts.router = Some(Box::new(FirstOnly(0)));
    let mut reports = Vec::new();
    let mut sink = |e: WatchEvent<'_>| {
        if let WatchEvent::Sweep { report, .. } = e {
            reports.push(report.clone());
        }
        ControlFlow::Continue(())
    };
    // A guard, not a measurement: a watch that waited for the silent bus would never end.
    let n = tokio::time::timeout(
        Duration::from_secs(30),
        watch(&fleet, opts, &mut sink, std::future::pending()),
    )
    .await
    .expect("the watch waited for a silent bus");
    assert_eq!(n, 2);
    assert_eq!(reports.len(), 2);
    let first = &reports[0];
    assert_eq!(first.router_view, RouterStatus::Read);
    let w = first
        .nodes
        .iter()
        .find(|x| x.name.as_str() == "worker-02")
        .unwrap();
    assert_eq!(w.state, NodeState::Healthy, "the verdict stays the probes'");
    let r = w.router.as_ref().unwrap();
    assert_eq!(
        (r.state, r.in_flight, r.capacity, r.draining),
        (NodeState::Down, 2, 4, true)
    );
    assert_eq!(
        r.disagreement(w.state).as_deref(),
        Some("router: down (no heartbeat for 9.6s)")
    );
    assert!(first
        .nodes
        .iter()
        .find(|x| x.name.as_str() == "cp")
        .unwrap()
        .router
        .is_none());
    let second = &reports[1];
    match &second.router_view {
        RouterStatus::Missing(why) => assert!(why.contains("did not arrive within"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(second
        .nodes
        .iter()
        .all(|x| x.router.is_none() && x.state == NodeState::Healthy));
}
