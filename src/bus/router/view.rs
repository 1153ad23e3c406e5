//! The router's live view of the fleet: each node's heartbeat, health state, in-flight tasks and
//! failed attempts, and the records it writes to `fleet-health`.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct NodeView {
    pub(super) record: NodeRecord,
    pub(super) heartbeat: Option<(Instant, SystemTime, Heartbeat)>,
    /// Why the last task sent to it failed, if no heartbeat came since.
    pub(super) suspect: Option<String>,
    /// Published state and when it began.
    pub(super) state: Option<(NodeState, SystemTime)>,
}

/// One node in `fleet-health` (the value is this as JSON; the key is the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HealthEntry {
    /// The node.
    pub node: String,
    /// `healthy`, `degraded` or `down`.
    pub state: String,
    /// Why, when not healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when (RFC 3339).
    pub since: String,
    /// The last heartbeat's arrival (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// In-flight tasks the agent reported.
    pub in_flight: u32,
    /// Capacity the agent reported (0 before a heartbeat).
    pub capacity: u32,
    /// Models: the manifest's and those the agent reported.
    pub models: Vec<String>,
    /// It gets no new task: drained (`fleetnix node drain`) or its agent says it is draining.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// The router's live view: registry, heartbeats, failed attempts. Pure logic (the clock is
