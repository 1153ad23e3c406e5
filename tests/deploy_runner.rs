//! The runner's logic against a recording transport (no network): retry, fail-fast, Ctrl-C,
//! host keys from `tailscale status --json`.

mod common;

use fleetnix::deploy::report::{Cancel, Event, Outcome, Step, Summary};
use fleetnix::deploy::schedule::deploy;
use fleetnix::deploy::{Action, DeployOptions, EnvAuthKey};
use fleetnix::exec::process::{NodeLog, ProcError, ProcOutput};
use fleetnix::exec::ssh::{SshTarget, Transport};
use fleetnix::spec::NodeSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers per destination from a script of outputs; records every call.
#[derive(Default)]
struct Recording {
    answers: Mutex<BTreeMap<String, Vec<ProcOutput>>>,
    calls: Mutex<Vec<(String, String)>>,
}

fn ok(stdout: &str) -> ProcOutput {
    ProcOutput {
        code: Some(0),
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

fn ssh_err(msg: &str) -> ProcOutput {
    ProcOutput {
        code: Some(255),
        stdout: String::new(),
        stderr: format!("{msg}\n"),
    }
}

/// The transport handed to the runner; the test keeps another handle to the recording.
struct Rec(Arc<Recording>);

impl Transport for Rec {
    async fn run(
        &self,
        target: &SshTarget,
        script: &str,
        _stdin: Option<&[u8]>,
        _timeout: Duration,
        _log: &NodeLog,
    ) -> Result<ProcOutput, ProcError> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push((target.destination.clone(), script.to_string()));
        let mut a = self.0.answers.lock().unwrap();
        let q = a.entry(target.destination.clone()).or_default();
        Ok(if q.is_empty() { ok("") } else { q.remove(0) })
    }
}

fn setup(dir: &Path) -> (Vec<NodeSpec>, DeployOptions) {
    let fleet = common::example_fleet();
    let mut plans = fleetnix::spec::node_specs(&fleet);
    for p in &mut plans {
        p.access.host_key = Some(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS/vcGfRqtpcVld33fFR5cjD2Ai9gXARYCEHEn"
                .parse()
                .unwrap(),
        );
    }
    let mut opts = DeployOptions::new(dir, &fleet.settings);
    opts.action = Action::Test;
    opts.state_dir = dir.join(".fleetnix");
    opts.nixos_rebuild = Some(PathBuf::from("true"));
    opts.tailscale = None;
    (plans, opts)
}

async fn run(
    plans: Vec<NodeSpec>,
    opts: DeployOptions,
    t: Arc<Recording>,
    cancel: Cancel,
) -> (Summary, Vec<Event>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let s = deploy(plans, opts, Rec(t), Arc::new(EnvAuthKey), Some(tx), cancel).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (s, events)
}

#[tokio::test]
async fn unreachable_node_is_retried_once_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (plans, mut opts) = setup(dir.path());
    let t = Arc::new(Recording::default());
    t.answers.lock().unwrap().insert(
        "root@100.64.0.2".into(),
        vec![ssh_err(
            "ssh: connect to host 100.64.0.2 port 22: Connection timed out",
        )],
    );
    opts.retry = true;
    let (s, events) = run(plans.clone(), opts.clone(), t.clone(), Cancel::default()).await;
    assert!(s.success(), "{s:?}");
    let w1 = s.nodes.iter().find(|n| n.node == "worker-01").unwrap();
    assert_eq!((w1.outcome, w1.attempts), (Outcome::Succeeded, 2));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Retrying { node, .. } if node == "worker-01")));
    assert!(dir.path().join(".fleetnix/logs/worker-01.log").exists());

    let t = Arc::new(Recording::default());
    t.answers.lock().unwrap().insert(
        "root@100.64.0.2".into(),
        vec![ssh_err(
            "ssh: connect to host 100.64.0.2 port 22: Connection timed out",
        )],
    );
    opts.retry = false;
    let (s, _) = run(plans, opts, t, Cancel::default()).await;
    assert!(!s.success());
    let w1 = s.nodes.iter().find(|n| n.node == "worker-01").unwrap();
    assert_eq!(
        (w1.outcome, w1.step, w1.attempts),
        (Outcome::Failed, Some(Step::Connect), 1)
    );
    assert!(w1.detail.contains("Connection timed out"), "{}", w1.detail);
    // The others are unaffected.
    assert_eq!(
        s.nodes
            .iter()
            .filter(|n| n.outcome == Outcome::Succeeded)
            .count(),
        2
    );
}

