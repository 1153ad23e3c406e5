//! Routing: fairness of each strategy, healthy nodes only, failover on a failed node,
//! round-robin state shared between runs through `.fleetnix/`.

mod common;
mod health_common;

use assert_cmd::Command;
use common::{example_fleet_dir, fake_tailscale, status_fixture};
use fleetnix::bus::route::{RouteError, Router};
use fleetnix::health::{HealthReport, NodeHealth, NodeState, Presence};
use fleetnix::model::{FailoverStrategy, Fleet, NodeName};
use health_common::*;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn name(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}

fn fleet(dir: &std::path::Path, strategy: &str) -> Fleet {
    write_fleet(
        dir,
        &[
            N::new("cp", "100.64.1.1", &["control-plane"]).cpu(8),
            N::new("big", "100.64.1.2", &["glm-worker"]).cpu(8),
            N::new("mid", "100.64.1.3", &["glm-worker", "kg-writer"]),
            N::new("small", "100.64.1.4", &["glm-worker"]),
            N::new("sick", "100.64.1.5", &["glm-worker"]).cpu(16),
            N::new("gone", "100.64.1.6", &["glm-worker"]).cpu(16),
        ],
        &[],
        1,
        strategy,
    )
}

fn health(f: &Fleet, states: &[(&str, NodeState)]) -> HealthReport {
    HealthReport {
        nodes: f
            .nodes
            .iter()
            .map(|n| NodeHealth {
                name: n.name.clone(),
                address: IpAddr::from([127, 0, 0, 1]),
                presence: Presence::Online,
                state: states
                    .iter()
                    .find(|(s, _)| *s == n.name.as_str())
                    .map(|(_, st)| *st)
                    .unwrap_or(NodeState::Healthy),
                probes: vec![],
                reason: None,
                router: None,
            })
            .collect(),
        router_view: Default::default(),
    }
}

fn usual(f: &Fleet) -> HealthReport {
    health(
        f,
        &[("sick", NodeState::Degraded), ("gone", NodeState::Down)],
    )
}

fn counts(picks: &[NodeName]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for p in picks {
        *m.entry(p.as_str()).or_insert(0) += 1;
    }
    m
}

#[test]
fn round_robin_is_fair_and_skips_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), "round_robin");
    let h = usual(&f);
    let r = Router::new(&f);
    assert_eq!(r.strategy(), FailoverStrategy::RoundRobin);
    let picks: Vec<NodeName> = (0..300)
        .map(|_| r.route("glm-worker", &h).unwrap().node().clone())
        .collect();
    assert_eq!(
        counts(&picks),
        BTreeMap::from([("big", 100), ("mid", 100), ("small", 100)])
    );
    assert_eq!(
        &picks[..4],
        &[name("big"), name("mid"), name("small"), name("big")]
    );
    assert_eq!(picks[299].as_str(), "small");
    assert_eq!(r.route("glm-worker", &h).unwrap().node().as_str(), "big");
    let route = r.route("glm-worker", &h).unwrap();
    assert_eq!(
        route.skipped,
        [
            (name("gone"), "down".into()),
            (name("sick"), "degraded".into())
        ]
    );
    // Failover order: the rest of the rotation.
    assert_eq!(route.order, [name("mid"), name("small"), name("big")]);
}

#[test]
fn round_robin_state_persists_between_routers() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(&dir.path().join("fleet"), "round_robin");
    let h = usual(&f);
    let state = dir.path().join(".fleetnix");
    let picks: Vec<String> = (0..4)
        .map(|_| {
            Router::new(&f)
                .with_state_dir(&state)
                .route("glm-worker", &h)
                .unwrap()
                .node()
                .to_string()
        })
        .collect();
    assert_eq!(picks, ["big", "mid", "small", "big"]);
    let text = std::fs::read_to_string(state.join("route-state.json")).unwrap();
    assert_eq!(text, "{\n  \"glm-worker\": \"big\"\n}\n");
    // A node that became unhealthy is skipped; the rotation continues after it.
    let h2 = health(
        &f,
        &[
            ("mid", NodeState::Down),
            ("sick", NodeState::Down),
            ("gone", NodeState::Down),
        ],
    );
    let r = Router::new(&f).with_state_dir(&state);
    assert_eq!(r.route("glm-worker", &h2).unwrap().node().as_str(), "small");
    assert_eq!(r.route("glm-worker", &h2).unwrap().node().as_str(), "big");
}

#[test]
fn random_is_fair_and_skips_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), "random");
    let h = usual(&f);
    let r = Router::new(&f).with_seed(7);
    let picks: Vec<NodeName> = (0..3000)
        .map(|_| r.route("glm-worker", &h).unwrap().node().clone())
        .collect();
    let c = counts(&picks);
    assert_eq!(c.len(), 3, "{c:?}");
    for (n, k) in &c {
        assert!((850..=1150).contains(k), "{n} got {k} of 3000");
    }
}

#[test]
fn least_loaded_follows_capacity_and_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), "least_loaded");
    let h = usual(&f);
    let r = Router::new(&f);
    // Idle: the biggest healthy node first (sick and gone have 16 cores but are unhealthy).
    assert_eq!(r.route("glm-worker", &h).unwrap().node().as_str(), "big");
    // Hold 16 tasks open: they spread in proportion to the cores (8:4:4).
    let leases: Vec<_> = (0..16)
        .map(|_| {
            let n = r.route("glm-worker", &h).unwrap().node().clone();
            r.lease(&n)
        })
        .collect();
    let inf = r.in_flight();
    assert_eq!(inf[&name("big")], 8);
    assert_eq!(inf[&name("mid")], 4);
    assert_eq!(inf[&name("small")], 4);
    drop(leases);
    assert!(r.in_flight().values().all(|c| *c == 0));
    // Counts from outside (a supervisor's bookkeeping) are honoured.
    r.set_in_flight(&name("big"), 9);
    r.set_in_flight(&name("mid"), 1);
    assert_eq!(
        r.route("glm-worker", &h).unwrap().order,
        [name("small"), name("mid"), name("big")]
    );
}

