//! Long tasks on the bus (issue 22): acknowledgement and progress, per-task deadlines, the task id
//! as idempotency key, failover only from a dead node, a router that restarts. Real nats-server
//! with the rendered configuration, the real router, the reference worker
//! (`fleetnix::bus::worker`), and a ledger of every execution.

mod bus_support;
mod common;

use bus_support::RouterFixture;
use bytes::Bytes;
use fleetnix::bus::router::{self, Answer, AskOptions, RouterConfig};
use fleetnix::bus::users::Service;
use fleetnix::bus::worker::{self, TaskOutcome, WorkerHandle, WorkerOptions};
use fleetnix::model::{FailoverStrategy, NodeName, Role};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One execution of a task on a worker.
#[derive(Debug, Clone)]
struct Run {
    node: String,
    /// Which start of the worker (a killed worker's runs have an older one).
    incarnation: u32,
    task: String,
    finished: bool,
}

/// Counts worker starts, so that a ledger tells a killed worker's runs from its successor's.
static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Every execution on every worker of a test.
#[derive(Debug, Clone, Default)]
struct Ledger(Arc<Mutex<Vec<Run>>>);

impl Ledger {
    fn runs_of(&self, task: &str) -> Vec<Run> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.task == task)
            .cloned()
            .collect()
    }
}

/// A reference worker on `node` for `glm-worker` whose tasks are `{"sleep_ms": N}`: sleeps N ms
/// and answers `{"node", "slept_ms"}`; a task `{"fail": "why"}` fails. Every run goes in `ledger`.
async fn worker(b: &RouterFixture, node: &'static str, ledger: &Ledger) -> WorkerHandle {
    let h = worker_on(&b.server, b.beat, node, ledger).await;
    b.wait_state(node, "healthy", Duration::from_secs(10)).await;
    h
}

/// [`worker`] without waiting for a router to call it healthy.
async fn worker_on(
    server: &bus_support::NatsServer,
    beat: Duration,
    node: &'static str,
    ledger: &Ledger,
) -> WorkerHandle {
    worker_client(server.connect(node).await, beat, node, ledger).await
}

/// Asks the router for `payload` with `o` in a task of its own (the caller waits on the handle).
fn spawn_ask(
    b: &RouterFixture,
    payload: &'static [u8],
    o: AskOptions,
) -> tokio::task::JoinHandle<Answer> {
    let supervisor = b.supervisor.clone();
    tokio::spawn(async move {
        router::ask_with(&supervisor, &role(), Bytes::from_static(payload), &o)
            .await
            .unwrap()
    })
}

/// The node whose worker took task `id` first (bounded wait).
async fn first_taker(ledger: &Ledger, id: &str) -> String {
    common::poll_async(Duration::from_secs(5), || async {
        ledger.runs_of(id).first().map(|r| r.node.clone())
    })
    .await
    .expect("a worker took the task")
}

