//! `fleetnix router`: the control plane's task router (seed sections 5 and 6), a long-running
//! service on the fleet's NATS.
//!
//! - It reads the registry (`fleet-nodes`, written by `fleetnix node sync`) and follows its
//!   changes; it hears every node's heartbeat on `fleet.heartbeat.<node>`.
//! - It answers requests on `fleet.dispatch.<role>` (queue group `router`): it orders the
//!   healthy nodes with the role by the fleet's `failover_strategy` ([`crate::bus::route::Router`]),
//!   those listing the request's `Fleet-Preferred-Model` first, and forwards the task to
//!   `fleet.tasks.<role>.<node>` with the task id headers. On a timeout (`node_timeout_seconds`
//!   per attempt) or a node with no agent subscribed, it moves to the next node when
//!   `retry_on_node_failure` is set. It replies with the worker's answer and the node that
//!   answered, or with an error (see `docs/bus.md`).
//! - A node is `healthy` while its heartbeats are fresh and its last task did not fail;
//!   `degraded` when its heartbeats stopped for `node_timeout_seconds` (its agent is dead even
//!   if its ports answer), when none came yet, or when a task sent to it failed since its last
//!   heartbeat; `down` when silent for three timeouts. Only healthy nodes get tasks.
//! - It serves requests on several connections, [`Lanes`] (`RouterConfig::lanes`): each takes
//!   its share of `fleet.dispatch.>` from the queue group and handles its requests in one task,
//!   forwarding and answering on its own connection; all share one live view.
//! - It publishes that view to the key-value bucket `fleet-health` (one key per node) and sends
//!   ntfy alerts on transitions to and from `down` when `alert_on_node_down` is set.
//!
//! The node in a reply is the node the task was sent to: only that node's NATS user may
//! subscribe to `fleet.tasks.<role>.<node>`, and only a user that received a request may answer
//! it, so the server vouches for it. A worker's own `Fleet-Node` header is only a claim; when it
//! names another node the reply says so (`Fleet-Claimed-Node`).

use crate::bus::dispatch::task_id;
use crate::bus::heartbeat::{self, Heartbeat};
use crate::bus::registry::{self, NodeRecord};
use crate::bus::route::{self, RouteError};
use crate::bus::{
    node_task_subject, BusError, ATTEMPTS_HEADER, ATTEMPT_HEADER, CLAIMED_HEADER, DEADLINE_HEADER,
    HEALTH_BUCKET, MODEL_HEADER, NODES_BUCKET, NODE_HEADER, REASK_HEADER, ROUTER_QUEUE,
    ROUTER_USER, STATUS_HEADER, TASK_ID_HEADER,
};
use crate::health::alert::Alerter;
use crate::health::{NodeState, Transition};
use crate::model::{FailoverStrategy, Fleet, NodeName, Role};
use crate::secret::Secret;
use async_nats::jetstream::{self, kv};
use async_nats::{Client, HeaderMap, Message, Request, RequestErrorKind};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

mod ask;
mod handle;
mod tasks;
mod view;
pub use ask::*;
pub use handle::*;
use tasks::Flights;
pub use view::*;

/// How the router behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// `failover_strategy`.
    pub strategy: FailoverStrategy,
    /// `retry_on_node_failure`: try the next node after a failed attempt.
    pub retry: bool,
    /// `node_timeout_seconds`: how long a node has to acknowledge a task, and the heartbeat
    /// silence after which a node is degraded (and its running tasks failed over).
    pub node_timeout: Duration,
    /// `task_timeout_seconds`: a task's deadline when its request names none.
    pub task_timeout: Duration,
    /// Silence after which a node is down (three node timeouts).
    pub down_after: Duration,
    /// How often states are re-evaluated and `fleet-health` refreshed.
    pub tick: Duration,
    /// Requests handled at once per lane; more wait.
    pub max_concurrent: usize,
    /// NATS connections the router serves requests on ([`Lanes`]): [`default_lanes`].
    pub lanes: usize,
}

/// The most lanes the router opens by default.
pub const MAX_LANES: usize = 4;

/// Lanes by default: the CPU count, at least 2 and at most [`MAX_LANES`].
pub fn default_lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, MAX_LANES)
}

impl RouterConfig {
    /// The fleet's `fleet:` settings.
    pub fn for_fleet(fleet: &Fleet) -> Self {
        let f = &fleet.settings.failure;
        let mut c = Self::new(
            f.failover_strategy,
            f.retry_on_node_failure,
            Duration::from_secs(u64::from(f.node_timeout_seconds)),
        );
        c.task_timeout = Duration::from_secs(u64::from(f.task_timeout_seconds));
        c
    }

