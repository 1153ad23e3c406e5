//! The NATS task bus on the control plane (seed section 5): workers pull tasks for their roles,
//! the supervisor dispatches them with request/reply.
//!
//! Everything here derives from the validated [`Fleet`]:
//! - [`ServerPlan`]: the nats-server configuration — listen address (the control plane's tailnet
//!   address, the catalog's `nats` port) and one user per node whose permissions follow its roles;
//! - [`conf`]: that plan in nats-server's config syntax, used verbatim by the rendered NixOS module
//!   ([`crate::outputs::nats`]) and by the tests that run a real `nats-server`;
//! - [`creds`]: per-node passwords, referenced from the config as `$NATS_PASSWORD_<NODE>` and never
//!   written into a rendered file;
//! - [`dispatch`]: request/reply with failover, and the worker side of the contract;
//! - [`heartbeat`]: the agents' heartbeats on `fleet.heartbeat.<node>`;
//! - [`registry`]: `fleetnix node sync`, the fleet's nodes in the JetStream bucket `fleet-nodes`.
//!
//! The control plane's services have users of their own ([`users`]): the router
//! (`crate::bus::router`, [`ROUTER_USER`]) answers `fleet.dispatch.<role>` and publishes
//! `fleet-health`; the supervisors (`_supervisor`) only ask it; `node sync` (`_registry`) writes
//! `fleet-nodes`. The control plane's own agent is a node like any other.
//!
//! Subjects (see `docs/bus.md`):
//! - `fleet.tasks.<role>`: tasks for any node of the role, subscribed in queue group `<role>`;
//! - `fleet.tasks.<role>.<node>`: tasks for one node (failover targets a node directly);
//! - `fleet.results.<node>[.…]`, `fleet.heartbeat.<node>`: what a node may publish;
//! - `_INBOX.<user>.>`: the reply inbox of a user that sends requests (the services);
//! - `fleet.dispatch.<role>`: requests to the router (from `_supervisor`).
//!
//! Executor (orchestration): permissions and credentials, dispatch, heartbeats, the registry,
//! routing (`route`) and the router (`router`). Imports: `model`, `spec`, `health` (node states,
//! alerts), the foundations.

pub mod conf;
pub mod creds;
pub mod dispatch;
pub mod drain;
pub mod heartbeat;
pub mod registry;
pub mod route;
pub mod router;
pub mod users;
pub mod worker;

use crate::model::{Fleet, Node, NodeName, Role};
use serde::Serialize;
use std::net::IpAddr;
use std::path::PathBuf;

/// Name of the catalog service whose port the bus listens on.
pub const NATS_SERVICE: &str = "nats";

/// `fleet.tasks.<role>`: the subject tasks for a role are published to.
pub fn task_subject(role: &Role) -> String {
    format!("fleet.tasks.{role}")
}

/// `fleet.tasks.<role>.<node>`: tasks for one node of the role (used when failing over).
pub fn node_task_subject(role: &Role, node: &NodeName) -> String {
    format!("fleet.tasks.{role}.{node}")
}

/// The queue group the nodes of a role share: the role's name.
pub fn queue_group(role: &Role) -> String {
    role.to_string()
}

/// `fleet.results.<node>`: where a node publishes results (sub-subjects allowed too).
pub fn results_subject(node: &NodeName) -> String {
    format!("fleet.results.{node}")
}

/// `fleet.heartbeat.<node>`: where a node publishes heartbeats.
pub fn heartbeat_subject(node: &NodeName) -> String {
    format!("fleet.heartbeat.{node}")
}

/// `fleet.results.<node>.ack`: where a node acknowledges a task it took (header
/// [`TASK_ID_HEADER`]). Only that node's user may publish there, so the server vouches for who
/// acknowledged; the router hears every node's acknowledgements on `fleet.results.*.ack`.
pub fn ack_subject(node: &NodeName) -> String {
    format!("fleet.results.{node}.ack")
}

