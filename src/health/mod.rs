//! Health probes: for every node, is it present and online in the tailnet, and does
//! each TCP port its services listen on (from the catalog, via the plan) accept a
//! connection? All probes of a sweep run concurrently, each bounded by the fleet's
//! `node_timeout_seconds`, so a sweep takes about one timeout however many nodes there are.
//!
//! States:
//! - **down**: not in the tailnet, offline, or it has service ports and *none* answered
//!   (every connect timed out: the host is unreachable even if the control server still
//!   lists it, as with a DERP path to a dead host);
//! - **degraded**: reachable, but at least one service port failed (refused, timed out);
//! - **healthy**: online and every service port accepted.
//!
//! [`watch()`] repeats sweeps at an interval, tracks state changes and alerts on them.
//!
//! Executor (observation): probes, `status`, `alert` and `watch`. Imports: `model`, `spec`,
//! `tailscale`, the foundations. Never `bus`: the router's view is composed in the CLI.

pub mod alert;
pub mod enrolment;
pub mod router;
pub mod status;
pub mod watch;

pub use router::{RouterEntry, RouterSource, RouterStatus, RouterView};
pub use watch::{watch, WatchEvent, WatchOptions, WatchSink};

use crate::model::{Fleet, Node, NodeName, Protocol};
use crate::spec;
use crate::tailscale::{Tailscale, TailscaleError, TailscaleStatus};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::task::JoinSet;

/// A node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Online, every service port accepts.
    Healthy,
    /// Reachable, but a service port fails.
    Degraded,
    /// Absent, offline or unreachable.
    Down,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Healthy => "healthy",
            NodeState::Degraded => "degraded",
            NodeState::Down => "down",
        })
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "healthy" => Ok(NodeState::Healthy),
            "degraded" => Ok(NodeState::Degraded),
            "down" => Ok(NodeState::Down),
            other => Err(format!(
                "unknown node state {other:?} (expected healthy, degraded or down)"
            )),
        }
    }
}

/// What the tailnet says of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Present and connected to the control server.
    Online,
    /// Present, not connected.
    Offline,
    /// No device for it.
    Missing,
    /// No tailnet state was given to the sweep.
    Unknown,
}

/// Result of one TCP connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "error", rename_all = "snake_case")]
pub enum PortOutcome {
    /// Connected.
    Open,
    /// Connection refused: the host answered, nothing listens.
    Refused,
    /// No answer within the timeout.
    TimedOut,
    /// Another error (unreachable network, …).
    Error(String),
}

/// One service port probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortProbe {
    /// Service id from the catalog.
    pub service: String,
    /// Port.
    pub port: u16,
    /// What happened.
    #[serde(flatten)]
    pub outcome: PortOutcome,
}

/// One node's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeHealth {
    /// Node name.
    pub name: NodeName,
    /// The address probed.
    pub address: IpAddr,
    /// Tailnet presence.
    pub presence: Presence,
    /// The verdict.
    pub state: NodeState,
    /// Probes, in catalog order (empty when the tailnet says it is gone).
    pub probes: Vec<PortProbe>,
    /// Why it is not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The router's view of it (`None`: not read, or the router has no entry for it). It never
    /// changes `state`, which is the probes' verdict.
    pub router: Option<RouterView>,
}

/// A sweep's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Per node, sorted by name.
    pub nodes: Vec<NodeHealth>,
    /// Whether the router's view was read, and why not.
    pub router_view: RouterStatus,
}

impl HealthReport {
    /// The state of `node`, if it was probed.
    pub fn state_of(&self, node: &str) -> Option<NodeState> {
        self.nodes
            .iter()
            .find(|n| n.name.as_str() == node)
            .map(|n| n.state)
    }

    /// The healthy nodes.
    pub fn healthy(&self) -> BTreeSet<NodeName> {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Healthy)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Is every node healthy?
    pub fn all_healthy(&self) -> bool {
        self.nodes.iter().all(|n| n.state == NodeState::Healthy)
    }

    /// The current state of every node.
    pub fn states(&self) -> BTreeMap<NodeName, NodeState> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.state))
            .collect()
    }
}