/// [`worker_on`] on a connection made by the caller.
async fn worker_client(
    client: async_nats::Client,
    beat: Duration,
    node: &'static str,
    ledger: &Ledger,
) -> WorkerHandle {
    let incarnation = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut options = WorkerOptions::new(
        NodeName::parse(node).unwrap(),
        vec![Role::parse("glm-worker").unwrap()],
    );
    options.beat = beat;
    let ledger = ledger.clone();
    worker::start(client, options, move |task| {
        let ledger = ledger.clone();
        async move {
            let i = {
                let mut l = ledger.0.lock().unwrap();
                l.push(Run {
                    node: node.into(),
                    incarnation,
                    task: task.id.clone(),
                    finished: false,
                });
                l.len() - 1
            };
            let v: serde_json::Value = serde_json::from_slice(&task.payload).unwrap();
            if let Some(why) = v["fail"].as_str() {
                return TaskOutcome::Failed(why.to_string());
            }
            let ms = v["sleep_ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ledger.0.lock().unwrap()[i].finished = true;
            TaskOutcome::Done(Bytes::from(
                serde_json::json!({"node": node, "slept_ms": ms}).to_string(),
            ))
        }
    })
    .await
    .unwrap()
}

fn role() -> Role {
    Role::parse("glm-worker").unwrap()
}

fn opts(timeout: Duration, id: &str) -> AskOptions {
    let mut o = AskOptions::new(timeout, Duration::from_secs(4));
    o.task_id = Some(id.to_string());
    o
}

async fn ask(b: &RouterFixture, payload: &str, o: &AskOptions) -> Answer {
    router::ask_with(&b.supervisor, &role(), Bytes::from(payload.to_string()), o)
        .await
        .unwrap()
}

fn done(a: &Answer) -> (String, serde_json::Value, u32) {
    match a {
        Answer::Done {
            node,
            payload,
            attempts,
            ..
        } => (
            node.clone(),
            serde_json::from_slice(payload).unwrap(),
            *attempts,
        ),
        Answer::Failed(e) => panic!("router error: {e:?}"),
    }
}

async fn fixture(node_timeout: Duration) -> RouterFixture {
    RouterFixture::start(
        RouterConfig::new(FailoverStrategy::RoundRobin, true, node_timeout),
        node_timeout / 6,
    )
    .await
}

/// Issue 22's "done when": with a node timeout of 3 s, a task of 10 s completes once, on one
/// worker, and its caller gets the result. (Before: failed over after 3 s, ran on both
/// workers, the caller got `all-failed`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_the_node_timeout_completes_once_on_one_worker() {
    let b = fixture(Duration::from_secs(3)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    let _w2 = worker(&b, "worker-02", &ledger).await;
    let start = Instant::now();
    let a = ask(
        &b,
        r#"{"sleep_ms": 10000}"#,
        &opts(Duration::from_secs(30), "long-task-1"),
    )
    .await;
    let (node, body, attempts) = done(&a);
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert_eq!(body["slept_ms"], 10000);
    assert_eq!(attempts, 1);
    let runs = b_runs(&ledger, "long-task-1");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].node, node);
    assert!(runs[0].finished);
}

fn b_runs(ledger: &Ledger, task: &str) -> Vec<Run> {
    ledger.runs_of(task)
}