/// The subject the router hears acknowledgements on.
pub const ACKS_SUBJECT: &str = "fleet.results.*.ack";

/// `_INBOX.<node>`: the inbox prefix a node uses for its own requests, so it can only ever
/// receive replies addressed to itself.
pub fn inbox_prefix(node: &NodeName) -> String {
    inbox_prefix_of(node.as_str())
}

/// `_INBOX.<user>`: the inbox prefix of any NATS user (a node or a service).
pub fn inbox_prefix_of(user: &str) -> String {
    format!("_INBOX.{user}")
}

/// `fleet.dispatch.<role>`: where a supervisor asks the router to run a task of `role`.
pub fn dispatch_subject(role: &str) -> String {
    format!("fleet.dispatch.{role}")
}

/// The queue group routers share on `fleet.dispatch.>` (one answers each request).
pub const ROUTER_QUEUE: &str = "router";

/// The router's NATS user. A node name is an RFC 1123 label, which cannot contain `_`, so no
/// node can have this user name.
pub const ROUTER_USER: &str = "_router";

/// The server-side variable holding the router's password. Node variables all start with
/// `NATS_PASSWORD_`, so no node's variable can be this one.
pub const ROUTER_PASSWORD_VAR: &str = "NATS_ROUTER_PASSWORD";

/// The JetStream key-value bucket of registered nodes (`fleetnix node sync`).
pub const NODES_BUCKET: &str = "fleet-nodes";
/// The JetStream key-value bucket of the router's live view of node health.
pub const HEALTH_BUCKET: &str = "fleet-health";

/// The JetStream key-value bucket of tasks taken by a node (the router writes it when a node
/// acknowledges a task): task id → `{node, role}`, so a router that restarted, or another
/// router, sends a caller's retry to the node that has the task.
pub const TASKS_BUCKET: &str = "fleet-tasks";

/// The JetStream key-value bucket of drained nodes (`fleetnix node drain`): node name → when
/// and why. The router sends a drained node no new task.
pub const DRAIN_BUCKET: &str = "fleet-drain";

/// Where nats-server keeps JetStream data on the control plane (the NixOS module's state
/// directory).
pub const JETSTREAM_STORE_DIR: &str = "/var/lib/nats";

