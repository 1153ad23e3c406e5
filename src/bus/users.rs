//! The control plane's service users: NATS users that are not nodes (issue 21, "a supervisor is
//! not an agent").
//!
//! | user | who | may |
//! |---|---|---|
//! | `_router` | `fleetnix router` (and `fleetnix dispatch --direct`) | answer `fleet.dispatch.>`, send `fleet.tasks.>`, hear heartbeats and acknowledgements, read `fleet-nodes` and `fleet-drain`, write `fleet-health` and `fleet-tasks` |
//! | `_supervisor` | supervisors, `fleetnix dispatch` | publish `fleet.dispatch.>`, hear its own inbox; nothing else |
//! | `_observer` | `fleetnix health` (the router's view) | read `fleet-health`; nothing else |
//! | `_registry` | `fleetnix node sync`, `node drain`, `deploy`'s drain | create and write `fleet-nodes` and `fleet-drain`, read `fleet-health`; nothing else |
//!
//! The control plane's agent is an ordinary node user ([`super::BusUser::for_node`]). A node name
//! is an RFC 1123 label, which cannot contain `_`, so no node can take one of these names; the
//! password variables (`NATS_<SERVICE>_PASSWORD`) cannot collide with the nodes'
//! (`NATS_PASSWORD_<NODE>`) either.

use super::{
    inbox_prefix_of, kv_read_subjects, kv_write_subjects, Permissions, ACKS_SUBJECT, DRAIN_BUCKET,
    HEALTH_BUCKET, NODES_BUCKET, ROUTER_QUEUE, TASKS_BUCKET,
};
use crate::spec::secrets::SecretKind;
use serde::Serialize;

/// A service on the control plane with a NATS user of its own. The order is the user names'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// `fleetnix health`: reads the router's view (`fleet-health`), nothing else.
    Observer,
    /// `fleetnix node sync`, `node drain`: writes the `fleet-nodes` and `fleet-drain` buckets.
    Registry,
    /// `fleetnix router`: routes `fleet.dispatch.<role>` to the nodes.
    Router,
    /// The supervisors: ask the router for tasks.
    Supervisor,
}

impl Service {
    /// Every service, in user-name order.
    pub const ALL: [Service; 4] = [
        Service::Observer,
        Service::Registry,
        Service::Router,
        Service::Supervisor,
    ];

    /// Its NATS user name.
    pub fn user(self) -> &'static str {
        match self {
            Service::Observer => "_observer",
            Service::Registry => "_registry",
            Service::Router => super::ROUTER_USER,
            Service::Supervisor => "_supervisor",
        }
    }

    /// The service whose user is `name`.
    pub fn from_user(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.user() == name)
    }

    /// The server-side variable holding its password (`NATS_<SERVICE>_PASSWORD`).
    pub fn password_var(self) -> &'static str {
        match self {
            Service::Observer => "NATS_OBSERVER_PASSWORD",
            Service::Registry => "NATS_REGISTRY_PASSWORD",
            Service::Router => super::ROUTER_PASSWORD_VAR,
            Service::Supervisor => "NATS_SUPERVISOR_PASSWORD",
        }
    }

    /// The service whose password variable is `var`.
    pub fn from_password_var(var: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.password_var() == var)
    }

    /// The control plane's secret holding its password
    /// (`secrets/<control-plane>/nats-<service>-password.age`).
    pub fn secret_kind(self) -> SecretKind {
        match self {
            Service::Observer => SecretKind::NatsObserverPassword,
            Service::Registry => SecretKind::NatsRegistryPassword,
            Service::Router => SecretKind::NatsRouterPassword,
            Service::Supervisor => SecretKind::NatsSupervisorPassword,
        }
    }

    /// What its user may do; everything else is denied.
    pub fn permissions(self) -> Permissions {
        let inbox = format!("{}.>", inbox_prefix_of(self.user()));
        let (mut publish, mut subscribe, allow_responses) = match self {
            Service::Router => {
                let mut publish = vec!["fleet.tasks.>".to_string()];
                publish.extend(kv_read_subjects(NODES_BUCKET));
                publish.extend(kv_write_subjects(HEALTH_BUCKET));
                // The task table (`fleet-tasks`): which node took which task.
                publish.extend(kv_write_subjects(TASKS_BUCKET));
                // Follows the drained nodes; may create the bucket, not write it.
                publish.extend(kv_read_subjects(DRAIN_BUCKET));
                publish.push(format!("$JS.API.STREAM.CREATE.KV_{DRAIN_BUCKET}"));
                let subscribe = vec![
                    format!("fleet.dispatch.> {ROUTER_QUEUE}"),
                    "fleet.heartbeat.>".to_string(),
                    ACKS_SUBJECT.to_string(),
                    inbox,
                ];
                (publish, subscribe, true)
            }
            // Asks the router and hears its answers: no task subject, no JetStream.
            Service::Supervisor => (vec!["fleet.dispatch.>".to_string()], vec![inbox], false),
            // Reads the router's view for `fleetnix health` (JetStream's answers come to its
            // inbox): it can neither drain a node nor touch the registry or the task bus.
            Service::Observer => (kv_read_subjects(HEALTH_BUCKET), vec![inbox], false),
            // Registers the fleet and reads the router's health view (JetStream's answers come
            // to its inbox); no subject of the task bus.
            Service::Registry => {
                let mut publish = kv_write_subjects(NODES_BUCKET);
                publish.extend(kv_read_subjects(HEALTH_BUCKET));
                // Drains and undrains nodes (`fleetnix node drain`).
                publish.extend(kv_write_subjects(DRAIN_BUCKET));
                (publish, vec![inbox], false)
            }
        };
        publish.sort();
        publish.dedup();
        subscribe.sort();
        subscribe.dedup();
        Permissions {
            publish,
            subscribe,
            allow_responses,
        }
    }
}

