//! Health sweep of 1,000 nodes: loopback listeners, 10 % silent, timeout 2 s.
//! Prints the total time and its ratio to one timeout; target ≤ timeout + 0.5 s.
//!
//! "Silent" nodes are loopback listeners with a backlog of 0 whose only queue slot is
//! taken: the kernel drops further SYNs, so a connect hangs until the probe's timeout,
//! exactly like a host that stopped answering, without any packet leaving loopback.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/health_common/mod.rs"]
mod health_common;

use fleetnix::health::{sweep, NodeState, ProbeOptions};
use health_common::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const NODES: usize = 1000;
const SILENT_EVERY: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(2);
const RUNS: usize = 3;

fn raise_nofile() {
    // Each node needs a listener, a probe socket and an accepted socket.
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
}

fn loopback(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

#[tokio::main]
async fn main() {
    raise_nofile();
    // One port for every node's service, each node on its own loopback address.
    let (first, _h0) = open_listener(loopback(0), 0).await;
    let port = first.port();
    let mut open = vec![_h0];
    let mut silent = Vec::new();
    for i in 1..NODES {
        if i % SILENT_EVERY == SILENT_EVERY - 1 {
            silent.push(silent_listener(loopback(i), port));
        } else {
            open.push(open_listener(loopback(i), port).await.1);
        }
    }
    let names: Vec<String> = (0..NODES).map(|i| format!("node-{i:04}")).collect();
    let ips: Vec<String> = (0..NODES)
        .map(|i| format!("100.64.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let nodes: Vec<N> = (0..NODES)
        .map(|i| N {
            name: &names[i],
            ip: &ips[i],
            roles: if i == 0 {
                &["control-plane", "svc"]
            } else {
                &["svc"]
            },
            cpu: 4,
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = write_fleet(
        dir.path(),
        &nodes,
        &[("svc", port, "svc")],
        2,
        "round_robin",
    );
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let ts = tailnet(&fleet, &all, &[]);
    let mut opts = ProbeOptions::for_fleet(&fleet).with_timeout(TIMEOUT);
    for (i, n) in fleet.nodes.iter().enumerate() {
        // fleet.nodes is sorted by name, which is index order here.
        opts = opts.with_address(n.name.clone(), loopback(i));
    }
    println!(
        "health sweep: {NODES} nodes, {} silent, timeout {:.1}s, {RUNS} runs",
        silent.len(),
        TIMEOUT.as_secs_f64()
    );
    let mut worst = Duration::ZERO;
    for run in 1..=RUNS {
        let t = Instant::now();
        let r = sweep(&fleet, Some(&ts), &opts).await;
        let took = t.elapsed();
        worst = worst.max(took);
        let count = |s| r.nodes.iter().filter(|n| n.state == s).count();
        println!(
            "run {run}: total {:.3}s  ratio to one timeout {:.3}  healthy {}  degraded {}  down {}",
            took.as_secs_f64(),
            took.as_secs_f64() / TIMEOUT.as_secs_f64(),
            count(NodeState::Healthy),
            count(NodeState::Degraded),
            count(NodeState::Down),
        );
        assert_eq!(
            count(NodeState::Down),
            silent.len(),
            "every silent node is down"
        );
    }
    let target = TIMEOUT + Duration::from_millis(500);
    println!(
        "worst {:.3}s vs target {:.1}s (timeout + 0.5s): {}",
        worst.as_secs_f64(),
        target.as_secs_f64(),
        if worst <= target { "met" } else { "MISSED" }
    );
}
