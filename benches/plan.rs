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
use fleetnix::deploy::flake::{eval_targets, OverrideInput};
use fleetnix::model::NodeName;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTS: usize = 20;

/// CPU seconds used by reaped children so far.
fn child_cpu() -> f64 {
    common::proc_cpu_seconds("self", true)
}

/// CPU seconds used so far by every sshd on the machine (the hosts' listeners and, once
/// reaped, their per-connection children): on a real fleet this work runs on the nodes.
fn sshd_cpu() -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "sshd")
        })
        .map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            common::proc_cpu_seconds(&pid, false) + common::proc_cpu_seconds(&pid, true)
        })
        .sum()
}

/// Wall time of the shared evaluation alone (`nix eval` of the nodes' `toplevel`s in one process).
fn eval_time(root: &Path, pinned: &Path, nodes: &[&str]) -> Duration {
    let nix = which::which("nix").expect("nix on PATH");
    let names: Vec<NodeName> = nodes
        .iter()
        .map(|n| NodeName::parse(n).expect("name"))
        .collect();
    let inputs = [OverrideInput::new(
        "nixpkgs",
        &format!("file://{}/nixpkgs.tar.xz", pinned.display()),
    )
    .expect("override")];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    let out = rt.block_on(eval_targets(
        Some(&nix),
        root,
        &names,
        &inputs,
        Duration::from_secs(600),
        1,
    ));
    let took = start.elapsed();
    assert!(
        out.values().all(|r| r.is_ok()) && out.len() == names.len(),
        "evaluation failed: {out:?}"
    );
    took
}

struct Row {
    wall: Duration,
    cpu: f64,
    sshd: f64,
    ssh: usize,
}

/// One fleetnix run; `ssh` replaces the ssh binary (the fast key-exchange wrapper) when given.
fn run(
    net: &Net,
    hosts: &[Host],
    (root, pinned, ssh): (&Path, &Path, Option<&Path>),
    args: &[&str],
    ok: &[i32],
) -> Row {
    let (cpu, sshd, logged_in) = (child_cpu(), sshd_cpu(), sshd_logins(hosts));
    let start = Instant::now();
    let mut cmd = net.command(fleetnix_bin());
    if let Some(ssh) = ssh {
        cmd.env("FLEETNIX_SSH", ssh);
    }
    let out = cmd
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
        sshd: sshd_cpu() - sshd,
        ssh: sshd_logins(hosts) - logged_in,
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
    // The shared evaluation alone, best of three each.
    let all_names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let best = |nodes: &[&str]| {
        (0..3)
            .map(|_| eval_time(&root, &pinned, nodes))
            .min()
            .expect("runs")
    };
    let (eval_one, eval_all) = (best(&all_names[..1]), best(&all_names));
    let wrappers = tempfile::tempdir().expect("wrapper dir");
    let fast = fast_kex_ssh(wrappers.path());
    let mut rows = Vec::new();
    for (kex, ssh) in [("default ssh", None), ("fast kex", Some(fast.as_path()))] {
        let ctx = (root.as_path(), pinned.as_path(), ssh);
        let one = run(&net, &hosts, ctx, &["plan", "n01"], &[0]);
        let all = run(&net, &hosts, ctx, &["plan", "--all"], &[0]);
        let deploy = run(
            &net,
            &hosts,
            ctx,
            &["deploy", "--all", "--action", "test"],
            &[0],
        );
        rows.push((kex, ctx, one, all, deploy));
    }
    // Forced deploys last: the fake nixos-rebuild moves /run/current-system.
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(kex, ctx, one, all, deploy)| {
            let forced = run(
                &net,
                &hosts,
                ctx,
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
            (kex, one, all, deploy, forced)
        })
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "plan bench: {HOSTS} hosts on their target systems, light flake on the pinned nixpkgs, load {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("  (fast kex: ssh offers only curve25519-sha256, as cheap as the mlkem768x25519 of OpenSSH >= 9.9; the default here is OpenSSH 9.2's sntrup761x25519)");
    println!(
        "  shared evaluation alone (nix eval, best of 3): 1 node {:.2}s, {HOSTS} nodes {:.2}s: {:.2}x",
        eval_one.as_secs_f64(),
        eval_all.as_secs_f64(),
        eval_all.as_secs_f64() / eval_one.as_secs_f64()
    );
    for (kex, one, all, deploy, forced) in &rows {
        println!("  {kex:<11} run                    wall   ratio  client CPU  sshd CPU  SSH logins/node");
        let base = one.wall.as_secs_f64();
        for (name, row, nodes) in [
            ("plan n01", one, 1),
            ("plan --all", all, HOSTS),
            ("deploy --all (no change)", deploy, HOSTS),
            ("deploy --all -p 20 --force", forced, HOSTS),
        ] {
            println!(
                "  {name:<30} {:6.2}s  {:5.2}x  {:8.2}s  {:7.2}s  {:5.2}",
                row.wall.as_secs_f64(),
                row.wall.as_secs_f64() / base,
                row.cpu,
                row.sshd,
                row.ssh as f64 / nodes as f64
            );
        }
        println!(
            "  targets ({kex}): plan --all <= 2x plan n01 ({:.2}x); no-change deploy <= plan --all + one round trip per node ({:.2}s vs {:.2}s)",
            all.wall.as_secs_f64() / base,
            deploy.wall.as_secs_f64(),
            all.wall.as_secs_f64()
        );
    }
}
