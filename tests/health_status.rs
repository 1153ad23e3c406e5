//! `tailscale status --json` parsing and `status` drift, against the reference fixture.

mod common;

use common::{
    example_fleet, fake_tailscale, fake_tailscale_reporting, fleetnix_bin, repo, status_fixture,
    status_fixture_text, write_script,
};
use fleetnix::health::status::{status_report, Drift};
use fleetnix::tailscale::{Connection, Tailscale, TailscaleError, TailscaleStatus};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn parses_direct_relay_offline_and_self() {
    let st = TailscaleStatus::parse(&status_fixture_text()).unwrap();
    assert!(st.is_running());
    assert_eq!(st.current_tailnet.as_ref().unwrap().name, "example.com");
    let names: Vec<(&str, bool)> = st
        .devices()
        .iter()
        .map(|d| (d.peer.host_name.as_str(), d.is_self))
        .collect();
    assert_eq!(
        names,
        [
            ("control-01", true),
            ("worker-01", false),
            ("worker-02", false),
            ("worker-03", false)
        ]
    );
    let conn = |n: &str| st.find(n).unwrap().connection();
    assert_eq!(conn("control-01"), Connection::Local);
    assert_eq!(
        conn("worker-01"),
        Connection::Direct {
            endpoint: "198.51.100.21:41641".into()
        }
    );
    // Relay is set for every peer (home DERP); it is the path only for active peers without CurAddr.
    assert_eq!(
        conn("worker-02"),
        Connection::Relay {
            region: "nyc".into()
        }
    );
    assert_eq!(conn("worker-03"), Connection::Offline);
    let w3 = st.find("worker-03").unwrap().peer;
    assert!(!w3.online);
    assert_eq!(
        w3.last_seen_time().unwrap(),
        humantime::parse_rfc3339("2026-06-12T06:02:31Z").unwrap()
    );
    // Online peers carry the zero time.
    assert_eq!(st.find("worker-01").unwrap().peer.last_seen_time(), None);
    assert_eq!(
        st.find("worker-02").unwrap().peer.tailscale_ips,
        [ip("100.64.0.3"), ip("fd7a:115c:a1e0::3")]
    );
    assert_eq!(
        st.ssh_host_keys("worker-01"),
        ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMtLQl7WB+TjKWCuCHiRPFHYXRCM8vaM0FSYJJdM0dzN"]
    );
    assert!(st.ssh_host_keys("control-01").is_empty());
    assert!(st.find("worker-09").is_none());
}

#[test]
fn idle_online_peer_has_no_path() {
    let mut v: serde_json::Value = serde_json::from_str(&status_fixture_text()).unwrap();
    for p in v["Peer"].as_object_mut().unwrap().values_mut() {
        p["Active"] = false.into();
    }
    let st: TailscaleStatus = TailscaleStatus::parse(&v.to_string()).unwrap();
    assert_eq!(st.find("worker-01").unwrap().connection(), Connection::Idle);
    assert_eq!(st.find("worker-02").unwrap().connection(), Connection::Idle);
    assert_eq!(
        st.find("worker-03").unwrap().connection(),
        Connection::Offline
    );
}

#[test]
fn logged_out_shapes_parse() {
    let st = TailscaleStatus::parse(
        r#"{"Version":"1.86.2","BackendState":"NeedsLogin","AuthURL":"","TailscaleIPs":null,
            "Self":{"ID":"","HostName":"","DNSName":"","OS":"","TailscaleIPs":null,"Addrs":null,
            "Tags":null,"Online":false},"Health":["not logged in"],"CurrentTailnet":null,"Peer":null,"User":null}"#,
    )
    .unwrap();
    assert!(!st.is_running());
    assert!(st.devices().is_empty());
    assert!(st.current_tailnet.is_none());
    assert!(matches!(
        TailscaleStatus::parse("Tailscale is stopped."),
        Err(TailscaleError::Parse(_))
    ));
}

