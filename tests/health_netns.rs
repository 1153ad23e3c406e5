//! Health against real hosts: one network namespace per host behind a bridge in a client
//! namespace, the probes run from inside the client namespace (a thread that `setns`-ed
//! into it), so nothing leaves this machine's own test namespaces. A host whose link is
//! set down is a host that stopped answering: its connects time out.
//!
//! Needs root and `ip`; skips loudly otherwise, but fails when `CI` is set.

mod health_common;

use fleetnix::health::{sweep, NodeState, PortOutcome, Presence, ProbeOptions};
use health_common::*;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

const P1: u16 = 7101;
const P2: u16 = 7102;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = which::which("ip").is_ok();
    if root && ip {
        return true;
    }
    let why = if root { "`ip` not found" } else { "not root" };
    if std::env::var_os("CI").is_some() {
        panic!("health_netns needs root and `ip` in CI: {why}");
    }
    eprintln!("\n!!! SKIPPING health_netns: {why}; namespace hosts were NOT tested !!!\n");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces deleted on drop, even when the test panics.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread that entered network namespace `ns`; sockets it creates stay in `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap();
        // SAFETY: a valid namespace fd; only this thread's namespace changes.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A listener that accepts and drops connections, on a thread of its own.
fn serve(l: std::net::TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
}

#[test]
fn namespace_hosts_healthy_degraded_down() {
    if !can_run() {
        return;
    }
    let tag = format!("fnh{}", std::process::id());
    let client = format!("{tag}cl");
    let hosts = ["h0", "h1", "h2"].map(|h| format!("{tag}{h}"));
    let _guard = Namespaces(
        std::iter::once(client.clone())
            .chain(hosts.iter().cloned())
            .collect(),
    );
    ip(&["netns", "add", &client]);
    ip(&["-n", &client, "link", "set", "lo", "up"]);
    ip(&["-n", &client, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &client, "addr", "add", "100.64.77.1/24", "dev", "br0"]);
    ip(&["-n", &client, "link", "set", "br0", "up"]);
    for (i, h) in hosts.iter().enumerate() {
        let port = format!("vh{i}");
        let addr = format!("100.64.77.{}/24", i + 2);
        ip(&["netns", "add", h]);
        ip(&["-n", h, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &client, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
        ]);
        ip(&["-n", &client, "link", "set", "eth0", "netns", h]);
        ip(&["-n", &client, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &client, "link", "set", &port, "up"]);
        ip(&["-n", h, "addr", "add", &addr, "dev", "eth0"]);
        ip(&["-n", h, "link", "set", "eth0", "up"]);
    }
    // a: both service ports; b: only P1 (P2 refused); c: both, but its link goes down.
    let bind = |ns: &str, ip: &'static str, ports: &'static [u16]| {
        in_netns(ns, move || {
            ports
                .iter()
                .map(|p| std::net::TcpListener::bind((ip, *p)).unwrap())
                .collect::<Vec<_>>()
        })
    };
    for l in bind(&hosts[0], "100.64.77.2", &[P1, P2])
        .into_iter()
        .chain(bind(&hosts[1], "100.64.77.3", &[P1]))
        .chain(bind(&hosts[2], "100.64.77.4", &[P1, P2]))
    {
        serve(l);
    }
    ip(&["-n", &hosts[2], "link", "set", "eth0", "down"]);

    let dir = tempfile::tempdir().unwrap();
    let fleet = write_fleet(
        dir.path(),
        &[
            N {
                name: "cp",
                ip: "100.64.77.2",
                roles: &["control-plane", "svc"],
                cpu: 4,
            },
            N {
                name: "half",
                ip: "100.64.77.3",
                roles: &["svc"],
                cpu: 4,
            },
            N {
                name: "dead",
                ip: "100.64.77.4",
                roles: &["svc"],
                cpu: 4,
            },
        ],
        &[("one", P1, "svc"), ("two", P2, "svc")],
        1,
        "round_robin",
    );
    // The control server still lists the dead host online (as with a stale DERP path).
    let ts = tailnet(&fleet, &["cp", "half", "dead"], &[]);
    let opts = ProbeOptions::for_fleet(&fleet);
    assert_eq!(opts.timeout, Duration::from_secs(1));
    let status_file = dir.path().join("status.json");
    std::fs::write(&status_file, serde_json::to_string(&ts).unwrap()).unwrap();
    let fleet_dir = dir.path().to_path_buf();
    let report = in_netns(&client, move || {
        // Moved in: the fleet is only used inside the client namespace.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { sweep(&fleet, Some(&ts), &opts).await })
    });
    let st = |n: &str| report.nodes.iter().find(|x| x.name.as_str() == n).unwrap();
    assert_eq!(st("cp").state, NodeState::Healthy, "{:?}", st("cp"));
    assert_eq!(st("half").state, NodeState::Degraded, "{:?}", st("half"));
    assert_eq!(st("half").probes[1].outcome, PortOutcome::Refused);
    assert_eq!(st("dead").state, NodeState::Down, "{:?}", st("dead"));
    assert_eq!(st("dead").presence, Presence::Online);
    assert!(st("dead")
        .probes
        .iter()
        .all(|p| p.outcome == PortOutcome::TimedOut));

    // The same through the binary, run inside the client namespace.
    let out = Command::new("ip")
        .args(["netns", "exec", &client, env!("CARGO_BIN_EXE_fleetnix")])
        .arg("--root")
        .arg(&fleet_dir)
        .arg("--fleet-dir")
        .arg(&fleet_dir)
        .arg("health")
        .env(
            "FLEETNIX_TAILSCALE",
            repo().join("tests/fakes/health-tailscale"),
        )
        .env("FAKE_TAILSCALE_STATUS", &status_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let state = |n: &str| {
        text.lines()
            .find(|l| l.starts_with(n))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    assert_eq!(
        [state("cp "), state("half"), state("dead")],
        ["healthy", "degraded", "down"],
        "{text}"
    );
}