/// The NATS user of a control-plane service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceUser {
    /// Which service.
    pub service: Service,
    /// User name ([`Service::user`]).
    pub user: String,
    /// Environment variable holding its password on the server ([`Service::password_var`]).
    pub password_var: String,
    /// What it may do ([`Service::permissions`]).
    pub permissions: Permissions,
}

impl ServiceUser {
    /// The user of `service`.
    pub fn new(service: Service) -> Self {
        ServiceUser {
            service,
            user: service.user().to_string(),
            password_var: service.password_var().to_string(),
            permissions: service.permissions(),
        }
    }

    /// Every service's user, in user-name order.
    pub fn all() -> Vec<Self> {
        Service::ALL.into_iter().map(Self::new).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeName;

    #[test]
    fn names_cannot_collide_with_nodes_and_round_trip() {
        for s in Service::ALL {
            assert!(NodeName::parse(s.user()).is_err(), "{s:?}");
            assert!(!s.password_var().starts_with("NATS_PASSWORD_"));
            assert!(super::super::conf::is_var_name(s.password_var()));
            assert_eq!(Service::from_user(s.user()), Some(s));
            assert_eq!(Service::from_password_var(s.password_var()), Some(s));
        }
        let mut users: Vec<&str> = Service::ALL.iter().map(|s| s.user()).collect();
        let sorted = {
            let mut v = users.clone();
            v.sort();
            v
        };
        assert_eq!(users, sorted);
        users.dedup();
        assert_eq!(users.len(), Service::ALL.len());
    }

    #[test]
    fn the_supervisor_dispatches_and_nothing_more() {
        let p = Service::Supervisor.permissions();
        assert_eq!(p.publish, ["fleet.dispatch.>"]);
        assert_eq!(p.subscribe, ["_INBOX._supervisor.>"]);
        assert!(!p.allow_responses);
    }

    #[test]
    fn the_registry_writes_the_node_bucket_and_only_reads_health() {
        let p = Service::Registry.permissions();
        assert!(p.publish.contains(&"$KV.fleet-nodes.>".to_string()));
        assert!(p
            .publish
            .contains(&"$JS.API.STREAM.CREATE.KV_fleet-nodes".to_string()));
        assert!(p
            .publish
            .contains(&"$JS.API.STREAM.INFO.KV_fleet-health".to_string()));
        assert!(!p.publish.iter().any(|s| s.starts_with("$KV.fleet-health")
            || s.starts_with("fleet.")
            || s.contains("STREAM.CREATE.KV_fleet-health")));
        assert_eq!(p.subscribe, ["_INBOX._registry.>"]);
        assert!(!p.allow_responses);
    }

    #[test]
    fn the_observer_only_reads_health() {
        let p = Service::Observer.permissions();
        assert!(p
            .publish
            .contains(&"$JS.API.STREAM.INFO.KV_fleet-health".to_string()));
        assert!(!p.publish.iter().any(|s| s.starts_with("$KV.")
            || s.starts_with("fleet.")
            || s.contains("STREAM.CREATE")
            || s.contains("fleet-drain")
            || s.contains("fleet-nodes")));
        assert_eq!(p.subscribe, ["_INBOX._observer.>"]);
        assert!(!p.allow_responses);
    }
}
