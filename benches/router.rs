//! 10,000 small tasks through the router (`fleet.dispatch.<role>` → router →
//! `fleet.tasks.<role>.<node>`) against the same tasks sent straight to the role's queue group
//! (`fleet.tasks.<role>`), on a real nats-server on loopback running the rendered configuration,
//! with two workers of the role.
//!
//! Latency: median (and p99) of 10,000 tasks one after another. Throughput: 10,000 tasks with
//! 64 in flight. Targets: the router adds at most 1 ms to the median and keeps at least half the
//! direct throughput. Also printed: CPU microseconds per task (this process, which holds the
//! client, the router and both workers, plus nats-server) for each path, whose ratio does not
//! depend on what else the machine is running.
//!
//! The router runs `RouterConfig`'s default number of lanes (connections);
//! `FLEETNIX_BENCH_ROUTER_LANES=N` runs N instead (to compare).
//!
//! `router*`: the same router tasks once more through `fleetnix router` in a process of its own,
//! as on the control plane, where it does not share this process's two runtime threads with the
//! client and the workers; its CPU is counted too.

#[path = "../tests/bus_support/mod.rs"]
mod bus_support;
#[path = "../tests/common/mod.rs"]
mod common;

use bus_support::{Behaviour, NatsServer};
use common::{example_fleet, poll_async};
use fleetnix::bus::router::{self, Answer, Lanes, RouterConfig};
use fleetnix::bus::{self, registry};
use fleetnix::model::{FailoverStrategy, Role};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

const TASKS: usize = 10_000;
const IN_FLIGHT: usize = 64;
const ROLE: &str = "glm-worker";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Router,
}

async fn one(client: &async_nats::Client, mode: Mode, i: usize) {
    let payload: bytes::Bytes = format!(r#"{{"n":{i}}}"#).into();
    match mode {
        Mode::Direct => {
            client
                .request(bus::task_subject(&Role::parse(ROLE).unwrap()), payload)
                .await
                .expect("direct reply");
        }
        Mode::Router => {
            let a = router::ask(
                client,
                &Role::parse(ROLE).unwrap(),
                payload,
                None,
                Duration::from_secs(10),
            )
            .await
            .expect("router reply");
            assert!(matches!(a, Answer::Done { .. }), "{a:?}");
        }
    }
}

async fn latency(client: &async_nats::Client, mode: Mode) -> (Duration, Duration) {
    let mut v = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let t = Instant::now();
        one(client, mode, i).await;
        v.push(t.elapsed());
    }
    v.sort();
    (v[TASKS / 2], v[TASKS * 99 / 100])
}

/// CPU seconds (user + system) this process has used so far.
fn own_cpu() -> f64 {
    common::proc_cpu_seconds("self", false)
}

/// CPU seconds (user + system) process `pid` has used so far.
fn proc_cpu(pid: u32) -> f64 {
    common::proc_cpu_seconds(&pid.to_string(), false)
}

/// Tasks per second with 64 in flight, and CPU microseconds per task: (this process: clients,
/// workers and the in-process router; nats-server; the router's own process, when `router` is
/// given).
async fn throughput(
    client: &async_nats::Client,
    mode: Mode,
    server: u32,
    router: Option<u32>,
) -> (f64, f64, f64, f64) {
    let other = || router.map_or(0.0, proc_cpu);
    let (c0, s0, o0) = (own_cpu(), proc_cpu(server), other());
    let t = Instant::now();
    futures_util::stream::iter(0..TASKS)
        .for_each_concurrent(IN_FLIGHT, |i| async move { one(client, mode, i).await })
        .await;
    let wall = t.elapsed().as_secs_f64();
    let per = |cpu: f64| cpu * 1e6 / TASKS as f64;
    (
        TASKS as f64 / wall,
        per(own_cpu() - c0),
        per(proc_cpu(server) - s0),
        per(other() - o0),
    )
}

