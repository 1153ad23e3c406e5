//! Shared by the bus tests (next to `common`, which each of them declares too): a real
//! nats-server on 127.0.0.1 running the fleet's generated configuration, and workers that
//! follow the bus contract.
#![allow(dead_code)]

use crate::common::{poll, poll_async};
use fleetnix::bus::creds::BusCredentials;
use fleetnix::bus::dispatch::{self as d, Policy};
use fleetnix::bus::users::Service;
use fleetnix::bus::{self, ServerPlan};
use fleetnix::model::{Fleet, NodeName, Role};
use fleetnix::secret::Secret;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// nats-server: `FLEETNIX_NATS_SERVER`, else on PATH or in /usr/sbin.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLEETNIX_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let path = format!(
        "{}:/usr/sbin:/usr/local/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    which::which_in("nats-server", Some(path), ".").expect(
        "nats-server is not installed (Debian package nats-server; or set FLEETNIX_NATS_SERVER)",
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running nats-server with the fleet's configuration, listening on 127.0.0.1; killed on drop.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// The plan it runs (listen address overridden).
    pub plan: ServerPlan,
    /// The passwords in its environment.
    pub creds: BusCredentials,
    /// Its configuration file.
    pub conf_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the server for `fleet` with fresh passwords.
    pub fn start(fleet: &Fleet) -> Self {
        let base = bus::server_plan(fleet).expect("server plan");
        let creds = BusCredentials::generate(&base);
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("nats.conf");
        let mut last_err = String::new();
        // The free port could be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let plan = base
                .clone()
                .with_listen(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
                .with_store_dir(dir.path().join("jetstream").display().to_string());
            std::fs::write(&conf_path, plan.to_conf()).unwrap();
            let mut cmd = Command::new(nats_server_bin());
            cmd.arg("-c")
                .arg(&conf_path)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (var, pw) in creds.env_pairs() {
                cmd.env(var, pw.expose());
            }
            let mut child = cmd.spawn().expect("spawn nats-server");
            let started = poll(Duration::from_secs(10), || {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Ok(()));
                }
                child.try_wait().unwrap().map(Err)
            })
            .expect("nats-server did not listen within 10 s");
            match started {
                Ok(()) => {
                    return NatsServer {
                        child,
                        url: format!("nats://127.0.0.1:{port}"),
                        plan,
                        creds,
                        conf_path,
                        _dir: dir,
                    }
                }
                Err(status) => {
                    let mut err = String::new();
                    use std::io::Read;
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    last_err = format!("nats-server exited with {status}: {err}");
                }
            }
        }
        panic!("could not start nats-server: {last_err}");
    }

    /// The server's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The password of `node`.
    pub fn password(&self, node: &str) -> &Secret {
        self.creds.password(node).expect("node has a password")
    }

    /// Connects as `node` with its password.
    pub async fn connect(&self, node: &str) -> async_nats::Client {
        let name = NodeName::parse(node).unwrap();
        d::connect(
            &self.url,
            &name,
            self.password(node),
            Duration::from_secs(5),
        )
        .await
        .expect("connect")
    }

    /// Connects as the router's user (also what sends tasks directly: `dispatch --direct`).
    pub async fn connect_router(&self) -> async_nats::Client {
        self.connect_service(Service::Router).await
    }

    /// Connects as the supervisors' user `_supervisor` (asks the router).
    pub async fn connect_supervisor(&self) -> async_nats::Client {
        self.connect_service(Service::Supervisor).await
    }

    /// Connects as `node sync`'s user `_registry` (fleet-nodes, and reading fleet-health).
    pub async fn connect_registry(&self) -> async_nats::Client {
        self.connect_service(Service::Registry).await
    }

    /// The password of `service`'s user.
    pub fn service_password(&self, service: Service) -> &Secret {
        self.creds
            .service_password(service)
            .expect("service password")
    }

    /// Connects as `service`'s user.
    pub async fn connect_service(&self, service: Service) -> async_nats::Client {
        d::connect_as(
            &self.url,
            service.user(),
            self.service_password(service),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("connect as {}: {e}", service.user()))
    }

    /// Opens `n` router lanes (connections as the router's user).
    pub async fn connect_router_lanes(&self, n: usize) -> fleetnix::bus::router::Lanes {
        fleetnix::bus::router::Lanes::connect(
            &self.url,
            self.creds.router_password().expect("router password"),
            n,
            Duration::from_secs(5),
        )
        .await
        .expect("connect the router's lanes")
    }

    /// Connects as `node` and serves `role`'s tasks as `behaviour` says ([`spawn_worker`]).
    pub async fn worker(&self, node: &str, role: &str, behaviour: Behaviour) -> Worker {
        spawn_worker(self, self.connect(node).await, node, role, behaviour).await
    }

    /// Connects as `node`, collecting the server's error messages (permission violations).
    pub async fn connect_watching(&self, node: &str) -> (async_nats::Client, ServerErrors) {
        self.connect_watching_as(node, self.password(node)).await
    }

    /// Connects as NATS user `user` (a node or a service) with `password`, collecting the
    /// server's error messages (permission violations).
    pub async fn connect_watching_as(
        &self,
        user: &str,
        password: &Secret,
    ) -> (async_nats::Client, ServerErrors) {
        let errors = ServerErrors::default();
        let sink = errors.clone();
        let client = async_nats::ConnectOptions::with_user_and_password(
            user.to_string(),
            password.expose().to_string(),
        )
        .custom_inbox_prefix(bus::inbox_prefix_of(user))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.0.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(&self.url)
        .await
        .expect("connect");
        (client, errors)
    }
}

