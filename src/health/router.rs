//! The router's view of each node, next to the probes (`fleetnix health`): heartbeat age,
//! in-flight/capacity, draining, and the router's own state.
//!
//! This module knows nothing of NATS: the CLI reads the router's `fleet-health` entries from the
//! bus and hands them here as [`RouterEntry`]s; [`HealthReport::attach_router`] puts each one
//! next to its node's probes. A [`RouterSource`] does the same for every sweep of a watch.

use super::{HealthReport, NodeState};
use crate::model::NodeName;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A node as the router published it (the CLI fills this from the bus's `fleet-health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterEntry {
    /// The node.
    pub node: NodeName,
    /// The router's verdict.
    pub state: NodeState,
    /// Why, when not healthy.
    pub reason: Option<String>,
    /// Since when (RFC 3339, the router's clock).
    pub since: String,
    /// When the last heartbeat arrived at the router (RFC 3339), if ever.
    pub last_heartbeat: Option<String>,
    /// In-flight tasks the agent reported.
    pub in_flight: u32,
    /// Capacity the agent reported (0 before a heartbeat).
    pub capacity: u32,
    /// Drained, or its agent says it is draining: it gets no new task.
    pub draining: bool,
}

/// The router's view of one node, as `health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterView {
    /// The router's verdict (heartbeats, failed attempts), which may differ from the probes'.
    pub state: NodeState,
    /// Why, when not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when (RFC 3339, the router's clock).
    pub since: String,
    /// When the last heartbeat arrived at the router (RFC 3339; `null`: never).
    pub last_heartbeat: Option<String>,
    /// Milliseconds from `last_heartbeat` to when it was read (`null`: never; 0 when the
    /// router's clock is ahead of this machine's).
    pub heartbeat_age_ms: Option<u64>,
    /// In-flight tasks the agent reported.
    pub in_flight: u32,
    /// Capacity the agent reported (0 before a heartbeat).
    pub capacity: u32,
    /// It gets no new task.
    pub draining: bool,
}

impl RouterView {
    /// The view of `entry` read at `now` (the heartbeat's age is `now` minus its arrival).
    pub fn new(entry: &RouterEntry, now: SystemTime) -> Self {
        let age = entry
            .last_heartbeat
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO));
        RouterView {
            state: entry.state,
            reason: entry.reason.clone(),
            since: entry.since.clone(),
            last_heartbeat: entry.last_heartbeat.clone(),
            heartbeat_age_ms: age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            in_flight: entry.in_flight,
            capacity: entry.capacity,
            draining: entry.draining,
        }
    }

    /// The heartbeat's age for people: `2s ago`, `3m05s ago`, `never` (a `last_heartbeat`
    /// that is no RFC 3339 time: `unknown`).
    pub fn heartbeat_text(&self) -> String {
        match (self.heartbeat_age_ms, &self.last_heartbeat) {
            (Some(ms), _) => format!("{} ago", age_text(Duration::from_millis(ms))),
            (None, None) => "never".into(),
            (None, Some(_)) => "unknown".into(),
        }
    }

    /// In-flight/capacity: `1/4` (`—` before any heartbeat).
    pub fn load_text(&self) -> String {
        if self.last_heartbeat.is_none() && self.capacity == 0 {
            return "—".into();
        }
        format!("{}/{}", self.in_flight, self.capacity)
    }

    /// `yes` or `—`.
    pub fn draining_text(&self) -> &'static str {
        if self.draining {
            "yes"
        } else {
            "—"
        }
    }

    /// `router: down (no heartbeat for 9.6s)` when the router's state differs from `probed`.
    pub fn disagreement(&self, probed: NodeState) -> Option<String> {
        if self.state == probed {
            return None;
        }
        Some(match &self.reason {
            Some(why) => format!("router: {} ({why})", self.state),
            None => format!("router: {}", self.state),
        })
    }
}

