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
//! ([`super::DeployOptions::drain`]): `src/deploy/` does not import the bus.

use super::execute::Ctx;
use super::program::{Op, OpKind, Program};
use super::report::{Outcome, Step};
use crate::exec::process::NodeLog;
use crate::exec::ssh::Transport;
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

    /// Gives `node` tasks again.
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
        "once the deploy is confirmed (no health gate)"
    } else {
        "once the activation succeeded (no health gate)"
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
}

impl<T: Transport> Ctx<T> {
    /// The drain step: asks the bus (within `--drain-timeout` plus the connection's bound) and
    /// records what happened; never fails the deploy.
    pub(crate) async fn drain_step(&self, plan: &NodeSpec, state: &mut NodeDrain, log: &NodeLog) {
        if matches!(state, NodeDrain::ByUs(_) | NodeDrain::Already(_)) {
            // A retried attempt: drained already by the first.
            log.line("drain: drained by the first attempt");
            return;
        }
        let node = plan.name.as_str();
        let limit = self.opts.drain_timeout;
        // The hook bounds its own wait by `limit` and its connection by the node timeout; this
        // is the backstop that keeps a stuck bus from holding the deploy.
        let bound = limit + self.opts.node_timeout * 2 + Duration::from_secs(5);
        let result = match &self.opts.drain {
            None => Err("no bus connection for draining was given".to_string()),
            Some(d) => match tokio::time::timeout(bound, d.drain(node, limit)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "the bus did not answer within {}s",
                    bound.as_secs()
                )),
            },
        };
        *state = match result {
            Ok(Drained {
                already: true,
                in_flight,
            }) => NodeDrain::Already(format!(
                "it was drained before the deploy{}",
                running(in_flight, limit, false)
            )),
            Ok(Drained {
                already: false,
                in_flight,
            }) => NodeDrain::ByUs(format!("drained{}", running(in_flight, limit, true))),
            Err(e) => NodeDrain::NotDrained(format!(
                "not drained ({e}): deployed with its tasks running"
            )),
        };
        let note = match state {
            NodeDrain::ByUs(n) | NodeDrain::Already(n) | NodeDrain::NotDrained(n) => n.clone(),
            NodeDrain::Untouched => String::new(),
        };
        log.line(&format!("drain: {note}"));
    }

    /// After the node's deploy: undrains it if this deploy drained it and it succeeded, and adds
    /// to the report what happened to its drain.
    pub(crate) async fn finish_drain(
        &self,
        plan: &NodeSpec,
        program: &Program,
        state: &NodeDrain,
        log: &NodeLog,
        outcome: Outcome,
        detail: String,
    ) -> String {
        let node = plan.name.as_str();
        let undrain_op = find_undrain(&program.ops);
        let trace = |ran: bool| {
            if let Some(id) = undrain_op {
                if let Some(text) =
                    program.entry(&self.opts.ssh, &super::program::Vars::placeholders(), id)
                {
                    let mark = if ran { "#> " } else { "#- " };
                    for line in text.lines() {
                        log.line(&format!("{mark}{line}"));
                    }
                }
            }
        };
        let succeeded = outcome == Outcome::Succeeded;
        let note = match state {
            NodeDrain::Untouched => return detail,
            NodeDrain::NotDrained(n) => {
                trace(false);
                n.clone()
            }
            NodeDrain::Already(n) => {
                trace(false);
                format!(
                    "{n} and stays drained (`{}` to give it tasks)",
                    undrain_command(node)
                )
            }
            NodeDrain::ByUs(n) if !succeeded => {
                trace(false);
                format!(
                    "{n}; it stays drained after this {}: once it is healthy, `{}`",
                    match outcome {
                        Outcome::RolledBack | Outcome::RollbackFailed => "rollback",
                        _ => "failure",
                    },
                    undrain_command(node)
                )
            }
            NodeDrain::ByUs(n) => {
                log.line(&format!("## {}", Step::Undrain.as_str()));
                self.emit(super::report::Event::Step {
                    node: node.to_string(),
                    step: Step::Undrain,
                });
                trace(true);
                let bound = self.opts.node_timeout * 2 + Duration::from_secs(5);
                let r = match &self.opts.drain {
                    None => Err("no bus connection".to_string()),
                    Some(d) => match tokio::time::timeout(bound, d.undrain(node)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!(
                            "the bus did not answer within {}s",
                            bound.as_secs()
                        )),
                    },
                };
                match r {
                    Ok(()) => format!("{n}, undrained after the deploy"),
                    Err(e) => format!(
                        "{n}; undraining failed ({e}): it stays drained until `{}`",
                        undrain_command(node)
                    ),
                }
            }
        };
        log.line(&format!("drain: {note}"));
        format!("{detail}; {note}")
    }
}

/// `: N task(s) still running after the wait` and the like, for the drain's note.
fn running(in_flight: Option<u32>, limit: Duration, ours: bool) -> String {
    match in_flight {
        Some(0) => String::new(),
        Some(n) if ours => format!(
            "; {n} task(s) still running after the {}s wait (--drain-timeout), deployed anyway",
            limit.as_secs()
        ),
        Some(n) => format!("; {n} task(s) still running on it"),
        None => " (the router does not report the node: no heartbeats or no router)".into(),
    }
}

/// The undrain op of a program (the NixOS branch's, for `os: auto`).
fn find_undrain(ops: &[Op]) -> Option<usize> {
    ops.iter().find_map(|op| match &op.kind {
        OpKind::Undrain { .. } => Some(op.id),
        OpKind::IfNixos { nixos, otherwise } => {
            find_undrain(nixos).or_else(|| find_undrain(otherwise))
        }
        _ => None,
    })
}
