//! Least privilege on the bus (issue 21, "a supervisor is not an agent"), on the real nats-server
//! with the rendered configuration: the control plane's agent credential is an ordinary node's,
//! `_supervisor` can dispatch and nothing more, `_registry` can write `fleet-nodes` and nothing
//! more, `_observer` can read `fleet-health` and nothing more. Each refusal is the server's own permissions violation, and a later denied operation
//! (a sentinel) shows the allowed ones raised none.

mod bus_support;
mod common;

use bus_support::{Behaviour, NatsServer, RouterFixture, ServerErrors};
use common::example_fleet;
use fleetnix::bus::registry::{self, SyncAction};
use fleetnix::bus::router::{self, Answer, RouterConfig};
use fleetnix::bus::users::Service;
use fleetnix::bus::NODES_BUCKET;
use fleetnix::model::{FailoverStrategy, Role};
use std::time::Duration;

/// What a client tries: publish to a subject, or subscribe to one.
#[derive(Clone, Copy)]
enum Try {
    Pub(&'static str),
    Sub(&'static str),
}

/// Does each of `tries` on `client` and waits for the server to refuse every one of them.
async fn all_refused(client: &async_nats::Client, errors: &ServerErrors, tries: &[Try]) {
    let mut subs = Vec::new();
    for t in tries {
        match *t {
            Try::Pub(s) => client.publish(s, "{}".into()).await.unwrap(),
            Try::Sub(s) => subs.push(client.subscribe(s).await.unwrap()),
        }
    }
    client.flush().await.unwrap();
    for t in tries {
        let needle = match *t {
            Try::Pub(s) => format!("Publish to \"{s}\""),
            Try::Sub(s) => format!("Subscription to \"{s}\""),
        };
        let e = errors.wait_for(&needle).await;
        assert!(e.contains("Permissions Violation"), "{e}");
    }
}

/// Publishes a denied `sentinel` after whatever the caller did and checks the sentinel's refusal
/// is the only new error: the server handles a connection's operations in order.
async fn nothing_else_refused(
    client: &async_nats::Client,
    errors: &ServerErrors,
    before: usize,
    sentinel: &'static str,
) {
    client.publish(sentinel, "{}".into()).await.unwrap();
    client.flush().await.unwrap();
    errors.wait_for(&format!("Publish to \"{sentinel}\"")).await;
    assert_eq!(errors.all().len(), before + 1, "{:?}", errors.all());
}

/// The revision of `node`'s record in fleet-nodes, read as `_registry`.
async fn revision(server: &NatsServer, node: &str) -> u64 {
    let js = async_nats::jetstream::new(server.connect_registry().await);
    let kv = js.get_key_value(NODES_BUCKET).await.unwrap();
    kv.entry(node).await.unwrap().expect("registered").revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_agent_credential_is_refused_what_the_review_did_with_it() {
    let fleet = example_fleet();
    let server = NatsServer::start(&fleet);
    let js = async_nats::jetstream::new(server.connect_registry().await);
    registry::sync(&js, &fleet).await.unwrap();
    let rev = revision(&server, "worker-01").await;
    let worker = server
        .worker("worker-01", "kg-writer", Behaviour::Answer)
        .await;

    let (cp, errors) = server.connect_watching("control-01").await;
    all_refused(
        &cp,
        &errors,
        &[
            // Tasks straight to another node, bypassing the router, or to a role's queue.
            Try::Pub("fleet.tasks.kg-writer.worker-01"),
            Try::Pub("fleet.tasks.glm-worker"),
            // Asking the router is the supervisors'.
            Try::Pub("fleet.dispatch.kg-writer"),
            // Writing the registry the router routes from.
            Try::Pub("$KV.fleet-nodes.worker-01"),
            Try::Pub("$JS.API.STREAM.CREATE.KV_fleet-nodes"),
            Try::Pub("$JS.API.STREAM.DELETE.KV_fleet-nodes"),
            // Creating consumers (reading either bucket).
            Try::Pub("$JS.API.CONSUMER.CREATE.KV_fleet-nodes"),
            Try::Pub("$JS.API.CONSUMER.CREATE.KV_fleet-health.x.$KV.fleet-health.>"),
            Try::Pub("$JS.API.CONSUMER.DURABLE.CREATE.KV_fleet-nodes.x"),
            Try::Pub("$JS.API.STREAM.INFO.KV_fleet-nodes"),
            // Hearing every node's results and heartbeats, or other clients' replies.
            Try::Sub("fleet.results.>"),
            Try::Sub("fleet.heartbeat.>"),
            Try::Sub("fleet.tasks.kg-writer.worker-01"),
            Try::Sub("_INBOX.>"),
        ],
    )
    .await;
    // What an agent does stays allowed: its role's tasks, its results and heartbeats.
    let before = errors.all().len();
    let _own = cp
        .queue_subscribe("fleet.tasks.control-plane", "control-plane".into())
        .await
        .unwrap();
    let _direct = cp
        .subscribe("fleet.tasks.control-plane.control-01")
        .await
        .unwrap();
    cp.publish("fleet.heartbeat.control-01", "{}".into())
        .await
        .unwrap();
    cp.publish("fleet.results.control-01.t1", "{}".into())
        .await
        .unwrap();
    nothing_else_refused(&cp, &errors, before, "fleet.tasks.sentinel").await;

    // Nothing reached worker-01 and the registry is as node sync wrote it.
    assert_eq!(worker.count(), 0);
    assert_eq!(revision(&server, "worker-01").await, rev);
    // The agent's own library refuses to dispatch as well: the request is denied.
    let client = server.connect("control-01").await;
    let err = router::ask(
        &client,
        &Role::parse("kg-writer").unwrap(),
        "{}".into(),
        None,
        Duration::from_secs(2),
    )
    .await;
    assert!(err.is_err(), "{err:?}");
    assert_eq!(worker.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_credential_dispatches_and_nothing_more() {
    let b = RouterFixture::start(
        RouterConfig::new(
            FailoverStrategy::RoundRobin,
            true,
            Duration::from_millis(1500),
        ),
        Duration::from_millis(100),
    )
    .await;
    let _w = b
        .healthy_workers("kg-writer", &[("worker-01", Behaviour::Answer, &[])])
        .await;
    let (sup, errors) = b
        .server
        .connect_watching_as(
            Service::Supervisor.user(),
            b.server.service_password(Service::Supervisor),
        )
        .await;
    // It dispatches, through the router, and the answer comes back to its inbox.
    let answer = router::ask(
        &sup,
        &Role::parse("kg-writer").unwrap(),
        r#"{"task":"x"}"#.into(),
        None,
        Duration::from_secs(6),
    )
    .await
    .unwrap();
    match answer {
        Answer::Done { node, .. } => assert_eq!(node, "worker-01"),
        Answer::Failed(e) => panic!("{e:?}"),
    }
    let before = errors.all().len();
    nothing_else_refused(&sup, &errors, before, "fleet.sentinel").await;

    all_refused(
        &sup,
        &errors,
        &[
            Try::Pub("fleet.tasks.kg-writer"),
            Try::Pub("fleet.tasks.kg-writer.worker-01"),
            Try::Pub("fleet.results.worker-01"),
            Try::Pub("fleet.heartbeat.worker-01"),
            Try::Pub("_INBOX._router.x"),
            // No JetStream at all.
            Try::Pub("$KV.fleet-nodes.worker-01"),
            Try::Pub("$KV.fleet-health.worker-01"),
            Try::Pub("$JS.API.STREAM.INFO.KV_fleet-nodes"),
            Try::Pub("$JS.API.STREAM.CREATE.KV_fleet-nodes"),
            Try::Pub("$JS.API.CONSUMER.CREATE.KV_fleet-nodes"),
            Try::Pub("$JS.API.DIRECT.GET.KV_fleet-health"),
            Try::Sub("fleet.tasks.>"),
            Try::Sub("fleet.results.>"),
            Try::Sub("fleet.heartbeat.>"),
            Try::Sub("fleet.dispatch.>"),
            Try::Sub("_INBOX.>"),
            Try::Sub("_INBOX._router.>"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_credential_writes_fleet_nodes_and_nothing_else() {
    let fleet = example_fleet();
    let server = NatsServer::start(&fleet);
    let (reg, errors) = server
        .connect_watching_as(
            Service::Registry.user(),
            server.service_password(Service::Registry),
        )
        .await;
    // It creates and writes the bucket (node sync), with no violation on the way.
    let report = registry::sync(&async_nats::jetstream::new(reg.clone()), &fleet)
        .await
        .unwrap();
    assert!(report
        .lines
        .iter()
        .all(|l| l.action == SyncAction::Registered));
    let before = errors.all().len();
    assert_eq!(before, 0, "{:?}", errors.all());
    nothing_else_refused(&reg, &errors, before, "fleet.sentinel").await;

    all_refused(
        &reg,
        &errors,
        &[
            Try::Pub("fleet.tasks.kg-writer"),
            Try::Pub("fleet.tasks.kg-writer.worker-01"),
            Try::Pub("fleet.dispatch.kg-writer"),
            Try::Pub("fleet.heartbeat.worker-01"),
            Try::Pub("fleet.results.worker-01"),
            // The router's health view is the router's to write; the bucket not its to delete.
            Try::Pub("$KV.fleet-health.worker-01"),
            Try::Pub("$JS.API.STREAM.CREATE.KV_fleet-health"),
            Try::Pub("$JS.API.STREAM.DELETE.KV_fleet-nodes"),
            Try::Pub("$JS.API.STREAM.PURGE.KV_fleet-nodes"),
            // No other stream.
            Try::Pub("$JS.API.STREAM.CREATE.other"),
            Try::Pub("$JS.API.CONSUMER.CREATE.other"),
            Try::Sub("fleet.>"),
            Try::Sub("_INBOX.>"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_credential_reads_fleet_health_and_nothing_else() {
    let fleet = example_fleet();
    let server = NatsServer::start(&fleet);
    // The router's view, as the router writes it.
    let router = async_nats::jetstream::new(server.connect_service(Service::Router).await);
    let health = registry::open_bucket(&router, fleetnix::bus::HEALTH_BUCKET, true)
        .await
        .unwrap();
    let entry = serde_json::json!({
        "node": "worker-01", "state": "healthy", "since": "2026-12-04T00:00:00Z",
        "in_flight": 1, "capacity": 4, "models": [], "draining": true
    });
    health
        .put("worker-01", entry.to_string().into())
        .await
        .unwrap();
    // A node's entry removed since (a tombstone in the bucket) is not read back.
    health
        .put("worker-02", entry.to_string().into())
        .await
        .unwrap();
    health.delete("worker-02").await.unwrap();
    let (obs, errors) = server
        .connect_watching_as(
            Service::Observer.user(),
            server.service_password(Service::Observer),
        )
        .await;
    // It reads every entry (what `fleetnix health` does), with no violation on the way.
    let read = fleetnix::bus::drain::health_all(
        &async_nats::jetstream::new(obs.clone()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(read.entries.len(), 1, "{read:?}");
    assert!(read.entries[0].draining && read.entries[0].in_flight == 1);
    let before = errors.all().len();
    assert_eq!(before, 0, "{:?}", errors.all());
    nothing_else_refused(&obs, &errors, before, "fleet.sentinel").await;

    all_refused(
        &obs,
        &errors,
        &[
            // Not the router's view to write, nor a node to drain or register.
            Try::Pub("$KV.fleet-health.worker-01"),
            Try::Pub("$KV.fleet-drain.worker-01"),
            Try::Pub("$KV.fleet-nodes.worker-01"),
            Try::Pub("$JS.API.STREAM.CREATE.KV_fleet-drain"),
            Try::Pub("$JS.API.STREAM.INFO.KV_fleet-drain"),
            Try::Pub("$JS.API.STREAM.CREATE.KV_fleet-nodes"),
            Try::Pub("$JS.API.STREAM.DELETE.KV_fleet-health"),
            // Nothing of the task bus.
            Try::Pub("fleet.dispatch.kg-writer"),
            Try::Pub("fleet.tasks.kg-writer"),
            Try::Pub("fleet.heartbeat.worker-01"),
            Try::Sub("fleet.>"),
            Try::Sub("_INBOX.>"),
        ],
    )
    .await;
}
