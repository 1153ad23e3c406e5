//! The router (`fleetnix::bus::router`) and the registry (`node sync`) on a real nats-server running
//! the configuration fleetnix renders (JetStream on, the router's and the nodes' users), with
//! workers that follow the bus contract (heartbeats included).

mod bus_support;
mod common;

use bus_support::{node_of, Behaviour, NatsServer, RouterFixture, Worker};
use common::{copy_example_fleet, example_fleet, fleetnix_bin, poll_async};
use fleetnix::bus;
use fleetnix::bus::registry::{self, SyncAction};
use fleetnix::bus::router::{self, Answer, RouterConfig};
use fleetnix::bus::users::Service;
use fleetnix::model::FailoverStrategy;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Heartbeat period of the test workers.
const BEAT: Duration = Duration::from_millis(100);
/// The router's node timeout in these tests.
const TIMEOUT: Duration = Duration::from_millis(800);

/// Two heart-beating workers of `glm-worker`, healthy in `fleet-health`: worker-01 behaving as
/// `first`, worker-02 answering.
async fn two_workers(b: &RouterFixture, first: Behaviour) -> [Worker; 2] {
    let w = b
        .healthy_workers(
            "glm-worker",
            &[
                ("worker-01", first, &[]),
                ("worker-02", Behaviour::Answer, &[]),
            ],
        )
        .await;
    // Invariant of the helper: one worker per spec, in order.
    w.try_into().unwrap_or_else(|_| unreachable!())
}

