//! The drain and undrain steps of a node's deploy ([`super::drain`]): run by the executor,
//! never failing the deploy.

use super::drain::{undrain_command, Drained, NodeDrain};
use super::execute::Ctx;
use super::program::{Op, OpKind, Program};
use super::report::{Outcome, Step};
use crate::exec::process::NodeLog;
use crate::exec::ssh::Transport;
use crate::spec::NodeSpec;
use std::time::Duration;

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
        let bound = limit + self.bus_bound();
        let result = match &self.opts.drain {
            None => Ok(Err("no bus connection for draining was given".to_string())),
            Some(d) => tokio::time::timeout(bound, d.drain(node, limit))
                .await
                .map_err(|_| bound),
        };
        *state = match result {
            // The drain may have been written before the bus stopped answering.
            Err(bound) => NodeDrain::Unsure(format!(
                "the drain did not finish within {}s (the bus stopped answering; it may be drained): deployed with its tasks running",
                bound.as_secs()
            )),
            Ok(Ok(Drained {
                already: true,
                in_flight,
            })) => NodeDrain::Already(format!(
                "it was drained before the deploy{}",
                running(in_flight, limit, false)
            )),
            Ok(Ok(Drained {
                already: false,
                in_flight,
            })) => NodeDrain::ByUs(format!("drained{}", running(in_flight, limit, true))),
            Ok(Err(e)) => NodeDrain::NotDrained(format!(
                "not drained ({e}): deployed with its tasks running"
            )),
        };
        let note = match state {
            NodeDrain::ByUs(n)
            | NodeDrain::Already(n)
            | NodeDrain::NotDrained(n)
            | NodeDrain::Unsure(n) => n.clone(),
            NodeDrain::Untouched => String::new(),
        };
        log.line(&format!("drain: {note}"));
    }

    /// The backstop of one exchange with the bus beyond the drain's wait: its connection and
    /// request are bounded by the node timeout each, plus a margin.
    fn bus_bound(&self) -> Duration {
        self.opts.node_timeout * 2 + Duration::from_secs(5)
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
            NodeDrain::ByUs(n) | NodeDrain::Unsure(n) if !succeeded => {
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
            NodeDrain::ByUs(n) | NodeDrain::Unsure(n) => {
                log.line(&format!("## {}", Step::Undrain.as_str()));
                self.emit(super::report::Event::Step {
                    node: node.to_string(),
                    step: Step::Undrain,
                });
                trace(true);
                let bound = self.bus_bound();
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
                        "{n}; not undrained ({e}): it stays drained until `{}`",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_described_by_what_still_runs() {
        let limit = Duration::from_secs(300);
        assert_eq!(running(Some(0), limit, true), "");
        assert_eq!(
            running(Some(2), limit, true),
            "; 2 task(s) still running after the 300s wait (--drain-timeout), deployed anyway"
        );
        assert_eq!(
            running(Some(1), limit, false),
            "; 1 task(s) still running on it"
        );
        assert!(running(None, limit, true).contains("does not report the node"));
    }
}
