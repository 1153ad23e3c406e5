//! Deploy parallelism: 20 namespace hosts, a fake nixos-rebuild that takes 2 s per node.
//! Prints wall times and their ratios to deploying one node. Target: ≤ 1.3× one node when every
//! node can run at once. Needs root (network namespaces); run with `cargo bench --bench deploy`.
//! The last rows repeat the runs with `--ssh-multiplex` (one shared SSH connection per node).

#[path = "../tests/common/mod.rs"]
mod common;

use common::netns::Net;
use common::*;
use std::time::{Duration, Instant};

const HOSTS: usize = 20;
const DELAY: &str = "2";

/// CPU seconds used by reaped children so far.
fn child_cpu() -> f64 {
    common::proc_cpu_seconds("self", true)
}

fn timed(net: &Net, root: &std::path::Path, args: &[&str]) -> (Duration, f64) {
    let cpu = child_cpu();
    let start = Instant::now();
    let out = deploy_cmd(net, root, args)
        .env("FAKE_REBUILD_DELAY", DELAY)
        .output()
        .expect("fleetnix runs");
    let t = start.elapsed();
    let cpu = child_cpu() - cpu;
    assert!(
        out.status.success(),
        "deploy {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (t, cpu)
}

fn main() {
    let Some(mut net) = Net::new() else { return };
    let hosts: Vec<_> = (1..=HOSTS)
        .map(|i| nixos_host(&mut net, &format!("n{i:02}")))
        .collect();
    let root = tempfile::tempdir().expect("root");
    let specs: Vec<_> = hosts.iter().map(NodeSpec::for_host).collect();
    write_fleet(root.path(), &specs, 10, false);
    let r = root.path();
    // Warm-up (renders the node modules once).
    let _ = timed(&net, r, &["n01", "--action", "test"]);
    let one = timed(&net, r, &["n01", "--action", "test"]);
    let default = timed(&net, r, &["--all", "--action", "test"]);
    let all_at_once = timed(&net, r, &["--all", "--action", "test", "--parallel", "20"]);
    let serial = timed(&net, r, &["--all", "--action", "test", "--parallel", "1"]);
    const MUX: &str = "--ssh-multiplex";
    let one_mux = timed(&net, r, &["n01", "--action", "test", MUX]);
    let all_mux = timed(
        &net,
        r,
        &["--all", "--action", "test", "--parallel", "20", MUX],
    );
    let serial_mux = timed(
        &net,
        r,
        &["--all", "--action", "test", "--parallel", "1", MUX],
    );
    let ratio = |d: (Duration, f64)| d.0.as_secs_f64() / one.0.as_secs_f64();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "deploy bench: {HOSTS} hosts, fake nixos-rebuild {DELAY}s per node, {} CPUs, load {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  run                        wall   ratio  client CPU (fleetnix+ssh+fake)");
    for (name, r) in [
        ("one node", one),
        ("--all (default parallel)", default),
        ("--all --parallel 20", all_at_once),
        ("--all --parallel 1", serial),
        ("one node, multiplexed", one_mux),
        ("--all -p 20, multiplexed", all_mux),
        ("--all -p 1, multiplexed", serial_mux),
    ] {
        println!(
            "  {name:<25} {:6.2}s  {:5.2}x  {:5.2}s",
            r.0.as_secs_f64(),
            ratio(r),
            r.1
        );
    }
    println!("  target: --all <= 1.3x one node when all {HOSTS} run at once (--parallel >= {HOSTS}; the default is 10)");
}