/// The example fleet registered and a router (default lanes) with `strategy` and `retry`.
async fn setup(strategy: FailoverStrategy, retry: bool) -> RouterFixture {
    RouterFixture::start(RouterConfig::new(strategy, retry, TIMEOUT), BEAT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sync_is_idempotent_removes_departed_nodes_and_workers_cannot_touch_the_registry() {
    let fleet = example_fleet();
    let server = NatsServer::start(&fleet);
    // node sync's own user, `_registry`.
    let registry_client = server.connect_registry().await;
    let js = async_nats::jetstream::new(registry_client);
    let first = registry::sync(&js, &fleet).await.unwrap();
    let lines: Vec<String> = first.lines.iter().map(|l| l.to_string()).collect();
    assert_eq!(
        lines,
        [
            "Registered: control-01 (4 roles)",
            "Registered: worker-01 (2 roles)",
            "Registered: worker-02 (2 roles)",
        ]
    );
    let kv = js.get_key_value(bus::NODES_BUCKET).await.unwrap();
    let before = kv.status().await.unwrap().info.state.last_sequence;
    let record: registry::NodeRecord =
        serde_json::from_slice(&kv.get("worker-01").await.unwrap().unwrap()).unwrap();
    assert_eq!(record.roles, ["glm-worker", "kg-writer"]);
    assert_eq!(record.models, ["glm-4.5-air"]);
    assert_eq!(record.address.to_string(), "100.64.0.2");

    // Again: nothing changes, not even the bucket's sequence.
    let second = registry::sync(&js, &fleet).await.unwrap();
    assert!(!second.changed());
    assert!(second
        .lines
        .iter()
        .all(|l| l.action == SyncAction::Unchanged));
    assert_eq!(kv.status().await.unwrap().info.state.last_sequence, before);

    // The CLI says the same, with the password only in its environment.
    let out = tokio::process::Command::new(fleetnix_bin())
        .args([
            "--root",
            env!("CARGO_MANIFEST_DIR"),
            "node",
            "sync",
            "--nats-url",
            &server.url,
        ])
        .env(
            "FLEETNIX_NATS_PASSWORD",
            server.service_password(Service::Registry).expose(),
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Unchanged: control-01 (4 roles)"),
        "{stdout}"
    );
    assert!(stdout.contains("fleet-nodes: nothing changed"), "{stdout}");

    // worker-02 leaves the manifest (it is the last node of nodes.yml).
    let dir = tempfile::tempdir().unwrap();
    copy_example_fleet(dir.path());
    let nodes = dir.path().join("nodes.yml");
    let text = std::fs::read_to_string(&nodes).unwrap();
    let cut = text.find("  - name: worker-02").unwrap();
    std::fs::write(&nodes, &text[..cut]).unwrap();
    let smaller = fleetnix::manifest::load(dir.path()).unwrap();
    let third = registry::sync(&js, &smaller).await.unwrap();
    let removed: Vec<String> = third
        .lines
        .iter()
        .filter(|l| l.action != SyncAction::Unchanged)
        .map(|l| l.to_string())
        .collect();
    assert_eq!(removed, ["Removed: worker-02"]);
    assert!(kv.get("worker-02").await.unwrap().is_none());
    let (left, bad) = registry::load(&kv).await.unwrap();
    assert!(bad.is_empty());
    assert_eq!(
        left.keys().map(String::as_str).collect::<Vec<_>>(),
        ["control-01", "worker-01"]
    );

    // A worker can neither read nor write the registry: the server refuses.
    let (w1, errors) = server.connect_watching("worker-01").await;
    let wjs = async_nats::jetstream::new(w1.clone());
    assert!(wjs.get_key_value(bus::NODES_BUCKET).await.is_err());
    errors
        .wait_for("Publish to \"$JS.API.STREAM.INFO.KV_fleet-nodes\"")
        .await;
    w1.publish("$KV.fleet-nodes.worker-01", "{}".into())
        .await
        .unwrap();
    w1.flush().await.unwrap();
    errors
        .wait_for("Publish to \"$KV.fleet-nodes.worker-01\"")
        .await;
    assert!(w1.subscribe("$KV.fleet-nodes.>").await.is_ok_and(|_| true));
    w1.flush().await.unwrap();
    errors
        .wait_for("Subscription to \"$KV.fleet-nodes.>\"")
        .await;
    // Nor can it ask the router.
    w1.publish("fleet.dispatch.glm-worker", "{}".into())
        .await
        .unwrap();
    w1.flush().await.unwrap();
    errors
        .wait_for("Publish to \"fleet.dispatch.glm-worker\"")
        .await;
    // The record is untouched.
    let again: registry::NodeRecord =
        serde_json::from_slice(&kv.get("worker-01").await.unwrap().unwrap()).unwrap();
    assert_eq!(again, record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_tasks_and_a_killed_worker_loses_its_share_at_once() {
    let b = setup(FailoverStrategy::RoundRobin, true).await;
    let [w1, w2] = two_workers(&b, Behaviour::Answer).await;

    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut order = Vec::new();
    for _ in 0..20 {
        let a = b.ask("glm-worker", None).await;
        let n = node_of(&a);
        order.push(n.clone());
        *by_node.entry(n).or_default() += 1;
    }
    // Round robin: strictly alternating, 10 each.
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    assert_eq!(by_node.values().copied().collect::<Vec<_>>(), [10, 10]);
    assert_eq!((w1.count(), w2.count()), (10, 10));

    // Kill worker-01: every following task is answered by worker-02, the first within one
    // node timeout (its attempt on worker-01 costs nothing: nobody is subscribed there).
    let killed_at = Instant::now();
    let w1_final = w1.kill().await;
    for i in 0..10 {
        let start = Instant::now();
        let a = b.ask("glm-worker", None).await;
        assert_eq!(node_of(&a), "worker-02", "task {i}");
        assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    }
    assert_eq!(w2.count(), 20);
    // Its heartbeats stopped too: degraded within the node timeout (plus a tick and a poll).
    let e = b.wait_state("worker-01", "degraded", TIMEOUT * 2).await;
    assert!(
        killed_at.elapsed() < TIMEOUT * 3,
        "{:?}",
        killed_at.elapsed()
    );
    assert!(e.reason.is_some(), "{e:?}");
    assert_eq!(w1_final, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lanes_share_one_rotation_and_each_fails_over() {
    let two_lanes = || {
        let mut config = RouterConfig::new(FailoverStrategy::RoundRobin, true, TIMEOUT);
        config.lanes = 2;
        config
    };
    let b = RouterFixture::start(two_lanes(), BEAT).await;
    let [w1, w2] = two_workers(&b, Behaviour::Answer).await;
    // One after another: the server spreads the requests over both lanes (queue group), and
    // the rotation is still strict, because the lanes share one view.
    let mut order = Vec::new();
    for _ in 0..40 {
        order.push(node_of(&b.ask("glm-worker", None).await));
    }
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    assert_eq!((w1.count(), w2.count()), (20, 20));
    let lanes = b.router.lane_stats();
    assert_eq!(lanes.len(), 2);
    assert!(lanes.iter().all(|l| l.requests > 0), "{lanes:?}");
    assert_eq!(lanes.iter().map(|l| l.requests).sum::<u64>(), 40);
    assert!(lanes.iter().all(|l| l.retries == 0), "{lanes:?}");
    drop((w1, w2, b));

    // worker-01 takes tasks and hangs: 64 tasks at once, spread over both lanes. Round robin
    // sends every other one to worker-01 first (it is marked failed only after its timeout);
    // each of those is retried on worker-02 by the lane that took it, within one timeout.
    let b = RouterFixture::start(two_lanes(), BEAT).await;
    let [hung, ok] = two_workers(&b, Behaviour::Hang).await;
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..64).map(|_| b.ask("glm-worker", None))).await;
    let took = started.elapsed();
    let mut failed_over = 0;
    for a in &answers {
        assert_eq!(node_of(a), "worker-02");
        if let Answer::Done { attempts, .. } = a {
            assert!(*attempts == 1 || *attempts == 2, "{a:?}");
            failed_over += u64::from(*attempts == 2);
        }
    }
    assert!(
        failed_over >= 16,
        "only {failed_over} of 64 went to worker-01 first"
    );
    assert_eq!(hung.count() as u64, failed_over);
    assert_eq!(ok.count(), 64);
    assert!(took >= TIMEOUT && took < TIMEOUT * 3, "{took:?}");
    let lanes = b.router.lane_stats();
    assert_eq!(lanes.iter().map(|l| l.retries).sum::<u64>(), failed_over);
    assert!(
        lanes.iter().all(|l| l.requests > 0 && l.retries > 0),
        "{lanes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_heartbeating_is_degraded_and_gets_no_new_task() {
    let b = setup(FailoverStrategy::RoundRobin, true).await;
    let [mut w1, w2] = two_workers(&b, Behaviour::Answer).await;
    // Its agent's heartbeat stops; it still answers tasks (its ports and subscription are fine).
    w1.stop_heartbeats();
    let stopped = Instant::now();
    let e = b.wait_state("worker-01", "degraded", TIMEOUT * 3).await;
    let took = stopped.elapsed();
    assert!(
        took >= TIMEOUT - BEAT,
        "degraded after {took:?}, before the node timeout"
    );
    assert!(
        e.reason.as_deref().unwrap().contains("no heartbeat for"),
        "{e:?}"
    );
    let before = w1.count();
    for _ in 0..8 {
        assert_eq!(node_of(&b.ask("glm-worker", None).await), "worker-02");
    }
    assert_eq!(w1.count(), before);
    assert_eq!(w2.count(), 8);
    // Heart-beating again makes it healthy and it gets tasks again.
    w1.heartbeat("worker-01", BEAT, &[]);
    b.wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(node_of(&b.ask("glm-worker", None).await));
    }
    assert!(seen.iter().any(|n| n == "worker-01"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_a_hung_worker_is_failed_over_within_one_timeout() {
    let b = setup(FailoverStrategy::RoundRobin, true).await;
    // A role no node has.
    match b.ask("no-such-role", None).await {
        Answer::Failed(e) => {
            assert_eq!(e.code, "no-such-role");
            assert!(
                e.error.contains("no node has role \"no-such-role\""),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A role whose node has no live agent.
    match b.ask("kg-writer", None).await {
        Answer::Failed(e) => {
            assert_eq!(e.code, "no-healthy-node");
            assert!(e.error.contains("worker-01"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // Not a role at all.
    let reply = b
        .supervisor
        .request("fleet.dispatch.Bad_Role", "{}".into())
        .await
        .unwrap();
    match router::read_answer(&reply) {
        Answer::Failed(e) => assert_eq!(e.code, "bad-request"),
        other => panic!("{other:?}"),
    }

    // worker-01 hangs, worker-02 answers: every task is answered by worker-02, a task that went
    // to worker-01 first within one timeout plus the answer.
    let [hung, _ok] = two_workers(&b, Behaviour::Hang).await;
    let mut failed_over = 0;
    for _ in 0..4 {
        let start = Instant::now();
        let a = b.ask("glm-worker", None).await;
        let took = start.elapsed();
        assert_eq!(node_of(&a), "worker-02");
        if let Answer::Done { attempts, .. } = a {
            if attempts == 2 {
                failed_over += 1;
                assert!(took >= TIMEOUT && took < TIMEOUT * 2, "{took:?}");
            } else {
                assert!(took < TIMEOUT, "{took:?}");
            }
        }
    }
    assert!(failed_over >= 1 && hung.count() == failed_over);

    // Without retry, a hung node's task fails after one timeout, naming the attempt.
    let b = setup(FailoverStrategy::RoundRobin, false).await;
    let _hung = b
        .healthy_workers("kg-writer", &[("worker-01", Behaviour::Hang, &[])])
        .await;
    match b.ask("kg-writer", None).await {
        Answer::Failed(e) => {
            assert_eq!(e.code, "all-failed");
            assert_eq!(e.attempts.len(), 1);
            assert!(
                e.error
                    .contains("worker-01 did not acknowledge the task within 0.8s"),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_model_is_honoured_when_a_node_has_it_and_ignored_otherwise() {
    let b = setup(FailoverStrategy::RoundRobin, true).await;
    // worker-01 lists glm-4.5-air in nodes.yml; worker-02 reports another model in heartbeats.
    let _workers = b
        .healthy_workers(
            "glm-worker",
            &[
                ("worker-01", Behaviour::Answer, &[]),
                ("worker-02", Behaviour::Answer, &["qwen3-8b"]),
            ],
        )
        .await;
    let e2 = b.health("worker-02").await.unwrap();
    assert_eq!(e2.models, ["qwen3-8b"]);
    for _ in 0..6 {
        assert_eq!(
            node_of(&b.ask("glm-worker", Some("glm-4.5-air")).await),
            "worker-01"
        );
    }
    for _ in 0..4 {
        assert_eq!(
            node_of(&b.ask("glm-worker", Some("qwen3-8b")).await),
            "worker-02"
        );
    }
    let spread: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(node_of(
                &b.ask("glm-worker", Some("nobody-serves-this")).await,
            ));
        }
        v
    };
    assert!(spread.windows(2).all(|w| w[0] != w[1]), "{spread:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_follows_reported_in_flight_and_a_lying_worker_is_named_as_what_it_is() {
    let b = setup(FailoverStrategy::LeastLoaded, true).await;
    // worker-01 impersonates worker-02 in its replies; worker-02 does not heartbeat by itself.
    let _w1 = b
        .worker(
            "worker-01",
            "glm-worker",
            Behaviour::Impersonate("worker-02"),
            &[],
        )
        .await;
    let _w2 = b
        .server
        .worker("worker-02", "glm-worker", Behaviour::Answer)
        .await;
    // worker-02's agent reports 3 running tasks, worker-01's none: worker-01 gets the task.
    let w2_client = b.server.connect("worker-02").await;
    let busy = fleetnix::bus::heartbeat::Beat::new(
        fleetnix::model::NodeName::parse("worker-02").unwrap(),
        4,
        vec![],
    );
    let _g: Vec<_> = (0..3).map(|_| busy.start_task()).collect();
    let beats = fleetnix::bus::heartbeat::spawn_heartbeats(w2_client.clone(), busy.clone(), BEAT);
    let e = b
        .wait_state("worker-02", "healthy", Duration::from_secs(5))
        .await;
    b.wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    let e = poll_async(Duration::from_secs(5), || async {
        b.health("worker-02").await.filter(|e| e.in_flight == 3)
    })
    .await
    .unwrap_or(e);
    assert_eq!(e.in_flight, 3);
    for _ in 0..5 {
        match b.ask("glm-worker", None).await {
            Answer::Done { node, claimed, .. } => {
                assert_eq!(node, "worker-01");
                // It said it was worker-02; the router reports the node it sent the task to.
                assert_eq!(claimed.as_deref(), Some("worker-02"));
            }
            Answer::Failed(e) => panic!("{e:?}"),
        }
    }
    beats.abort();
}

#[test]
fn show_lists_a_nodes_models() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(fleetnix_bin())
            .args(["--root", env!("CARGO_MANIFEST_DIR"), "show"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["worker-01"]).contains("models      glm-4.5-air\n"));
    assert!(!run(&["worker-02"]).contains("models"));
    let v: serde_json::Value = serde_json::from_str(&run(&["worker-01", "--json"])).unwrap();
    assert_eq!(v["models"], serde_json::json!(["glm-4.5-air"]));
}
