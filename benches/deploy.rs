//! Deploy parallelism: 20 namespace hosts, a fake nixos-rebuild that takes 2 s per node.
//! Prints wall times and their ratios to deploying one node. Target: ≤ 1.3× one node when every
//! node can run at once. Needs root (network namespaces); run with `cargo bench --bench deploy`.
//! The last rows repeat the runs with `--ssh-multiplex` (one shared SSH connection per node).

#[path = "../tests/common/mod.rs"]
mod common;

use common::netns::{Host, Net};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const HOSTS: usize = 20;
const DELAY: &str = "2";

/// CPU seconds used by reaped children so far.
fn child_cpu() -> f64 {
    common::proc_cpu_seconds("self", true)
}

/// One timed deploy: wall time, client CPU and SSH logins. `ssh` replaces the ssh binary (the
/// fast key-exchange wrapper) when given.
fn timed(
    (net, hosts, ssh): (&Net, &[Host], Option<&Path>),
    root: &Path,
    args: &[&str],
) -> (Duration, f64, usize) {
    let (cpu, logged_in) = (child_cpu(), sshd_logins(hosts));
    let start = Instant::now();
    let mut cmd = deploy_cmd(net, root, args);
    if let Some(ssh) = ssh {
        cmd.env("FLEETNIX_SSH", ssh);
    }
    let out = cmd
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
    (t, cpu, sshd_logins(hosts) - logged_in)
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
    let wrappers = tempfile::tempdir().expect("wrapper dir");
    let fast = fast_kex_ssh(wrappers.path());
    let plain = (&net, hosts.as_slice(), None);
    let quick = (&net, hosts.as_slice(), Some(fast.as_path()));
    const MUX: &str = "--ssh-multiplex";
    const ALL20: [&str; 5] = ["--all", "--action", "test", "--parallel", "20"];
    // Warm-up (renders the node modules once).
    let _ = timed(plain, r, &["n01", "--action", "test"]);
    let one = timed(plain, r, &["n01", "--action", "test"]);
    let runs = [
        ("one node", 1, one),
        (
            "--all (default parallel)",
            HOSTS,
            timed(plain, r, &["--all", "--action", "test"]),
        ),
        ("--all --parallel 20", HOSTS, timed(plain, r, &ALL20)),
        (
            "--all --parallel 1",
            HOSTS,
            timed(plain, r, &["--all", "--action", "test", "--parallel", "1"]),
        ),
        (
            "one node, multiplexed",
            1,
            timed(plain, r, &["n01", "--action", "test", MUX]),
        ),
        (
            "--all -p 20, multiplexed",
            HOSTS,
            timed(plain, r, &[&ALL20[..], &[MUX]].concat()),
        ),
        (
            "--all -p 1, multiplexed",
            HOSTS,
            timed(
                plain,
                r,
                &["--all", "--action", "test", "--parallel", "1", MUX],
            ),
        ),
        (
            "fast kex: one node",
            1,
            timed(quick, r, &["n01", "--action", "test"]),
        ),
        ("fast kex: --all -p 20", HOSTS, timed(quick, r, &ALL20)),
        (
            "fast kex: -p 20, mux",
            HOSTS,
            timed(quick, r, &[&ALL20[..], &[MUX]].concat()),
        ),
    ];
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
    println!("  (fast kex: ssh offers only curve25519-sha256, as cheap as the mlkem768x25519 of OpenSSH >= 9.9; the default here is OpenSSH 9.2's sntrup761x25519; ratios of fast-kex rows are to the fast-kex one node)");
    println!("  run                        wall   ratio  client CPU (fleetnix+ssh+fake)  per node  SSH logins/node");
    let fast_one = runs[7].2 .0.as_secs_f64();
    for (name, nodes, (wall, cpu, ssh)) in runs {
        let base = if name.starts_with("fast") {
            fast_one
        } else {
            one.0.as_secs_f64()
        };
        println!(
            "  {name:<25} {:6.2}s  {:5.2}x  {cpu:5.2}s  {:8.3}s  {:5.2}",
            wall.as_secs_f64(),
            wall.as_secs_f64() / base,
            cpu / nodes as f64,
            ssh as f64 / nodes as f64
        );
    }
    println!("  target: --all <= 1.3x one node when all {HOSTS} run at once (--parallel >= {HOSTS}; the default is 10)");
}
