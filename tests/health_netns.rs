//! Health against real hosts: bare namespace hosts (no sshd) of the shared test network
//! (`common::netns`) serve the service ports; the probes run inside its hub, so nothing leaves
//! this machine's own test namespaces. A host whose link is set down is a host that stopped
//! answering: its connects time out.
//!
//! Needs root and `ip netns`; skips loudly otherwise, but fails when `CI` is set.

mod common;
mod health_common;

use common::netns::{run_in, HostOptions, Net};
use fleetnix::health::{sweep, NodeState, PortOutcome, Presence, ProbeOptions};
use health_common::*;
use std::time::Duration;

const P1: u16 = 7101;
const P2: u16 = 7102;

#[test]
fn namespace_hosts_healthy_degraded_down() {
    let Some(mut net) = Net::new() else { return };
    let bare = || HostOptions {
        no_sshd: true,
        ..Default::default()
    };
    let hosts = ["h0", "h1", "h2"].map(|h| net.add_host(h, bare()));
    // a: both service ports; b: only P1 (P2 refused); c: both, but its link goes down.
    for (h, ports) in hosts.iter().zip([&[P1, P2][..], &[P1], &[P1, P2]]) {
        let addr = h.addr;
        let listeners = run_in(&h.ns, move || {
            ports
                .iter()
                .map(|p| std::net::TcpListener::bind((addr, *p)).unwrap())
                .collect::<Vec<_>>()
        });
        for l in listeners {
            // Accepts and drops connections, on a thread of its own.
            std::thread::spawn(move || l.incoming().for_each(drop));
        }
    }
    net.link_down(&hosts[2]);
    let addr = |i: usize| hosts[i].addr.to_string();

    let dir = tempfile::tempdir().unwrap();
    let fleet = write_fleet(
        dir.path(),
        &[
            N::new("cp", &addr(0), &["control-plane", "svc"]),
            N::new("half", &addr(1), &["svc"]),
            N::new("dead", &addr(2), &["svc"]),
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
    let report = run_in(net.hub(), move || {
        // Moved in: the fleet is only used inside the hub, where the hosts are reachable.
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

    // The same through the binary, run inside the hub.
    let out = net
        .command(common::fleetnix_bin())
        .arg("--root")
        .arg(&fleet_dir)
        .arg("--fleet-dir")
        .arg(&fleet_dir)
        .arg("health")
        .env("FLEETNIX_TAILSCALE", common::fake_tailscale())
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
