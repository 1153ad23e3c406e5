//! The router (`fleetnix::router`) and the registry (`node sync`) on a real nats-server running
//! the configuration fleetnix renders (JetStream on, the router's and the nodes' users), with
//! workers that follow the bus contract (heartbeats included).

mod bus_support;
mod common;

use bus_support::{Behaviour, NatsServer, Worker};
use common::{copy_example_fleet, example_fleet, fleetnix_bin, poll_async};
use fleetnix::bus::registry::{self, SyncAction};
use fleetnix::bus::{self, dispatch as d};
use fleetnix::model::{FailoverStrategy, Role};
use fleetnix::router::{self, Answer, HealthEntry, RouterConfig, RouterHandle};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Heartbeat period of the test workers.
const BEAT: Duration = Duration::from_millis(100);
/// The router's node timeout in these tests.
const TIMEOUT: Duration = Duration::from_millis(800);

fn role(r: &str) -> Role {
    Role::parse(r).unwrap()
}

/// A server with the example fleet registered and a router running as its own user.
struct Bench {
    server: NatsServer,
    supervisor: async_nats::Client,
    _router: RouterHandle,
}

async fn setup(strategy: FailoverStrategy, retry: bool) -> Bench {
    let fleet = example_fleet();
    let server = NatsServer::start(&fleet);
    let supervisor = server.connect("control-01").await;
    let report = registry::sync(&async_nats::jetstream::new(supervisor.clone()), &fleet)
        .await
        .unwrap();
    assert!(report
        .lines
        .iter()
        .all(|l| l.action == SyncAction::Registered));
    let config = RouterConfig::new(strategy, retry, TIMEOUT);
    let router = router::start(server.connect_router().await, config, None)
        .await
        .unwrap();
    Bench {
        server,
        supervisor,
        _router: router,
    }
}

impl Bench {
    async fn worker(&self, node: &str, r: &str, behaviour: Behaviour, models: &[&str]) -> Worker {
        let mut w = self.server.worker(node, r, behaviour).await;
        w.heartbeat(node, BEAT, models);
        w
    }

    /// The router's `fleet-health` entry of `node`, read as the control plane.
    async fn health(&self, node: &str) -> Option<HealthEntry> {
        let js = async_nats::jetstream::new(self.supervisor.clone());
        let kv = js.get_key_value(bus::HEALTH_BUCKET).await.ok()?;
        let v = kv.get(node).await.ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Waits until `node` is `state` in `fleet-health`.
    async fn wait_state(&self, node: &str, state: &str, limit: Duration) -> HealthEntry {
        let got = poll_async(limit, || async {
            self.health(node).await.filter(|e| e.state == state)
        })
        .await;
        match got {
            Some(e) => e,
            None => {
                let last = self.health(node).await;
                panic!("{node} was not {state} within {limit:?}; last entry: {last:?}")
            }
        }
    }

    async fn ask(&self, r: &str, model: Option<&str>) -> Answer {
        let payload = d::parse_payload(r#"{"task":"summarize"}"#).unwrap();
        router::ask(&self.supervisor, &role(r), payload, model, TIMEOUT * 4)
            .await
            .unwrap()
    }
}

fn node_of(a: &Answer) -> String {
    match a {
        Answer::Done { node, payload, .. } => {
            // The worker's own body names the node that ran it: the router's node agrees.
            let body: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(body["node"], node.as_str());
            node.clone()
        }
        Answer::Failed(e) => panic!("router error: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sync_is_idempotent_removes_departed_nodes_and_workers_cannot_touch_the_registry() {
    let fleet = example_fleet();
    let server = NatsServer::start(&fleet);
    let cp = server.connect("control-01").await;
    let js = async_nats::jetstream::new(cp.clone());
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
            server.password("control-01").expose(),
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
    let w1 = b
        .worker("worker-01", "glm-worker", Behaviour::Answer, &[])
        .await;
    let w2 = b
        .worker("worker-02", "glm-worker", Behaviour::Answer, &[])
        .await;
    b.wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    b.wait_state("worker-02", "healthy", Duration::from_secs(5))
        .await;

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
async fn a_worker_that_stops_heartbeating_is_degraded_and_gets_no_new_task() {
    let b = setup(FailoverStrategy::RoundRobin, true).await;
    let mut w1 = b
        .worker("worker-01", "glm-worker", Behaviour::Answer, &[])
        .await;
    let w2 = b
        .worker("worker-02", "glm-worker", Behaviour::Answer, &[])
        .await;
    b.wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    b.wait_state("worker-02", "healthy", Duration::from_secs(5))
        .await;
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
    let hung = b
        .worker("worker-01", "glm-worker", Behaviour::Hang, &[])
        .await;
    let _ok = b
        .worker("worker-02", "glm-worker", Behaviour::Answer, &[])
        .await;
    b.wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    b.wait_state("worker-02", "healthy", Duration::from_secs(5))
        .await;
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
        .worker("worker-01", "kg-writer", Behaviour::Hang, &[])
        .await;
    b.wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    match b.ask("kg-writer", None).await {
        Answer::Failed(e) => {
            assert_eq!(e.code, "all-failed");
            assert_eq!(e.attempts.len(), 1);
            assert!(
                e.error.contains("worker-01 got no reply within 0.8s"),
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
    let _w1 = b
        .worker("worker-01", "glm-worker", Behaviour::Answer, &[])
        .await;
    let _w2 = b
        .worker("worker-02", "glm-worker", Behaviour::Answer, &["qwen3-8b"])
        .await;
    b.wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    let e2 = b
        .wait_state("worker-02", "healthy", Duration::from_secs(5))
        .await;
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