impl NatsServer {
    /// Kills the server (SIGKILL) and starts it again on the same port with the same
    /// configuration, passwords and JetStream store; returns once it listens.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c")
            .arg(&self.conf_path)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (var, pw) in self.creds.env_pairs() {
            cmd.env(var, pw.expose());
        }
        self.child = cmd.spawn().expect("spawn nats-server");
        let child = &mut self.child;
        poll(Duration::from_secs(10), || {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(());
            }
            assert!(child.try_wait().unwrap().is_none(), "nats-server exited");
            None
        })
        .expect("nats-server did not listen again within 10 s");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Error messages the server sent to a client.
#[derive(Clone, Default)]
pub struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    /// Waits (polling, up to 5 s) for an error containing `needle`.
    pub async fn wait_for(&self, needle: &str) -> String {
        let found = poll_async(Duration::from_secs(5), || async {
            self.0
                .lock()
                .unwrap()
                .iter()
                .find(|e| e.contains(needle))
                .cloned()
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no server error containing {needle:?}; got {:?}",
                self.0.lock().unwrap()
            )
        })
    }

    /// All errors so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// How a test worker behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers every task with `{"node": <name>, "task": <payload>}`.
    Answer,
    /// Takes tasks and never answers (a hung agent).
    Hang,
    /// Answers, claiming in its `Fleet-Node` header to be this other node.
    Impersonate(&'static str),
}

/// A test worker: counts the tasks it received.
pub struct Worker {
    /// Tasks received.
    pub received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    client: async_nats::Client,
    heartbeats: Option<tokio::task::JoinHandle<()>>,
    /// The control plane's connection that probed the worker ready, and the subject it probed.
    prober: (async_nats::Client, String),
}

