//! Draining a node's tasks around its deploy (`src/deploy/drain.rs`), end to end on real sshd
//! namespace hosts with the fake nixos-rebuild and switch-to-configuration:
//!
//! - the order, with a recording [`Drain`] that notes what the host had activated at each call:
//!   drained before the activation, undrained after the health gate; left drained (with the
//!   command to undrain it) when the deploy fails; not drained for `boot`, an unchanged node, a
//!   node without an agent or `--no-drain`; a wait that ends with tasks running, a node drained
//!   before and a bus that never answers are notes, not failures;
//! - the CLI's adapter against a real nats-server (the fleet's rendered configuration) in the
//!   hosts' hub namespace: `fleet-drain` gets the drain and its removal, an operator's drain is
//!   left alone, and an unreachable bus is a note.

mod common;

use common::netns::{run_in, Net};
use common::*;
use fleetnix::deploy::drain::{Drain, Drained};
use fleetnix::deploy::report::{Cancel, NodeReport, Outcome};
use fleetnix::deploy::{Action, DeployOptions, EnvAuthKey};
use fleetnix::exec::ssh::SshTransport;
use futures_util::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the recording drain answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Drained, nothing running.
    Idle,
    /// Drained, this many tasks still running when the wait ended.
    Busy(u32),
    /// The node was drained before the deploy.
    Already,
    /// Never answers (a bus that hangs).
    Hang,
}

/// Records each call with the activations the host had seen at that moment.
#[derive(Debug)]
struct Recorder {
    answer: Answer,
    state: PathBuf,
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn new(answer: Answer, state: PathBuf) -> Arc<Recorder> {
        Arc::new(Recorder {
            answer,
            state,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, what: String) {
        let acts = lines(&self.state.join("activations")).join(",");
        self.calls
            .lock()
            .unwrap()
            .push(format!("{what} [activations: {acts}]"));
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drain for Recorder {
    fn drain<'a>(
        &'a self,
        node: &'a str,
        limit: Duration,
    ) -> BoxFuture<'a, Result<Drained, String>> {
        self.record(format!("drain {node} within {}s", limit.as_secs()));
        let answer = self.answer;
        Box::pin(async move {
            let (already, in_flight) = match answer {
                Answer::Idle => (false, Some(0)),
                Answer::Busy(n) => (false, Some(n)),
                Answer::Already => (true, Some(0)),
                Answer::Hang => std::future::pending().await,
            };
            Ok(Drained { already, in_flight })
        })
    }

    fn undrain<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.record(format!("undrain {node}"));
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One NixOS host `n1` (a glm-worker with an agent; also the control plane) in a fleet under
/// `root` with a node timeout of 2 s.
fn one_host(net: &mut Net, root: &Path) -> PathBuf {
    nixos_fleet_of(net, root, 1);
    state_dir(net, "n1")
}

fn nixos_fleet_of(net: &mut Net, root: &Path, n: usize) {
    common::deploy::nixos_fleet(net, root, n, 2);
}

/// The deploy options the CLI would build for `root` (the fake nixos-rebuild, the hosts' key),
/// draining through `drain`.
fn options(
    net: &Net,
    root: &Path,
    drain: Arc<Recorder>,
) -> (Vec<fleetnix::spec::NodeSpec>, DeployOptions) {
    let fleet = fleetnix::manifest::load(&root.join("fleet")).expect("fleet");
    let plans = fleetnix::spec::node_specs(&fleet);
    let mut opts = DeployOptions::new(root, &fleet.settings);
    opts.nixos_rebuild = Some(fakes().join("nixos-rebuild"));
    opts.tailscale = None;
    opts.ssh.identity = Some(net.client_key().to_path_buf());
    opts.rollback_grace = Duration::from_secs(60);
    opts.drain_timeout = Duration::from_secs(1);
    opts.drain = Some(drain);
    (plans, opts)
}

/// Deploys `plans` inside the hub (where the hosts are reachable); the node reports.
fn deploy(
    net: &Net,
    root: &Path,
    plans: Vec<fleetnix::spec::NodeSpec>,
    opts: DeployOptions,
) -> Vec<NodeReport> {
    // The fake nixos-rebuild records into $FAKE_RECORD_DIR (one directory per test process).
    static REC: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let rec = REC.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fleetnix-drain-rec-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("rec dir");
        std::env::set_var("FAKE_RECORD_DIR", &d);
        d
    });
    assert!(rec.is_dir());
    let _ = root;
    let transport = SshTransport {
        config: opts.ssh.clone(),
    };
    run_in(net.hub(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(fleetnix::deploy::schedule::deploy(
            plans,
            opts,
            transport,
            Arc::new(EnvAuthKey),
            None,
            Cancel::default(),
        ))
        .nodes
    })
}

fn log_of(root: &Path, node: &str) -> String {
    std::fs::read_to_string(root.join(format!(".fleetnix/logs/{node}.log"))).expect("log")
}

fn at(log: &str, what: &str) -> usize {
    log.find(what)
        .unwrap_or_else(|| panic!("{what:?} not in the log:\n{log}"))
}

#[test]
fn a_switch_drains_before_the_activation_and_undrains_after_the_gate() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    let state = one_host(&mut net, root.path());
    let rec = Recorder::new(Answer::Idle, state.clone());
    let (plans, opts) = options(&net, root.path(), rec.clone());
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(
        rec.calls(),
        [
            "drain n1 within 1s [activations: ]",
            // Activated with `test`, then confirmed (made the boot default), then undrained.
            "undrain n1 [activations: 2 test,2 boot]"
        ]
    );
    assert!(
        r[0].detail.contains("health gate")
            && r[0].detail.ends_with("drained, undrained after the deploy"),
        "{}",
        r[0].detail
    );
    // In the node's log: drained before the guard was armed, undrained after the gate passed
    // and the deploy was confirmed.
    let log = log_of(root.path(), "n1");
    let (drain, arm, gate, undrain) = (
        at(&log, "## drain"),
        at(&log, "## arm-guard"),
        at(&log, "health gate passed"),
        at(&log, "## undrain"),
    );
    assert!(drain < arm && arm < gate && gate < undrain, "{log}");
    assert!(
        log.contains("#> ") && log.contains("undrain n1 (remove it from fleet-drain)"),
        "{log}"
    );
}

