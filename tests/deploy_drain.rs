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

/// What the host looks like at a call (its activations, the system it booted).
type Snapshot = Box<dyn Fn() -> String + Send + Sync>;

/// Records each call with a snapshot of the host at that moment.
struct Recorder {
    answer: Answer,
    snapshot: Snapshot,
    calls: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("answer", &self.answer)
            .finish()
    }
}

impl Recorder {
    /// Snapshots: the activations of a namespace host whose state dir is `state`.
    fn new(answer: Answer, state: PathBuf) -> Arc<Recorder> {
        Self::with(
            answer,
            Box::new(move || {
                let acts = lines(&state.join("activations")).join(",");
                format!("activations: {acts}")
            }),
        )
    }

    fn with(answer: Answer, snapshot: Snapshot) -> Arc<Recorder> {
        Arc::new(Recorder {
            answer,
            snapshot,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, what: String) {
        let now = (self.snapshot)();
        self.calls.lock().unwrap().push(format!("{what} [{now}]"));
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
    // The bound: the drain timeout (1 s), twice the node timeout (2 s) and 5 s. The drain may
    // have been written before the bus went silent: the deploy undoes it after its success.
    assert!(
        r[0].detail.ends_with("the drain did not finish within 10s (the bus stopped answering; it may be drained): deployed with its tasks running, undrained after the deploy"),
        "{}",
        r[0].detail
    );
    assert_eq!(hang.calls().len(), 2, "{:?}", hang.calls());
}

/// The fleet's bus in the hosts' hub namespace: nats-server with the fleet's rendered
/// configuration on the hub's 127.0.0.1, the real router (`fleetnix router`), and an agent of
/// `n1` that heart-beats (one task running until told) while it records every change of `n1`
/// in `fleet-drain` with the activations the host had seen then.
struct HubBus {
    server: std::process::Child,
    router: Option<std::process::Child>,
    url: String,
    creds: fleetnix::bus::creds::BusCredentials,
    _dir: tempfile::TempDir,
}

impl Drop for HubBus {
    fn drop(&mut self) {
        for c in self.router.iter_mut().chain([&mut self.server]) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn nats_server_bin() -> PathBuf {
    let path = format!(
        "{}:/usr/sbin:/usr/local/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::var_os("FLEETNIX_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| which::which_in("nats-server", Some(path), ".").ok())
        .expect("nats-server is not installed (Debian package nats-server; or set FLEETNIX_NATS_SERVER)")
}

fn registry(bus: &HubBus) -> fleetnix::secret::Secret {
    bus.creds
        .service_password(fleetnix::bus::users::Service::Registry)
        .expect("registry password")
        .clone()
}

impl HubBus {
    fn start(net: &Net, root: &Path) -> HubBus {
        let fleet = fleetnix::manifest::load(&root.join("fleet")).expect("fleet");
        let dir = tempfile::tempdir().expect("dir");
        // The hub's loopback is this test's own: any port is free there.
        let port = 14222;
        let plan = fleetnix::bus::server_plan(&fleet)
            .expect("server plan")
            .with_listen(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
            .with_store_dir(dir.path().join("js").display().to_string());
        let creds = fleetnix::bus::creds::BusCredentials::generate(&plan);
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, plan.to_conf()).expect("conf");
        let mut cmd = net.command(nats_server_bin());
        cmd.arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (var, pw) in creds.env_pairs() {
            cmd.env(var, pw.expose());
        }
        let server = cmd.spawn().expect("nats-server");
        let mut bus = HubBus {
            server,
            router: None,
            url: format!("nats://127.0.0.1:{port}"),
            creds,
            _dir: dir,
        };
        let hub = net.hub().to_string();
        poll(Duration::from_secs(10), || {
            let hub = hub.clone();
            run_in(&hub, move || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()
                    .then_some(())
            })
        })
        .expect("nats-server listens in the hub");
        // The fleet registered, then the router as its own process.
        let sync = net
            .command(fleetnix_bin())
            .arg("--root")
            .arg(root)
            .args(["node", "sync", "--nats-url", &bus.url])
            .env("FLEETNIX_NATS_PASSWORD", registry(&bus).expose())
            .output()
            .expect("node sync");
        assert!(sync.status.success(), "{sync:?}");
        let router = net
            .command(fleetnix_bin())
            .arg("--root")
            .arg(root)
            .args(["router", "--node-timeout", "2s", "--nats-url", &bus.url])
            .env(
                "FLEETNIX_NATS_PASSWORD",
                bus.creds
                    .router_password()
                    .expect("router password")
                    .expose(),
            )
            // Alerts to a closed port of the hub's loopback.
            .env("FLEETNIX_NTFY_URL", "http://127.0.0.1:9")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("router");
        bus.router = Some(router);
        bus
    }

    /// The router's `fleet-health` entry of `node`, read as `_registry` from the hub.
    fn health(&self, hub: &str, node: &str) -> Option<fleetnix::bus::router::HealthEntry> {
        let (url, pw, node) = (self.url.clone(), registry(self), node.to_string());
        in_hub(hub, async move {
            let c =
                fleetnix::bus::dispatch::connect_as(&url, "_registry", &pw, Duration::from_secs(5))
                    .await
                    .ok()?;
            let js = async_nats::jetstream::new(c);
            let name = fleetnix::model::NodeName::parse(&node).ok()?;
            fleetnix::bus::drain::health(&js, &name).await.ok()?
        })
    }
}

/// Runs `f` to completion on a runtime of a thread in the hub namespace.
fn in_hub<T: Send + 'static>(
    hub: &str,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    run_in(hub, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
}

/// What the test tells [`Agent`].
enum Cmd {
    Finish,
    DrainDuringNextDeploy,
    Stop,
}

/// `n1`'s agent side in the hub: heartbeats with one task running until [`Agent::finish`], and
/// a record of every change of `n1` in `fleet-drain`.
struct Agent {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(hub: &str, bus: &HubBus, state: PathBuf) -> Agent {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (url, reg) = (bus.url.clone(), registry(bus));
        let pw = bus.creds.password("n1").expect("n1's password").clone();
        let log = seen.clone();
        let path = Path::new("/run/netns").join(hub);
        let thread = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("hub");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use fleetnix::bus::dispatch as d;
                let n1 = fleetnix::model::NodeName::parse("n1").unwrap();
                let c = d::connect(&url, &n1, &pw, Duration::from_secs(5))
                    .await
                    .expect("n1 connects");
                let beat = fleetnix::bus::heartbeat::Beat::new(n1, 4, Vec::new());
                let mut task = Some(beat.start_task());
                let beats = fleetnix::bus::heartbeat::spawn_heartbeats(
                    c,
                    beat.clone(),
                    Duration::from_millis(250),
                );
                let r = d::connect_as(&url, "_registry", &reg, Duration::from_secs(5))
                    .await
                    .expect("registry connects");
                let js = async_nats::jetstream::new(r);
                let kv = fleetnix::bus::registry::open_bucket(
                    &js,
                    fleetnix::bus::DRAIN_BUCKET,
                    true,
                )
                .await
                .expect("fleet-drain");
                let mut last = 0;
                let mut meddle = false;
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tokio::select! {
                        cmd = rx.recv() => match cmd {
                            Some(Cmd::Finish) => task = None,
                            Some(Cmd::DrainDuringNextDeploy) => meddle = true,
                            _ => break,
                        },
                        _ = tick.tick() => {
                            if let Ok(Some(e)) = kv.entry("n1").await {
                                if e.revision != last {
                                    last = e.revision;
                                    let reason = serde_json::from_slice::<fleetnix::bus::drain::DrainRecord>(&e.value)
                                        .map(|r| r.reason)
                                        .unwrap_or_default();
                                    let acts = lines(&state.join("activations")).join(",");
                                    log.lock().unwrap().push(format!(
                                        "{:?} {reason} [activations: {acts}]",
                                        e.operation
                                    ));
                                    if meddle && reason == "fleetnix deploy" {
                                        // An operator drains the node while the deploy runs.
                                        meddle = false;
                                        let n1 = fleetnix::model::NodeName::parse("n1").unwrap();
                                        fleetnix::bus::drain::set(&js, &n1, true, "operator meanwhile")
                                            .await
                                            .expect("drain meanwhile");
                                    }
                                }
                            }
                        }
                    }
                }
                drop(task);
                beats.abort();
            });
        });
        Agent {
            tx,
            seen,
            thread: Some(thread),
        }
    }

    /// The task it runs ends.
    fn finish(&self) {
        self.tx.send(Cmd::Finish).expect("agent runs");
    }

    /// Drains `n1` as an operator as soon as the next deploy has drained it.
    fn drain_during_next_deploy(&self) {
        self.tx
            .send(Cmd::DrainDuringNextDeploy)
            .expect("agent runs");
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_cli_drains_through_a_real_bus_waits_and_undrains_and_a_missing_bus_is_a_note() {
    let Some(mut net) = Net::new() else { return };
    let root = tempfile::tempdir().expect("root");
    let state = one_host(&mut net, root.path());
    let bus = HubBus::start(&net, root.path());
    let hub = net.hub().to_string();
    let agent = Agent::start(&hub, &bus, state.clone());
    // The router sees n1 healthy, one task running.
    poll(Duration::from_secs(15), || {
        bus.health(&hub, "n1")
            .filter(|e| e.state == "healthy" && e.in_flight == 1)
    })
    .expect("the router reports n1 healthy with its task");
    let deploy = |extra: &[&str], url: &str, password: Option<&str>| {
        let mut c = deploy_cmd(&net, root.path(), &["n1", "--force", "--json"]);
        c.args(extra).env("FLEETNIX_NATS_URL", url);
        match password {
            Some(p) => c.env("FLEETNIX_NATS_PASSWORD", p),
            None => c.env_remove("FLEETNIX_NATS_PASSWORD"),
        };
        let r = Ran::of(&mut c);
        assert_eq!(r.code, Some(0), "{r}");
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
        v["nodes"][0]["detail"]
            .as_str()
            .expect("detail")
            .to_string()
    };
    let pw = registry(&bus);
    // The task still runs after the 2 s wait: deployed anyway, said so; drained before the
    // activation, undrained after the gate.
    let detail = deploy(&["--drain-timeout", "2s"], &bus.url, Some(pw.expose()));
    assert!(
        detail.contains("drained; 1 task(s) still running after the 2s wait (--drain-timeout), deployed anyway, undrained after the deploy"),
        "{detail}"
    );
    let seen = poll(Duration::from_secs(5), || {
        let s = agent.seen();
        (s.len() >= 2).then_some(s)
    })
    .expect("fleet-drain changed twice");
    assert_eq!(
        seen,
        [
            "Put fleetnix deploy [activations: ]",
            "Delete  [activations: 2 test,2 boot]"
        ]
    );
    // The task ends: the drain's wait ends as soon as the router reports n1 idle and draining.
    agent.finish();
    poll(Duration::from_secs(15), || {
        bus.health(&hub, "n1").filter(|e| e.in_flight == 0)
    })
    .expect("the router reports n1 idle");
    let detail = deploy(
        &["--action", "test", "--drain-timeout", "5m"],
        &bus.url,
        Some(pw.expose()),
    );
    assert!(
        detail.ends_with("drained, undrained after the deploy"),
        "{detail}"
    );
    let seen = poll(Duration::from_secs(5), || {
        let s = agent.seen();
        (s.len() >= 4).then_some(s)
    })
    .unwrap_or_else(|| panic!("fleet-drain changes: {:?}", agent.seen()));
    assert_eq!(
        seen[2..],
        [
            "Put fleetnix deploy [activations: 2 test,2 boot]",
            "Delete  [activations: 2 test,2 boot,3 test]"
        ]
    );
    // An operator's drain stays.
    let drained = net
        .command(fleetnix_bin())
        .arg("--root")
        .arg(root.path())
        .args([
            "node",
            "drain",
            "n1",
            "--reason",
            "disk check",
            "--nats-url",
            &bus.url,
        ])
        .env("FLEETNIX_NATS_PASSWORD", pw.expose())
        .output()
        .expect("node drain");
    assert!(drained.status.success(), "{drained:?}");
    let detail = deploy(&["--action", "test"], &bus.url, Some(pw.expose()));
    assert!(
        detail.contains("it was drained before the deploy and stays drained (`fleetnix node undrain n1` to give it tasks)"),
        "{detail}"
    );
    let seen = poll(Duration::from_secs(5), || {
        let s = agent.seen();
        (s.len() >= 5).then_some(s)
    })
    .unwrap_or_else(|| panic!("fleet-drain changes: {:?}", agent.seen()));
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen[4].starts_with("Put disk check "), "{seen:?}");
    // No bus at that address, or no password: notes, and the deploy goes on.
    let detail = deploy(
        &["--action", "test"],
        "nats://127.0.0.1:9",
        Some(pw.expose()),
    );
    assert!(
        detail.contains("not drained (cannot connect to NATS at nats://127.0.0.1:9 as _registry:")
            && detail.contains("deployed with its tasks running"),
        "{detail}"
    );
    // A server that accepts the connection and never speaks (a hung process, a port taken by
    // something else): bounded by the node timeout (2 s), far within the 5 min drain timeout.
    let silent = run_in(&hub, || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("a silent listener in the hub")
    });
    let silent_url = format!("nats://{}", silent.local_addr().expect("addr"));
    let started = std::time::Instant::now();
    let detail = deploy(
        &["--action", "test", "--drain-timeout", "5m"],
        &silent_url,
        Some(pw.expose()),
    );
    assert!(
        detail.contains(&format!(
            "not drained (cannot connect to NATS at {silent_url} as _registry: no answer within 2s): deployed with its tasks running"
        )),
        "{detail}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the drain's bound, not the 5 min drain timeout: {:?}",
        started.elapsed()
    );
    drop(silent);
    let detail = deploy(&["--action", "test"], &bus.url, None);
    assert!(
        detail.contains("not drained (no NATS password for _registry"),
        "{detail}"
    );
    assert_eq!(
        agent.seen().len(),
        5,
        "nothing more changed: {:?}",
        agent.seen()
    );
    // What a failed deploy leaves (a record of its own) is undrained by the next deploy that
    // succeeds.
    let left = net
        .command(fleetnix_bin())
        .arg("--root")
        .arg(root.path())
        .args([
            "node",
            "drain",
            "n1",
            "--reason",
            "fleetnix deploy",
            "--nats-url",
            &bus.url,
        ])
        .env("FLEETNIX_NATS_PASSWORD", pw.expose())
        .output()
        .expect("node drain");
    assert!(left.status.success(), "{left:?}");
    poll(Duration::from_secs(5), || {
        agent
            .seen()
            .last()
            .filter(|l| l.starts_with("Put fleetnix deploy"))
            .map(|_| ())
    })
    .expect("the record is seen");
    let detail = deploy(&["--action", "test"], &bus.url, Some(pw.expose()));
    assert!(
        detail.ends_with("drained, undrained after the deploy"),
        "{detail}"
    );
    poll(Duration::from_secs(5), || {
        agent
            .seen()
            .last()
            .filter(|l| l.starts_with("Delete"))
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("undrained: {:?}", agent.seen()));
    // An operator who drains the node while a deploy runs keeps that drain.
    agent.drain_during_next_deploy();
    let detail = deploy(&["--action", "test"], &bus.url, Some(pw.expose()));
    assert!(
        detail.ends_with("drained; not undrained (drained again meanwhile (operator meanwhile), left as it is): it stays drained until `fleetnix node undrain n1`"),
        "{detail}"
    );
    let last = poll(Duration::from_secs(5), || {
        agent
            .seen()
            .last()
            .filter(|l| l.starts_with("Put operator meanwhile"))
            .cloned()
    });
    assert!(last.is_some(), "{:?}", agent.seen());
}