    /// A configuration with `node_timeout`; the other bounds derive from it.
    pub fn new(strategy: FailoverStrategy, retry: bool, node_timeout: Duration) -> Self {
        RouterConfig {
            strategy,
            retry,
            node_timeout,
            task_timeout: Duration::from_secs(300),
            down_after: node_timeout * 3,
            tick: (node_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            max_concurrent: 1024,
            lanes: default_lanes(),
        }
    }
}

/// Errors of the router service.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A bus operation failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Nobody answers on `fleet.dispatch.<role>`.
    #[error("no router answers on {subject} (no responders) for task {task_id}: is `fleetnix router` running on the control plane? (retry with the same task id)")]
    NoRouter {
        /// The subject.
        subject: String,
        /// The task's id.
        task_id: String,
    },
    /// The router did not answer in time.
    #[error("the router did not answer {subject} within {:.1}s for task {task_id} (retry with the same task id to get its answer)", timeout.as_secs_f64())]
    RouterTimeout {
        /// The subject.
        subject: String,
        /// How long the caller waited.
        timeout: Duration,
        /// The task's id.
        task_id: String,
    },
    /// The request could not be sent.
    #[error("request to {subject} failed: {reason}")]
    Request {
        /// The subject.
        subject: String,
        /// The client's message.
        reason: String,
    },
    /// One of the router's tasks ended (its connection is gone for good): the router stops with
    /// an error, so its unit restarts it.
    #[error("the router stopped: {0}")]
    Stopped(String),
    /// The registry bucket does not exist yet.
    #[error("the registry bucket `{NODES_BUCKET}` does not exist or cannot be read ({0}); run `fleetnix node sync` first")]
    NoRegistry(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain maps and counters, usable after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running router; dropping it stops it.
#[derive(Debug)]
pub struct RouterHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    lanes: Vec<Arc<LaneCounters>>,
}

/// What one lane has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaneStats {
    /// Requests it took.
    pub requests: u64,
    /// Attempts after a request's first (failing over to the next node).
    pub retries: u64,
}