#[test]
fn a_failed_deploy_leaves_the_node_drained_and_says_how_to_undrain_it() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    let state = one_host(&mut net, root.path());
    // Activating generation 2 fails: the guard rolls the node back at once.
    std::fs::write(state.join("fail-2"), "").expect("knob");
    let rec = Recorder::new(Answer::Idle, state.clone());
    let (plans, opts) = options(&net, root.path(), rec.clone());
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Failed, "{r:?}");
    assert_eq!(rec.calls(), ["drain n1 within 1s [activations: ]"]);
    assert!(
        r[0].detail.contains("rolled back")
            && r[0].detail.contains("it stays drained after this failure: once it is healthy, `fleetnix node undrain n1`"),
        "{}",
        r[0].detail
    );
    let log = log_of(root.path(), "n1");
    assert!(!log.contains("## undrain"), "{log}");
}

#[test]
fn boot_an_unchanged_node_a_node_without_agent_and_no_drain_are_not_drained() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    let state = one_host(&mut net, root.path());
    let rec = Recorder::new(Answer::Idle, state.clone());
    // `boot` activates nothing.
    let (plans, mut opts) = options(&net, root.path(), rec.clone());
    opts.action = Action::Boot;
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    assert!(!r[0].detail.contains("drain"), "{}", r[0].detail);
    // A node that runs what it would get is skipped before anything else.
    let (plans, mut opts) = options(&net, root.path(), rec.clone());
    let running = std::fs::read_link(state.join("run/current-system")).expect("running");
    opts.skip_if_running = Arc::new(
        [(plans[0].name.clone(), running.display().to_string())]
            .into_iter()
            .collect(),
    );
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Unchanged, "{r:?}");
    // A node without an agent (no roles) and `--no-drain`: activated, not drained.
    let (mut plans, opts) = options(&net, root.path(), rec.clone());
    plans[0].agent.roles.clear();
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    let (plans, mut opts) = options(&net, root.path(), rec.clone());
    opts.drain_enabled = false;
    opts.action = Action::Test;
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    assert!(!r[0].detail.contains("drain"), "{}", r[0].detail);
    assert_eq!(rec.calls(), Vec::<String>::new());
    // The node did activate meanwhile (the switch, then the test).
    let acts = lines(&state.join("activations"));
    assert!(acts.iter().any(|a| a.ends_with(" test")), "{acts:?}");
}

#[test]
fn a_wait_that_ends_with_tasks_running_an_operators_drain_and_a_silent_bus_are_notes() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    let state = one_host(&mut net, root.path());
    // Two tasks still running after the wait: deployed anyway, said so, undrained after.
    let busy = Recorder::new(Answer::Busy(2), state.clone());
    let (plans, mut opts) = options(&net, root.path(), busy.clone());
    opts.action = Action::Test;
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    assert!(
        r[0].detail.contains(
            "2 task(s) still running after the 1s wait (--drain-timeout), deployed anyway"
        ),
        "{}",
        r[0].detail
    );
    assert_eq!(
        busy.calls(),
        [
            "drain n1 within 1s [activations: ]",
            "undrain n1 [activations: 2 test]"
        ]
    );
    // Drained by an operator before: stays drained.
    let already = Recorder::new(Answer::Already, state.clone());
    let (plans, mut opts) = options(&net, root.path(), already.clone());
    opts.action = Action::Test;
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    assert!(
        r[0].detail.contains("it was drained before the deploy and stays drained (`fleetnix node undrain n1` to give it tasks)"),
        "{}",
        r[0].detail
    );
    assert_eq!(already.calls().len(), 1, "{:?}", already.calls());
    // A bus that never answers: the deploy goes on after the drain's bound, with a note.
    let hang = Recorder::new(Answer::Hang, state.clone());
    let (plans, mut opts) = options(&net, root.path(), hang.clone());
    opts.action = Action::Test;
    let r = deploy(&net, root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    // The bound: the drain timeout (1 s), twice the node timeout (2 s) and 5 s.
    assert!(
        r[0].detail.contains(
            "not drained (the bus did not answer within 10s): deployed with its tasks running"
        ),
        "{}",
        r[0].detail
    );
    assert_eq!(hang.calls().len(), 1, "never undrained: {:?}", hang.calls());
}