/// The task id is the idempotency key: concurrent requests of one id run it once and all get
/// its answer; asking again later gets the same answer without a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_id_is_the_idempotency_key() {
    let b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    let _w2 = worker(&b, "worker-02", &ledger).await;
    let o = opts(Duration::from_secs(10), "same-id");
    let (x, y) = tokio::join!(
        ask(&b, r#"{"sleep_ms": 1500}"#, &o),
        ask(&b, r#"{"sleep_ms": 1500}"#, &o)
    );
    let (nx, bx, _) = done(&x);
    let (ny, by, _) = done(&y);
    assert_eq!((nx.as_str(), &bx), (ny.as_str(), &by));
    assert_eq!(ledger.runs_of("same-id").len(), 1);
    // Again, after it finished: the same answer, from the node's record, no second run.
    let z = ask(&b, r#"{"sleep_ms": 1500}"#, &o).await;
    let (nz, bz, _) = done(&z);
    assert_eq!((nz, bz), (nx, bx));
    assert_eq!(ledger.runs_of("same-id").len(), 1);
    // A failed task is a result (the worker's reason, the task id), not a node failure.
    match ask(
        &b,
        r#"{"fail": "model overloaded"}"#,
        &opts(Duration::from_secs(5), "fails"),
    )
    .await
    {
        Answer::Failed(e) => {
            assert_eq!(e.code, "task-failed");
            assert_eq!(e.task_id, "fails");
            assert!(e.error.contains("model overloaded"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.runs_of("fails").len(), 1);
}

/// A node that dies while running a task (its heartbeats stop) has the task failed over after
/// one node timeout of silence; the caller gets the second node's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_failed_over_only_when_its_node_goes_silent() {
    let b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let w1 = worker(&b, "worker-01", &ledger).await;
    let w2 = worker(&b, "worker-02", &ledger).await;
    let o = opts(Duration::from_secs(20), "dies-midway");
    let asked = spawn_ask(&b, br#"{"sleep_ms": 2500}"#, o);
    // Wait until a node took it, then kill that node's worker.
    let first = first_taker(&ledger, "dies-midway").await;
    let killed_at = Instant::now();
    let survivor = if first == "worker-01" {
        drop(w1);
        w2
    } else {
        drop(w2);
        w1
    };
    let a = asked.await.unwrap();
    let (node, _, attempts) = done(&a);
    assert_ne!(node, first);
    assert_eq!(attempts, 2);
    // Failed over after the silence, not before.
    assert!(killed_at.elapsed() >= Duration::from_millis(3000));
    let runs = ledger.runs_of("dies-midway");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(!runs[0].finished && runs[1].finished);
    drop(survivor);
}

/// Each task has its own deadline: the caller hears `deadline`, naming the task and where it
/// runs, before its own timeout; asking again with the id later gets the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_hears_a_deadline_error_in_time_and_can_collect_the_result_later() {
    let b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    let start = Instant::now();
    let a = ask(
        &b,
        r#"{"sleep_ms": 3000}"#,
        &opts(Duration::from_millis(1500), "slow-one"),
    )
    .await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    match a {
        Answer::Failed(e) => {
            assert_eq!(e.code, "deadline");
            assert_eq!(e.task_id, "slow-one");
            assert!(e.error.contains("still running on worker-01"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // The worker's deadline came too: the task ended as failed on the worker; asking again
    // gets that record, and the task never ran twice.
    let again = ask(
        &b,
        r#"{"sleep_ms": 3000}"#,
        &opts(Duration::from_secs(5), "slow-one"),
    )
    .await;
    match again {
        Answer::Failed(e) => assert_eq!(e.code, "task-failed", "{e:?}"),
        Answer::Done { .. } => {}
    }
    assert_eq!(ledger.runs_of("slow-one").len(), 1);
}

/// Bad requests are refused where they enter: not JSON, over the size the router can forward,
/// a task id that cannot be a key, a deadline that is not a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_at_the_router() {
    let b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    let code = |a: Answer| match a {
        Answer::Failed(e) => (e.code, e.error),
        other => panic!("{other:?}"),
    };
    let (c, e) = code(ask(&b, "not json", &opts(Duration::from_secs(5), "t1")).await);
    assert_eq!(c, "bad-request");
    assert!(e.contains("not JSON"), "{e}");
    let max = b.supervisor.server_info().max_payload;
    let big = format!("\"{}\"", "x".repeat(max - 600));
    let (c, e) = code(ask(&b, &big, &opts(Duration::from_secs(5), "t2")).await);
    assert_eq!(c, "bad-request");
    assert!(e.contains("at most"), "{e}");
    let mut h = async_nats::HeaderMap::new();
    h.insert(fleetnix::bus::TASK_ID_HEADER, "a.b");
    let reply = b
        .supervisor
        .request_with_headers("fleet.dispatch.glm-worker", h, "{}".into())
        .await
        .unwrap();
    let (c, e) = code(router::read_answer(&reply));
    assert_eq!(c, "bad-request");
    assert!(e.contains("task id"), "{e}");
    assert!(ledger.0.lock().unwrap().is_empty());
}

/// Issue 21, finding 7: the router's end is an error (its unit restarts it), not `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_ending_on_its_own_is_an_error() {
    let RouterFixture {
        server,
        supervisor,
        router: fixture_router,
        config,
        ..
    } = fixture(Duration::from_millis(900)).await;
    drop(fixture_router);
    let lane = server.connect_router().await;
    let closer = lane.clone();
    let run = tokio::spawn(router::run(lane, config, None, std::future::pending()));
    // Once it serves (it is the only router), close its connection for good.
    let served = common::poll_async(Duration::from_secs(5), || async {
        let probe = supervisor
            .request("fleet.dispatch.Bad_Role", "{}".into())
            .await
            .ok();
        probe.map(drop)
    })
    .await;
    assert!(served.is_some());
    closer.drain().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the router ended")
        .unwrap();
    assert!(
        matches!(ended, Err(router::RouterError::Stopped(_))),
        "{ended:?}"
    );
}

/// A router that dies with a task in flight loses nothing: the caller asks again with the same
/// id, a new router sends it to the node that has the task, which answers once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_router_picks_up_a_task_in_flight() {
    let mut b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    let _w2 = worker(&b, "worker-02", &ledger).await;
    let mut o = opts(Duration::from_secs(20), "survives-router");
    o.reask = Duration::from_millis(1500);
    let asked = spawn_ask(&b, br#"{"sleep_ms": 3000}"#, o);
    let first = first_taker(&ledger, "survives-router").await;
    // The router dies (its tasks end, its subscriptions go) and another starts.
    let lanes = b.server.connect_router_lanes(2).await;
    let second = router::start(lanes, b.config.clone(), None).await.unwrap();
    b.router = second;
    let a = asked.await.unwrap();
    let (node, body, _) = done(&a);
    assert_eq!(node, first);
    assert_eq!(body["slept_ms"], 3000);
    let runs = ledger.runs_of("survives-router");
    assert_eq!(runs.len(), 1, "{runs:?}");
}

/// nats-server restarts with tasks in flight (it forgets which replies each client may send):
/// every caller still gets its task's result, and no task runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_loses_no_task() {
    let mut b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    let _w2 = worker(&b, "worker-02", &ledger).await;
    let ids = ["restart-a", "restart-b", "restart-c"];
    let callers = ask_long(&b.supervisor, &ids, 2500);
    all_taken(&ledger, &ids).await;
    b.server.restart();
    each_answered_once(&ledger, &ids, callers, 2500).await;
}

/// Two `fleetnix router` processes; the one that took the tasks is SIGKILLed while they run:
/// every caller gets its result through the other, and no task runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_router_process_loses_no_task_with_two_routers() {
    let (server, supervisor) = synced_server().await;
    let ledger = Ledger::default();
    let beat = Duration::from_millis(150);
    let _w1 = worker_on(&server, beat, "worker-01", &ledger).await;
    let _w2 = worker_on(&server, beat, "worker-02", &ledger).await;
    let mut first = server.router_process();
    until_served(&supervisor).await;
    let ids = ["kill-a", "kill-b", "kill-c", "kill-d"];
    let callers = ask_long(&supervisor, &ids, 3000);
    all_taken(&ledger, &ids).await;
    // A second router, then SIGKILL of the first (which took every task).
    let _second = server.router_process();
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    each_answered_once(&ledger, &ids, callers, 3000).await;
}

/// A repeat of a task whose node took it (the task table says so: it acknowledged it to a router
/// that died since) goes back to that node, and while the node lives (heart-beats) it is not
/// given to another one — even when the repeat finds the node unsubscribed for a moment, as
/// after a nats-server restart before its subscriptions are back. (Before: the router failed
/// over at once on "no responders" and the other worker ran the task a second time; the chaos
/// test caught it once in CI: `chaos-31` ran on worker-02, then on worker-01.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_goes_back_to_the_node_that_took_the_task_and_nowhere_else_while_it_lives() {
    let b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let _w2 = worker(&b, "worker-02", &ledger).await;
    // worker-01 heart-beats but has no subscription (yet).
    let w1 = b.server.connect("worker-01").await;
    let beats = tokio::spawn(async move {
        loop {
            let hb = serde_json::json!({
                "node": "worker-01", "in_flight": 1, "capacity": 4, "version": "test",
            });
            let _ = w1
                .publish("fleet.heartbeat.worker-01", hb.to_string().into())
                .await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    b.wait_state("worker-01", "healthy", Duration::from_secs(10))
        .await;
    // The task table: worker-01 took `pinned-1`.
    let js = async_nats::jetstream::new(b.server.connect_service(Service::Router).await);
    let table = js.get_key_value(fleetnix::bus::TASKS_BUCKET).await.unwrap();
    table
        .put("pinned-1", r#"{"node":"worker-01"}"#.into())
        .await
        .unwrap();
    // The caller's repeat (after its router died), with 3 s left.
    let mut h = async_nats::HeaderMap::new();
    h.insert(fleetnix::bus::TASK_ID_HEADER, "pinned-1");
    h.insert(fleetnix::bus::DEADLINE_HEADER, "3000");
    h.insert(fleetnix::bus::REASK_HEADER, "1");
    let reply = b
        .supervisor
        .send_request(
            fleetnix::bus::dispatch_subject("glm-worker"),
            async_nats::Request::new()
                .headers(h)
                .payload(Bytes::from_static(br#"{"sleep_ms": 10}"#))
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    beats.abort();
    // Not run elsewhere: the caller hears the deadline, naming the node still running it.
    assert!(
        ledger.runs_of("pinned-1").is_empty(),
        "{:?}",
        ledger.runs_of("pinned-1")
    );
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(fleetnix::bus::STATUS_HEADER))
        .map(|v| v.as_str().to_string());
    let body = String::from_utf8_lossy(&reply.payload);
    assert_eq!(status.as_deref(), Some("deadline"), "{body}");
    assert!(body.contains("worker-01"), "{body}");
}

/// Every router records the acknowledgements it hears in the task table, also those of tasks it
/// is not working on: the record does not die with the router that sent the task (before, only
/// that router recorded it, after the acknowledgement reached it, without waiting for JetStream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_router_records_the_acknowledgements_it_hears() {
    let b = fixture(Duration::from_millis(900)).await;
    // worker-01 acknowledges a task this router never sent (another router's, now dead).
    let w1 = b.server.connect("worker-01").await;
    let mut h = async_nats::HeaderMap::new();
    h.insert(fleetnix::bus::TASK_ID_HEADER, "heard-1");
    w1.publish_with_headers("fleet.results.worker-01.ack", h, Bytes::new())
        .await
        .unwrap();
    w1.flush().await.unwrap();
    let js = async_nats::jetstream::new(b.server.connect_service(Service::Router).await);
    let table = js.get_key_value(fleetnix::bus::TASKS_BUCKET).await.unwrap();
    let got = common::poll_async(Duration::from_secs(5), || async {
        table.get("heard-1").await.ok().flatten()
    })
    .await
    .expect("the acknowledgement was recorded");
    let rec: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(rec["node"], "worker-01");
}

/// A nats-server with the rendered configuration and the fleet registered, and a supervisor.
async fn synced_server() -> (bus_support::NatsServer, async_nats::Client) {
    let fleet = common::example_fleet();
    let server = bus_support::NatsServer::start(&fleet);
    let supervisor = server.connect_supervisor().await;
    fleetnix::bus::registry::sync(
        &async_nats::jetstream::new(server.connect_registry().await),
        &fleet,
    )
    .await
    .unwrap();
    (server, supervisor)
}

/// Until a router process runs and has heard the workers, a quick task may fail: polls, bounded.
async fn until_served(supervisor: &async_nats::Client) {
    let served = common::poll_async(Duration::from_secs(15), || async {
        let mut o = opts(Duration::from_secs(2), &fleetnix::bus::dispatch::task_id());
        o.reask = Duration::from_secs(2);
        match router::ask_with(supervisor, &role(), Bytes::from_static(b"{}"), &o).await {
            Ok(Answer::Done { .. }) => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(served.is_some(), "no router process served");
}

/// One caller per id, each of a task sleeping `sleep_ms` (deadline 25 s, asking again every 1.5 s).
fn ask_long(
    supervisor: &async_nats::Client,
    ids: &[&'static str],
    sleep_ms: u64,
) -> Vec<tokio::task::JoinHandle<Result<Answer, fleetnix::bus::router::RouterError>>> {
    ids.iter()
        .map(|id| {
            let supervisor = supervisor.clone();
            let mut o = opts(Duration::from_secs(25), id);
            o.reask = Duration::from_millis(1500);
            let payload = Bytes::from(format!(r#"{{"sleep_ms": {sleep_ms}}}"#));
            tokio::spawn(async move { router::ask_with(&supervisor, &role(), payload, &o).await })
        })
        .collect()
}

/// Waits (bounded) until a worker took each of `ids`.
async fn all_taken(ledger: &Ledger, ids: &[&str]) {
    let taken = common::poll_async(Duration::from_secs(5), || async {
        ids.iter()
            .all(|id| !ledger.runs_of(id).is_empty())
            .then_some(())
    })
    .await;
    assert!(taken.is_some(), "the workers took the tasks");
}

/// Each caller got its task's result, from the one node that ran it, once.
async fn each_answered_once(
    ledger: &Ledger,
    ids: &[&str],
    callers: Vec<tokio::task::JoinHandle<Result<Answer, fleetnix::bus::router::RouterError>>>,
    sleep_ms: u64,
) {
    for (id, c) in ids.iter().zip(callers) {
        let a = c.await.unwrap().unwrap_or_else(|e| panic!("{id}: {e}"));
        let (node, body, _) = done(&a);
        assert_eq!(body["slept_ms"], sleep_ms);
        let runs = ledger.runs_of(id);
        assert_eq!(runs.len(), 1, "{id}: {runs:?}");
        assert_eq!(runs[0].node, node);
    }
}

/// `fleetnix node drain`: the router sends the drained node no new task and reports it draining
/// with its in-flight count; `node undrain` gives it tasks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_gets_no_new_task_until_undrained() {
    let b = fixture(Duration::from_millis(900)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    let _w2 = worker(&b, "worker-02", &ledger).await;
    let fleetnix = |args: &[&str]| {
        let mut cmd = std::process::Command::new(common::fleetnix_bin());
        cmd.arg("--root")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .args(["--nats-url", &b.server.url])
            .env(
                "FLEETNIX_NATS_PASSWORD",
                b.server.service_password(Service::Registry).expose(),
            )
            .env_remove("FLEETNIX_NATS_URL");
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // A task runs on worker-01 while it is drained: it finishes, and nothing new goes there.
    let o = opts(Duration::from_secs(10), "before-drain");
    let first = loop {
        let a = ask(
            &b,
            r#"{"sleep_ms": 0}"#,
            &opts(Duration::from_secs(5), &fleetnix::bus::dispatch::task_id()),
        )
        .await;
        if done(&a).0 == "worker-02" {
            break tokio::spawn({
                let s = b.supervisor.clone();
                async move {
                    router::ask_with(
                        &s,
                        &role(),
                        Bytes::from_static(br#"{"sleep_ms": 1500}"#),
                        &o,
                    )
                    .await
                    .unwrap()
                }
            });
        }
    };
    let running = common::poll_async(Duration::from_secs(5), || async {
        ledger
            .runs_of("before-drain")
            .first()
            .map(|r| r.node.clone())
    })
    .await;
    assert_eq!(running.as_deref(), Some("worker-01"));
    let out = fleetnix(&["node", "drain", "worker-01"]);
    assert!(out.starts_with("worker-01: drained ("), "{out}");
    let e = b
        .wait_state("worker-01", "healthy", Duration::from_secs(5))
        .await;
    let e = if e.draining {
        e
    } else {
        common::poll_async(Duration::from_secs(5), || async {
            b.health("worker-01").await.filter(|e| e.draining)
        })
        .await
        .expect("fleet-health says worker-01 is draining")
    };
    assert!(e.draining);
    for _ in 0..6 {
        let a = ask(
            &b,
            r#"{"sleep_ms": 0}"#,
            &opts(Duration::from_secs(5), &fleetnix::bus::dispatch::task_id()),
        )
        .await;
        assert_eq!(done(&a).0, "worker-02");
    }
    let (node, _, _) = done(&first.await.unwrap());
    assert_eq!(node, "worker-01");
    let out = fleetnix(&["node", "undrain", "worker-01"]);
    assert!(out.starts_with("worker-01: undrained ("), "{out}");
    let back = common::poll_async(Duration::from_secs(5), || async {
        let a = ask(
            &b,
            r#"{"sleep_ms": 0}"#,
            &opts(Duration::from_secs(5), &fleetnix::bus::dispatch::task_id()),
        )
        .await;
        (done(&a).0 == "worker-01").then_some(())
    })
    .await;
    assert!(back.is_some(), "worker-01 got no task after undrain");
}

/// `fleetnix router` says at start-up where its alerts go; `fleetnix dispatch --payload-file -`
/// sends a payload larger than argv allows (issue 22, smaller defects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_names_its_alert_target_and_dispatch_reads_a_large_payload_from_stdin() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let fleet = common::example_fleet();
    let server = bus_support::NatsServer::start(&fleet);
    fleetnix::bus::registry::sync(
        &async_nats::jetstream::new(server.connect_registry().await),
        &fleet,
    )
    .await
    .unwrap();
    let ledger = Ledger::default();
    let _w1 = worker_on(&server, Duration::from_millis(150), "worker-01", &ledger).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ntfy = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut router = server
        .router_command(&ntfy)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(router.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("alerts") {
                return l;
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert!(said.contains(&format!("go to ntfy at {ntfy}")), "{said}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let big = serde_json::json!({"sleep_ms": 0, "doc": "x".repeat(300 * 1024)}).to_string();
    let out = common::poll_async(Duration::from_secs(15), || async {
        let mut child = tokio::process::Command::new(common::fleetnix_bin())
            .arg("--root")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(["dispatch", "--role", "glm-worker", "--payload-file", "-"])
            .args(["--nats-url", &server.url, "--timeout", "5s"])
            .env(
                "FLEETNIX_NATS_PASSWORD",
                server.service_password(Service::Supervisor).expose(),
            )
            .env_remove("FLEETNIX_NATS_URL")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(big.as_bytes()).await.unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        out.status.success().then_some(out)
    })
    .await
    .expect("dispatch with --payload-file - succeeded");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["node"], "worker-01");
    assert_eq!(ledger.0.lock().unwrap().len(), 1);
}

/// `fleet-health` is written when a node's state changes, not as a down node's silence grows,
/// and a healthy node's `last_heartbeat` is kept fresh (issue 22).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_health_is_written_on_change_with_a_fresh_last_heartbeat() {
    let b = fixture(Duration::from_millis(600)).await;
    let ledger = Ledger::default();
    let _w1 = worker(&b, "worker-01", &ledger).await;
    // control-01 never heart-beats: down after three timeouts.
    b.wait_state("control-01", "down", Duration::from_secs(10))
        .await;
    let js = async_nats::jetstream::new(b.registry.clone());
    let kv = js
        .get_key_value(fleetnix::bus::HEALTH_BUCKET)
        .await
        .unwrap();
    let revision = || async {
        kv.entry("control-01")
            .await
            .unwrap()
            .map(|e| e.revision)
            .unwrap()
    };
    let down_rev = revision().await;
    // worker-01's last_heartbeat moves on twice (at least two node timeouts pass) ...
    let seen = Mutex::new(Vec::new());
    let refreshed = common::poll_async(Duration::from_secs(10), || async {
        let beat = b.health("worker-01").await.and_then(|e| e.last_heartbeat)?;
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&beat) {
            seen.push(beat);
        }
        (seen.len() >= 3).then_some(())
    })
    .await;
    assert!(
        refreshed.is_some(),
        "last_heartbeat was not refreshed: {seen:?}"
    );
    // ... while the down node's record was not rewritten.
    assert_eq!(revision().await, down_rev);
}

/// Issue 22's chaos test: 1,000 tasks of mixed length (a tenth longer than the node timeout)
/// through two `fleetnix router` processes and two reference workers, while worker-01 is killed
/// and restarted, a router process is SIGKILLed and restarted, and nats-server is restarted, at
/// random points (seed printed). The ledger of runs and answers shows: every task answered
/// (result, or an error naming it), no caller waiting past its deadline, no task finished twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_thousand_tasks_through_kills_and_restarts() {
    use rand::{Rng, SeedableRng};
    const TASKS: usize = 1000;
    const AT_ONCE: usize = 40;
    let seed: u64 = std::env::var("FLEETNIX_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut figures = vec![format!(
        "chaos seed {seed} (FLEETNIX_CHAOS_SEED={seed} replays the schedule)"
    )];
    println!("{}", figures[0]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut server, supervisor) = synced_server().await;
    let (url, w1_pw) = (server.url.clone(), server.password("worker-01").clone());
    let ledger = Ledger::default();
    let beat = Duration::from_millis(150);
    let mut w1 = Some(worker_on(&server, beat, "worker-01", &ledger).await);
    let mut w1_start = STARTS.load(std::sync::atomic::Ordering::SeqCst) - 1;
    let mut killed: Vec<u32> = Vec::new();
    let _w2 = worker_on(&server, beat, "worker-02", &ledger).await;
    let mut routers = [server.router_process(), server.router_process()];
    until_served(&supervisor).await;
    let warmup = ledger.0.lock().unwrap().len();

    // The callers: AT_ONCE at a time, each with a deadline of 20 s.
    let timeout = Duration::from_secs(20);
    let lengths: Vec<u64> = (0..TASKS)
        .map(|i| {
            if i % 10 == 0 {
                1500
            } else {
                rng.gen_range(0..100)
            }
        })
        .collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let started = Instant::now();
    let mut callers = Vec::with_capacity(TASKS);
    for (i, ms) in lengths.iter().enumerate() {
        let (supervisor, slots, ms) = (supervisor.clone(), Arc::clone(&slots), *ms);
        callers.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let id = format!("chaos-{i}");
            let mut o = opts(timeout, &id);
            o.reask = Duration::from_millis(1500);
            let t = Instant::now();
            let payload = Bytes::from(format!(r#"{{"sleep_ms": {ms}}}"#));
            let r = router::ask_with(&supervisor, &role(), payload, &o).await;
            (id, t.elapsed(), r)
        }));
    }
    // The chaos, at random points while the tasks run.
    let mut events = vec!["worker", "router", "nats-server", "worker", "router"];
    for i in (1..events.len()).rev() {
        events.swap(i, rng.gen_range(0..=i));
    }
    for event in &events {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
        match *event {
            "worker" => {
                killed.push(w1_start);
                drop(w1.take());
                let client = fleetnix::bus::dispatch::connect(
                    &url,
                    &NodeName::parse("worker-01").unwrap(),
                    &w1_pw,
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
                w1 = Some(worker_client(client, beat, "worker-01", &ledger).await);
                w1_start = STARTS.load(std::sync::atomic::Ordering::SeqCst) - 1;
            }
            "router" => {
                let i = rng.gen_range(0..routers.len());
                routers[i].start_kill().unwrap();
                routers[i].wait().await.unwrap();
                routers[i] = server.router_process();
            }
            _ => server.restart(),
        }
        figures.push(format!(
            "chaos: {event} at {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        println!("{}", figures[figures.len() - 1]);
    }
    let mut answers = Vec::with_capacity(TASKS);
    for c in callers {
        answers.push(c.await.unwrap());
    }
    let elapsed = started.elapsed();

    // The ledger.
    let runs: Vec<Run> = ledger.0.lock().unwrap()[warmup..].to_vec();
    let mut by_task: std::collections::BTreeMap<&str, Vec<&Run>> = Default::default();
    for r in &runs {
        by_task.entry(r.task.as_str()).or_default().push(r);
    }
    let mut ok = 0;
    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    let mut longest = Duration::ZERO;
    for (id, waited, r) in &answers {
        longest = longest.max(*waited);
        assert!(
            *waited <= timeout + Duration::from_millis(200),
            "{id} waited {waited:?}"
        );
        match r {
            Ok(Answer::Done { node, .. }) => {
                ok += 1;
                let mine = by_task.get(id.as_str()).cloned().unwrap_or_default();
                assert!(
                    mine.iter().any(|r| &r.node == node && r.finished),
                    "{id}: answered by {node} without a finished run there: {mine:?}"
                );
            }
            Ok(Answer::Failed(e)) => {
                assert_eq!(&e.task_id, id, "{e:?}");
                *codes.entry(e.code.clone()).or_default() += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains(id.as_str()), "{e}");
                *codes.entry("caller: no answer".into()).or_default() += 1;
            }
        }
    }
    let reruns = by_task.values().filter(|v| v.len() > 1).count();
    // A task may run again only when every earlier run was on a worker that was killed (its
    // node was dead: it lost the run, or its record of the answer).
    let dead = |r: &Run| killed.contains(&r.incarnation);
    let twice: Vec<&str> = by_task
        .iter()
        .filter(|(_, v)| v.len() > 1 && !v[..v.len() - 1].iter().all(|r| dead(r)))
        .map(|(t, _)| *t)
        .collect();
    let after_finish = by_task
        .values()
        .filter(|v| v.iter().filter(|r| r.finished).count() > 1)
        .count();
    let summary = format!(
        "chaos: {TASKS} tasks in {:.1}s: {ok} results, errors {codes:?}; {} runs; {reruns} task(s) run again after their worker was killed ({after_finish} of them had finished there, its record lost with it); {} run twice otherwise; longest caller wait {:.2}s (deadline {}s)",
        elapsed.as_secs_f64(),
        runs.len(),
        twice.len(),
        longest.as_secs_f64(),
        timeout.as_secs()
    );
    println!("{summary}");
    // The figures also go to a file that `.ci/run` prints after the suite (cargo test captures
    // a passing test's output).
    figures.push(summary);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("figures");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chaos.txt"), figures.join("\n") + "\n").unwrap();
    for t in &twice {
        println!("chaos: {t} ran twice: {:?}", by_task[t]);
    }
    assert!(
        twice.is_empty(),
        "ran twice with a live first node: {twice:?}"
    );
    assert_eq!(answers.len(), TASKS);
    drop(w1);
}