#[test]
fn the_reboot_path_drains_before_the_reboot_and_undrains_after_the_confirmed_boot() {
    use common::systemd_host::{leader_in, SystemdNet};
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 3).remove(0);
    // The system the host booted, read through its PID 1 of the moment.
    let ns = host.ns.clone();
    let rec = Recorder::with(
        Answer::Idle,
        Box::new(move || {
            let booted = leader_in(&ns)
                .and_then(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/root/run/booted-system")).ok()
                })
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("booted: {booted}")
        }),
    );
    let (plans, mut opts) = options(sys.net(), root.path(), rec.clone());
    opts.reboot = fleetnix::deploy::reboot::RebootMode::Always;
    opts.reboot_timeout = Duration::from_secs(60);
    let before = sys.boots(&host);
    let r = deploy(sys.net(), root.path(), plans, opts);
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:?}");
    assert!(
        r[0].detail.starts_with("rebooted into the new generation")
            && r[0].detail.ends_with("drained, undrained after the deploy"),
        "{}",
        r[0].detail
    );
    assert_eq!(sys.boots(&host), before + 1);
    assert_eq!(
        rec.calls(),
        [
            format!(
                "drain n1 within 1s [booted: {}]",
                common::systemd_host::gen_path(1)
            ),
            format!("undrain n1 [booted: {}]", common::systemd_host::gen_path(2)),
        ]
    );
    let log = log_of(root.path(), "n1");
    let (drain, arm, reboot, gate, undrain) = (
        at(&log, "## drain"),
        at(&log, "boot guard armed"),
        at(&log, "back after"),
        at(&log, "health gate passed"),
        at(&log, "## undrain"),
    );
    assert!(
        drain < arm && arm < reboot && reboot < gate && gate < undrain,
        "{log}"
    );
}