/// How a sweep probes.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Bound on every single probe (the sweep runs them all at once).
    pub timeout: Duration,
    /// Probe these addresses instead of the manifest's (tests: loopback listeners).
    pub addresses: BTreeMap<NodeName, IpAddr>,
}

impl ProbeOptions {
    /// The fleet's `node_timeout_seconds`, manifest addresses.
    pub fn for_fleet(fleet: &Fleet) -> Self {
        ProbeOptions {
            timeout: Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds)),
            addresses: BTreeMap::new(),
        }
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Probes `node` at `addr` instead of its manifest address.
    pub fn with_address(mut self, node: NodeName, addr: IpAddr) -> Self {
        self.addresses.insert(node, addr);
        self
    }
}

/// One TCP connect bounded by `timeout`.
pub async fn probe_port(addr: SocketAddr, timeout: Duration) -> PortOutcome {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => PortOutcome::TimedOut,
        Ok(Ok(_stream)) => PortOutcome::Open,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => PortOutcome::Refused,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => PortOutcome::TimedOut,
        Ok(Err(e)) => PortOutcome::Error(e.to_string()),
    }
}

/// Presence, and when an offline node was last seen (RFC 3339), if known.
fn presence_of(tailnet: Option<&TailscaleStatus>, node: &Node) -> (Presence, Option<String>) {
    match tailnet {
        None => (Presence::Unknown, None),
        Some(ts) => match ts.find(node.name.as_str()) {
            None => (Presence::Missing, None),
            Some(d) if d.is_self || d.peer.online => (Presence::Online, None),
            Some(d) => (
                Presence::Offline,
                d.peer.last_seen_time().map(|_| d.peer.last_seen.clone()),
            ),
        },
    }
}

/// Classifies one node from its presence and probes.
pub fn classify(
    presence: Presence,
    probes: &[PortProbe],
    timeout: Duration,
) -> (NodeState, Option<String>) {
    match presence {
        Presence::Missing => return (NodeState::Down, Some("not in the tailnet".into())),
        Presence::Offline => return (NodeState::Down, Some("offline in the tailnet".into())),
        Presence::Online | Presence::Unknown => {}
    }
    let failed: Vec<&PortProbe> = probes
        .iter()
        .filter(|p| p.outcome != PortOutcome::Open)
        .collect();
    if failed.is_empty() {
        return (NodeState::Healthy, None);
    }
    if failed.len() == probes.len() && failed.iter().all(|p| p.outcome == PortOutcome::TimedOut) {
        return (
            NodeState::Down,
            Some(format!(
                "no service port answered within {}s",
                timeout.as_secs_f64()
            )),
        );
    }
    let what: Vec<String> = failed
        .iter()
        .map(|p| {
            let how = match &p.outcome {
                PortOutcome::Refused => "refused".to_string(),
                PortOutcome::TimedOut => "timed out".to_string(),
                PortOutcome::Error(e) => e.clone(),
                PortOutcome::Open => "open".to_string(),
            };
            format!("{} ({}) {how}", p.service, p.port)
        })
        .collect();
    (NodeState::Degraded, Some(what.join(", ")))
}

/// Probes every node of the fleet.
pub async fn sweep(
    fleet: &Fleet,
    tailnet: Option<&TailscaleStatus>,
    opts: &ProbeOptions,
) -> HealthReport {
    sweep_nodes(
        fleet,
        &fleet.nodes.iter().collect::<Vec<_>>(),
        tailnet,
        opts,
    )
    .await
}