impl Worker {
    /// Tasks received so far.
    pub fn count(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Starts heart-beating as the bus contract says (the reference agent side), every `every`.
    pub fn heartbeat(&mut self, node: &str, every: Duration, models: &[&str]) {
        let beat = fleetnix::bus::heartbeat::Beat::new(
            NodeName::parse(node).unwrap(),
            4,
            models.iter().map(|m| m.to_string()).collect(),
        );
        self.heartbeats = Some(fleetnix::bus::heartbeat::spawn_heartbeats(
            self.client.clone(),
            beat,
            every,
        ));
    }

    /// Stops heart-beating (the agent's heartbeat loop died) but keeps serving tasks.
    pub fn stop_heartbeats(&mut self) {
        if let Some(h) = self.heartbeats.take() {
            h.abort();
        }
    }

    /// Kills the worker: stops serving and heart-beating and closes its connection. Returns
    /// once the server has dropped its subscriptions (a request to its own task subject gets
    /// "no responders": `drain` only queues the unsubscriptions).
    pub async fn kill(mut self) -> usize {
        self.stop_heartbeats();
        self.task.abort();
        let _ = self.client.drain().await;
        let (prober, subject) = &self.prober;
        let gone = poll_async(Duration::from_secs(5), || async {
            let request = async_nats::Request::new()
                .payload("{}".into())
                .timeout(Some(Duration::from_millis(200)));
            match prober.send_request(subject.clone(), request).await {
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Some(()),
                _ => None,
            }
        })
        .await;
        assert!(gone.is_some(), "the killed worker is still subscribed");
        self.count()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
        self.stop_heartbeats();
    }
}

/// Header of readiness probes, which test workers answer whatever their behaviour.
pub const PROBE_HEADER: &str = "Fleet-Test-Probe";

/// Subscribes `node` (already connected as `client`) to `role`'s tasks and serves them. Returns
/// once the server routes tasks to it: the control plane probes the node's own task subject until
/// the worker answers (the server handles a connection's operations in order, so the queue
/// subscription made before it is in place too). A flush alone only empties the socket buffer.
pub async fn spawn_worker(
    server: &NatsServer,
    client: async_nats::Client,
    node: &str,
    role: &str,
    behaviour: Behaviour,
) -> Worker {
    let name = NodeName::parse(node).unwrap();
    let role = Role::parse(role).unwrap();
    let mut subs = d::subscribe_tasks(&client, &name, &role).await.unwrap();
    client.flush().await.unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let worker_name = name.clone();
    let worker_client = client.clone();
    let task = tokio::spawn(async move {
        let name = worker_name;
        while let Some(msg) = subs.next().await {
            let probe = msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get(PROBE_HEADER).is_some());
            if !probe {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let claim = match behaviour {
                Behaviour::Impersonate(other) => NodeName::parse(other).unwrap(),
                _ => name.clone(),
            };
            if probe || behaviour != Behaviour::Hang {
                let task: serde_json::Value =
                    serde_json::from_slice(&msg.payload).unwrap_or(serde_json::Value::Null);
                let body = serde_json::json!({"node": name.as_str(), "task": task});
                d::reply(&client, &msg, &claim, body.to_string().into())
                    .await
                    .unwrap();
            }
        }
    });
    // Only the router's user may send tasks (`dispatch --direct` uses it too).
    let prober = server.connect_router().await;
    let subject = bus::node_task_subject(&role, &name);
    let ready = poll_async(Duration::from_secs(5), || async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(PROBE_HEADER, "1");
        let request = async_nats::Request::new()
            .headers(headers)
            .payload("{}".into())
            .timeout(Some(Duration::from_millis(500)));
        prober
            .send_request(subject.clone(), request)
            .await
            .ok()
            .map(drop)
    })
    .await;
    assert!(ready.is_some(), "{node} never became ready for {role}");
    Worker {
        received,
        task,
        client: worker_client,
        heartbeats: None,
        prober: (prober, subject),
    }
}

/// A dispatch policy for tests.
pub fn policy(timeout: Duration, candidates: &[&str]) -> Policy {
    Policy {
        attempt_timeout: timeout,
        retry: true,
        candidates: candidates
            .iter()
            .map(|c| NodeName::parse(c).unwrap())
            .collect(),
    }
}

/// A worker to start with [`RouterFixture::healthy_workers`]: node, behaviour, models it reports.
pub type WorkerSpec<'a> = (&'a str, Behaviour, &'a [&'a str]);

/// The router tests' set-up: a server with the example fleet registered (`node sync` as
/// `_registry`, every node `Registered`), a router running as its own user on `config.lanes`
/// lanes, the supervisors' connection to ask it and the registry's to read `fleet-health`.
pub struct RouterFixture {
    /// The server.
    pub server: NatsServer,
    /// Connected as `_supervisor`.
    pub supervisor: async_nats::Client,
    /// Connected as `_registry`.
    pub registry: async_nats::Client,
    /// The router.
    pub router: fleetnix::bus::router::RouterHandle,
    /// The router's configuration.
    pub config: fleetnix::bus::router::RouterConfig,
    /// Heartbeat period of the workers it starts.
    pub beat: Duration,
}