/// passed in), shared by the service's tasks.
#[derive(Debug)]
pub struct LiveView {
    pub(super) config: RouterConfig,
    pub(super) started: Instant,
    pub(super) nodes: BTreeMap<NodeName, NodeView>,
    pub(super) router: route::Router,
    pub(super) drained: BTreeSet<NodeName>,
    /// The last heartbeat from any node, and when heartbeats resumed after a gap in all of them
    /// (the router's own connection was down, or nats-server restarted).
    pub(super) last_any: Option<Instant>,
    pub(super) resumed: Option<Instant>,
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl LiveView {
    /// An empty view, started at `now`.
    pub fn new(config: RouterConfig, now: Instant) -> Self {
        LiveView {
            router: route::Router::from_nodes(Vec::new(), config.strategy, config.retry),
            config,
            started: now,
            nodes: BTreeMap::new(),
            drained: BTreeSet::new(),
            last_any: None,
            resumed: None,
        }
    }

    pub(super) fn refresh_router(&mut self) {
        let nodes = self
            .nodes
            .values()
            .filter_map(|v| v.record.to_node().ok())
            .collect();
        self.router.set_nodes(nodes);
    }

    /// Adds or replaces a registered node.
    pub fn register(&mut self, record: NodeRecord) {
        let Ok(name) = NodeName::parse(&record.name) else {
            return;
        };
        match self.nodes.get_mut(&name) {
            Some(v) => v.record = record,
            None => {
                self.nodes.insert(
                    name,
                    NodeView {
                        record,
                        heartbeat: None,
                        suspect: None,
                        state: None,
                    },
                );
            }
        }
        self.refresh_router();
    }

    /// Forgets a node that left the registry.
    pub fn unregister(&mut self, node: &str) {
        self.nodes.retain(|n, _| n.as_str() != node);
        self.refresh_router();
    }

    /// The registered nodes.
    pub fn nodes(&self) -> Vec<NodeName> {
        self.nodes.keys().cloned().collect()
    }

    /// Records a heartbeat of `node` received at `now`: clears a failed attempt, updates the
    /// in-flight count `least_loaded` uses. Heartbeats of unregistered nodes are ignored.
    pub fn heartbeat(&mut self, node: &NodeName, hb: Heartbeat, now: Instant, wall: SystemTime) {
        if let Some(last) = self.last_any {
            if now.saturating_duration_since(last) >= self.config.node_timeout / 2 {
                self.resumed = Some(now);
            }
        }
        self.last_any = Some(now);
        if let Some(v) = self.nodes.get_mut(node) {
            self.router.set_in_flight(node, hb.in_flight);
            v.suspect = None;
            v.heartbeat = Some((now, wall, hb));
        }
    }

    /// Drains (`true`) or undrains `node` (`fleetnix node drain`).
    pub fn set_drained(&mut self, node: &str, drained: bool) {
        let Ok(name) = NodeName::parse(node) else {
            return;
        };
        if drained {
            self.drained.insert(name);
        } else {
            self.drained.remove(&name);
        }
    }

    /// Does `node` take no new task (drained, or its agent says it is draining)?
    pub fn draining(&self, node: &NodeName) -> bool {
        self.drained.contains(node)
            || self
                .nodes
                .get(node)
                .and_then(|v| v.heartbeat.as_ref())
                .is_some_and(|(_, _, hb)| hb.draining)
    }

    /// How long ago `node`'s last heartbeat arrived (`None`: none yet, or not registered).
    pub fn heartbeat_age(&self, node: &NodeName, now: Instant) -> Option<Duration> {
        let (at, _, _) = self.nodes.get(node)?.heartbeat.as_ref()?;
        Some(now.saturating_duration_since(*at))
    }

    /// Is `node` known dead at `now`: silent for `node_timeout_seconds` (or never heard from
    /// since the router started that long ago) while the router hears other nodes? Silence is
    /// counted from when heartbeats resumed after a gap in all of them (the router's connection
    /// or nats-server was down: that silence says nothing about the node), and no node is dead
    /// while nobody at all is heard.
    pub fn silent(&self, node: &NodeName, now: Instant) -> bool {
        let t = self.config.node_timeout;
        let hearing = self
            .last_any
            .is_some_and(|l| now.saturating_duration_since(l) < t / 2);
        if !hearing {
            return false;
        }
        let since = match (
            self.nodes.get(node).and_then(|v| v.heartbeat.as_ref()),
            self.resumed,
        ) {
            (Some((at, _, _)), Some(r)) => (*at).max(r),
            (Some((at, _, _)), None) => *at,
            (None, Some(r)) => r.max(self.started),
            (None, None) => self.started,
        };
        now.saturating_duration_since(since) >= t
    }

    /// The node whose last heartbeat lists task `id` as running, if any.
    pub fn running(&self, id: &str) -> Option<NodeName> {
        self.nodes.iter().find_map(|(n, v)| {
            let (_, _, hb) = v.heartbeat.as_ref()?;
            hb.tasks.iter().any(|t| t == id).then(|| n.clone())
        })
    }

    /// Has any heartbeat arrived since `t`?
    pub fn heard_since(&self, t: Instant) -> bool {
        self.nodes
            .values()
            .any(|v| v.heartbeat.as_ref().is_some_and(|(at, _, _)| *at >= t))
    }

    /// When the router started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records that a task sent to `node` failed (`why`); it gets no task until its next heartbeat.
    pub fn attempt_failed(&mut self, node: &NodeName, why: String) {
        if let Some(v) = self.nodes.get_mut(node) {
            v.suspect = Some(why);
        }
    }

    /// The state of `node` at `now`, with the reason when not healthy.
    pub fn state_of(&self, node: &NodeName, now: Instant) -> Option<(NodeState, Option<String>)> {
        let v = self.nodes.get(node)?;
        let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        Some(match &v.heartbeat {
            None => {
                let waited = now.saturating_duration_since(self.started);
                if waited >= self.config.down_after {
                    (
                        NodeState::Down,
                        Some(format!(
                            "no heartbeat in {} since the router started",
                            secs(waited)
                        )),
                    )
                } else {
                    (NodeState::Degraded, Some("no heartbeat yet".into()))
                }
            }
            Some((at, _, _)) => {
                let silent = now.saturating_duration_since(*at);
                if silent >= self.config.down_after {
                    (
                        NodeState::Down,
                        Some(format!("no heartbeat for {}", secs(silent))),
                    )
                } else if silent >= self.config.node_timeout {
                    (
                        NodeState::Degraded,
                        Some(format!(
                            "no heartbeat for {} (agent silent; node timeout {})",
                            secs(silent),
                            secs(self.config.node_timeout)
                        )),
                    )
                } else if let Some(why) = &v.suspect {
                    (NodeState::Degraded, Some(format!("last task {why}")))
                } else {
                    (NodeState::Healthy, None)
                }
            }
        })
    }

    /// Models of `node`: the manifest's and those its agent reports.
    pub(super) fn models_of(&self, v: &NodeView) -> Vec<String> {
        let mut m: BTreeSet<String> = v.record.models.iter().cloned().collect();
        if let Some((_, _, hb)) = &v.heartbeat {
            m.extend(hb.models.iter().cloned());
        }
        m.into_iter().collect()
    }

    /// The nodes to try for a task of `role`, in order: healthy nodes by the strategy, those
    /// listing `model` first (when any does).
    pub fn route(
        &self,
        role: &str,
        model: Option<&str>,
        now: Instant,
    ) -> Result<route::Route, RouteError> {
        let mut r = self.router.route_with(role, |n| {
            let name = NodeName::parse(n).ok()?;
            let draining = self.draining(&name);
            match self.state_of(&name, now) {
                Some((NodeState::Healthy, _)) if draining => Some("draining".into()),
                Some((NodeState::Healthy, _)) => None,
                Some((s, why)) => Some(match why {
                    Some(w) => format!("{s}: {w}"),
                    None => s.to_string(),
                }),
                None => Some("not registered".into()),
            }
        })?;
        if let Some(model) = model {
            let has = |n: &NodeName| {
                self.nodes
                    .get(n)
                    .is_some_and(|v| self.models_of(v).iter().any(|m| m == model))
            };
            if r.order.iter().any(has) {
                // Invariant: route_with never returns an empty order (it errors instead).
                let first = r.order[0].clone();
                let (mut with, without): (Vec<NodeName>, Vec<NodeName>) =
                    r.order.into_iter().partition(has);
                with.extend(without);
                r.order = with;
                if r.order[0] != first && self.config.strategy == FailoverStrategy::RoundRobin {
                    // The rotation continues after the node that took the task.
                    let _ = self.router.record(role, &r.order[0]);
                }
            }
        }
        Ok(r)
    }

    /// Counts a task as running on `node` while the lease lives (for `least_loaded`).
    pub fn lease(&self, node: &NodeName) -> route::Lease {
        self.router.lease(node)
    }

    /// The `fleet-health` entry of `node` at `now` (its state's start time kept from the
    /// last [`LiveView::evaluate`]).
    pub fn entry(&self, node: &NodeName, now: Instant, wall: SystemTime) -> Option<HealthEntry> {
        let v = self.nodes.get(node)?;
        let (state, reason) = self.state_of(node, now)?;
        let since = match v.state {
            Some((s, t)) if s == state => t,
            _ => wall,
        };
        let (in_flight, capacity, last) = match &v.heartbeat {
            Some((_, at, hb)) => (hb.in_flight, hb.capacity, Some(rfc3339(*at))),
            None => (0, 0, None),
        };
        Some(HealthEntry {
            node: node.to_string(),
            state: state.to_string(),
            reason,
            since: rfc3339(since),
            last_heartbeat: last,
            in_flight,
            capacity,
            models: self.models_of(v),
            draining: self.draining(node),
        })
    }

    /// Re-evaluates every node at `now`; returns the state changes (the first evaluation of a
    /// node reports it with `from: None`).
    pub fn evaluate(&mut self, now: Instant, wall: SystemTime) -> Vec<Transition> {
        let mut out = Vec::new();
        let names: Vec<NodeName> = self.nodes.keys().cloned().collect();
        for name in names {
            let Some((state, reason)) = self.state_of(&name, now) else {
                continue;
            };
            let Some(v) = self.nodes.get_mut(&name) else {
                continue;
            };
            let prev = v.state.map(|(s, _)| s);
            if prev != Some(state) {
                v.state = Some((state, wall));
                out.push(Transition {
                    node: name,
                    from: prev,
                    to: state,
                    reason,
                });
            }
        }
        out
    }
}
