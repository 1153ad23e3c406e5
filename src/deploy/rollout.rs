//! Rolling deploys: `--canary N` (the first N nodes alone; the rest only if all of them pass),
//! `--batch N|P%` (the rest in waves of at most that many nodes, each wave finishing before the
//! next starts) and `--max-failures K` (no node starts once more than K failed). Nodes never
//! started because the rollout halted are reported `skipped (halted)`. Each wave is one run of
//! [`schedule::deploy`]; the defaults (no canary, one wave, no limit) are a plain deploy.
//!
//! Not here yet: the post-activation health gate (it builds on the rollback guard), so a node
//! "passes" when its deploy succeeded.

use super::report::{Cancel, Event, NodeReport, Outcome, Summary};
use super::schedule;
use super::{AuthKeySource, DeployOptions};
use crate::exec::ssh::Transport;
use crate::spec::NodeSpec;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// `--batch`: a count of nodes, or a percentage of the selected nodes (rounded up, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// At most this many nodes at once.
    Count(usize),
    /// At most this share of the selected nodes at once (1–100).
    Percent(u8),
}

impl FromStr for Batch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("invalid --batch `{s}`: expected a number of nodes (2) or a percentage (25%)")
        };
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Batch::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

/// How nodes are rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    /// Nodes deployed first, alone (0: no canary).
    pub canary: usize,
    /// Wave size after the canaries (`None`: all at once, bounded by `--parallel`).
    pub batch: Option<Batch>,
    /// Stop starting nodes once more than this many failed (`None`: never).
    pub max_failures: Option<usize>,
}

/// One wave: how many nodes, and whether they are the canaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wave {
    /// Nodes in the wave.
    pub size: usize,
    /// The canary wave?
    pub canary: bool,
}

impl Rollout {
    /// The waves for `n` nodes, in order; their sizes add up to `n`.
    pub fn waves(&self, n: usize) -> Vec<Wave> {
        let mut out = Vec::new();
        let mut left = n;
        if self.canary > 0 && n > 0 {
            let c = self.canary.min(n);
            out.push(Wave {
                size: c,
                canary: true,
            });
            left -= c;
        }
        let size = match self.batch {
            None => left,
            Some(Batch::Count(k)) => k,
            Some(Batch::Percent(p)) => (n * usize::from(p)).div_ceil(100),
        }
        .max(1);
        while left > 0 {
            let s = size.min(left);
            out.push(Wave {
                size: s,
                canary: false,
            });
            left -= s;
        }
        out
    }
}

fn halted(plan: &NodeSpec, why: &str) -> NodeReport {
    NodeReport {
        node: plan.name.to_string(),
        action: "-".into(),
        outcome: Outcome::Halted,
        step: None,
        detail: why.to_string(),
        duration: Duration::ZERO,
        attempts: 0,
    }
}

/// Deploys `plans` in the waves of `rollout` (see the module docs); events and cancellation as
/// in [`schedule::deploy`]. Within a wave at most `min(--parallel, wave size)` nodes run at once.
pub async fn deploy<T: Transport + Clone>(
    plans: Vec<NodeSpec>,
    opts: DeployOptions,
    rollout: Rollout,
    transport: T,
    authkeys: Arc<dyn AuthKeySource>,
    events: Option<mpsc::UnboundedSender<Event>>,
    cancel: Cancel,
) -> Summary {
    let waves = rollout.waves(plans.len());
    let mut rest = plans.into_iter();
    let mut nodes = Vec::new();
    let mut failed = 0usize;
    let mut halt: Option<String> = None;
    for wave in waves {
        let plans: Vec<NodeSpec> = rest.by_ref().take(wave.size).collect();
        if let Some(why) = &halt {
            for p in &plans {
                let r = halted(p, why);
                if let Some(tx) = &events {
                    let _ = tx.send(Event::Finished(r.clone()));
                }
                nodes.push(r);
            }
            continue;
        }
        let mut o = opts.clone();
        o.parallel = o.parallel.min(wave.size).max(1);
        o.max_failures = rollout.max_failures.map(|k| k.saturating_sub(failed));
        let s = schedule::deploy(
            plans,
            o,
            transport.clone(),
            authkeys.clone(),
            events.clone(),
            cancel.clone(),
        )
        .await;
        let wave_failed = s
            .nodes
            .iter()
            .filter(|n| {
                !n.outcome.is_success() && !matches!(n.outcome, Outcome::Skipped | Outcome::Halted)
            })
            .count();
        failed += wave_failed;
        nodes.extend(s.nodes);
        if cancel.is_cancelled() {
            halt = Some("interrupted before it started".into());
        } else if wave.canary && wave_failed > 0 {
            halt = Some(format!(
                "not started: {wave_failed} of {} canary node(s) failed (--canary)",
                wave.size
            ));
        } else if opts.fail_fast && wave_failed > 0 {
            halt = Some("not started: an earlier node failed (--fail-fast)".into());
        } else if let Some(k) = rollout.max_failures.filter(|k| failed > *k) {
            halt = Some(format!(
                "not started: {failed} node(s) failed, more than --max-failures {k}"
            ));
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Summary {
        nodes,
        interrupted: cancel.is_cancelled(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(r: Rollout, n: usize) -> Vec<(usize, bool)> {
        r.waves(n).iter().map(|w| (w.size, w.canary)).collect()
    }

    #[test]
    fn waves_cover_every_node_once() {
        assert_eq!(sizes(Rollout::default(), 5), [(5, false)]);
        assert_eq!(sizes(Rollout::default(), 0), []);
        let canary = Rollout {
            canary: 1,
            batch: Some(Batch::Count(2)),
            max_failures: None,
        };
        assert_eq!(sizes(canary, 5), [(1, true), (2, false), (2, false)]);
        assert_eq!(sizes(canary, 1), [(1, true)]);
        let pct = Rollout {
            canary: 0,
            batch: Some(Batch::Percent(25)),
            max_failures: None,
        };
        // 25% of 10 rounds up to 3.
        assert_eq!(
            sizes(pct, 10),
            [(3, false), (3, false), (3, false), (1, false)]
        );
        let big_canary = Rollout {
            canary: 9,
            ..Rollout::default()
        };
        assert_eq!(sizes(big_canary, 3), [(3, true)]);
    }

    #[test]
    fn batch_values() {
        assert_eq!("2".parse::<Batch>(), Ok(Batch::Count(2)));
        assert_eq!("25%".parse::<Batch>(), Ok(Batch::Percent(25)));
        for bad in ["0", "0%", "101%", "-1", "x", "%", ""] {
            assert!(bad.parse::<Batch>().is_err(), "{bad}");
        }
    }
}