impl RouterFixture {
    /// Starts the server, registers the example fleet and starts the router with `config`;
    /// workers started through the fixture heart-beat every `beat`.
    pub async fn start(config: fleetnix::bus::router::RouterConfig, beat: Duration) -> Self {
        let fleet = crate::common::example_fleet();
        let server = NatsServer::start(&fleet);
        let supervisor = server.connect_supervisor().await;
        let registry = server.connect_registry().await;
        let report =
            fleetnix::bus::registry::sync(&async_nats::jetstream::new(registry.clone()), &fleet)
                .await
                .unwrap();
        assert!(report
            .lines
            .iter()
            .all(|l| l.action == fleetnix::bus::registry::SyncAction::Registered));
        let lanes = server.connect_router_lanes(config.lanes).await;
        let router = fleetnix::bus::router::start(lanes, config.clone(), None)
            .await
            .unwrap();
        RouterFixture {
            server,
            supervisor,
            registry,
            router,
            config,
            beat,
        }
    }

    /// A worker of `role` on `node` behaving as `behaviour`, heart-beating with `models`.
    pub async fn worker(
        &self,
        node: &str,
        role: &str,
        behaviour: Behaviour,
        models: &[&str],
    ) -> Worker {
        let mut w = self.server.worker(node, role, behaviour).await;
        w.heartbeat(node, self.beat, models);
        w
    }

    /// Workers of `role` as `specs` say, returned once the router reports each `healthy`.
    pub async fn healthy_workers(&self, role: &str, specs: &[WorkerSpec<'_>]) -> Vec<Worker> {
        let mut workers = Vec::with_capacity(specs.len());
        for (node, behaviour, models) in specs {
            workers.push(self.worker(node, role, *behaviour, models).await);
        }
        for (node, _, _) in specs {
            self.wait_state(node, "healthy", Duration::from_secs(5))
                .await;
        }
        workers
    }

    /// The router's `fleet-health` entry of `node`, read as `_registry`.
    pub async fn health(&self, node: &str) -> Option<fleetnix::bus::router::HealthEntry> {
        let js = async_nats::jetstream::new(self.registry.clone());
        let kv = js.get_key_value(bus::HEALTH_BUCKET).await.ok()?;
        let v = kv.get(node).await.ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Waits until `node` is `state` in `fleet-health`.
    pub async fn wait_state(
        &self,
        node: &str,
        state: &str,
        limit: Duration,
    ) -> fleetnix::bus::router::HealthEntry {
        let got = poll_async(limit, || async {
            self.health(node).await.filter(|e| e.state == state)
        })
        .await;
        match got {
            Some(e) => e,
            None => {
                let last = self.health(node).await;
                panic!("{node} was not {state} within {limit:?}; last entry: {last:?}")
            }
        }
    }

    /// Asks the router for a `role` task (`{"task":"summarize"}`), waiting four node timeouts.
    pub async fn ask(&self, role: &str, model: Option<&str>) -> fleetnix::bus::router::Answer {
        let payload = d::parse_payload(r#"{"task":"summarize"}"#).unwrap();
        fleetnix::bus::router::ask(
            &self.supervisor,
            &Role::parse(role).unwrap(),
            payload,
            model,
            self.config.node_timeout * 4,
        )
        .await
        .unwrap()
    }
}

/// The node that answered `a`, checking the worker's own body names the same node.
pub fn node_of(a: &fleetnix::bus::router::Answer) -> String {
    match a {
        fleetnix::bus::router::Answer::Done { node, payload, .. } => {
            let body: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(body["node"], node.as_str());
            node.clone()
        }
        fleetnix::bus::router::Answer::Failed(e) => panic!("router error: {e:?}"),
    }
}

impl NatsServer {
    /// `fleetnix router --node-timeout 1s` against this server, its password only in its
    /// environment, alerting to `ntfy` (never the example fleet's own ntfy address); stderr is
    /// the caller's to set. Killed when dropped.
    pub fn router_command(&self, ntfy: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(crate::common::fleetnix_bin());
        cmd.arg("--root")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(["router", "--node-timeout", "1s", "--nats-url", &self.url])
            .env(
                "FLEETNIX_NATS_PASSWORD",
                self.creds.router_password().unwrap().expose(),
            )
            .env("FLEETNIX_NTFY_URL", ntfy)
            .env_remove("FLEETNIX_NATS_URL")
            .kill_on_drop(true);
        cmd
    }

    /// [`Self::router_command`] started, alerting to a closed loopback port, stderr discarded.
    pub fn router_process(&self) -> tokio::process::Child {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let ntfy = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        self.router_command(&ntfy)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}
