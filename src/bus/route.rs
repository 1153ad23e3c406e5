//! Routing: which node gets the next task of a role, under the fleet's
//! `failover_strategy`, among the *healthy* nodes with that role.
//!
//! - `round_robin`: the next node by name after the one that got the role's last task;
//!   with a state directory (`.fleetnix/` under the repository root) the last pick per role
//!   is kept in `route-state.json` under an advisory lock, so separate `fleetnix route`
//!   runs and a long-running supervisor share one rotation.
//! - `least_loaded`: the lowest in-flight count per declared CPU core; ties go to the
//!   bigger node (cpu, then RAM), then by name.
//! - `random`: a uniformly random order.
//!
//! [`Router::dispatch`] runs a task on the first candidate; when it fails and
//! `retry_on_node_failure` is set, it moves on to the next candidate, each at most once.

use crate::fsutil::write_atomic;
use crate::health::HealthReport;
use crate::model::{FailoverStrategy, Fleet, Node, NodeName, Role};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the round-robin state file inside the state directory.
pub const STATE_FILE: &str = "route-state.json";
const LOCK_FILE: &str = "route-state.lock";

/// Why no node could be picked or the task did not run.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No node of the fleet has the role.
    #[error("no node has role {role:?} (roles in the fleet: {known})")]
    UnknownRole {
        /// The role asked for.
        role: String,
        /// Roles that nodes have.
        known: String,
    },
    /// Nodes have the role, but none is healthy.
    #[error("no healthy node for role {role:?}: {}", describe(unhealthy))]
    NoHealthyNode {
        /// The role.
        role: String,
        /// Its nodes and their states.
        unhealthy: Vec<(NodeName, String)>,
    },
    /// Every candidate tried failed.
    #[error("role {role:?}: every node tried failed: {}", describe(failures))]
    AllFailed {
        /// The role.
        role: String,
        /// Node and error, in the order tried.
        failures: Vec<(NodeName, String)>,
    },
    /// The round-robin state could not be read or written.
    #[error("round-robin state {}: {source}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn describe(v: &[(NodeName, String)]) -> String {
    v.iter()
        .map(|(n, s)| format!("{n} ({s})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The role.
    pub role: Role,
    /// The strategy used.
    pub strategy: FailoverStrategy,
    /// Healthy candidates in the order they would be tried; the first is the pick.
    pub order: Vec<NodeName>,
    /// Nodes with the role left out because they are not healthy, with their state.
    pub skipped: Vec<(NodeName, String)>,
}

impl Route {
    /// The chosen node.
    pub fn node(&self) -> &NodeName {
        // Invariant: `Router::route` never returns an empty order (it errors instead).
        &self.order[0]
    }
}

/// Decrements a node's in-flight count when dropped.
#[derive(Debug)]
pub struct Lease {
    node: NodeName,
    in_flight: Arc<Mutex<BTreeMap<NodeName, u32>>>,
}

impl Lease {
    /// The node the task runs on.
    pub fn node(&self) -> &NodeName {
        &self.node
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut m = lock(&self.in_flight);
        if let Some(c) = m.get_mut(&self.node) {
            *c = c.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain counters/maps, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Picks nodes for roles; shareable between tasks (`&self` everywhere).
#[derive(Debug)]
pub struct Router {
    nodes: Vec<Node>,
    strategy: FailoverStrategy,
    retry: bool,
    state_dir: Option<PathBuf>,
    last: Mutex<BTreeMap<String, String>>,
    in_flight: Arc<Mutex<BTreeMap<NodeName, u32>>>,
    rng: Mutex<fastrand::Rng>,
}

impl Router {
    /// A router with the fleet's strategy and retry setting; round-robin state in memory.
    pub fn new(fleet: &Fleet) -> Self {
        Router {
            nodes: fleet.nodes.clone(),
            strategy: fleet.settings.failure.failover_strategy,
            retry: fleet.settings.failure.retry_on_node_failure,
            state_dir: None,
            last: Mutex::new(BTreeMap::new()),
            in_flight: Arc::new(Mutex::new(BTreeMap::new())),
            rng: Mutex::new(fastrand::Rng::new()),
        }
    }

    /// A router over `nodes` (not a manifest: e.g. the registry the router service reads).
    pub fn from_nodes(nodes: Vec<Node>, strategy: FailoverStrategy, retry: bool) -> Self {
        Router {
            nodes,
            strategy,
            retry,
            state_dir: None,
            last: Mutex::new(BTreeMap::new()),
            in_flight: Arc::new(Mutex::new(BTreeMap::new())),
            rng: Mutex::new(fastrand::Rng::new()),
        }
    }

    /// Replaces the nodes (the registry changed); the rotation and in-flight counts are kept.
    pub fn set_nodes(&mut self, nodes: Vec<Node>) {
        self.nodes = nodes;
    }

    /// Keeps round-robin state in `dir/route-state.json` (e.g. `<root>/.fleetnix`).
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Overrides the strategy.
    pub fn with_strategy(mut self, strategy: FailoverStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Overrides `retry_on_node_failure`.
    pub fn with_retry(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Seeds the random strategy (reproducible tests).
    pub fn with_seed(self, seed: u64) -> Self {
        *lock(&self.rng) = fastrand::Rng::with_seed(seed);
        self
    }

    /// The strategy in use.
    pub fn strategy(&self) -> FailoverStrategy {
        self.strategy
    }

    /// Current in-flight task counts (tasks dispatched through this router, or set).
    pub fn in_flight(&self) -> BTreeMap<NodeName, u32> {
        lock(&self.in_flight).clone()
    }

    /// Sets a node's in-flight count from an outside source (e.g. a supervisor's own bookkeeping).
    pub fn set_in_flight(&self, node: &NodeName, count: u32) {
        lock(&self.in_flight).insert(node.clone(), count);
    }

    /// Counts a task as running on `node` until the lease is dropped.
    pub fn lease(&self, node: &NodeName) -> Lease {
        *lock(&self.in_flight).entry(node.clone()).or_insert(0) += 1;
        Lease {
            node: node.clone(),
            in_flight: Arc::clone(&self.in_flight),
        }
    }

    /// Orders the healthy nodes with `role` for the next task and records the pick
    /// (round robin advances). Fails when no node has the role or none is healthy.
    pub fn route(&self, role: &str, health: &HealthReport) -> Result<Route, RouteError> {
        self.route_with(role, |node| match health.state_of(node) {
            Some(crate::health::NodeState::Healthy) => None,
            Some(s) => Some(s.to_string()),
            None => Some("not probed".to_string()),
        })
    }

    /// Like [`Router::route`], with each node's health given by `unhealthy`: `None` for a
    /// healthy node, else why it is skipped. `dispatch` uses it to order its failover candidates.
    pub fn route_with(
        &self,
        role: &str,
        unhealthy: impl Fn(&str) -> Option<String>,
    ) -> Result<Route, RouteError> {
        let with_role: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.roles.iter().any(|r| r.as_str() == role))
            .collect();
        let Some(role_v) = with_role
            .first()
            .and_then(|n| n.roles.iter().find(|r| r.as_str() == role).cloned())
        else {
            let mut known: Vec<&str> = self
                .nodes
                .iter()
                .flat_map(|n| n.roles.iter().map(|r| r.as_str()))
                .collect();
            known.sort_unstable();
            known.dedup();
            return Err(RouteError::UnknownRole {
                role: role.to_string(),
                known: known.join(", "),
            });
        };
        let mut healthy: Vec<&Node> = Vec::new();
        let mut skipped = Vec::new();
        for n in with_role {
            match unhealthy(n.name.as_str()) {
                None => healthy.push(n),
                Some(why) => skipped.push((n.name.clone(), why)),
            }
        }
        if healthy.is_empty() {
            return Err(RouteError::NoHealthyNode {
                role: role.to_string(),
                unhealthy: skipped,
            });
        }
        healthy.sort_by(|a, b| a.name.cmp(&b.name));
        let order: Vec<NodeName> = match self.strategy {
            FailoverStrategy::RoundRobin => {
                return self.round_robin(role_v, healthy, skipped);
            }
            FailoverStrategy::LeastLoaded => {
                let inf = lock(&self.in_flight);
                let load = |n: &Node| u64::from(inf.get(&n.name).copied().unwrap_or(0));
                healthy.sort_by(|a, b| {
                    // load(a)/cpu(a) vs load(b)/cpu(b), by cross-multiplication (cpu > 0 is validated).
                    (load(a) * u64::from(b.resources.cpu))
                        .cmp(&(load(b) * u64::from(a.resources.cpu)))
                        .then(b.resources.cpu.cmp(&a.resources.cpu))
                        .then(b.resources.ram_gb.cmp(&a.resources.ram_gb))
                        .then(a.name.cmp(&b.name))
                });
                healthy.iter().map(|n| n.name.clone()).collect()
            }
            FailoverStrategy::Random => {
                let mut v: Vec<NodeName> = healthy.iter().map(|n| n.name.clone()).collect();
                lock(&self.rng).shuffle(&mut v);
                v
            }
        };
        Ok(Route {
            role: role_v,
            strategy: self.strategy,
            order,
            skipped,
        })
    }

    fn round_robin(
        &self,
        role: Role,
        healthy: Vec<&Node>,
        skipped: Vec<(NodeName, String)>,
    ) -> Result<Route, RouteError> {
        let names: Vec<NodeName> = healthy.iter().map(|n| n.name.clone()).collect();
        let order = self.update_state(|state| {
            let start = state
                .get(role.as_str())
                .and_then(|last| names.iter().position(|n| n.as_str() > last.as_str()))
                .unwrap_or(0);
            let mut order = names.clone();
            order.rotate_left(start);
            state.insert(role.to_string(), order[0].to_string());
            order
        })?;
        Ok(Route {
            role,
            strategy: self.strategy,
            order,
            skipped,
        })
    }

    /// Records that `node` took `role`'s last task (round robin continues after it).
    pub fn record(&self, role: &str, node: &NodeName) -> Result<(), RouteError> {
        self.update_state(|state| {
            state.insert(role.to_string(), node.to_string());
        })
    }

    /// Runs `f` on the state under the file lock (if persistent), then saves it.
    fn update_state<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, String>) -> T,
    ) -> Result<T, RouteError> {
        let mut mem = lock(&self.last);
        let Some(dir) = &self.state_dir else {
            return Ok(f(&mut mem));
        };
        let path = dir.join(STATE_FILE);
        let err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| RouteError::State { path: p, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file =
            crate::fsutil::no_follow(File::options().create(true).truncate(false).write(true))
                .open(&lock_path)
                .map_err(err(&lock_path))?;
        rustix::fs::flock(&lock_file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err(&lock_path)(e.into()))?;
        let mut state: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| err(&path)(e.into()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(&path)(e)),
        };
        let out = f(&mut state);
        let mut text = serde_json::to_string_pretty(&state).map_err(|e| err(&path)(e.into()))?;
        text.push('\n');
        write_atomic(&path, text.as_bytes(), 0o644).map_err(err(&path))?;
        *mem = state;
        // The flock is released when `lock_file` is closed here.
        Ok(out)
    }

    /// Routes a task of `role` and runs `f` on the chosen node; on failure, with
    /// `retry_on_node_failure`, moves to the next candidate (each at most once).
    /// While `f` runs the node's in-flight count is raised (for `least_loaded`).
    pub async fn dispatch<T, E, F, Fut>(
        &self,
        role: &str,
        health: &HealthReport,
        mut f: F,
    ) -> Result<(NodeName, T), RouteError>
    where
        E: std::fmt::Display,
        F: FnMut(NodeName) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let route = self.route(role, health)?;
        let tries = if self.retry { route.order.len() } else { 1 };
        let mut failures = Vec::new();
        for node in route.order.into_iter().take(tries) {
            let lease = self.lease(&node);
            let result = f(node.clone()).await;
            drop(lease);
            match result {
                Ok(v) => {
                    if !failures.is_empty() && self.strategy == FailoverStrategy::RoundRobin {
                        self.record(role, &node)?;
                    }
                    return Ok((node, v));
                }
                Err(e) => failures.push((node, e.to_string())),
            }
        }
        Err(RouteError::AllFailed {
            role: role.to_string(),
            failures,
        })
    }
}
