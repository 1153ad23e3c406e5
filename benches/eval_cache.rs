//! The evaluation cache on a generated fleet of real NixOS nodes (default 50; `FLEETNIX_BENCH_NODES`)
//! evaluated with the pinned nixpkgs (`FLEETNIX_TEST_NIXPKGS`): one node planned alone (no
//! cache, and cold with the cache), the whole fleet cold, again with nothing changed, one node
//! changed, a shared module changed. Prints wall time, CPU of the evaluators, peak memory
//! (resident memory of this run's `nix` processes at once, sampled every 50 ms, and of the
//! largest one) and ratios. Targets: one node changed ≤ 1.5× one node planned alone; a shared change ≈
//! cold. Expensive (about 10 CPU-minutes): `nice -n 10 cargo bench --bench eval_cache`.

#[path = "../tests/common/mod.rs"]
mod common;

use fleetnix::deploy::evalcache::{self, EvalSettings, TargetFrom};
use fleetnix::model::NodeName;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU seconds used by reaped children so far.
fn child_cpu() -> f64 {
    common::proc_cpu_seconds("self", true)
}

/// The parent of process `pid`.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Is `pid` a descendant of this process (not another user's `nix` on a shared machine)?
fn ours(mut pid: u32) -> bool {
    let me = std::process::id();
    for _ in 0..64 {
        match ppid(pid) {
            Some(p) if p == me => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// (sum, largest) resident kB of this process's `nix` descendants now.
fn nix_rss() -> (u64, u64) {
    let mut sum = 0;
    let mut max = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(ours)
            && std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "nix")
        {
            let kb = std::fs::read_to_string(p.join("status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .unwrap_or(0);
            sum += kb;
            max = max.max(kb);
        }
    }
    (sum, max)
}

struct Measured {
    wall: Duration,
    cpu: f64,
    peak_total_kb: u64,
    peak_one_kb: u64,
    evaluated: usize,
}

fn measure(f: impl FnOnce() -> usize) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let (total, one) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (stop, total, one) = (stop.clone(), total.clone(), one.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (s, m) = nix_rss();
                total.fetch_max(s, Ordering::Relaxed);
                one.fetch_max(m, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let cpu0 = child_cpu();
    let t = Instant::now();
    let evaluated = f();
    let wall = t.elapsed();
    let cpu = child_cpu() - cpu0;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    Measured {
        wall,
        cpu,
        peak_total_kb: total.load(Ordering::Relaxed),
        peak_one_kb: one.load(Ordering::Relaxed),
        evaluated,
    }
}

fn print(what: &str, m: &Measured) {
    println!(
        "{what:<34} {:>8.1} s wall {:>8.1} s CPU  {:>3} evaluated  peak {:>6} MB all nix, {:>5} MB largest",
        m.wall.as_secs_f64(),
        m.cpu,
        m.evaluated,
        m.peak_total_kb / 1024,
        m.peak_one_kb / 1024
    );
}

fn git(root: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["-c", "user.name=b", "-c", "user.email=b@example.com"])
        .args(args)
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

/// The example repository with its nodes replaced by `n` workers made from worker-01 (its
/// rendered module, secrets and hardware configuration, renamed), a user's extra module, and a
/// flake.lock of the pinned inputs; a git repository.
fn make_fleet(tmp: &Path, pinned: &Path, n: usize) -> (PathBuf, Vec<NodeName>) {
    let root = tmp.join("fleet");
    let repo = common::repo();
    let files = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["ls-files", "-z"])
        .output()
        .expect("git");
    for rel in files.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = std::str::from_utf8(rel).expect("utf-8");
        if rel.starts_with("nix/nodes/") || rel.starts_with("hosts/") || !repo.join(rel).is_file() {
            continue;
        }
        let to = root.join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(repo.join(rel), &to).expect("copy");
    }
    let module = std::fs::read_to_string(repo.join("nix/nodes/worker-01.nix")).expect("module");
    let hw = std::fs::read_to_string(repo.join("hosts/worker-01/hardware-configuration.nix"))
        .expect("hardware");
    let mut names = Vec::new();
    for i in 1..=n {
        let name = format!("node-{i:03}");
        let w = |p: &str, text: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        w(
            &format!("nix/nodes/{name}.nix"),
            &module.replace("worker-01", &name),
        );
        w(
            &format!("hosts/{name}/hardware-configuration.nix"),
            &hw.replace("worker-01", &name),
        );
        for s in ["tailscale-authkey.age", "nats-password.age"] {
            let from = repo.join("secrets/worker-01").join(s);
            let to = root.join(format!("secrets/{name}/{s}"));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(from, to).expect("secret");
        }
        names.push(NodeName::parse(&name).expect("name"));
    }
    std::fs::create_dir_all(root.join("extra")).expect("mkdir");
    std::fs::write(
        root.join("extra/module.nix"),
        "{ ... }: { imports = [ ./motd.nix ]; }\n",
    )
    .expect("write");
    std::fs::write(root.join("extra/motd.nix"), "{ users.motd = \"0\"; }\n").expect("write");
    let flake = std::fs::read_to_string(root.join("flake.nix")).expect("flake.nix");
    std::fs::write(
        root.join("flake.nix"),
        flake.replacen(
            "dir = ./.;\n      };",
            "dir = ./.;\n        modules = [ ./extra/module.nix ];\n      };",
            1,
        ),
    )
    .expect("write");
    git(&root, &["init", "-q"]);
    git(&root, &["add", "-A"]);
    let st = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "flake",
            "lock",
        ])
        .args(["--override-input", "nixpkgs"])
        .arg(format!("file://{}/nixpkgs.tar.xz", pinned.display()))
        .args(["--override-input", "agenix"])
        .arg(format!("path:{}/agenix", pinned.display()))
        .arg(&root)
        .status()
        .expect("nix");
    assert!(st.success(), "nix flake lock");
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-qm", "fleet"]);
    (root, names)
}