#[tokio::test]
async fn dispatch_fails_over_to_the_next_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), "round_robin");
    let h = usual(&f);
    let r = Router::new(&f);
    let mut tried = Vec::new();
    let (node, v) = r
        .dispatch("glm-worker", &h, |n: NodeName| {
            tried.push(n.to_string());
            async move {
                if n.as_str() == "big" {
                    Err("no answer within 1s")
                } else {
                    Ok(42)
                }
            }
        })
        .await
        .unwrap();
    assert_eq!((node.as_str(), v), ("mid", 42));
    assert_eq!(tried, ["big", "mid"]);
    // The rotation continues after the node that took the task.
    assert_eq!(r.route("glm-worker", &h).unwrap().node().as_str(), "small");

    // All fail: each healthy candidate tried exactly once.
    let e = r
        .dispatch("glm-worker", &h, |_n| async { Err::<(), _>("boom") })
        .await
        .unwrap_err();
    match e {
        RouteError::AllFailed { failures, .. } => {
            let mut names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            assert_eq!(names, ["big", "mid", "small"]);
        }
        other => panic!("{other}"),
    }

    // Without retry_on_node_failure: one attempt only.
    let r = Router::new(&f).with_retry(false);
    let e = r
        .dispatch("glm-worker", &h, |_n| async { Err::<(), _>("boom") })
        .await
        .unwrap_err();
    assert!(
        matches!(e, RouteError::AllFailed { ref failures, .. } if failures.len() == 1),
        "{e}"
    );
}

#[tokio::test]
async fn dispatch_counts_in_flight_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), "least_loaded");
    let h = usual(&f);
    let r = Router::new(&f);
    let (node, seen) = r
        .dispatch("kg-writer", &h, |n| {
            let inf = r.in_flight();
            async move { Ok::<_, String>(inf.get(&n).copied()) }
        })
        .await
        .unwrap();
    assert_eq!(node.as_str(), "mid");
    assert_eq!(seen, Some(1));
    assert_eq!(r.in_flight()[&name("mid")], 0);
}

#[test]
fn no_healthy_node_and_unknown_role_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), "round_robin");
    let h = health(&f, &[("mid", NodeState::Down)]);
    let e = Router::new(&f).route("kg-writer", &h).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no healthy node for role \"kg-writer\": mid (down)"
    );
    let e = Router::new(&f).route("gpu", &h).unwrap_err();
    assert!(matches!(e, RouteError::UnknownRole { .. }));
    assert!(e.to_string().contains("glm-worker, kg-writer"), "{e}");
}

#[test]
fn cli_route_rotates_and_skips_offline_nodes() {
    let root = tempfile::tempdir().unwrap();
    let fixture = status_fixture();
    let run = |status: &std::path::Path| {
        let out = Command::cargo_bin("fleetnix")
            .unwrap()
            .arg("--root")
            .arg(root.path())
            .arg("--fleet-dir")
            .arg(example_fleet_dir())
            .args(["route", "glm-worker"])
            .env("FLEETNIX_TAILSCALE", fake_tailscale())
            .env("FAKE_TAILSCALE_STATUS", status)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // glm-worker nodes (worker-01, worker-02) host no service ports: tailnet presence decides.
    assert_eq!(run(&fixture).1, "worker-01\n");
    assert_eq!(run(&fixture).1, "worker-02\n");
    assert_eq!(run(&fixture).1, "worker-01\n");
    assert!(root.path().join(".fleetnix/route-state.json").exists());

    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    for p in v["Peer"].as_object_mut().unwrap().values_mut() {
        if p["HostName"] == "worker-02" {
            p["Online"] = false.into();
        }
    }
    let offline = root.path().join("w2-offline.json");
    std::fs::write(&offline, v.to_string()).unwrap();
    assert_eq!(run(&offline).1, "worker-01\n");
    assert_eq!(run(&offline).1, "worker-01\n");

    for p in v["Peer"].as_object_mut().unwrap().values_mut() {
        p["Online"] = false.into();
    }
    std::fs::write(&offline, v.to_string()).unwrap();
    let (code, out, err) = run(&offline);
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert!(
        err.contains("no healthy node for role \"glm-worker\": worker-01 (down), worker-02 (down)"),
        "{err}"
    );
}

#[test]
fn route_with_takes_health_from_a_predicate_and_keeps_the_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), "round_robin");
    let router = Router::new(&f).with_state_dir(dir.path().join(".fleetnix"));
    let down = |n: &str| (n == "gone" || n == "sick").then(|| "down".to_string());
    let first = router.route_with("glm-worker", down).unwrap();
    assert_eq!(first.order, [name("big"), name("mid"), name("small")]);
    assert_eq!(first.skipped.len(), 2);
    let second = router.route_with("glm-worker", down).unwrap();
    assert_eq!(second.order, [name("mid"), name("small"), name("big")]);
    let err = router
        .route_with("glm-worker", |_| Some("down".into()))
        .unwrap_err();
    assert!(matches!(err, RouteError::NoHealthyNode { .. }), "{err:?}");
}
