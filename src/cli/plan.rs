//! `plan`: parses arguments, prints the table or JSON. The work is in `fleetnix::deploy::changes`.

use super::{CliError, CmdResult, Ctx, Outcome};
use fleetnix::deploy::changes::{self, PlanTools};
use fleetnix::deploy::flake::OverrideInput;
use fleetnix::deploy::DeployOptions;
use fleetnix::exec::ssh::SshTransport;
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

/// `--eval-jobs N`, shared by `plan` and `deploy`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Evaluate the nodes' target systems in N concurrent `nix eval` processes (default: one
    /// process for all; a full NixOS system costs seconds of CPU and about 1 GB per process).
    #[arg(long = "eval-jobs", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=fleetnix::deploy::flake::MAX_EVAL_JOBS as i64))]
    pub jobs: u16,
}

/// Arguments of `plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Node names or `@role` (e.g. `worker-01 @glm-worker`).
    pub targets: Vec<String>,
    /// Every node.
    #[arg(long)]
    pub all: bool,
    /// JSON (`nodes[].name`, `.state`, `.current_system`, `.target_system`, …) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// SSH identity file (default: ssh's own keys and agent).
    #[arg(long)]
    pub ssh_identity: Option<PathBuf>,
    /// Flake inputs.
    #[command(flatten)]
    pub flake: FlakeArgs,
    /// Evaluator processes.
    #[command(flatten)]
    pub eval: EvalArgs,
}

/// `fleetnix plan`: exit 0 when nothing would change, 2 when something would, 1 on error.
pub fn run(ctx: &Ctx, args: PlanArgs) -> CmdResult {
    let super::deploy::Selected {
        fleet,
        root,
        all_plans,
        plans: selected,
    } = super::deploy::selected_plans(ctx, &args.targets, args.all)?;
    let mut opts = DeployOptions::new(&root, &fleet.settings);
    opts.ssh.identity = args.ssh_identity;
    opts.override_inputs = args.flake.inputs()?;
    opts.check().map_err(CliError::msg)?;
    let mut tools = PlanTools::locate(opts.step_timeout);
    tools.eval_jobs = usize::from(args.eval.jobs);
    let rt = super::runtime()?;
    let transport = SshTransport {
        config: opts.ssh.clone(),
    };
    let sources = ctx.sources_label(&fleet);
    let report = rt.block_on(changes::plan(
        &fleet, &all_plans, &selected, &sources, &opts, &tools, transport,
    ));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(CliError::msg)?
        );
    } else {
        print!("{}", changes::table(&report));
    }
    Ok(match report.exit_code() {
        0 => Outcome::Ok,
        2 => Outcome::WouldChange,
        _ => Outcome::Problem,
    })
}