fn main() {
    let Some(pinned) = std::env::var_os("FLEETNIX_TEST_NIXPKGS").map(PathBuf::from) else {
        eprintln!("FLEETNIX_TEST_NIXPKGS is not set: nothing to measure");
        return;
    };
    let pinned = std::fs::canonicalize(&pinned).expect("pinned");
    let n: usize = std::env::var("FLEETNIX_BENCH_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().expect("tmp");
    let (root, names) = make_fleet(tmp.path(), &pinned, n);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let settings = |cache: bool| EvalSettings {
        nix: Some(which::which("nix").expect("nix")),
        strace: Some(which::which("strace").expect("strace")),
        timeout: Duration::from_secs(3600),
        jobs: 0,
        cache,
    };
    let jobs = evalcache::default_jobs();
    println!(
        "evaluation cache: {n} NixOS nodes, {jobs} evaluator(s) at once (cores {}, memory)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let run = |cache: bool, nodes: &[NodeName]| {
        let t = rt.block_on(evalcache::eval_targets(&settings(cache), &root, nodes, &[]));
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        for (node, (r, _)) in &t.nodes {
            assert!(r.is_ok(), "{node}: {r:?}");
        }
        t.nodes
            .values()
            .filter(|(_, f)| *f == TargetFrom::Evaluation)
            .count()
    };
    // Warm the store (the pinned nixpkgs unpacked) outside the figures.
    run(false, &names[..1]);

    let alone = measure(|| run(false, &names[..1]));
    print("one node alone, no cache", &alone);
    let alone_cold = measure(|| run(true, &names[..1]));
    print("one node alone, cache cold", &alone_cold);
    let cold = measure(|| run(true, &names));
    print(&format!("{n} nodes, cache cold"), &cold);
    let none = measure(|| run(true, &names));
    print(&format!("{n} nodes, nothing changed"), &none);
    std::fs::write(
        root.join("hosts/node-007/extra.nix"),
        "{ networking.domain = \"changed.example\"; }\n",
    )
    .expect("write");
    git(&root, &["add", "-A"]);
    let one = measure(|| run(true, &names));
    print(&format!("{n} nodes, one node changed"), &one);
    std::fs::write(root.join("extra/motd.nix"), "{ users.motd = \"1\"; }\n").expect("write");
    git(&root, &["add", "-A"]);
    let shared = measure(|| run(true, &names));
    print(&format!("{n} nodes, shared module changed"), &shared);

    let r = |a: &Measured, b: &Measured| a.wall.as_secs_f64() / b.wall.as_secs_f64().max(1e-9);
    println!(
        "ratios (wall): one changed / one alone (no cache) {:.2} (target ≤ 1.5); one changed / one alone (cache cold) {:.2}; shared / cold {:.2} (target ≈ 1); nothing changed / cold {:.3}",
        r(&one, &alone),
        r(&one, &alone_cold),
        r(&shared, &cold),
        r(&none, &cold),
    );
    println!(
        "ratios (CPU): one changed / one alone (no cache) {:.2}; shared / cold {:.2}",
        one.cpu / alone.cpu.max(1e-9),
        shared.cpu / cold.cpu.max(1e-9)
    );
}
