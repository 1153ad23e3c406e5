//! ntfy alerts: one urgent notification when a node goes down, one recovery notice when it
//! comes back, nothing in between; failures are kept and retried, never fatal.

mod common;
mod health_common;

use common::{fake_tailscale, fleetnix_bin};
use fleetnix::health::alert::{notification_for, Alerter, Ntfy};
use fleetnix::health::{NodeState, StateTracker};
use fleetnix::model::NodeName;
use health_common::*;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[tokio::test]
async fn one_alert_per_transition_with_documented_headers() {
    use NodeState::*;
    let stub = NtfyStub::start(0).await;
    let ntfy = Ntfy::new(&stub.url(), "fleet-alerts", None, Duration::from_secs(5)).unwrap();
    let mut alerter = Alerter::new(ntfy);
    let mut tracker = StateTracker::new();
    let sweeps = [
        [("w1", Healthy), ("w2", Healthy)],
        [("w1", Down), ("w2", Degraded)],
        [("w1", Down), ("w2", Healthy)],
        [("w1", Down), ("w2", Degraded)],
        [("w1", Degraded), ("w2", Healthy)],
        [("w1", Healthy), ("w2", Healthy)],
    ];
    for s in &sweeps {
        let t = tracker.update(&report(s));
        alerter.observe(&t);
        let (_, err) = alerter.flush().await;
        assert!(err.is_none(), "{err:?}");
    }
    let got = stub.received.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "exactly one down and one recovery: {got:#?}");
    let down = &got[0];
    assert_eq!(down.method, "POST");
    assert_eq!(down.path, "/fleet-alerts");
    assert_eq!(down.headers["x-priority"], "urgent");
    assert_eq!(down.headers["x-tags"], "rotating_light");
    assert_eq!(down.headers["x-title"], "fleetnix: w1 is down");
    assert!(!down.headers.contains_key("authorization"));
    assert_eq!(down.body, "Node w1 is down: offline in the tailnet.");
    let up = &got[1];
    assert_eq!(up.path, "/fleet-alerts");
    assert_eq!(up.headers["x-priority"], "default");
    assert_eq!(up.headers["x-tags"], "white_check_mark");
    assert_eq!(up.headers["x-title"], "fleetnix: w1 recovered");
    assert_eq!(up.body, "Node w1 is back: degraded.");
}

#[tokio::test]
async fn failed_alert_is_retried_once_delivered_and_token_sent() {
    use NodeState::*;
    let stub = NtfyStub::start(1).await;
    let token = format!("tk_{}", "fakefakefakefake");
    let ntfy = Ntfy::new(
        &format!("{}/", stub.url()),
        "fleet-alerts",
        Some(token.clone().into()),
        Duration::from_secs(5),
    )
    .unwrap();
    let shown = format!("{ntfy:?}");
    assert!(
        !shown.contains(&token),
        "Debug must not show the ntfy token: {shown}"
    );
    let mut alerter = Alerter::new(ntfy);
    let shown = format!("{alerter:?}");
    assert!(!shown.contains(&token), "{shown}");
    let mut tracker = StateTracker::new();
    alerter.observe(&tracker.update(&report(&[("w1", Healthy)])));
    alerter.observe(&tracker.update(&report(&[("w1", Down)])));
    let (sent, err) = alerter.flush().await;
    assert!(sent.is_empty());
    let msg = err.expect("first attempt answered 503").to_string();
    assert!(msg.contains("503"), "{msg}");
    assert!(
        !msg.contains(&token),
        "the token must never appear in errors"
    );
    assert_eq!(alerter.pending(), 1);
    // Still down: no new notification, the pending one is retried.
    alerter.observe(&tracker.update(&report(&[("w1", Down)])));
    let (sent, err) = alerter.flush().await;
    assert!(err.is_none());
    assert_eq!(sent.len(), 1);
    assert_eq!(alerter.pending(), 0);
    let delivered = stub.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].headers["x-priority"], "urgent");
    assert_eq!(
        delivered[0].headers["authorization"],
        format!("Bearer {token}")
    );
}

