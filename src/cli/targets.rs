//! What `plan` and `deploy` (and `bootstrap`'s flake inputs) share: which nodes the targets
//! select, and the flake and evaluation flags.

use super::{CliError, Ctx};
use fleetnix::deploy::flake::OverrideInput;
use fleetnix::deploy::selector::Selector;
use fleetnix::spec;
use std::path::PathBuf;

/// `--override-input INPUT URL` (repeatable), shared by `plan`, `deploy` and `bootstrap`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FlakeArgs {
    /// Take the flake input INPUT from URL instead of flake.lock, in every Nix evaluation and in
    /// nixos-rebuild (repeatable; e.g. `--override-input nixpkgs path:/src/nixpkgs`).
    #[arg(long = "override-input", num_args = 2, value_names = ["INPUT", "URL"], action = clap::ArgAction::Append)]
    pub override_input: Vec<String>,
}

impl FlakeArgs {
    /// The checked pairs.
    pub fn inputs(&self) -> Result<Vec<OverrideInput>, CliError> {
        OverrideInput::pairs(&self.override_input).map_err(CliError::msg)
    }
}

/// `--eval-jobs N` and `--no-eval-cache`, shared by `plan` and `deploy`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Evaluate the nodes' target systems in at most N concurrent `nix eval` processes (default:
    /// as many as there are cores and as memory holds, about 1.1 GB each).
    #[arg(long = "eval-jobs", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=fleetnix::deploy::flake::MAX_EVAL_JOBS as i64))]
    pub jobs: Option<u16>,
    /// Evaluate every node, neither using nor updating the evaluation cache
    /// (.fleetnix/eval-cache/).
    #[arg(long = "no-eval-cache")]
    pub no_eval_cache: bool,
}

impl EvalArgs {
    /// Sets the evaluation fields of `tools`.
    pub fn apply(&self, tools: &mut fleetnix::deploy::plan::PlanTools) {
        tools.eval_jobs = self.jobs.map_or(0, usize::from);
        tools.eval_cache = !self.no_eval_cache;
    }
}

/// What `deploy` and `plan` start from.
pub struct Selected {
    /// The fleet.
    pub fleet: fleetnix::model::Fleet,
    /// The repository root, absolute.
    pub root: PathBuf,
    /// Every node's plan.
    pub all_plans: Vec<spec::NodeSpec>,
    /// The plans of the nodes the targets select.
    pub plans: Vec<spec::NodeSpec>,
}

/// Loads the fleet and selects `targets`/`all`.
pub fn selected_plans(ctx: &Ctx, targets: &[String], all: bool) -> Result<Selected, CliError> {
    let fleet = ctx.fleet()?;
    let nodes = Selector::parse(targets, all)
        .and_then(|s| s.select(&fleet))
        .map_err(CliError::msg)?;
    let root = std::fs::canonicalize(&ctx.root)
        .map_err(|e| CliError::msg(format!("repository root {}: {e}", ctx.root.display())))?;
    let all_plans = spec::node_specs(&fleet);
    let plans = all_plans
        .iter()
        .filter(|p| nodes.iter().any(|n| n.name == p.name))
        .cloned()
        .collect();
    Ok(Selected {
        fleet,
        root,
        all_plans,
        plans,
    })
}
