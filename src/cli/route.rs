//! `route`: picks the node for the next task of a role. The work is in `fleetnix::bus::route`.

use super::{runtime, to_json, CliError, CmdResult, Ctx, Outcome};
use fleetnix::bus::route::Router;
use fleetnix::health::{self, ProbeOptions};

/// Arguments of `route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The role.
    pub role: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `fleetnix route ROLE`: the node on stdout (exit 1: none fits; 3: no tailnet view).
pub fn run(ctx: &Ctx, a: RouteArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let report = runtime()?
        .block_on(async {
            let st = health::tailnet_view(None).await?;
            let opts = ProbeOptions::for_fleet(&fleet);
            Ok::<_, health::TailnetError>(
                health::sweep_role(&fleet, &a.role, Some(&st), &opts).await,
            )
        })
        .map_err(CliError::could_not_run)?;
    let router = Router::new(&fleet).with_state_dir(ctx.root.join(".fleetnix"));
    let r = router.route(&a.role, &report).map_err(CliError::msg)?;
    if a.json {
        println!("{}", to_json(&r, true)?);
    } else {
        println!("{}", r.node());
        if ctx.verbose > 0 {
            let order: Vec<&str> = r.order.iter().map(|n| n.as_str()).collect();
            eprintln!("order: {}", order.join(", "));
            for (n, s) in &r.skipped {
                eprintln!("skipped {n}: {s}");
            }
        }
    }
    Ok(Outcome::Ok)
}
