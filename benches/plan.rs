//! `plan` and the no-change deploy: 20 NixOS-like namespace hosts already running their target
//! systems, a git flake evaluated with the pinned nixpkgs (`FLEETNIX_TEST_NIXPKGS`). Prints wall
//! times, ratios, client CPU and SSH connections per node. Targets: `plan` of 20 nodes ≤ 2× `plan`
//! of one (one shared evaluation); a no-change `deploy --all` ≤ its `plan` plus one round trip per
//! node. Needs root; run with `cargo bench --bench plan`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::netns::{Host, Net};
use common::plan::*;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTS: usize = 20;

/// CPU seconds used by reaped children so far.
fn child_cpu() -> f64 {
    common::proc_cpu_seconds("self", true)
}

/// SSH logins so far, summed over the hosts' sshd logs.
fn logins(hosts: &[Host]) -> usize {
    hosts
        .iter()
        .map(|h| {
            std::fs::read_to_string(h.dir.join("sshd.log"))
                .unwrap_or_default()
                .matches("Accepted publickey")
                .count()
        })
        .sum()
}

struct Row {
    wall: Duration,
    cpu: f64,
    ssh: usize,
}

fn run(net: &Net, hosts: &[Host], root: &Path, pinned: &Path, args: &[&str], ok: &[i32]) -> Row {
    let (cpu, ssh) = (child_cpu(), logins(hosts));
    let start = Instant::now();
    let out = net
        .command(fleetnix_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .args(override_args(pinned))
        .arg("--ssh-identity")
        .arg(net.client_key())
        .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
        .env("FLEETNIX_TAILSCALE", "")
        .env("FAKE_RECORD_DIR", root.join("rec"))
        .output()
        .expect("fleetnix runs");
    let wall = start.elapsed();
    assert!(
        out.status.code().is_some_and(|c| ok.contains(&c)),
        "{args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Row {
        wall,
        cpu: child_cpu() - cpu,
        ssh: logins(hosts) - ssh,
    }
}

fn git(root: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

fn main() {
    let Some(pinned) = pinned() else { return };
    let Some(mut net) = Net::new() else { return };
    let mut hosts = Vec::new();
    let mut runs = Vec::new();
    for i in 1..=HOSTS {
        let (h, run) = nixos_host_with_run(&mut net, &format!("n{i:02}"));
        hosts.push(h);
        runs.push(run);
    }
    let tmp = tempfile::tempdir().expect("root");
    let root = tmp.path().canonicalize().expect("abs");
    let specs: Vec<_> = hosts.iter().map(NodeSpec::for_host).collect();
    write_fleet(&root, &specs, 10, false);
    std::fs::write(root.join("flake.nix"), FLAKE).expect("flake.nix");
    std::fs::create_dir_all(root.join("rec")).expect("rec");
    let st = Command::new(fleetnix_bin())
        .arg("--root")
        .arg(&root)
        .arg("render")
        .output()
        .expect("render");
    assert!(st.status.success());
    git(&root, &["init", "-q"]);
    git(&root, &["add", "flake.nix", "fleet", "nix"]);
    git(&root, &["commit", "-q", "-m", "bench"]);
    // Every host already runs its target system (read from plan's own JSON once).
    let out = net
        .command(fleetnix_bin())
        .arg("--root")
        .arg(&root)
        .args(["plan", "--all", "--json"])
        .args(override_args(&pinned))
        .arg("--ssh-identity")
        .arg(net.client_key())
        .env("FLEETNIX_TAILSCALE", "")
        .output()
        .expect("plan");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    for (h, run) in hosts.iter().zip(&runs) {
        let n = v["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == h.name.as_str()))
            .expect("node in plan");
        set_current(run, n["target_system"].as_str().expect("target"));
    }
    let r = root.as_path();
    let one = run(&net, &hosts, r, &pinned, &["plan", "n01"], &[0]);
    let all = run(&net, &hosts, r, &pinned, &["plan", "--all"], &[0]);
    let deploy = run(
        &net,
        &hosts,
        r,
        &pinned,
        &["deploy", "--all", "--action", "test"],
        &[0],
    );
    let forced = run(
        &net,
        &hosts,
        r,
        &pinned,
        &[
            "deploy",
            "--all",
            "--action",
            "test",
            "--parallel",
            "20",
            "--force",
        ],
        &[0],
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "plan bench: {HOSTS} hosts on their target systems, light flake on the pinned nixpkgs, load {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("  run                               wall   ratio  client CPU  SSH logins/node");
    let base = one.wall.as_secs_f64();
    for (name, row, nodes) in [
        ("plan n01", &one, 1),
        ("plan --all", &all, HOSTS),
        ("deploy --all (no change)", &deploy, HOSTS),
        ("deploy --all -p 20 --force", &forced, HOSTS),
    ] {
        println!(
            "  {name:<30} {:6.2}s  {:5.2}x  {:8.2}s  {:5.2}",
            row.wall.as_secs_f64(),
            row.wall.as_secs_f64() / base,
            row.cpu,
            row.ssh as f64 / nodes as f64
        );
    }
    println!(
        "  targets: plan --all <= 2x plan n01 ({:.2}x); no-change deploy <= plan --all + one round trip per node ({:.2}s vs {:.2}s)",
        all.wall.as_secs_f64() / base,
        deploy.wall.as_secs_f64(),
        all.wall.as_secs_f64()
    );
}