#[tokio::test]
async fn unreachable_ntfy_is_an_error_not_a_crash() {
    let port = closed_port(IpAddr::from([127, 0, 0, 1]));
    let ntfy = Ntfy::new(
        &format!("http://127.0.0.1:{port}"),
        "fleet-alerts",
        None,
        Duration::from_secs(2),
    )
    .unwrap();
    let mut alerter = Alerter::new(ntfy);
    let mut tracker = StateTracker::new();
    alerter.observe(&tracker.update(&report(&[("w1", NodeState::Down), ("w2", NodeState::Down)])));
    let (sent, err) = alerter.flush().await;
    assert!(sent.is_empty());
    assert!(err.is_some());
    assert_eq!(
        alerter.pending(),
        2,
        "both kept, in order, for the next try"
    );
}

#[test]
fn bad_topic_and_url_are_rejected() {
    let t = Duration::from_secs(1);
    assert!(Ntfy::new("http://127.0.0.1:1", "has space", None, t).is_err());
    assert!(Ntfy::new("http://127.0.0.1:1", &"x".repeat(65), None, t).is_err());
    assert!(Ntfy::new("ftp://127.0.0.1:1", "ok", None, t).is_err());
    assert!(Ntfy::new("http://127.0.0.1:1/path", "ok", None, t).is_err());
    assert!(Ntfy::new("https://ntfy.example:8090", "fleet_alerts-1", None, t).is_ok());
}

#[test]
fn only_down_and_recovery_notify() {
    use NodeState::*;
    let tr = |from, to| fleetnix::health::Transition {
        node: NodeName::parse("n").unwrap(),
        from,
        to,
        reason: None,
    };
    assert!(notification_for(&tr(None, Down)).is_some());
    assert!(notification_for(&tr(Some(Healthy), Down)).is_some());
    assert!(notification_for(&tr(Some(Degraded), Down)).is_some());
    assert!(notification_for(&tr(None, Healthy)).is_none());
    assert!(notification_for(&tr(Some(Healthy), Degraded)).is_none());
    assert!(notification_for(&tr(Some(Degraded), Healthy)).is_none());
    assert_eq!(
        notification_for(&tr(Some(Down), Healthy)).unwrap().priority,
        "default"
    );
}

/// End to end: `fleetnix health --watch` with the fake tailscale; worker-02 goes offline,
/// stays offline for a few sweeps, comes back: one urgent alert, one recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_one_alert_per_transition() {
    let stub = NtfyStub::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    // Only roles without service ports: the watch never probes the fleet's 100.64.x.x addresses.
    let fleet = write_fleet(
        &dir.path().join("fleet"),
        &[
            N::new("cp", "100.64.1.1", &["control-plane"]),
            N::new("worker-02", "100.64.1.3", &["glm-worker"]),
        ],
        &[],
        1,
        "round_robin",
    );
    let status_file = dir.path().join("status.json");
    let write_status = |online: bool| {
        let st = if online {
            tailnet(&fleet, &["cp", "worker-02"], &[])
        } else {
            tailnet(&fleet, &["cp"], &["worker-02"])
        };
        let tmp = dir.path().join("status.tmp");
        std::fs::write(&tmp, serde_json::to_string(&st).unwrap()).unwrap();
        std::fs::rename(&tmp, &status_file).unwrap();
    };
    write_status(true);
    let mut child = std::process::Command::new(fleetnix_bin())
        .arg("--root")
        .arg(dir.path())
        .args(["health", "--watch", "--interval", "100ms", "--count", "40"])
        .env("FLEETNIX_TAILSCALE", fake_tailscale())
        .env("FAKE_TAILSCALE_STATUS", &status_file)
        .env("FLEETNIX_NTFY_URL", stub.url())
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read sweeps on a thread; the test drives state changes as sweeps are seen.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let wait_for = |pred: &dyn Fn(&str) -> bool, n: usize| {
        let mut seen = 0;
        while seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("watch output in time");
            assert!(
                !line.contains('\x1b'),
                "plain output when not a terminal: {line:?}"
            );
            if pred(&line) {
                seen += 1;
            }
        }
    };
    let is_w2 = |state: &'static str| {
        move |l: &str| l.starts_with("worker-02") && l.split_whitespace().nth(1) == Some(state)
    };
    wait_for(&is_w2("healthy"), 1);
    write_status(false);
    wait_for(&is_w2("down"), 3);
    write_status(true);
    wait_for(&is_w2("healthy"), 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let got = stub.received.lock().unwrap().clone();
    let titles: Vec<&str> = got.iter().map(|r| r.headers["x-title"].as_str()).collect();
    assert_eq!(
        titles,
        [
            "fleetnix: worker-02 is down",
            "fleetnix: worker-02 recovered"
        ]
    );
    assert_eq!(got[0].headers["x-priority"], "urgent");
}