#[tokio::test]
async fn fail_fast_stops_starting_nodes_and_host_key_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (plans, mut opts) = setup(dir.path());
    opts.parallel = 1;
    opts.fail_fast = true;
    opts.retry = true;
    let t = Arc::new(Recording::default());
    for ip in ["100.64.0.1", "100.64.0.2", "100.64.0.3"] {
        t.answers.lock().unwrap().insert(
            format!("root@{ip}"),
            vec![ssh_err("Host key verification failed.")],
        );
    }
    let (s, _) = run(plans, opts, t.clone(), Cancel::default()).await;
    // One slot: the first node fails, the other two never start.
    let ran: Vec<_> = s
        .nodes
        .iter()
        .filter(|n| n.outcome != Outcome::Skipped)
        .collect();
    assert_eq!(ran.len(), 1, "{s:?}");
    assert_eq!(
        (ran[0].outcome, ran[0].attempts),
        (Outcome::Failed, 1),
        "not retried"
    );
    assert!(
        ran[0].detail.contains("host key verification failed"),
        "{}",
        ran[0].detail
    );
    assert_eq!(t.calls.lock().unwrap().len(), 1);
    let skipped = s
        .nodes
        .iter()
        .filter(|n| n.outcome == Outcome::Skipped)
        .count();
    assert_eq!(skipped, 2);
    assert!(s
        .nodes
        .iter()
        .all(|n| n.outcome != Outcome::Skipped || n.detail.contains("--fail-fast")));
    assert!(!s.success());
}

#[tokio::test]
async fn cancel_before_start_skips_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (plans, opts) = setup(dir.path());
    let t = Arc::new(Recording::default());
    let c = Cancel::default();
    c.cancel();
    let (s, _) = run(plans, opts, t.clone(), c).await;
    assert!(s.interrupted && !s.success());
    assert!(s.nodes.iter().all(|n| n.outcome == Outcome::Skipped));
    assert!(t.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn host_keys_come_from_tailscale_status_when_the_manifest_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let (mut plans, mut opts) = setup(dir.path());
    for p in &mut plans {
        p.access.host_key = None;
    }
    // A `tailscale` that reports the reference fixture.
    let ts = dir.path().join("tailscale");
    opts.tailscale = Some(common::fake_tailscale_reporting(
        &ts,
        &common::status_fixture(),
    ));
    let t = Arc::new(Recording::default());
    let (s, _) = run(plans, opts, t, Cancel::default()).await;
    let by: BTreeMap<_, _> = s.nodes.iter().map(|n| (n.node.as_str(), n)).collect();
    assert_eq!(by["worker-01"].outcome, Outcome::Succeeded, "{s:?}");
    let kh = std::fs::read_to_string(dir.path().join(".fleetnix/known_hosts/worker-01")).unwrap();
    assert!(kh.starts_with("100.64.0.2 ssh-ed25519 AAAA"), "{kh}");
    // The fixture's Self (control-01) reports no SSH host keys: never trust on first use.
    let cp = by["control-01"];
    assert_eq!(
        (cp.outcome, cp.step),
        (Outcome::Failed, Some(Step::HostKey))
    );
    assert!(
        cp.detail.contains("ssh-keyscan -t ed25519 100.64.0.1"),
        "{}",
        cp.detail
    );
}