/// Header a worker sets on its reply to say who answered. The router sets it on its replies to
/// the node it sent the task to (which the server's permissions vouch for).
pub const NODE_HEADER: &str = "Fleet-Node";
/// Header of a router reply: `ok`, or an error code (see `docs/bus.md`).
pub const STATUS_HEADER: &str = "Fleet-Status";
/// Header of a router request: prefer nodes that list this model.
pub const MODEL_HEADER: &str = "Fleet-Preferred-Model";
/// Header of a router reply: how many attempts the task took.
pub const ATTEMPTS_HEADER: &str = "Fleet-Attempts";
/// Header of a router reply: the node named in the worker's own `Fleet-Node` header, when it
/// differs from the node the task was sent to (a worker claiming to be another node).
pub const CLAIMED_HEADER: &str = "Fleet-Claimed-Node";
/// Header carrying a task id, the same on every attempt, so workers can de-duplicate.
pub const TASK_ID_HEADER: &str = "Fleet-Task-Id";
/// Header carrying the attempt number (1-based).
pub const ATTEMPT_HEADER: &str = "Fleet-Attempt";
/// Header of a request (caller → router, router → worker): the task's time left, in whole
/// milliseconds (relative, so clocks need not agree).
pub const DEADLINE_HEADER: &str = "Fleet-Deadline-Ms";
/// Header of a caller's request: how many times it asked before for this task id (a retry after
/// a lost router); the router then looks the task up instead of starting it afresh.
pub const REASK_HEADER: &str = "Fleet-Reask";

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The catalog has no `nats` service, so there is no port to listen on.
    #[error(
        "{}: the service catalog has no `nats` service; add one (name: nats, port: 4222, role: the control plane's role) so the bus has a port",
        file.display()
    )]
    NoNatsService {
        /// `services.yml`.
        file: PathBuf,
    },
    /// The `nats` service belongs to a role the control plane does not have.
    #[error(
        "{}: the `nats` service is hosted by role `{role}`, but the control plane {control_plane} does not have that role; the bus runs on the control plane",
        file.display()
    )]
    NatsNotOnControlPlane {
        /// `services.yml`.
        file: PathBuf,
        /// The service's role.
        role: Role,
        /// The control plane.
        control_plane: NodeName,
    },
    /// A role no node has.
    #[error("no node has role `{role}` (roles with nodes: {})", known.join(", "))]
    UnknownRole {
        /// What was asked for.
        role: String,
        /// Roles that have at least one node, sorted.
        known: Vec<String>,
    },
    /// A node name that is not in the manifest.
    #[error("no node `{0}` in the manifest")]
    UnknownNode(String),
    /// The task payload is not JSON.
    #[error("the payload is not valid JSON: {0}")]
    BadPayload(#[source] serde_json::Error),
    /// The NATS URL embeds credentials, which would put a secret in argv or the repository.
    #[error(
        "the NATS URL carries credentials (user:password@…); give the password through FLEETNIX_NATS_PASSWORD or a password file instead"
    )]
    CredentialsInUrl,
    /// Connecting failed.
    #[error("cannot connect to NATS at {url} as {user}: {source}")]
    Connect {
        /// Server URL.
        url: String,
        /// User name.
        user: String,
        /// async-nats' error (never contains the password).
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server accepted the connection but did not complete the handshake in time.
    #[error("cannot connect to NATS at {url} as {user}: no answer within {}s", timeout.as_secs_f64())]
    ConnectTimeout {
        /// Server URL.
        url: String,
        /// User name.
        user: String,
        /// The bound.
        timeout: std::time::Duration,
    },
    /// Subscribing failed.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// Subject.
        subject: String,
        /// async-nats' error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// Publishing a reply failed.
    #[error("cannot publish to {subject}: {source}")]
    Publish {
        /// Subject.
        subject: String,
        /// async-nats' error.
        #[source]
        source: async_nats::PublishError,
    },
    /// Nobody answered, on any attempt.
    #[error("no node answered the `{role}` task after {} attempt(s): {}", attempts.len(), dispatch::describe_attempts(attempts))]
    NoAnswer {
        /// The role.
        role: Role,
        /// What each attempt did.
        attempts: Vec<dispatch::Attempt>,
    },
    /// A key-value bucket operation failed (the server refused it, or JetStream is off).
    #[error("key-value bucket {bucket}: {op} failed: {reason}")]
    Kv {
        /// The bucket.
        bucket: String,
        /// What was being done (open, create, list, get, put, delete, watch).
        op: &'static str,
        /// The client's message (never holds a password).
        reason: String,
    },
    /// Rendering the NixOS module failed (a bug in fleetnix's template).
    #[error("template nats.nix failed: {0}")]
    Template(#[source] tera::Error),
    /// The rendered module is not valid Nix (a bug; nothing was written).
    #[error("rendered {} is not valid Nix (nothing written): {}", path.display(), errors.join("; "))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// rnix's messages.
        errors: Vec<String>,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Publish and subscribe permissions of one NATS user (allow lists; everything else is denied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Subjects it may publish to, sorted.
    pub publish: Vec<String>,
    /// Subscriptions it may make, sorted; `"<subject> <queue>"` allows the subject only in that queue group.
    pub subscribe: Vec<String>,
    /// May it answer requests it received (publish once to each received reply subject)?
    pub allow_responses: bool,
}

/// Publish subjects that let a user read key-value `bucket` (look up, list and watch keys).
pub fn kv_read_subjects(bucket: &str) -> Vec<String> {
    let stream = format!("KV_{bucket}");
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        // nats-py's keys() and watch() look their consumer up.
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// Publish subjects that let a user create and write key-value `bucket` (on top of reading it).
pub fn kv_write_subjects(bucket: &str) -> Vec<String> {
    let mut v = kv_read_subjects(bucket);
    v.push(format!("$JS.API.STREAM.CREATE.KV_{bucket}"));
    v.push(format!("$KV.{bucket}.>"));
    v
}

/// One NATS user: a node of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusUser {
    /// User name = node name.
    pub user: NodeName,
    /// Environment variable holding its password on the server (`NATS_PASSWORD_<NODE>`).
    pub password_var: String,
    /// What it may do.
    pub permissions: Permissions,
}

impl BusUser {
    /// The user of `node`: its roles' tasks, its own results and heartbeats. The control plane's
    /// node is no exception: supervising is `_supervisor`'s ([`users::Service`]).
    pub fn for_node(node: &Node) -> Self {
        let name = &node.name;
        let mut subscribe = Vec::new();
        for role in &node.roles {
            subscribe.push(format!("{} {}", task_subject(role), queue_group(role)));
            subscribe.push(node_task_subject(role, name));
        }
        let mut publish = vec![
            results_subject(name),
            format!("{}.>", results_subject(name)),
            heartbeat_subject(name),
        ];
        publish.sort();
        publish.dedup();
        subscribe.sort();
        subscribe.dedup();
        BusUser {
            user: name.clone(),
            password_var: creds::password_var(name),
            permissions: Permissions {
                publish,
                subscribe,
                allow_responses: true,
            },
        }
    }
}

/// The control plane's nats-server: where it listens and who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerPlan {
    /// The control plane node (also `server_name`).
    pub server_name: NodeName,
    /// Listen address: the control plane's tailnet address.
    pub host: IpAddr,
    /// Port: the catalog's `nats` service.
    pub port: u16,
    /// One user per node, sorted by name.
    pub users: Vec<BusUser>,
    /// The control plane's services' users (router, supervisor, registry), sorted by name.
    pub services: Vec<users::ServiceUser>,
    /// JetStream's store directory ([`JETSTREAM_STORE_DIR`]).
    pub store_dir: String,
}

impl ServerPlan {
    /// The same plan listening elsewhere (tests run it on 127.0.0.1 with a free port).
    pub fn with_listen(mut self, host: IpAddr, port: u16) -> Self {
        self.host = host;
        self.port = port;
        self
    }

    /// The same plan with JetStream storing elsewhere (tests use a temporary directory).
    pub fn with_store_dir(mut self, dir: impl Into<String>) -> Self {
        self.store_dir = dir.into();
        self
    }

    /// The user of `node`, if it is a fleet node.
    pub fn user(&self, node: &str) -> Option<&BusUser> {
        self.users.iter().find(|u| u.user.as_str() == node)
    }

    /// The names of the environment variables the server needs, sorted.
    pub fn password_vars(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .users
            .iter()
            .map(|u| u.password_var.clone())
            .chain(self.services.iter().map(|u| u.password_var.clone()))
            .collect();
        v.sort();
        v
    }

    /// The configuration in nats-server's syntax (JSON with unquoted `$VARIABLE` references).
    pub fn to_conf(&self) -> String {
        conf::server_conf(self).render()
    }
}

/// Plans the control plane's NATS server from the fleet.
pub fn server_plan(fleet: &Fleet) -> Result<ServerPlan, BusError> {
    let file = fleet.sources.services.clone();
    let service = fleet
        .catalog
        .services
        .iter()
        .find(|s| s.name.as_str() == NATS_SERVICE)
        .ok_or_else(|| BusError::NoNatsService { file: file.clone() })?;
    let cp = fleet.control_plane();
    if !cp.has_role(&service.role) {
        return Err(BusError::NatsNotOnControlPlane {
            file,
            role: service.role.clone(),
            control_plane: cp.name.clone(),
        });
    }
    let mut users: Vec<BusUser> = fleet.nodes.iter().map(BusUser::for_node).collect();
    users.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(ServerPlan {
        server_name: cp.name.clone(),
        host: cp.tailscale_ip,
        port: service.port,
        users,
        services: users::ServiceUser::all(),
        store_dir: JETSTREAM_STORE_DIR.to_string(),
    })
}

/// The nodes that have `role`, in manifest (name) order: the failover candidates of a task.
pub fn role_nodes(fleet: &Fleet, role: &str) -> Result<(Role, Vec<NodeName>), BusError> {
    let nodes: Vec<NodeName> = fleet
        .nodes
        .iter()
        .filter(|n| n.roles.iter().any(|r| r.as_str() == role))
        .map(|n| n.name.clone())
        .collect();
    match (Role::parse(role), nodes.is_empty()) {
        (Ok(r), false) => Ok((r, nodes)),
        _ => Err(BusError::UnknownRole {
            role: role.to_string(),
            known: fleet.roles_in_use(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, roles: &[&str]) -> Node {
        Node {
            name: NodeName::parse(name).unwrap(),
            tailscale_ip: "100.64.0.9".parse().unwrap(),
            roles: roles.iter().map(|r| Role::parse(r).unwrap()).collect(),
            resources: crate::model::Resources {
                cpu: 1,
                ram_gb: 1,
                gpu: None,
            },
            os: crate::model::Os::Nixos,
            ssh_user: crate::model::SshLogin::root(),
            host_key: None,
            public_address: None,
            models: Vec::new(),
        }
    }

    #[test]
    fn worker_may_only_take_its_roles_tasks_and_publish_its_own_results() {
        let u = BusUser::for_node(&node("worker-01", &["glm-worker", "kg-writer"]));
        assert_eq!(
            u.permissions.subscribe,
            [
                "fleet.tasks.glm-worker glm-worker",
                "fleet.tasks.glm-worker.worker-01",
                "fleet.tasks.kg-writer kg-writer",
                "fleet.tasks.kg-writer.worker-01",
            ]
        );
        assert_eq!(
            u.permissions.publish,
            [
                "fleet.heartbeat.worker-01",
                "fleet.results.worker-01",
                "fleet.results.worker-01.>",
            ]
        );
        assert!(u.permissions.allow_responses);
        assert!(!u.permissions.subscribe.iter().any(|s| s.contains('>')));
        assert_eq!(u.password_var, "NATS_PASSWORD_WORKER_01");
    }

    #[test]
    fn the_control_plane_node_is_an_ordinary_node() {
        let u = BusUser::for_node(&node("control-01", &["control-plane", "kg-writer"]));
        assert_eq!(
            u.permissions.publish,
            [
                "fleet.heartbeat.control-01",
                "fleet.results.control-01",
                "fleet.results.control-01.>",
            ]
        );
        assert_eq!(
            u.permissions.subscribe,
            [
                "fleet.tasks.control-plane control-plane",
                "fleet.tasks.control-plane.control-01",
                "fleet.tasks.kg-writer kg-writer",
                "fleet.tasks.kg-writer.control-01",
            ]
        );
    }

    #[test]
    fn workers_get_no_jetstream_and_the_router_no_registry_writes() {
        let w = BusUser::for_node(&node("worker-01", &["glm-worker"]));
        assert!(!w
            .permissions
            .publish
            .iter()
            .chain(&w.permissions.subscribe)
            .any(|p| p.starts_with('$') || p.contains("dispatch")));
        let r = users::Service::Router.permissions();
        assert!(r.publish.contains(&"$KV.fleet-health.>".into()));
        assert!(!r.publish.iter().any(|p| p.starts_with("$KV.fleet-nodes")));
        assert!(r.subscribe.contains(&"fleet.dispatch.> router".into()));
        assert!(NodeName::parse(ROUTER_USER).is_err());
    }
}