/// A duration for people, whole seconds: `0s`, `59s`, `3m05s`, `2h07m`, `3d04h`.
pub fn age_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Whether the report carries the router's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "error", rename_all = "snake_case")]
pub enum RouterStatus {
    /// Not asked for (`--no-bus`, or a library sweep).
    #[default]
    NotAsked,
    /// Read: each node's `router` is its entry, `null` when the router has none.
    Read,
    /// Asked for but missing (no password, bus unreachable, …): why.
    Missing(String),
}

impl HealthReport {
    /// Puts the router's view next to each node's probes, read at `now`: `Ok(entries)` (a node
    /// without an entry gets `None`; entries of nodes not in the report are ignored), or
    /// `Err(why)` when it could not be read (every node `None`).
    pub fn attach_router(&mut self, view: Result<&[RouterEntry], &str>, now: SystemTime) {
        match view {
            Ok(entries) => {
                let by_node: BTreeMap<&NodeName, &RouterEntry> =
                    entries.iter().map(|e| (&e.node, e)).collect();
                for n in &mut self.nodes {
                    n.router = by_node.get(&n.name).map(|e| RouterView::new(e, now));
                }
                self.router_view = RouterStatus::Read;
            }
            Err(why) => {
                for n in &mut self.nodes {
                    n.router = None;
                }
                self.router_view = RouterStatus::Missing(why.to_string());
            }
        }
    }
}

/// A boxed future returned by [`RouterSource::read`].
pub type RouterRead<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<RouterEntry>, String>> + Send + 'a>>;

/// Where a watch reads the router's view for every sweep (the CLI: the bus). The watch bounds
/// each read by the probe timeout and runs it alongside the probes.
pub trait RouterSource: Send {
    /// Every node's entry, or why they cannot be read.
    fn read(&mut self) -> RouterRead<'_>;
}

impl std::fmt::Debug for dyn RouterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouterSource")
    }
}

/// How much longer than the probe timeout a sweep waits for the router's view: a source bounds
/// itself by the probe timeout and says what it was doing; this is the backstop.
pub const BACKSTOP: Duration = Duration::from_millis(300);