#[test]
fn example_fleet_drift_is_the_unmanaged_worker_03() {
    let fleet = example_fleet();
    let st = TailscaleStatus::parse(&status_fixture_text()).unwrap();
    let r = status_report(&fleet, &st);
    assert_eq!(
        r.drift,
        [Drift::Unmanaged {
            host_name: "worker-03".into(),
            dns_name: "worker-03.tail4f7c2e.ts.net.".into(),
            addresses: vec![ip("100.64.0.4"), ip("fd7a:115c:a1e0::4")],
        }]
    );
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["control-01", "worker-01", "worker-02"]);
    assert!(r.nodes.iter().all(|n| n.present && n.online));
    assert_eq!(r.nodes[0].connection, Some(Connection::Local));
    assert_eq!(
        r.nodes[2].connection,
        Some(Connection::Relay {
            region: "nyc".into()
        })
    );
    assert_eq!(r.nodes[1].tags, ["tag:worker"]);
}

#[test]
fn drift_missing_address_tags_unmanaged() {
    let fleet = example_fleet();
    let mut v: serde_json::Value = serde_json::from_str(&status_fixture_text()).unwrap();
    // control-01 (Self) carries a tag its roles do not give; worker-02 moved; worker-01 gone.
    v["Self"]["Tags"] = serde_json::json!(["tag:worker", "tag:control-plane"]);
    let peers = v["Peer"].as_object_mut().unwrap();
    let key_of = |peers: &serde_json::Map<String, serde_json::Value>, h: &str| {
        peers
            .iter()
            .find(|(_, p)| p["HostName"] == h)
            .map(|(k, _)| k.clone())
            .unwrap()
    };
    let w2 = key_of(peers, "worker-02");
    peers[&w2]["TailscaleIPs"] = serde_json::json!(["100.64.0.9", "fd7a:115c:a1e0::9"]);
    let w1 = key_of(peers, "worker-01");
    peers.remove(&w1);
    let st = TailscaleStatus::parse(&v.to_string()).unwrap();
    let r = status_report(&fleet, &st);
    assert_eq!(
        r.drift,
        [
            Drift::Missing {
                node: fleet.nodes[1].name.clone()
            },
            Drift::Address {
                node: fleet.nodes[2].name.clone(),
                expected: ip("100.64.0.3"),
                actual: vec![ip("100.64.0.9"), ip("fd7a:115c:a1e0::9")],
            },
            Drift::Tags {
                node: fleet.nodes[0].name.clone(),
                expected: vec!["tag:control-plane".into()],
                actual: vec!["tag:control-plane".into(), "tag:worker".into()],
            },
            Drift::Unmanaged {
                host_name: "worker-03".into(),
                dns_name: "worker-03.tail4f7c2e.ts.net.".into(),
                addresses: vec![ip("100.64.0.4"), ip("fd7a:115c:a1e0::4")],
            },
        ]
    );
    assert!(!r.nodes[1].present);
    assert_eq!(
        r.drift[1].to_string(),
        "worker-02: manifest address 100.64.0.3, tailnet has 100.64.0.9, fd7a:115c:a1e0::9"
    );
}

#[test]
fn device_matched_by_magicdns_label_when_hostname_differs() {
    let fleet = example_fleet();
    let mut v: serde_json::Value = serde_json::from_str(&status_fixture_text()).unwrap();
    for p in v["Peer"].as_object_mut().unwrap().values_mut() {
        if p["HostName"] == "worker-01" {
            p["HostName"] = "localhost".into();
        }
    }
    let st = TailscaleStatus::parse(&v.to_string()).unwrap();
    let r = status_report(&fleet, &st);
    assert!(r.nodes[1].present);
    assert_eq!(r.drift.len(), 1, "{:?}", r.drift);
}

