//! Draining a node's tasks around its deploy (`kubectl drain` / `uncordon` for the task bus).
//!
//! A deploy that can restart the node's agent or the node itself (a `switch` or `test` that
//! activates, and the reboot path; never `boot`, a dry run or a node skipped as unchanged) of a
//! node that runs an agent ([`runs_agent`]) first asks the bus to send it no new task and waits,
//! within `--drain-timeout`, for its running ones; after the health gate passes (or, with the
//! gate off, after a successful activation) it gives the node tasks again. The deploy never
//! hangs or fails because of the bus: a wait that ends with tasks still running, a bus that
//! cannot be reached or a missing password are notes in the node's report and log.
//!
//! - a node that fails or rolls back stays drained, and its report says how to undrain it
//!   (`fleetnix node undrain NODE`): whatever broke it is looked at before it takes tasks again;
//! - a node that was drained before the deploy (by an operator) stays drained: the deploy does
//!   not undrain what it did not drain.
//!
//! The bus's side (an implementation of [`Drain`]) is given by the caller
//! ([`super::DeployOptions::drain`]): `src/deploy/` does not import the bus. The steps
//! themselves run in `drain_run.rs`.

use crate::spec::NodeSpec;
use futures_util::future::BoxFuture;
use std::time::Duration;

/// What a drain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// The node was drained already, before this deploy (by an operator): it stays drained.
    pub already: bool,
    /// Tasks still running on it when the wait ended (0: idle); `None`: the router has not
    /// reported the node (no heartbeats, or no router running).
    pub in_flight: Option<u32>,
}

/// The bus's side of draining (implemented outside `deploy`, e.g. by the CLI with the
/// control plane's `_registry` user).
pub trait Drain: Send + Sync + std::fmt::Debug {
    /// Sends `node` no new task (unless it is drained already) and waits, within `limit`, until
    /// it runs none. `Err`: the bus could not be asked (the deploy goes on without a drain).
    fn drain<'a>(
        &'a self,
        node: &'a str,
        limit: Duration,
    ) -> BoxFuture<'a, Result<Drained, String>>;

    /// Gives `node` tasks again, if the drain it holds is a deploy's (an operator's drain made
    /// meanwhile stays: `Err` says so).
    fn undrain<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// A [`Drain`] that cannot reach the bus, and says why (no password for `_registry`, …): every
/// drain is then a note.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl Drain for Unavailable {
    fn drain<'a>(
        &'a self,
        _node: &'a str,
        _limit: Duration,
    ) -> BoxFuture<'a, Result<Drained, String>> {
        Box::pin(std::future::ready(Err(self.0.clone())))
    }

    fn undrain<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(std::future::ready(Err(self.0.clone())))
    }
}

/// Does the node run an agent (`omp-agent.service`, which takes tasks from the bus)? Every node
/// with a role does: the NixOS module enables the agent with the node's roles, and the plain
/// Linux path installs its unit.
pub fn runs_agent(plan: &NodeSpec) -> bool {
    !plan.agent.roles.is_empty()
}

/// Is the node drained around this deploy (given that its deploy activates something): draining
/// is on, the action activates (`switch`, `test`; not `boot`) and the node runs an agent.
pub fn applies(opts: &super::DeployOptions, plan: &NodeSpec) -> bool {
    opts.drain_enabled && opts.action != super::Action::Boot && runs_agent(plan)
}

/// The command that gives a drained node tasks again.
pub fn undrain_command(node: &str) -> String {
    format!("fleetnix node undrain {node}")
}

/// The drain step's listing text.
pub fn drain_text(plan: &NodeSpec, opts: &super::DeployOptions) -> String {
    format!(
        "drain {node}'s tasks: mark it draining in the bus's fleet-drain bucket (as _registry; the router sends it no new task) and wait up to {secs}s (--drain-timeout) for its running tasks, then go on (with a note if some still run, or if the bus cannot be reached); a node drained before the deploy stays drained",
        node = plan.name,
        secs = opts.drain_timeout.as_secs()
    )
}

/// The undrain step's listing text.
pub fn undrain_text(plan: &NodeSpec, opts: &super::DeployOptions) -> String {
    let after = if opts.guarded() && opts.health_gate {
        "once the health gate passed and the deploy is confirmed"
    } else if opts.guarded() {
        "once the deploy is confirmed (--no-health-gate)"
    } else {
        "once the activation succeeded"
    };
    format!(
        "{after}: undrain {node} (remove it from fleet-drain) unless it was drained before the deploy; after a failure or rollback it stays drained (`{cmd}`)",
        node = plan.name,
        cmd = undrain_command(plan.name.as_str())
    )
}

/// Where a node's drain stands during its deploy (kept across a retried attempt).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NodeDrain {
    /// Not drained (the deploy did not get that far, or it does not drain).
    #[default]
    Untouched,
    /// This deploy drained it; the note says how the wait ended.
    ByUs(String),
    /// It was drained before the deploy: it stays drained.
    Already(String),
    /// Draining was not possible (the note says why); the deploy went on.
    NotDrained(String),
    /// The drain did not finish within its bound: it may have been written. Treated as this
    /// deploy's drain (undrained after a success, kept after a failure).
    Unsure(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{Action, DeployOptions};

    #[test]
    fn only_an_activation_of_a_node_with_an_agent_drains() {
        let fleet =
            crate::manifest::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet"))
                .expect("example fleet");
        let plan = crate::spec::node_specs(&fleet).remove(0);
        let mut opts = DeployOptions::new(std::path::Path::new("/r"), &fleet.settings);
        assert_eq!(
            opts.drain_timeout.as_secs(),
            u64::from(fleet.settings.failure.task_timeout_seconds)
        );
        assert!(applies(&opts, &plan));
        opts.action = Action::Test;
        assert!(applies(&opts, &plan));
        opts.action = Action::Boot;
        assert!(!applies(&opts, &plan));
        opts.action = Action::Switch;
        let mut no_agent = plan.clone();
        no_agent.agent.roles.clear();
        assert!(!applies(&opts, &no_agent));
        opts.drain_enabled = false;
        assert!(!applies(&opts, &plan));
        assert!(undrain_text(&plan, &opts).contains(&undrain_command(plan.name.as_str())));
    }
}