/// Reads `source` bounded by `limit`: a read that takes longer is reported missing.
pub async fn read_bounded(
    source: &mut dyn RouterSource,
    limit: Duration,
) -> Result<Vec<RouterEntry>, String> {
    match tokio::time::timeout(limit, source.read()).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the router's view did not arrive within {}s",
            limit.as_secs_f64()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{NodeHealth, Presence};
    use std::net::IpAddr;

    fn entry(node: &str, state: NodeState, hb: Option<&str>) -> RouterEntry {
        RouterEntry {
            node: NodeName::parse(node).unwrap(),
            state,
            reason: (state != NodeState::Healthy).then(|| "no heartbeat for 9.6s".to_string()),
            since: "2026-12-04T10:00:00.000Z".into(),
            last_heartbeat: hb.map(str::to_string),
            in_flight: 1,
            capacity: 4,
            draining: false,
        }
    }

    fn node(name: &str, state: NodeState) -> NodeHealth {
        NodeHealth {
            name: NodeName::parse(name).unwrap(),
            address: IpAddr::from([127, 0, 0, 1]),
            presence: Presence::Online,
            state,
            probes: vec![],
            reason: None,
            router: None,
        }
    }

    fn at(t: &str) -> SystemTime {
        humantime::parse_rfc3339(t).unwrap()
    }

    #[test]
    fn ages_for_people() {
        let s = Duration::from_secs;
        assert_eq!(age_text(Duration::from_millis(999)), "0s");
        assert_eq!(age_text(s(2)), "2s");
        assert_eq!(age_text(s(59)), "59s");
        assert_eq!(age_text(s(60)), "1m00s");
        assert_eq!(age_text(s(185)), "3m05s");
        assert_eq!(age_text(s(3600 * 2 + 7 * 60 + 5)), "2h07m");
        assert_eq!(age_text(s(86_400 * 3 + 4 * 3600)), "3d04h");
    }

    #[test]
    fn heartbeat_age_load_and_draining_from_an_entry() {
        let now = at("2026-12-04T10:00:02.500Z");
        let v = RouterView::new(
            &entry(
                "worker-01",
                NodeState::Healthy,
                Some("2026-12-04T10:00:00.000Z"),
            ),
            now,
        );
        assert_eq!(v.heartbeat_age_ms, Some(2500));
        assert_eq!(v.heartbeat_text(), "2s ago");
        assert_eq!(v.load_text(), "1/4");
        assert_eq!(v.draining_text(), "—");
        let drained = RouterView::new(
            &RouterEntry {
                draining: true,
                in_flight: 0,
                ..entry(
                    "worker-01",
                    NodeState::Healthy,
                    Some("2026-12-04T10:00:00.000Z"),
                )
            },
            now,
        );
        assert_eq!(
            (drained.load_text(), drained.draining_text()),
            ("0/4".to_string(), "yes")
        );
        // Never heard from: no age, no load.
        let never = RouterView::new(
            &RouterEntry {
                capacity: 0,
                in_flight: 0,
                ..entry("worker-02", NodeState::Degraded, None)
            },
            now,
        );
        assert_eq!(never.heartbeat_age_ms, None);
        assert_eq!(
            (never.heartbeat_text(), never.load_text()),
            ("never".into(), "—".into())
        );
        // The router's clock ahead of ours: age 0, not a wrap-around.
        let ahead = RouterView::new(
            &entry(
                "worker-01",
                NodeState::Healthy,
                Some("2026-12-04T10:00:05.000Z"),
            ),
            now,
        );
        assert_eq!(ahead.heartbeat_text(), "0s ago");
        // Unparseable time: said so, not guessed.
        let odd = RouterView::new(
            &entry("worker-01", NodeState::Healthy, Some("yesterday")),
            now,
        );
        assert_eq!(odd.heartbeat_text(), "unknown");
    }

    #[test]
    fn the_router_state_is_shown_only_where_it_disagrees() {
        let now = at("2026-12-04T10:00:02Z");
        let down = RouterView::new(&entry("worker-01", NodeState::Down, None), now);
        assert_eq!(down.disagreement(NodeState::Down), None);
        assert_eq!(
            down.disagreement(NodeState::Healthy).as_deref(),
            Some("router: down (no heartbeat for 9.6s)")
        );
        let ok = RouterView::new(&entry("worker-01", NodeState::Healthy, None), now);
        assert_eq!(
            ok.disagreement(NodeState::Degraded).as_deref(),
            Some("router: healthy")
        );
    }

    #[test]
    fn attaching_matches_entries_to_nodes_and_records_why_it_is_missing() {
        let mut r = HealthReport {
            nodes: vec![
                node("cp", NodeState::Healthy),
                node("worker-01", NodeState::Down),
            ],
            router_view: RouterStatus::NotAsked,
        };
        let now = at("2026-12-04T10:00:03Z");
        let entries = [
            entry("worker-01", NodeState::Down, Some("2026-12-04T10:00:00Z")),
            entry("gone", NodeState::Down, None),
        ];
        r.attach_router(Ok(&entries), now);
        assert_eq!(r.router_view, RouterStatus::Read);
        assert_eq!(r.nodes[0].router, None);
        let w = r.nodes[1].router.as_ref().unwrap();
        assert_eq!((w.state, w.heartbeat_age_ms), (NodeState::Down, Some(3000)));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["router_view"], serde_json::json!({"status": "read"}));
        assert_eq!(json["nodes"][0]["router"], serde_json::Value::Null);
        assert_eq!(json["nodes"][1]["router"]["in_flight"], 1);
        assert_eq!(json["nodes"][1]["router"]["heartbeat_age_ms"], 3000);

        r.attach_router(Err("cannot connect"), now);
        assert!(r.nodes.iter().all(|n| n.router.is_none()));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["router_view"],
            serde_json::json!({"status": "missing", "error": "cannot connect"})
        );
        // The verdict stays the probes'.
        assert_eq!(r.nodes[1].state, NodeState::Down);
    }
}