#[derive(Debug, Default)]
struct LaneCounters {
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RouterHandle {
    /// Each lane's counts so far, in lane order.
    pub fn lane_stats(&self) -> Vec<LaneStats> {
        self.lanes
            .iter()
            .map(|c| LaneStats {
                requests: c.requests.load(Ordering::Relaxed),
                retries: c.retries.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Waits until any of the router's tasks ends (a subscription closed: the connection is
    /// gone for good).
    pub async fn closed(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let _ = futures_util::future::select_all(self.tasks.iter_mut()).await;
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("router: {msg}");
}

/// The router's NATS connections ("lanes"), all as the router's user ([`ROUTER_USER`]). Each
/// lane subscribes to `fleet.dispatch.>` in queue group `router`, so the server spreads requests
/// over them, and forwards and answers its requests on its own connection; the first also
/// carries the registry, heartbeats and `fleet-health`. All lanes share one live view. A single
/// connection is handled by one task in the client and one reader in the server, so several
/// lanes let both work on requests in parallel.
#[derive(Debug, Clone)]
pub struct Lanes {
    /// Never empty: built from a first connection.
    clients: Vec<Client>,
}

impl Lanes {
    /// One lane: `first`.
    pub fn new(first: Client) -> Self {
        Lanes {
            clients: vec![first],
        }
    }

    /// Adds a lane.
    pub fn with_lane(mut self, client: Client) -> Self {
        self.clients.push(client);
        self
    }

    /// How many lanes.
    pub fn count(&self) -> usize {
        self.clients.len()
    }

    /// Opens `n` lanes (at least one) to `url` as the router's user with `password`, each
    /// connection bounded by `timeout`.
    pub async fn connect(
        url: &str,
        password: &Secret,
        n: usize,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        let mut lanes = Lanes::new(connect_logged(url, password, timeout, 0).await?);
        for i in 1..n {
            lanes = lanes.with_lane(connect_logged(url, password, timeout, i).await?);
        }
        Ok(lanes)
    }
}

/// Connects lane `lane` as the router's user, logging its connection events (disconnected,
/// reconnected, the server's errors such as a refused publish, slow consumers).
async fn connect_logged(
    url: &str,
    password: &Secret,
    timeout: Duration,
    lane: usize,
) -> Result<Client, BusError> {
    crate::bus::dispatch::check_url(url)?;
    let options = async_nats::ConnectOptions::with_user_and_password(
        ROUTER_USER.to_string(),
        password.expose().to_string(),
    )
    .custom_inbox_prefix(format!("_INBOX.{ROUTER_USER}"))
    .event_callback(move |event| async move {
        log(format!("lane {lane}: NATS {event}"));
    });
    crate::bus::dispatch::connect_bounded(options, url, ROUTER_USER, timeout).await
}

impl From<Client> for Lanes {
    fn from(client: Client) -> Self {
        Lanes::new(client)
    }
}

/// Starts the router on `lanes` (connected as the router's user; one [`Client`] is one lane):
/// loads the registry, opens or creates `fleet-health`, subscribes to heartbeats (first lane) and
/// dispatch requests (every lane), and returns once they are in place. Transitions are alerted
/// through `alerter` when given.
pub async fn start(
    lanes: impl Into<Lanes>,
    config: RouterConfig,
    alerter: Option<Alerter>,
) -> Result<RouterHandle, RouterError> {
    let lanes = lanes.into();
    // Invariant: `Lanes` is never empty.
    let client = lanes.clients[0].clone();
    let js = jetstream::new(client.clone());
    let nodes_kv = registry::open_bucket(&js, NODES_BUCKET, false)
        .await
        .map_err(|e| RouterError::NoRegistry(e.to_string()))?;
    let health_kv = registry::open_bucket(&js, HEALTH_BUCKET, true).await?;
    let tasks_kv = tasks::open_bucket(&js).await?;
    let drain_kv = registry::open_bucket(&js, crate::bus::DRAIN_BUCKET, true).await?;
    let (records, bad) = registry::load(&nodes_kv).await?;
    for b in bad {
        log(format!("ignoring {b}"));
    }
    let mut view = LiveView::new(config.clone(), Instant::now());
    for r in records.into_values() {
        view.register(r);
    }
    let shared = Arc::new(Shared {
        view: Mutex::new(view),
        config: config.clone(),
        flights: Flights::default(),
        tasks_kv,
    });
    let kv_err = |op: &'static str| {
        move |e: String| BusError::Kv {
            bucket: NODES_BUCKET.into(),
            op,
            reason: e,
        }
    };
    let mut watch = nodes_kv
        .watch_with_history(">")
        .await
        .map_err(|e| kv_err("watch")(e.to_string()))?;
    let mut drains = drain_kv
        .watch_with_history(">")
        .await
        .map_err(|e| BusError::Kv {
            bucket: crate::bus::DRAIN_BUCKET.into(),
            op: "watch",
            reason: e.to_string(),
        })?;
    let sub_err = |subject: &str| {
        let subject = subject.to_string();
        move |source| BusError::Subscribe { subject, source }
    };
    let mut heartbeats = client
        .subscribe("fleet.heartbeat.>")
        .await
        .map_err(sub_err("fleet.heartbeat.>"))?;
    let mut acks = client
        .subscribe(crate::bus::ACKS_SUBJECT)
        .await
        .map_err(sub_err(crate::bus::ACKS_SUBJECT))?;
    let mut requests = Vec::with_capacity(lanes.count());
    for lane in &lanes.clients {
        let sub = lane
            .queue_subscribe("fleet.dispatch.>", ROUTER_QUEUE.to_string())
            .await
            .map_err(sub_err("fleet.dispatch.>"))?;
        requests.push((lane.clone(), sub));
    }
    for lane in &lanes.clients {
        lane.flush().await.map_err(|e| BusError::Kv {
            bucket: HEALTH_BUCKET.into(),
            op: "flush",
            reason: e.to_string(),
        })?;
    }

    let mut tasks = Vec::new();
    // The registry's changes.
    let s = Arc::clone(&shared);
    tasks.push(tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { continue };
            let mut view = lock(&s.view);
            match entry.operation {
                kv::Operation::Put => match NodeRecord::from_bytes(&entry.key, &entry.value) {
                    Ok(r) => view.register(r),
                    Err(e) => log(format!("ignoring {NODES_BUCKET}/{}: {e}", entry.key)),
                },
                kv::Operation::Delete | kv::Operation::Purge => view.unregister(&entry.key),
            }
        }
    }));
    // Drained nodes.
    let s = Arc::clone(&shared);
    tasks.push(tokio::spawn(async move {
        while let Some(entry) = drains.next().await {
            let Ok(entry) = entry else { continue };
            let drained = matches!(entry.operation, kv::Operation::Put);
            log(format!(
                "{} {}",
                entry.key,
                if drained { "drained" } else { "undrained" }
            ));
            lock(&s.view).set_drained(&entry.key, drained);
        }
    }));
    // Heartbeats.
    let s = Arc::clone(&shared);
    tasks.push(tokio::spawn(async move {
        while let Some(msg) = heartbeats.next().await {
            match heartbeat::parse(msg.subject.as_str(), &msg.payload) {
                Ok((node, hb)) => {
                    lock(&s.view).heartbeat(&node, hb, Instant::now(), SystemTime::now())
                }
                Err(e) => log(e),
            }
        }
    }));
    // Acknowledgements: `fleet.results.<node>.ack`, the node vouched for by the subject.
    let s = Arc::clone(&shared);
    let recorder = client.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(msg) = acks.next().await {
            let node = msg
                .subject
                .as_str()
                .strip_prefix("fleet.results.")
                .and_then(|r| r.strip_suffix(".ack"))
                .and_then(|n| NodeName::parse(n).ok());
            if let (Some(node), Some(id)) = (node, header(&msg, TASK_ID_HEADER)) {
                if !handle::valid_task_id(id) {
                    continue;
                }
                s.flights.acked(id, &node);
                // Recorded by every router that hears it (see `tasks::record`).
                tasks::record(&recorder, id, &node).await;
            }
        }
    }));
    // Requests, one task per lane.
    let mut lane_counters = Vec::with_capacity(requests.len());
    for (lane, sub) in requests {
        let counters = Arc::new(LaneCounters::default());
        lane_counters.push(Arc::clone(&counters));
        tasks.push(tokio::spawn(serve_lane(
            Arc::clone(&shared),
            lane,
            sub,
            config.max_concurrent.max(1),
            counters,
        )));
    }
    // Alerts, off the tick's path (ntfy may be slow or down).
    let (alert_tx, mut alert_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Transition>>();
    if let Some(mut alerter) = alerter {
        tasks.push(tokio::spawn(async move {
            while let Some(ts) = alert_rx.recv().await {
                alerter.observe(&ts);
                let (_, err) = alerter.flush().await;
                if let Some(e) = err {
                    log(format!(
                        "{e}; {} alert(s) queued for retry",
                        alerter.pending()
                    ));
                }
            }
        }));
    }
    // States, fleet-health and alerts.
    let s = Arc::clone(&shared);
    let tick = config.tick;
    tasks.push(tokio::spawn(async move {
        // Per node: what was written, its heartbeat time, and when.
        let mut published: BTreeMap<NodeName, (Vec<u8>, Option<String>, Instant)> = BTreeMap::new();
        let refresh = s.config.node_timeout;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let (now, wall) = (Instant::now(), SystemTime::now());
            let (transitions, entries, names) = {
                let mut view = lock(&s.view);
                let t = view.evaluate(now, wall);
                let names = view.nodes();
                let entries: Vec<HealthEntry> = names
                    .iter()
                    .filter_map(|n| view.entry(n, now, wall))
                    .collect();
                (t, entries, names)
            };
            for t in &transitions {
                log(format!(
                    "{} {} -> {}{}",
                    t.node,
                    t.from.map_or("new".to_string(), |s| s.to_string()),
                    t.to,
                    t.reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ));
            }
            if !transitions.is_empty() {
                let _ = alert_tx.send(transitions);
            }
            for e in entries {
                // Written when the state changes (not its reason's growing silence count, not
                // every heartbeat), and at most every node timeout to refresh `last_heartbeat`
                // while heartbeats arrive.
                let mut key_view = e.clone();
                key_view.last_heartbeat = None;
                key_view.reason = None;
                let fingerprint = serde_json::to_vec(&key_view).unwrap_or_default();
                let Ok(name) = NodeName::parse(&e.node) else {
                    continue;
                };
                let now = Instant::now();
                if let Some((fp, beat, at)) = published.get(&name) {
                    let stale = *beat != e.last_heartbeat && now.duration_since(*at) >= refresh;
                    if *fp == fingerprint && !stale {
                        continue;
                    }
                }
                let body = serde_json::to_vec(&e).unwrap_or_default();
                match health_kv.put(name.as_str(), body.into()).await {
                    Ok(_) => {
                        published.insert(name, (fingerprint, e.last_heartbeat.clone(), now));
                    }
                    Err(err) => log(format!("{HEALTH_BUCKET}/{name}: put failed: {err}")),
                }
            }
            let gone: Vec<NodeName> = published
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            for n in gone {
                if health_kv.delete(n.as_str()).await.is_ok() {
                    published.remove(&n);
                }
            }
        }
    }));
    Ok(RouterHandle {
        tasks,
        lanes: lane_counters,
    })
}

