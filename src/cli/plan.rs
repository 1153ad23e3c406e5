//! `plan`: parses arguments, prints the table or JSON. The work is in `fleetnix::deploy::plan`.

use super::targets::{EvalArgs, FlakeArgs};
use super::{CliError, CmdResult, Ctx, Outcome};
use fleetnix::deploy::plan::{self as deploy_plan, PlanTools};
use fleetnix::deploy::DeployOptions;
use fleetnix::exec::ssh::SshTransport;
use std::path::PathBuf;

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
    let super::targets::Selected {
        fleet,
        root,
        all_plans,
        plans: selected,
    } = super::targets::selected_plans(ctx, &args.targets, args.all)?;
    let mut opts = DeployOptions::new(&root, &fleet.settings);
    opts.ssh.identity = args.ssh_identity;
    opts.override_inputs = args.flake.inputs()?;
    opts.check().map_err(CliError::msg)?;
    let mut tools = PlanTools::locate(opts.step_timeout);
    args.eval.apply(&mut tools);
    let rt = super::runtime()?;
    let transport = SshTransport {
        config: opts.ssh.clone(),
    };
    let sources = ctx.sources_label(&fleet);
    let report = rt.block_on(deploy_plan::plan(
        &fleet, &all_plans, &selected, &sources, &opts, &tools, transport,
    ));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(CliError::msg)?
        );
    } else {
        print!("{}", deploy_plan::table(&report));
    }
    Ok(match report.exit_code() {
        0 => Outcome::Ok,
        2 => Outcome::WouldChange,
        _ => Outcome::Problem,
    })
}
