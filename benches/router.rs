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

#[path = "../tests/bus_support/mod.rs"]
mod bus_support;
#[path = "../tests/common/mod.rs"]
mod common;

use bus_support::{Behaviour, NatsServer};
use common::{example_fleet, poll_async};
use fleetnix::bus::{self, registry};
use fleetnix::model::{FailoverStrategy, Role};
use fleetnix::router::{self, Answer, RouterConfig};
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
/// workers and router; nats-server).
async fn throughput(client: &async_nats::Client, mode: Mode, server: u32) -> (f64, f64, f64) {
    let (c0, s0) = (own_cpu(), proc_cpu(server));
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
    )
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
        let supervisor = server.connect("control-01").await;
        registry::sync(&async_nats::jetstream::new(supervisor.clone()), &fleet)
            .await
            .expect("node sync");
        let config = RouterConfig::new(FailoverStrategy::RoundRobin, true, Duration::from_secs(5));
        let _router = router::start(server.connect_router().await, config, None)
            .await
            .expect("router");
        let mut w1 = server.worker("worker-01", ROLE, Behaviour::Answer).await;
        let mut w2 = server.worker("worker-02", ROLE, Behaviour::Answer).await;
        w1.heartbeat("worker-01", Duration::from_millis(500), &[]);
        w2.heartbeat("worker-02", Duration::from_millis(500), &[]);
        // Ready: the router answers with a node.
        let ready = poll_async(Duration::from_secs(10), || async {
            let a = router::ask(
                &supervisor,
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
        // Warm-up.
        for i in 0..500 {
            one(&supervisor, Mode::Direct, i).await;
            one(&supervisor, Mode::Router, i).await;
        }
        let (d_med, d_p99) = latency(&supervisor, Mode::Direct).await;
        let (r_med, r_p99) = latency(&supervisor, Mode::Router).await;
        let (d_thr, d_cpu, d_srv) = throughput(&supervisor, Mode::Direct, server.pid()).await;
        let (r_thr, r_cpu, r_srv) = throughput(&supervisor, Mode::Router, server.pid()).await;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("router bench: {TASKS} tasks, 2 workers, loopback nats-server");
        println!(
            "{:<8} {:>10} {:>8} {:>24} {:>30}",
            "path", "median ms", "p99 ms", "tasks/s (64 in flight)", "CPU us/task (bench, server)"
        );
        for (name, med, p99, thr, cpu, srv) in [
            ("direct", d_med, d_p99, d_thr, d_cpu, d_srv),
            ("router", r_med, r_p99, r_thr, r_cpu, r_srv),
        ] {
            println!(
                "{name:<8} {:>10.3} {:>8.3} {thr:>24.0} {:>20.0} ({cpu:.0}, {srv:.0})",
                ms(med),
                ms(p99),
                cpu + srv
            );
        }
        println!(
            "CPU per task, router / direct: {:.2} (a load-independent view of the throughput ratio)",
            (r_cpu + r_srv) / (d_cpu + d_srv)
        );
        let added = ms(r_med) - ms(d_med);
        println!(
            "added median latency {added:.3} ms (target <= 1 ms: {:.2} of target); throughput ratio {:.2} (target >= 0.5: {:.2} of target)",
            added / 1.0,
            r_thr / d_thr,
            (r_thr / d_thr) / 0.5
        );
        println!(
            "worker share: worker-01 {} / worker-02 {}",
            w1.count(),
            w2.count()
        );
    });
}
