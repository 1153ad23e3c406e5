//! Golden outputs of `status`, `health` and `acl check`: exact stdout, stderr and exit code,
//! byte-compared with the files under `tests/golden/<command>/` (written by the code before the
//! CLI refactor of issue 11, so the refactor provably changes none of them).
//!
//! `FLEETNIX_UPDATE_GOLDEN=1 cargo test --test cli_golden` rewrites the files (review the diff).
//! Paths of this checkout are shown as `<repo>`, the watch's RFC 3339 time stamp as `<time>`.
//! The health tests run the binary inside a namespace test network (root; skip loudly
//! otherwise, fail under `CI`), so probes never leave this machine's test namespaces.

mod common;
mod health_common;

use common::netns::{run_in, HostOptions, Net};
use common::{fake_tailscale, fleetnix_bin, repo, status_fixture};
use health_common::{tailnet, write_fleet, N};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `tests/golden/<group>/<name>.{stdout,stderr,code}`.
fn golden_dir(group: &str) -> PathBuf {
    repo().join("tests/golden").join(group)
}

/// Replaces what differs between checkouts and runs: the repository path, a temp dir, and
/// RFC 3339 stamps.
fn normalize(text: &str, temp: Option<&Path>) -> String {
    let mut t = text.replace(&repo().display().to_string(), "<repo>");
    if let Some(d) = temp {
        t = t.replace(&d.display().to_string(), "<tmp>");
    }
    // `2026-12-01T02:34:50Z` → `<time>`.
    let mut out = String::with_capacity(t.len());
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if i + 20 <= b.len() && is_stamp(&b[i..i + 20]) {
            out.push_str("<time>");
            i += 20;
        } else {
            let ch = t[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_stamp(s: &[u8]) -> bool {
    let shape = b"dddd-dd-ddTdd:dd:ddZ";
    s.iter().zip(shape).all(|(c, p)| match p {
        b'd' => c.is_ascii_digit(),
        _ => c == p,
    })
}

/// Compares (or, with `FLEETNIX_UPDATE_GOLDEN=1`, writes) one run's outputs.
fn check(group: &str, name: &str, out: &std::process::Output, temp: Option<&Path>) {
    let dir = golden_dir(group);
    let got = [
        (
            "stdout",
            normalize(&String::from_utf8_lossy(&out.stdout), temp),
        ),
        (
            "stderr",
            normalize(&String::from_utf8_lossy(&out.stderr), temp),
        ),
        (
            "code",
            format!(
                "{}\n",
                out.status
                    .code()
                    .map_or("signal".to_string(), |c| c.to_string())
            ),
        ),
    ];
    if std::env::var_os("FLEETNIX_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (ext, text) in &got {
            std::fs::write(dir.join(format!("{name}.{ext}")), text).unwrap();
        }
        return;
    }
    for (ext, text) in &got {
        let file = dir.join(format!("{name}.{ext}"));
        let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (FLEETNIX_UPDATE_GOLDEN=1 writes it)",
                file.display()
            )
        });
        assert_eq!(
            text,
            &want,
            "{group}/{name}.{ext} differs from {}",
            file.display()
        );
    }
}

/// `fleetnix --root <repo> <args>` with the fake `tailscale` reporting `status` (`None`:
/// tailscaled unreachable).
fn example(args: &[&str], status: Option<&Path>) -> Command {
    let mut cmd = Command::new(fleetnix_bin());
    cmd.arg("--root")
        .arg(repo())
        .args(args)
        .current_dir(repo())
        .env("FLEETNIX_TAILSCALE", fake_tailscale())
        .env_remove("FLEETNIX_FLEET_DIR")
        .env_remove("FAKE_TAILSCALE_STATUS")
        .env("NO_COLOR", "1");
    if let Some(s) = status {
        cmd.env("FAKE_TAILSCALE_STATUS", s);
    }
    cmd
}

#[test]
fn status_golden() {
    let st = status_fixture();
    let out = example(&["status"], Some(&st)).output().unwrap();
    check("status", "drift", &out, None);
    let out = example(&["status", "--json"], Some(&st)).output().unwrap();
    check("status", "drift-json", &out, None);

    // No drift: the fixture without the unmanaged worker-03.
    let dir = tempfile::tempdir().unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&st).unwrap()).unwrap();
    v["Peer"]
        .as_object_mut()
        .unwrap()
        .retain(|_, p| p["HostName"] != "worker-03");
    let clean = dir.path().join("status.json");
    std::fs::write(&clean, v.to_string()).unwrap();
    let out = example(&["status"], Some(&clean)).output().unwrap();
    check("status", "clean", &out, Some(dir.path()));

    // tailscaled unreachable: could not run.
    let out = example(&["status"], None).output().unwrap();
    check("status", "no-tailscaled", &out, None);
}

