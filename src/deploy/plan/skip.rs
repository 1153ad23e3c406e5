//! `deploy`'s use of the plan: leave out the nodes that already run their target system.

use super::*;

/// `deploy`'s pre-step: the nodes that already run their target system (NixOS, state
/// `unchanged`, computed by [`systems`] exactly as `plan` does) are left out of `plans` and
/// reported `unchanged`; every other node (changed, unreachable, in error, linux) is deployed as
/// before (the runner reports its own failures; the installer is idempotent). Returns the
/// nodes to deploy, the reports of the skipped ones, and warnings.
pub async fn skip_unchanged<T: Transport + Clone>(
    plans: Vec<NodeSpec>,
    opts: &DeployOptions,
    tools: &PlanTools,
    transport: T,
) -> (Vec<NodeSpec>, Vec<NodeReport>, Vec<String>) {
    let start = Instant::now();
    let (states, warnings) = systems(&plans, opts, tools, transport).await;
    let mut deploy = Vec::new();
    let mut skipped = Vec::new();
    for (plan, s) in plans.into_iter().zip(states) {
        // With --reboot, a reboot pending from an earlier switch is a reason to deploy.
        let pending = opts.reboot != crate::deploy::reboot::RebootMode::Never
            && s.reboot.as_ref().is_some_and(|r| r.needed);
        if s.state == State::Unchanged && s.os == "nixos" && !pending {
            skipped.push(NodeReport {
                node: plan.name.to_string(),
                action: opts.action.as_str().to_string(),
                outcome: Outcome::Unchanged,
                step: None,
                detail: crate::deploy::report::unchanged_detail(
                    s.target_system.as_deref().unwrap_or("-"),
                ),
                duration: start.elapsed(),
                attempts: 1,
            });
        } else {
            deploy.push(plan);
        }
    }
    (deploy, skipped, warnings)
}

/// `deploy`'s cheaper pre-step when no rollout is planned: the target systems of the nodes that
/// may be NixOS, from one evaluation and no connection. Each node's connect step, which reads the
/// running system anyway, compares it with its target ([`super::DeployOptions::skip_if_running`]),
/// so an unchanged node costs one SSH connection and a changed one no extra. (A rollout keeps
/// [`skip_unchanged`]: its canary and batches must be drawn from the nodes that change.) Nodes
/// whose evaluation fails are left out: nixos-rebuild reports their error.
pub async fn targets_to_skip(
    plans: &[NodeSpec],
    opts: &DeployOptions,
    tools: &PlanTools,
) -> BTreeMap<NodeName, String> {
    let nodes: Vec<NodeName> = plans
        .iter()
        .filter(|p| p.access.os != Os::Linux)
        .map(|p| p.name.clone())
        .collect();
    super::super::evalcache::eval_targets(
        &tools.eval_settings(),
        &opts.root,
        &nodes,
        &opts.override_inputs,
    )
    .await
    .nodes
    .into_iter()
    .filter_map(|(n, (r, _))| r.ok().map(|t| (n, t)))
    .collect()
}

/// Adds the reports of nodes [`skip_unchanged`] left out to the runner's summary (node-name order).
pub fn merge_skipped(summary: &mut Summary, skipped: Vec<NodeReport>) {
    summary.nodes.extend(skipped);
    summary.nodes.sort_by(|a, b| a.node.cmp(&b.node));
}