/// Waits until a router answers `supervisor` with a node.
async fn wait_ready(supervisor: &async_nats::Client) {
    let ready = poll_async(Duration::from_secs(10), || async {
        let a = router::ask(
            supervisor,
            &Role::parse(ROLE).unwrap(),
            "{}".into(),
            None,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
        matches!(a, Answer::Done { .. }).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the router never answered");
}

/// `fleetnix router` in a process of its own, as on the control plane (default lanes, node
/// timeout 5 s, alerts to a closed loopback port); killed on drop.
struct RouterProcess(std::process::Child);

impl RouterProcess {
    fn spawn(server: &NatsServer) -> Self {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(common::fleetnix_bin())
            .args(["--root", env!("CARGO_MANIFEST_DIR"), "router"])
            .args(["--node-timeout", "5s", "--nats-url", &server.url])
            .env_clear()
            .env(
                "FLEETNIX_NATS_PASSWORD",
                server.creds.router_password().expect("router").expose(),
            )
            .env("FLEETNIX_NTFY_URL", format!("http://127.0.0.1:{closed}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn fleetnix router");
        RouterProcess(child)
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fleet = example_fleet();
        let server = NatsServer::start(&fleet);
        // Asking the router is `_supervisor`'s; sending tasks directly is the router user's
        // (`dispatch --direct`); registering is `_registry`'s.
        let supervisor = server.connect_supervisor().await;
        let direct = server.connect_router().await;
        registry::sync(&async_nats::jetstream::new(server.connect_registry().await), &fleet)
            .await
            .expect("node sync");
        let mut config =
            RouterConfig::new(FailoverStrategy::RoundRobin, true, Duration::from_secs(5));
        if let Some(n) = std::env::var("FLEETNIX_BENCH_ROUTER_LANES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.lanes = n;
        }
        let lanes = config.lanes.max(1);
        let mut lane_clients = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            lane_clients.push(server.connect_router().await);
        }
        let router = router::start(
            lane_clients[1..]
                .iter()
                .fold(Lanes::new(lane_clients[0].clone()), |l, c| {
                    l.with_lane(c.clone())
                }),
            config,
            None,
        )
        .await
        .expect("router");
        let mut w1 = server.worker("worker-01", ROLE, Behaviour::Answer).await;
        let mut w2 = server.worker("worker-02", ROLE, Behaviour::Answer).await;
        w1.heartbeat("worker-01", Duration::from_millis(500), &[]);
        w2.heartbeat("worker-02", Duration::from_millis(500), &[]);
        wait_ready(&supervisor).await;
        // Warm-up.
        for i in 0..500 {
            one(&direct, Mode::Direct, i).await;
            one(&supervisor, Mode::Router, i).await;
        }
        let (d_med, d_p99) = latency(&direct, Mode::Direct).await;
        let (r_med, r_p99) = latency(&supervisor, Mode::Router).await;
        let (d_thr, d_cpu, d_srv, _) =
            throughput(&direct, Mode::Direct, server.pid(), None).await;
        let (r_thr, r_cpu, r_srv, _) =
            throughput(&supervisor, Mode::Router, server.pid(), None).await;
        let per_lane: Vec<u64> = router.lane_stats().iter().map(|l| l.requests).collect();

        // The same through `fleetnix router` in its own process, as in production: the
        // in-process router leaves first (its lanes drained: the server dropped their
        // subscriptions), so the process's lanes take every request.
        drop(router);
        for c in lane_clients {
            let _ = c.drain().await;
        }
        let process = RouterProcess::spawn(&server);
        let router_pid = process.0.id();
        wait_ready(&supervisor).await;
        for i in 0..500 {
            one(&supervisor, Mode::Router, i).await;
        }
        let (p_med, p_p99) = latency(&supervisor, Mode::Router).await;
        let (p_thr, p_cpu, p_srv, p_rtr) =
            throughput(&supervisor, Mode::Router, server.pid(), Some(router_pid)).await;

        // The same router process, with reference workers (`fleetnix::bus::worker`): each task
        // acknowledged, listed in heartbeats and kept for duplicates (issue 22's contract).
        drop(w1);
        drop(w2);
        let mut refs = Vec::new();
        for node in ["worker-01", "worker-02"] {
            let mut o = fleetnix::bus::worker::WorkerOptions::new(
                fleetnix::model::NodeName::parse(node).unwrap(),
                vec![Role::parse(ROLE).unwrap()],
            );
            o.beat = Duration::from_millis(500);
            o.capacity = 64;
            let n = node.to_string();
            refs.push(
                fleetnix::bus::worker::start(server.connect(node).await, o, move |t| {
                    let body = format!(r#"{{"node":"{n}","n":{}}}"#, t.payload.len());
                    async move { fleetnix::bus::worker::TaskOutcome::Done(body.into()) }
                })
                .await
                .expect("reference worker"),
            );
        }
        // The test workers' subscriptions are gone once only reference workers answer.
        for i in 0..500 {
            one(&supervisor, Mode::Router, i).await;
        }
        let (a_med, a_p99) = latency(&supervisor, Mode::Router).await;
        let (a_thr, a_cpu, a_srv, a_rtr) =
            throughput(&supervisor, Mode::Router, server.pid(), Some(router_pid)).await;
        // Failover: worker-01 is killed (its tasks aborted, its connection closed) between two
        // tasks; how long until the router answers the next ones (each of the next 20 timed).
        let killed = refs.remove(0);
        let t = Instant::now();
        drop(killed);
        let mut after = Vec::new();
        for i in 0..20 {
            let s = Instant::now();
            one(&supervisor, Mode::Router, i).await;
            after.push(s.elapsed());
        }
        let failover = t.elapsed();
        after.sort();
        drop(refs);
        drop(process);

        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "router bench: {TASKS} tasks, 2 workers, loopback nats-server, router with {lanes} lane(s)"
        );
        println!(
            "{:<8} {:>10} {:>8} {:>24} {:>34}",
            "path",
            "median ms",
            "p99 ms",
            "tasks/s (64 in flight)",
            "CPU us/task (bench, server[, router])"
        );
        for (name, med, p99, thr, cpu, srv, rtr) in [
            ("direct", d_med, d_p99, d_thr, d_cpu, d_srv, None),
            ("router", r_med, r_p99, r_thr, r_cpu, r_srv, None),
            ("router*", p_med, p_p99, p_thr, p_cpu, p_srv, Some(p_rtr)),
            ("ack*", a_med, a_p99, a_thr, a_cpu, a_srv, Some(a_rtr)),
        ] {
            let extra = rtr.map(|r| format!(", {r:.0}")).unwrap_or_default();
            println!(
                "{name:<8} {:>10.3} {:>8.3} {thr:>24.0} {:>20.0} ({cpu:.0}, {srv:.0}{extra})",
                ms(med),
                ms(p99),
                cpu + srv + rtr.unwrap_or(0.0)
            );
        }
        println!("router*: `fleetnix router` in its own process (default lanes), as on the control plane");
        println!(
            "CPU per task, router / direct: {:.2}; router* / direct: {:.2} (a load-independent view of the throughput ratio)",
            (r_cpu + r_srv) / (d_cpu + d_srv),
            (p_cpu + p_srv + p_rtr) / (d_cpu + d_srv)
        );
        let added = ms(r_med) - ms(d_med);
        println!(
            "added median latency {added:.3} ms (target <= 1 ms: {:.2} of target); throughput ratio {:.2} (target >= 0.5: {:.2} of target)",
            added / 1.0,
            r_thr / d_thr,
            (r_thr / d_thr) / 0.5
        );
        println!(
            "router*: added median latency {:.3} ms; throughput ratio {:.2}",
            ms(p_med) - ms(d_med),
            p_thr / d_thr
        );
        println!(
            "ack*: router* with reference workers (acknowledgement, heartbeats listing tasks, duplicate records): added median {:.3} ms over router*, CPU per task ack* / router* {:.2}, throughput ack* / router* {:.2}",
            ms(a_med) - ms(p_med),
            (a_cpu + a_srv + a_rtr) / (p_cpu + p_srv + p_rtr),
            a_thr / p_thr
        );
        println!("requests per router lane: {per_lane:?}");
        println!(
            "failover after worker-01 is killed: the next 20 tasks answered within {:.1} ms (slowest {:.1} ms, median {:.3} ms)",
            failover.as_secs_f64() * 1000.0,
            after[19].as_secs_f64() * 1000.0,
            after[10].as_secs_f64() * 1000.0
        );
    });
}
