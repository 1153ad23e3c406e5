//! `fleetnix health` next to the router's view (issue 22 item 7): `bus::drain::health_all` reads
//! every `fleet-health` entry the real router process wrote for reference workers, as
//! `_registry`, against a real nats-server on loopback; and the binary, run inside a namespace
//! test network with nats-server on the control plane's host, shows heartbeat age,
//! in-flight/capacity and draining next to its probes, or says why it cannot and still reports
//! the probes with the same exit code.

mod bus_support;
mod common;
mod health_common;

use bus_support::NatsServer;
use bytes::Bytes;
use fleetnix::bus::drain::{self, HealthEntries};
use fleetnix::bus::router::{self, AskOptions, HealthEntry};
use fleetnix::bus::users::Service;
use fleetnix::bus::worker::{self, TaskOutcome, WorkerHandle, WorkerOptions};
use fleetnix::model::{NodeName, Role};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(5);

/// A reference worker on `node` for `glm-worker` whose every task waits for a permit of `gate`.
async fn gated_worker(
    server: &NatsServer,
    node: &'static str,
    gate: Arc<tokio::sync::Semaphore>,
) -> WorkerHandle {
    let mut options = WorkerOptions::new(
        NodeName::parse(node).unwrap(),
        vec![Role::parse("glm-worker").unwrap()],
    );
    options.beat = Duration::from_millis(150);
    worker::start(server.connect(node).await, options, move |_task| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await;
            TaskOutcome::Done(Bytes::from_static(br#"{"done": true}"#))
        }
    })
    .await
    .unwrap()
}

/// `fleetnix router` as a process of its own (alerts to a closed loopback port).
fn router_process(server: &NatsServer) -> tokio::process::Child {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ntfy = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    tokio::process::Command::new(common::fleetnix_bin())
        .arg("--root")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(["router", "--node-timeout", "1s", "--nats-url", &server.url])
        .env(
            "FLEETNIX_NATS_PASSWORD",
            server.creds.router_password().unwrap().expose(),
        )
        .env("FLEETNIX_NTFY_URL", ntfy)
        .env_remove("FLEETNIX_NATS_URL")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn entry<'a>(all: &'a HealthEntries, node: &str) -> Option<&'a HealthEntry> {
    all.entries.iter().find(|e| e.node == node)
}

/// Reads `fleet-health` until `ok` holds (bounded), returning the last read.
async fn read_until(
    js: &async_nats::jetstream::Context,
    what: &str,
    ok: impl Fn(&HealthEntries) -> bool,
) -> HealthEntries {
    let got = common::poll_async(Duration::from_secs(10), || async {
        drain::health_all(js, LIMIT).await.ok().filter(|a| ok(a))
    })
    .await;
    match got {
        Some(a) => a,
        None => panic!(
            "fleet-health never showed {what}; last: {:?}",
            drain::health_all(js, LIMIT).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_all_reads_the_routers_view_with_a_drained_node() {
    let fleet = common::example_fleet();
    let server = NatsServer::start(&fleet);
    let registry = async_nats::jetstream::new(server.connect_registry().await);
    // No router ever ran: no bucket, which is no entry rather than an error.
    let none = drain::health_all(&registry, LIMIT).await.unwrap();
    assert_eq!(none, HealthEntries::default());
    fleetnix::bus::registry::sync(&registry, &fleet)
        .await
        .unwrap();
    let _router = router_process(&server);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let _w1 = gated_worker(&server, "worker-01", gate.clone()).await;
    let _w2 = gated_worker(&server, "worker-02", gate.clone()).await;
    let healthy = |a: &HealthEntries| {
        ["worker-01", "worker-02"]
            .iter()
            .all(|n| entry(a, n).is_some_and(|e| e.state == "healthy"))
    };
    read_until(&registry, "both workers healthy", healthy).await;

    // One task that runs until the gate opens.
    let supervisor = server.connect_supervisor().await;
    let asked = tokio::spawn(async move {
        router::ask_with(
            &supervisor,
            &Role::parse("glm-worker").unwrap(),
            Bytes::from_static(b"{}"),
            &AskOptions::new(Duration::from_secs(30), Duration::from_secs(4)),
        )
        .await
        .unwrap()
    });
    let busy = read_until(&registry, "a task in flight", |a| {
        a.entries.iter().any(|e| e.in_flight == 1)
    })
    .await;
    let taker = busy
        .entries
        .iter()
        .find(|e| e.in_flight == 1)
        .unwrap()
        .node
        .clone();
    let other = if taker == "worker-01" {
        "worker-02"
    } else {
        "worker-01"
    };

    // Drained as `node drain` does: the router reports it draining, its task still in flight.
    drain::set(
        &registry,
        &NodeName::parse(&taker).unwrap(),
        true,
        "health test",
    )
    .await
    .unwrap();
    let all = read_until(&registry, "the taker draining", |a| {
        entry(a, &taker).is_some_and(|e| e.draining)
    })
    .await;
    // Every registered node, sorted, in one read.
    let names: Vec<&str> = all.entries.iter().map(|e| e.node.as_str()).collect();
    let mut want: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    assert!(all.unreadable.is_empty(), "{:?}", all.unreadable);
    let t = entry(&all, &taker).unwrap();
    assert_eq!((t.in_flight, t.capacity, t.draining), (1, 4, true), "{t:?}");
    assert!(t.last_heartbeat.is_some());
    let o = entry(&all, other).unwrap();
    assert_eq!(
        (o.in_flight, o.capacity, o.draining),
        (0, 4, false),
        "{o:?}"
    );
    assert_eq!(o.state, "healthy");
    // The control plane runs no agent here: never heard from, no load.
    let cp = entry(&all, "control-01").unwrap();
    assert_eq!((cp.last_heartbeat.as_deref(), cp.capacity), (None, 0));
    assert_ne!(cp.state, "healthy");

    // The task finishes on the drained node; it stays draining with nothing in flight.
    gate.add_permits(1);
    let answer = asked.await.unwrap();
    assert!(
        matches!(&answer, router::Answer::Done { node, .. } if *node == taker),
        "{answer:?}"
    );
    read_until(&registry, "the drained node idle", |a| {
        entry(a, &taker).is_some_and(|e| e.draining && e.in_flight == 0)
    })
    .await;
}

/// A user that may not read `fleet-health` gets an error, within the bound, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_all_is_bounded_for_a_user_without_the_right() {
    let fleet = common::example_fleet();
    let server = NatsServer::start(&fleet);
    let supervisor = async_nats::jetstream::new(server.connect_service(Service::Supervisor).await);
    let err = drain::health_all(&supervisor, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fleet-health"), "{err}");
}