/// Runs the router on `lanes` until `shutdown` completes (`Ok`) or a connection is gone for
/// good ([`RouterError::Stopped`]: the router never ends on its own, so an end that was not asked
/// for is an error and its unit restarts it).
pub async fn run(
    lanes: impl Into<Lanes>,
    config: RouterConfig,
    alerter: Option<Alerter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let mut handle = start(lanes, config, alerter).await?;
    tokio::select! {
        _ = shutdown => Ok(()),
        _ = handle.closed() => {
            let e = RouterError::Stopped(
                "a subscription closed (the NATS connection is gone for good)".into(),
            );
            log(&e);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;

    fn record(name: &str, roles: &[&str], models: &[&str]) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            address: "100.64.0.9".parse().unwrap(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            resources: Resources {
                cpu: 4,
                ram_gb: 8,
                gpu: None,
            },
            tags: vec!["tag:worker".into()],
            models: models.iter().map(|m| m.to_string()).collect(),
            revision: String::new(),
        }
    }

    fn hb(node: &str, in_flight: u32) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            in_flight,
            capacity: 4,
            models: vec![],
            version: String::new(),
            time: String::new(),
            tasks: vec![],
            draining: false,
        }
    }

    fn n(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    #[test]
    fn heartbeats_decide_health_and_failures_suspend_until_the_next_one() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let cfg = RouterConfig::new(FailoverStrategy::RoundRobin, true, Duration::from_secs(10));
        let mut v = LiveView::new(cfg, t0);
        v.register(record("w1", &["r"], &[]));
        assert_eq!(v.state_of(&n("w1"), t0).unwrap().0, NodeState::Degraded);
        assert!(v.route("r", None, t0).is_err());
        v.heartbeat(&n("w1"), hb("w1", 0), t0, wall);
        assert_eq!(v.state_of(&n("w1"), t0).unwrap().0, NodeState::Healthy);
        assert_eq!(v.route("r", None, t0).unwrap().order, [n("w1")]);
        let t = t0 + Duration::from_secs(10);
        let (s, why) = v.state_of(&n("w1"), t).unwrap();
        assert_eq!(s, NodeState::Degraded);
        assert!(why.unwrap().contains("no heartbeat for 10.0s"));
        assert_eq!(
            v.state_of(&n("w1"), t0 + Duration::from_secs(30))
                .unwrap()
                .0,
            NodeState::Down
        );
        v.attempt_failed(&n("w1"), "timed out".into());
        assert_eq!(v.state_of(&n("w1"), t0).unwrap().0, NodeState::Degraded);
        v.heartbeat(&n("w1"), hb("w1", 0), t0, wall);
        assert_eq!(v.state_of(&n("w1"), t0).unwrap().0, NodeState::Healthy);
        // Transitions are reported once.
        assert_eq!(v.evaluate(t0, wall).len(), 1);
        assert!(v.evaluate(t0, wall).is_empty());
        v.unregister("w1");
        assert!(matches!(
            v.route("r", None, t0),
            Err(RouteError::UnknownRole { .. })
        ));
    }

    #[test]
    fn preferred_model_goes_first_when_some_node_has_it_and_least_loaded_reads_heartbeats() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let cfg = RouterConfig::new(FailoverStrategy::LeastLoaded, true, Duration::from_secs(10));
        let mut v = LiveView::new(cfg, t0);
        v.register(record("w1", &["r"], &[]));
        v.register(record("w2", &["r"], &["big"]));
        v.heartbeat(&n("w1"), hb("w1", 0), t0, wall);
        v.heartbeat(&n("w2"), hb("w2", 3), t0, wall);
        assert_eq!(v.route("r", None, t0).unwrap().order, [n("w1"), n("w2")]);
        assert_eq!(
            v.route("r", Some("big"), t0).unwrap().order,
            [n("w2"), n("w1")]
        );
        assert_eq!(
            v.route("r", Some("nobody-has-it"), t0).unwrap().order,
            [n("w1"), n("w2")]
        );
        v.heartbeat(&n("w1"), hb("w1", 9), t0, wall);
        assert_eq!(v.route("r", None, t0).unwrap().order, [n("w2"), n("w1")]);
    }
}