/// Issue 23, stable names: a rebuilt node that came back as `worker-01-1` (its old record held
/// the name) is drift, with the fix.
#[test]
fn a_suffixed_magicdns_name_is_drift_with_the_fix() {
    let fleet = example_fleet();
    let mut v: serde_json::Value = serde_json::from_str(&status_fixture_text()).unwrap();
    for p in v["Peer"].as_object_mut().unwrap().values_mut() {
        if p["HostName"] == "worker-01" {
            let dns = p["DNSName"]
                .as_str()
                .unwrap()
                .replacen("worker-01", "worker-01-1", 1);
            p["DNSName"] = dns.into();
        }
    }
    let st = TailscaleStatus::parse(&v.to_string()).unwrap();
    let r = status_report(&fleet, &st);
    let renamed: Vec<&Drift> = r
        .drift
        .iter()
        .filter(|d| matches!(d, Drift::Renamed { .. }))
        .collect();
    assert_eq!(
        renamed,
        [&Drift::Renamed {
            node: fleet.nodes[1].name.clone(),
            dns_label: "worker-01-1".into()
        }]
    );
    let text = renamed[0].to_string();
    assert!(
        text.starts_with("worker-01: its MagicDNS name is worker-01-1, not worker-01")
            && text.contains("fix: delete the old, offline record"),
        "{text}"
    );
    // worker-011 would not be a renamed worker-01.
    assert!(!fleetnix::tailscale::names::renamed(
        "worker-011",
        "worker-01"
    ));
}

#[tokio::test]
async fn runs_the_cli_with_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ts = Tailscale {
        // The fake reads $FAKE_TAILSCALE_STATUS: a wrapper sets it, not the process env.
        bin: fake_tailscale_reporting(&dir.path().join("tailscale"), &status_fixture()),
        timeout: Duration::from_secs(10),
    };
    let st = ts.status().await.unwrap();
    assert_eq!(st.peer.len(), 3);

    let broken = Tailscale {
        bin: fake_tailscale(),
        timeout: Duration::from_secs(10),
    };
    let e = broken.status().await.unwrap_err();
    assert!(
        matches!(&e, TailscaleError::Failed { stderr, .. } if stderr.contains("tailscaled")),
        "{e}"
    );

    let hang = dir.path().join("hang");
    write_script(&hang, "#!/bin/sh\nexec sleep 30\n");
    let slow = Tailscale {
        bin: hang,
        timeout: Duration::from_millis(300),
    };
    let t = Instant::now();
    let e = slow.status().await.unwrap_err();
    assert!(matches!(e, TailscaleError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// `fleetnix status <args>` on the example fleet with the fake `tailscale` reporting `status`
/// (`None`: tailscaled unreachable).
fn status_cli(args: &[&str], status: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(fleetnix_bin());
    cmd.arg("--root")
        .arg(repo())
        .arg("status")
        .args(args)
        .env("FLEETNIX_TAILSCALE", fake_tailscale())
        .env_remove("FAKE_TAILSCALE_STATUS");
    if let Some(s) = status {
        cmd.env("FAKE_TAILSCALE_STATUS", s);
    }
    cmd.output().unwrap()
}

#[test]
fn cli_status_reports_drift_and_exits_1() {
    let out = status_cli(&[], Some(&status_fixture()));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("tailnet example.com (Running)"), "{text}");
    let line = |n: &str| text.lines().find(|l| l.starts_with(n)).unwrap().to_string();
    assert!(line("worker-01").contains("direct 198.51.100.21:41641"));
    assert!(line("worker-02").contains("relay \"nyc\""));
    assert!(line("control-01").contains("self"));
    assert!(text.contains(
        "worker-03: in the tailnet (100.64.0.4, fd7a:115c:a1e0::4) but not in the manifest"
    ));

    let out = status_cli(&["--json"], Some(&status_fixture()));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["drift"][0]["kind"], "unmanaged");
    assert_eq!(v["nodes"][1]["connection"]["kind"], "direct");
    assert_eq!(v["nodes"][2]["connection"]["region"], "nyc");

    // Without tailscaled: a clear error, exit 3 ("could not run"), not drift's 1.
    let out = status_cli(&[], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("doesn't appear to be running"));
}