/// Probes the given nodes: all their ports at once, each bounded by `opts.timeout`.
pub async fn sweep_nodes(
    fleet: &Fleet,
    nodes: &[&Node],
    tailnet: Option<&TailscaleStatus>,
    opts: &ProbeOptions,
) -> HealthReport {
    struct Pending {
        name: NodeName,
        address: IpAddr,
        presence: Presence,
        last_seen: Option<String>,
        probes: Vec<PortProbe>,
    }
    let mut pending: Vec<Pending> = Vec::with_capacity(nodes.len());
    let mut set: JoinSet<(usize, usize, PortOutcome)> = JoinSet::new();
    for node in nodes {
        let address = opts
            .addresses
            .get(&node.name)
            .copied()
            .unwrap_or(node.tailscale_ip);
        let (presence, last_seen) = presence_of(tailnet, node);
        let mut probes = Vec::new();
        if matches!(presence, Presence::Online | Presence::Unknown) {
            let services = spec::node_spec(fleet, node).services;
            for s in services.into_iter().filter(|s| s.protocol == Protocol::Tcp) {
                let (i, j) = (pending.len(), probes.len());
                let addr = SocketAddr::new(address, s.port);
                let timeout = opts.timeout;
                set.spawn(async move { (i, j, probe_port(addr, timeout).await) });
                probes.push(PortProbe {
                    service: s.name,
                    port: s.port,
                    // Replaced when the probe task reports; a task that panicked leaves this.
                    outcome: PortOutcome::Error("probe did not run".into()),
                });
            }
        }
        pending.push(Pending {
            name: node.name.clone(),
            address,
            presence,
            last_seen,
            probes,
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Ok((i, j, outcome)) = joined {
            pending[i].probes[j].outcome = outcome;
        }
    }
    let mut out: Vec<NodeHealth> = pending
        .into_iter()
        .map(|p| {
            let (state, mut reason) = classify(p.presence, &p.probes, opts.timeout);
            if let (Some(r), Some(seen)) = (reason.as_mut(), &p.last_seen) {
                r.push_str(&format!(", last seen {seen}"));
            }
            NodeHealth {
                name: p.name,
                address: p.address,
                presence: p.presence,
                state,
                probes: p.probes,
                reason,
                router: None,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    HealthReport {
        nodes: out,
        router_view: RouterStatus::NotAsked,
    }
}

/// Why the tailnet's view could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TailnetError {
    /// `tailscale` is missing, failed, or timed out.
    #[error(transparent)]
    Tailscale(#[from] TailscaleError),
    /// tailscaled answers, but is not connected to a tailnet.
    #[error("tailscale is not running here (backend state {0:?})")]
    NotRunning(String),
}

/// The tailnet as this machine's tailscaled sees it, through `tailscale` (`None`: located
/// with [`Tailscale::locate`]); an error unless the backend is running.
pub async fn tailnet_view(tailscale: Option<&Tailscale>) -> Result<TailscaleStatus, TailnetError> {
    let located;
    let ts = match tailscale {
        Some(t) => t,
        None => {
            located = Tailscale::locate()?;
            &located
        }
    };
    let st = ts.status().await?;
    if !st.is_running() {
        return Err(TailnetError::NotRunning(st.backend_state));
    }
    Ok(st)
}

/// Probes the nodes that have `role` (for routing a task of that role).
pub async fn sweep_role(
    fleet: &Fleet,
    role: &str,
    tailnet: Option<&TailscaleStatus>,
    opts: &ProbeOptions,
) -> HealthReport {
    let with_role: Vec<&Node> = fleet
        .nodes
        .iter()
        .filter(|n| n.roles.iter().any(|r| r.as_str() == role))
        .collect();
    sweep_nodes(fleet, &with_role, tailnet, opts).await
}

/// A change of a node's state between sweeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The node.
    pub node: NodeName,
    /// Previous state (`None` on the first sweep).
    pub from: Option<NodeState>,
    /// New state.
    pub to: NodeState,
    /// Why, when not healthy.
    pub reason: Option<String>,
}

/// Remembers each node's last state and reports changes only.
#[derive(Debug, Clone, Default)]
pub struct StateTracker {
    last: BTreeMap<NodeName, NodeState>,
}

impl StateTracker {
    /// An empty tracker: the first sweep reports every node (`from: None`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a sweep; returns the nodes whose state changed, sorted by name.
    pub fn update(&mut self, report: &HealthReport) -> Vec<Transition> {
        let mut out = Vec::new();
        for n in &report.nodes {
            let prev = self.last.insert(n.name.clone(), n.state);
            if prev != Some(n.state) {
                out.push(Transition {
                    node: n.name.clone(),
                    from: prev,
                    to: n.state,
                    reason: n.reason.clone(),
                });
            }
        }
        out
    }
}
