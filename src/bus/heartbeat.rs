//! The agents' heartbeats: `fleet.heartbeat.<node>`, JSON (see `docs/bus.md`).
//!
//! An agent publishes one every [`Heartbeat`] interval (a third of `node_timeout_seconds` is a
//! good choice): its node name, the tasks it is running, how many it can run at once, the models
//! it serves, its version and the time. The router treats a node whose heartbeats stop for
//! `node_timeout_seconds` as `degraded` (the agent is dead even if the node's ports answer), and
//! `least_loaded` uses the reported in-flight counts.
//!
//! The node a heartbeat is about is taken from the **subject**, which the server lets only that
//! node's user publish; the `node` field in the body is informational and must agree.
//!
//! The reference implementation of the agent side is [`Beat`] (the counter of running tasks,
//! raised by [`Beat::start_task`]) and [`spawn_heartbeats`].

use super::{heartbeat_subject, BusError};
use crate::model::NodeName;
use async_nats::Client;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest heartbeat the router reads (a heartbeat is about 200 bytes).
pub const MAX_HEARTBEAT_BYTES: usize = 16 * 1024;

/// One heartbeat, as published on `fleet.heartbeat.<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node (must equal the subject's last token).
    pub node: String,
    /// Tasks running now.
    pub in_flight: u32,
    /// Tasks it can run at once (at least 1).
    pub capacity: u32,
    /// Models it serves now.
    #[serde(default)]
    pub models: Vec<String>,
    /// The agent's version.
    #[serde(default)]
    pub version: String,
    /// When it was sent, RFC 3339 (informational: the receiver's clock decides freshness).
    #[serde(default)]
    pub time: String,
    /// The ids of the tasks it is running now, sorted: its progress report (a task listed here
    /// is alive on this node) and, for a restarted router, where each task runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// It takes no new task (drained: `fleetnix node drain`, or its agent is stopping).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// Why a received heartbeat is ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHeartbeat {
    /// The subject is not `fleet.heartbeat.<node>` with a node name.
    #[error("subject {0:?} is not fleet.heartbeat.<node>")]
    Subject(String),
    /// The body is too big.
    #[error("heartbeat of {node} is {len} bytes (at most {MAX_HEARTBEAT_BYTES})")]
    TooBig {
        /// Node from the subject.
        node: NodeName,
        /// Size.
        len: usize,
    },
    /// The body is not a heartbeat.
    #[error("heartbeat of {node} is not valid: {reason}")]
    Body {
        /// Node from the subject.
        node: NodeName,
        /// serde's message.
        reason: String,
    },
    /// The body names another node than the subject.
    #[error("heartbeat on the subject of {node} claims to be from {claimed:?}; ignored")]
    Mismatch {
        /// Node from the subject (vouched for by the server's permissions).
        node: NodeName,
        /// Node in the body.
        claimed: String,
    },
}

/// Parses a received heartbeat: the node from the subject, the body checked against it.
pub fn parse(subject: &str, payload: &[u8]) -> Result<(NodeName, Heartbeat), BadHeartbeat> {
    let node = subject
        .strip_prefix("fleet.heartbeat.")
        .and_then(|n| NodeName::parse(n).ok())
        .ok_or_else(|| BadHeartbeat::Subject(subject.chars().take(200).collect()))?;
    if payload.len() > MAX_HEARTBEAT_BYTES {
        return Err(BadHeartbeat::TooBig {
            node,
            len: payload.len(),
        });
    }
    let hb: Heartbeat = serde_json::from_slice(payload).map_err(|e| BadHeartbeat::Body {
        node: node.clone(),
        reason: e.to_string(),
    })?;
    if hb.node != node.as_str() {
        return Err(BadHeartbeat::Mismatch {
            node,
            claimed: hb.node.chars().take(64).collect(),
        });
    }
    Ok((node, hb))
}

