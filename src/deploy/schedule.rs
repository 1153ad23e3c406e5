//! Scheduling a deploy: at most `--parallel` nodes at once on tokio, `--fail-fast` and
//! `--max-failures` stop new nodes from starting, Ctrl-C ([`Cancel`]) too; the tailnet's host
//! keys are read once for the run. Each node runs through `execute.rs`.

use super::execute::Ctx;
use super::hostkeys;
use super::report::{Cancel, Event, NodeReport, Outcome, Summary};
use super::{AuthKeySource, DeployOptions};
use crate::exec::process::{run_process, LocalCommand, NodeLog};
use crate::exec::ssh::{ControlDir, Transport};
use crate::spec::NodeSpec;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Asks `tailscale status --json` for the peers' SSH host keys. Any failure is a warning, not an error.
pub async fn tailnet_host_keys(
    opts: &DeployOptions,
) -> (BTreeMap<IpAddr, Vec<String>>, Option<String>) {
    let Some(program) = &opts.tailscale else {
        return (BTreeMap::new(), None);
    };
    let cmd = LocalCommand {
        program: program.clone(),
        args: vec!["status".into(), "--json".into()],
        env: Vec::new(),
    };
    match run_process(&cmd, None, opts.node_timeout, &NodeLog::discard()).await {
        Ok(out) if out.success() => match hostkeys::keys_from_status(&out.stdout) {
            Ok(k) => (k, None),
            Err(e) => (
                BTreeMap::new(),
                Some(format!("tailscale status --json: unexpected output: {e}")),
            ),
        },
        Ok(out) => (
            BTreeMap::new(),
            Some(format!(
                "tailscale status --json failed: {}",
                out.last_line()
            )),
        ),
        Err(e) => (BTreeMap::new(), Some(e.to_string())),
    }
}

/// Deploys `plans` (the selected nodes): at most `opts.parallel` at once, each node logged to
/// `.fleetnix/logs/<node>.log`. One node failing never stops the others unless `opts.fail_fast`;
/// `cancel` stops starting new nodes.
pub async fn deploy<T: Transport>(
    plans: Vec<NodeSpec>,
    opts: DeployOptions,
    transport: T,
    authkeys: Arc<dyn AuthKeySource>,
    events: Option<mpsc::UnboundedSender<Event>>,
    cancel: Cancel,
) -> Summary {
    let (tailnet_keys, warning) = tailnet_host_keys(&opts).await;
    let sem = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let fail_fast = opts.fail_fast;
    let max_failures = opts.max_failures;
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (control, control_warning) = if opts.multiplex {
        match ControlDir::new() {
            Ok(d) => (Some(d), None),
            Err(e) => (
                None,
                Some(format!(
                    "cannot create a directory for shared SSH connections ({e}): one connection per command"
                )),
            ),
        }
    } else {
        (None, None)
    };
    let ctx = Arc::new(Ctx {
        opts,
        transport,
        authkeys,
        tailnet_keys,
        events,
        control,
    });
    if let Some(w) = warning {
        ctx.emit(Event::Warning(format!(
            "host keys from the tailnet unavailable: {w}"
        )));
    }
    if let Some(w) = control_warning {
        ctx.emit(Event::Warning(w));
    }
    let stop = Cancel::default();
    let mut set = tokio::task::JoinSet::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let (ctx, sem, cancel, stop) = (ctx.clone(), sem.clone(), cancel.clone(), stop.clone());
        let failures = failures.clone();
        set.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = sem.acquire_owned().await.ok();
            if cancel.is_cancelled() || stop.is_cancelled() {
                let (why, outcome) = if cancel.is_cancelled() {
                    (
                        "interrupted before it started".to_string(),
                        Outcome::Skipped,
                    )
                } else if fail_fast {
                    (
                        "not started: an earlier node failed (--fail-fast)".to_string(),
                        Outcome::Skipped,
                    )
                } else {
                    (
                        format!(
                            "not started: more than {} node(s) failed (--max-failures)",
                            max_failures.unwrap_or(0)
                        ),
                        Outcome::Halted,
                    )
                };
                let r = NodeReport {
                    node: plan.name.to_string(),
                    action: "-".into(),
                    outcome,
                    step: None,
                    detail: why,
                    duration: Duration::ZERO,
                    attempts: 0,
                };
                ctx.emit(Event::Finished(r.clone()));
                return r;
            }
            let r = ctx.node(index, &plan).await;
            if !r.outcome.is_success() {
                let failed = failures.fetch_add(1, Ordering::SeqCst) + 1;
                if fail_fast || max_failures.is_some_and(|k| failed > k) {
                    stop.cancel();
                }
            }
            ctx.emit(Event::Finished(r.clone()));
            r
        });
    }
    let mut nodes = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => nodes.push(r),
            Err(e) => ctx.emit(Event::Warning(format!("a node task panicked: {e}"))),
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Summary {
        nodes,
        interrupted: cancel.is_cancelled(),
    }
}