#[test]
fn acl_check_golden() {
    // The committed policy agrees with the fleet.
    let out = example(&["acl", "check"], None).output().unwrap();
    check("acl", "pass", &out, None);
    // The seed's policy has findings (relative path: the output names it).
    let seed = "tests/fixtures/seed-acl-policy.hujson";
    let out = example(&["acl", "check", seed], None).output().unwrap();
    check("acl", "fail", &out, None);
    let out = example(&["acl", "check", "--json", seed], None)
        .output()
        .unwrap();
    check("acl", "fail-json", &out, None);
    let out = example(
        &["acl", "check", "tests/fixtures/no-such-policy.hujson"],
        None,
    )
    .output()
    .unwrap();
    check("acl", "missing-file", &out, None);
}

const P1: u16 = 7201;
const P2: u16 = 7202;

/// A namespace network with four fleet nodes: `cp` serves both service ports, `half` only P1,
/// `off` is offline in the tailnet and `gone` missing from it. Returns the network, the fleet
/// dir, the status file and a status file in which only `cp` and `half` are listed (online).
fn health_net(dir: &Path) -> Option<(Net, PathBuf, PathBuf, PathBuf)> {
    let mut net = Net::new()?;
    let bare = || HostOptions {
        no_sshd: true,
        ..Default::default()
    };
    let hosts = ["h0", "h1", "h2", "h3"].map(|h| net.add_host(h, bare()));
    for (h, ports) in hosts.iter().take(2).zip([&[P1, P2][..], &[P1]]) {
        let addr = h.addr;
        let listeners = run_in(&h.ns, move || {
            ports
                .iter()
                .map(|p| std::net::TcpListener::bind((addr, *p)).unwrap())
                .collect::<Vec<_>>()
        });
        for l in listeners {
            std::thread::spawn(move || l.incoming().for_each(drop));
        }
    }
    let addr = |i: usize| hosts[i].addr.to_string();
    let (a0, a1, a2, a3) = (addr(0), addr(1), addr(2), addr(3));
    let fleet = write_fleet(
        dir,
        &[
            N::new("cp", &a0, &["control-plane", "svc"]),
            N::new("half", &a1, &["svc"]),
            N::new("off", &a2, &["svc"]),
            N::new("gone", &a3, &["svc"]),
        ],
        &[("one", P1, "svc"), ("two", P2, "svc")],
        1,
        "round_robin",
    );
    let status = dir.join("status.json");
    std::fs::write(
        &status,
        serde_json::to_string(&tailnet(&fleet, &["cp", "half"], &["off"])).unwrap(),
    )
    .unwrap();
    let up = dir.join("status-up.json");
    let small = dir.join("small");
    // Only the two serving nodes: a fleet with no down node (the watch then sends no alert).
    write_fleet(
        &small,
        &[
            N::new("cp", &a0, &["control-plane", "svc"]),
            N::new("half", &a1, &["svc"]),
        ],
        &[("one", P1, "svc"), ("two", P2, "svc")],
        1,
        "round_robin",
    );
    std::fs::write(
        &up,
        serde_json::to_string(&tailnet(&fleet, &["cp", "half"], &[])).unwrap(),
    )
    .unwrap();
    Some((net, dir.to_path_buf(), status, up))
}

fn health_cmd(net: &Net, fleet_dir: &Path, status: &Path, args: &[&str]) -> Command {
    let mut cmd = net.command(fleetnix_bin());
    cmd.arg("--root")
        .arg(fleet_dir)
        .arg("--fleet-dir")
        .arg(fleet_dir)
        .arg("health")
        // Probes only: these goldens are the probes' output (the router's view is tested in
        // tests/health_router.rs, with a real nats-server).
        .arg("--no-bus")
        .args(args)
        .env("FLEETNIX_TAILSCALE", fake_tailscale())
        .env("FAKE_TAILSCALE_STATUS", status)
        .env("NO_COLOR", "1");
    cmd
}

#[test]
fn health_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((net, fleet_dir, status, up)) = health_net(tmp.path()) else {
        return;
    };
    let t = Some(tmp.path());
    let out = health_cmd(&net, &fleet_dir, &status, &[]).output().unwrap();
    check("health", "one-shot", &out, t);
    let out = health_cmd(&net, &fleet_dir, &status, &["--json"])
        .output()
        .unwrap();
    check("health", "one-shot-json", &out, t);

    let small = fleet_dir.join("small");
    let watch = ["--watch", "--interval", "100ms", "--count", "2"];
    let out = health_cmd(&net, &small, &up, &watch).output().unwrap();
    check("health", "watch", &out, t);
    let mut json = watch.to_vec();
    json.push("--json");
    let out = health_cmd(&net, &small, &up, &json).output().unwrap();
    check("health", "watch-json", &out, t);

    // tailscaled unreachable: one-shot fails, the watch warns and keeps going.
    let missing = tmp.path().join("no-status.json");
    let out = health_cmd(&net, &fleet_dir, &missing, &[])
        .output()
        .unwrap();
    check("health", "no-tailscaled", &out, t);
    let out = health_cmd(&net, &small, &missing, &watch).output().unwrap();
    check("health", "watch-no-tailscaled", &out, t);
}