/// The agent side's live state: the running-task counter and what goes in every heartbeat.
#[derive(Debug, Clone)]
pub struct Beat {
    node: NodeName,
    capacity: u32,
    models: Vec<String>,
    in_flight: Arc<AtomicU32>,
    tasks: TaskIds,
    draining: Arc<AtomicBool>,
}

/// The ids of the running tasks, each with how many guards hold it.
type TaskIds = Arc<Mutex<BTreeMap<String, usize>>>;

/// Counts one running task (and lists its id, if it has one) until dropped.
#[derive(Debug)]
pub struct TaskGuard {
    in_flight: Arc<AtomicU32>,
    id: Option<(String, TaskIds)>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some((id, tasks)) = self.id.take() {
            let mut t = tasks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = t.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    t.remove(&id);
                }
            }
        }
    }
}

impl Beat {
    /// The state of `node`, which runs up to `capacity` tasks and serves `models`.
    pub fn new(node: NodeName, capacity: u32, models: Vec<String>) -> Self {
        Beat {
            node,
            capacity: capacity.max(1),
            models,
            in_flight: Arc::new(AtomicU32::new(0)),
            tasks: Arc::default(),
            draining: Arc::default(),
        }
    }

    /// Counts a task as running until the guard is dropped.
    pub fn start_task(&self) -> TaskGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        TaskGuard {
            in_flight: Arc::clone(&self.in_flight),
            id: None,
        }
    }

    /// Counts task `id` as running, and lists it in every heartbeat, until the guard is dropped.
    pub fn run_task(&self, id: &str) -> TaskGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        *self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        TaskGuard {
            in_flight: Arc::clone(&self.in_flight),
            id: Some((id.to_string(), Arc::clone(&self.tasks))),
        }
    }

    /// Says in every heartbeat from now on whether the node takes new tasks.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
    }

    /// Is the node draining?
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Tasks running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The heartbeat to send now.
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            node: self.node.to_string(),
            in_flight: self.in_flight(),
            capacity: self.capacity,
            models: self.models.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            tasks: self
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect(),
            draining: self.draining(),
        }
    }
}

/// Publishes one heartbeat of `beat` on `fleet.heartbeat.<node>`.
pub async fn publish(client: &Client, beat: &Beat) -> Result<(), BusError> {
    let subject = heartbeat_subject(&beat.node);
    let body = serde_json::to_vec(&beat.heartbeat()).map_err(|e| BusError::Publish {
        subject: subject.clone(),
        source: async_nats::PublishError::with_source(
            async_nats::client::PublishErrorKind::Send,
            e,
        ),
    })?;
    client
        .publish(subject.clone(), body.into())
        .await
        .map_err(|source| BusError::Publish { subject, source })
}

/// Publishes a heartbeat of `beat` at once and then every `interval` until the returned task is
/// aborted (dropping the handle does not stop it). A failed publish is retried on the next tick.
pub fn spawn_heartbeats(
    client: Client,
    beat: Beat,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = publish(&client, &beat).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_comes_from_the_subject_and_must_agree_with_the_body() {
        let beat = Beat::new(NodeName::parse("worker-01").unwrap(), 4, vec!["m".into()]);
        let guard = beat.start_task();
        let body = serde_json::to_vec(&beat.heartbeat()).unwrap();
        let (node, hb) = parse("fleet.heartbeat.worker-01", &body).unwrap();
        assert_eq!(node.as_str(), "worker-01");
        assert_eq!((hb.in_flight, hb.capacity), (1, 4));
        drop(guard);
        assert_eq!(beat.in_flight(), 0);
        assert!(matches!(
            parse("fleet.heartbeat.worker-02", &body),
            Err(BadHeartbeat::Mismatch { .. })
        ));
        assert!(matches!(
            parse("fleet.heartbeat.Bad_Name", &body),
            Err(BadHeartbeat::Subject(_))
        ));
        assert!(matches!(
            parse("fleet.heartbeat.worker-01", b"{}"),
            Err(BadHeartbeat::Body { .. })
        ));
    }
}
