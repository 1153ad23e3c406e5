//! The generated NATS configuration on a real nats-server: per-node permissions, the queue group,
//! failover of a hung worker.

mod bus_support;
mod common;

use bus_support::{policy, spawn_worker, Behaviour, NatsServer};
use common::example_fleet;
use fleetnix::bus::dispatch::{self as d, Outcome, Responder, Target};
use fleetnix::bus::BusError;
use fleetnix::model::{NodeName, Role};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn role(r: &str) -> Role {
    Role::parse(r).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_02_cannot_take_kg_writer_tasks_worker_01_can() {
    let server = NatsServer::start(&example_fleet());
    // Direct dispatch (fleet.tasks.<role>) is the router's user's (`dispatch --direct`).
    let supervisor = server.connect_router().await;

    // worker-02 (glm-worker, mnemopi-replica) tries kg-writer, in the queue group and directly.
    let (w2, w2_errors) = server.connect_watching("worker-02").await;
    let _sneak_queue = w2
        .queue_subscribe("fleet.tasks.kg-writer", "kg-writer".into())
        .await
        .unwrap();
    let _sneak_direct = w2
        .subscribe("fleet.tasks.kg-writer.worker-01")
        .await
        .unwrap();
    w2.flush().await.unwrap();
    let e = w2_errors
        .wait_for("Subscription to \"fleet.tasks.kg-writer\"")
        .await;
    assert!(e.contains("Permissions Violation"), "{e}");
    w2_errors
        .wait_for("Subscription to \"fleet.tasks.kg-writer.worker-01\"")
        .await;

    // worker-01 has kg-writer: no violation, and it gets every kg-writer task.
    let (w1, w1_errors) = server.connect_watching("worker-01").await;
    let worker1 = spawn_worker(
        &server,
        w1.clone(),
        "worker-01",
        "kg-writer",
        Behaviour::Answer,
    )
    .await;
    let p = policy(Duration::from_secs(2), &["worker-01"]);
    for i in 0..10 {
        let payload = d::parse_payload(&format!(r#"{{"n":{i}}}"#)).unwrap();
        let done = d::dispatch(&supervisor, &role("kg-writer"), payload, &p)
            .await
            .unwrap();
        // Through the queue group the name is only the worker's claim.
        assert_eq!(done.responder, Responder::Claimed("worker-01".into()));
        assert_eq!(done.attempts.len(), 1, "{:?}", done.attempts);
        let reply: serde_json::Value = serde_json::from_slice(&done.reply).unwrap();
        assert_eq!(reply["task"]["n"], i);
    }
    assert_eq!(worker1.count(), 10);
    assert!(w1_errors.all().is_empty(), "{:?}", w1_errors.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_can_neither_eavesdrop_nor_dispatch_nor_log_in_without_their_password() {
    let server = NatsServer::start(&example_fleet());
    let (w2, errors) = server.connect_watching("worker-02").await;
    // Its own role, but outside the queue group: that would copy every task.
    let _copy = w2.subscribe("fleet.tasks.glm-worker").await.unwrap();
    // Another node's results and other nodes' replies.
    let _results = w2.subscribe("fleet.results.>").await.unwrap();
    let _inbox = w2.subscribe("_INBOX.>").await.unwrap();
    // Publishing a task or someone else's heartbeat.
    w2.publish("fleet.tasks.kg-writer", "{}".into())
        .await
        .unwrap();
    w2.publish("fleet.heartbeat.worker-01", "{}".into())
        .await
        .unwrap();
    w2.flush().await.unwrap();
    for needle in [
        "Subscription to \"fleet.tasks.glm-worker\"",
        "Subscription to \"fleet.results.>\"",
        "Subscription to \"_INBOX.>\"",
        "Publish to \"fleet.tasks.kg-writer\"",
        "Publish to \"fleet.heartbeat.worker-01\"",
    ] {
        errors.wait_for(needle).await;
    }
    // What it may do does not raise errors.
    let before = errors.all().len();
    w2.publish("fleet.heartbeat.worker-02", "{}".into())
        .await
        .unwrap();
    w2.publish("fleet.results.worker-02.job-1", "{}".into())
        .await
        .unwrap();
    // The server handles a connection's operations in order: once the error for a later denied
    // publish arrives, the allowed ones were handled, and they must have raised nothing.
    w2.publish("fleet.heartbeat.sentinel", "{}".into())
        .await
        .unwrap();
    w2.flush().await.unwrap();
    errors
        .wait_for("Publish to \"fleet.heartbeat.sentinel\"")
        .await;
    assert_eq!(errors.all().len(), before + 1, "{:?}", errors.all());

    // Another node's password, or the variable's name taken literally, does not log in.
    let url = server.url.clone();
    let w1 = NodeName::parse("worker-01").unwrap();
    for wrong in [
        server.password("worker-02").clone(),
        fleetnix::secret::Secret::new("$NATS_PASSWORD_WORKER_01"),
    ] {
        let err = d::connect(&url, &w1, &wrong, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::Connect { .. }), "{err}");
        assert!(
            !err.to_string().contains(wrong.expose()),
            "the error repeats the password"
        );
    }
    // No anonymous access.
    assert!(async_nats::connect(&url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_of_a_role_share_its_tasks_through_the_queue_group() {
    let server = NatsServer::start(&example_fleet());
    // Direct dispatch (fleet.tasks.<role>) is the router's user's (`dispatch --direct`).
    let supervisor = server.connect_router().await;
    let w1 = server
        .worker("worker-01", "glm-worker", Behaviour::Answer)
        .await;
    let w2 = server
        .worker("worker-02", "glm-worker", Behaviour::Answer)
        .await;
    let p = policy(Duration::from_secs(5), &["worker-01", "worker-02"]);
    const TASKS: usize = 60;
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..TASKS {
        let payload = d::parse_payload(&format!(r#"{{"n":{i}}}"#)).unwrap();
        let done = d::dispatch(&supervisor, &role("glm-worker"), payload, &p)
            .await
            .unwrap();
        assert_eq!(done.attempts.len(), 1);
        assert_eq!(done.attempts[0].target, Target::Queue);
        *by_node
            .entry(done.responder.name().unwrap().to_string())
            .or_default() += 1;
    }
    // Each task went to exactly one member, and both members took some (all 60 on one side
    // would happen with probability 2^-59 under random selection).
    assert_eq!(w1.count() + w2.count(), TASKS);
    assert_eq!(by_node.get("worker-01"), Some(&w1.count()));
    assert_eq!(by_node.get("worker-02"), Some(&w2.count()));
    assert!(w1.count() > 0 && w2.count() > 0, "{by_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_subscriber_is_failed_over_within_the_timeout() {
    let server = NatsServer::start(&example_fleet());
    // Direct dispatch (fleet.tasks.<role>) is the router's user's (`dispatch --direct`).
    let supervisor = server.connect_router().await;
    let timeout = Duration::from_millis(800);
    let hung = server
        .worker("worker-01", "glm-worker", Behaviour::Hang)
        .await;
    let alive = server
        .worker("worker-02", "glm-worker", Behaviour::Answer)
        .await;
    // The hung node first in the failover order: the worst case.
    let p = policy(timeout, &["worker-01", "worker-02"]);
    // 16 tasks at once (so the test takes about two timeouts, not sixteen); the queue picks a
    // member at random for each, so some land on the hung node (all miss it with p = 2^-16).
    const TASKS: usize = 16;
    let results = futures_util::future::join_all((0..TASKS).map(|i| {
        let (supervisor, p) = (&supervisor, &p);
        async move {
            let payload = d::parse_payload(&format!(r#"{{"n":{i}}}"#)).unwrap();
            let start = Instant::now();
            let done = d::dispatch(supervisor, &role("glm-worker"), payload, p).await;
            (done, start.elapsed())
        }
    }))
    .await;
    let mut failovers = 0;
    for (done, took) in results {
        let done = done.unwrap();
        assert_eq!(done.responder.name(), Some("worker-02"));
        // A failed-over task went to worker-02's own subject: the server vouches for the name.
        assert_eq!(done.responder.verified(), done.attempts.len() > 1);
        // One timeout per hung attempt: the queue (it hit the hung node), worker-01, then
        // worker-02 answers: two timeouts, under three.
        assert!(took < timeout * 3, "{took:?} {:?}", done.attempts);
        if done.attempts.len() > 1 {
            failovers += 1;
            assert_eq!(
                done.attempts
                    .iter()
                    .map(|a| a.outcome.clone())
                    .collect::<Vec<_>>(),
                [Outcome::TimedOut, Outcome::TimedOut, Outcome::Replied]
            );
            assert_eq!(
                done.attempts[2].target,
                Target::Node(NodeName::parse("worker-02").unwrap())
            );
            // Each timed-out attempt waited about one timeout, not more.
            for a in &done.attempts[..2] {
                assert!(a.elapsed >= timeout && a.elapsed < timeout * 2, "{a}");
            }
        }
    }
    assert!(failovers > 0, "the hung worker never got a task");
    assert_eq!(hung.count(), 2 * failovers);
    assert_eq!(alive.count(), TASKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_down_the_candidates_and_a_down_node_costs_no_timeout() {
    let server = NatsServer::start(&example_fleet());
    // Direct dispatch (fleet.tasks.<role>) is the router's user's (`dispatch --direct`).
    let supervisor = server.connect_router().await;
    let timeout = Duration::from_millis(500);

    // Nobody serves kg-writer (worker-01 is down): no responders at once, no timeout spent.
    let p = policy(timeout, &["worker-01"]);
    let start = Instant::now();
    let err = d::dispatch(
        &supervisor,
        &role("kg-writer"),
        d::parse_payload("{}").unwrap(),
        &p,
    )
    .await
    .unwrap_err();
    assert!(start.elapsed() < timeout, "{:?}", start.elapsed());
    match &err {
        BusError::NoAnswer { attempts, .. } => {
            assert_eq!(attempts.len(), 2);
            assert!(attempts.iter().all(|a| a.outcome == Outcome::NoResponders));
        }
        other => panic!("{other}"),
    }
    assert!(err
        .to_string()
        .contains("fleet.tasks.kg-writer.worker-01 → no responders"));

    // Without retry, a hung node is given up after one timeout.
    let _hung = server
        .worker("worker-01", "kg-writer", Behaviour::Hang)
        .await;
    let mut no_retry = policy(timeout, &["worker-01"]);
    no_retry.retry = false;
    let start = Instant::now();
    let err = d::dispatch(
        &supervisor,
        &role("kg-writer"),
        d::parse_payload("{}").unwrap(),
        &no_retry,
    )
    .await
    .unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(400),
        "{took:?}"
    );
    assert!(
        matches!(err, BusError::NoAnswer { ref attempts, .. } if attempts.len() == 1 && attempts[0].outcome == Outcome::TimedOut)
    );
}
