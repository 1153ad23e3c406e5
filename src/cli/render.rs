//! `render [--check]`: writes (or checks) nix/nodes/<node>.nix. The work is in `fleetnix::outputs`.

use super::{CliError, CmdResult, Ctx, Outcome};
use fleetnix::outputs::{self, Change};
use fleetnix::spec;

/// Arguments of `render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Write nothing; exit 1 with a diff if a file is stale, missing or orphaned.
    #[arg(long)]
    pub check: bool,
}

/// `fleetnix render [--check]`.
pub fn run(ctx: &Ctx, args: RenderArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let plans = spec::node_specs(&fleet);
    let (changes, rendered) = outputs::render_fleet(&fleet, &plans, &ctx.sources_label(&fleet))
        .and_then(|rendered| Ok((outputs::compare(&ctx.root, &rendered)?, rendered)))
        .map_err(CliError::msg)?;
    let mut stale = 0;
    for (path, change) in &changes {
        let p = path.display();
        match change {
            Change::Unchanged => {
                if ctx.verbose > 0 {
                    println!("unchanged {p}");
                }
            }
            Change::Create => {
                stale += 1;
                println!("{} {p}", if args.check { "missing" } else { "created" });
            }
            Change::Update(diff) => {
                stale += 1;
                println!("{} {p}", if args.check { "stale" } else { "updated" });
                if args.check {
                    print!("{diff}");
                }
            }
            Change::Orphan => {
                stale += 1;
                println!(
                    "{} {p} (no NixOS node of that name in the manifest)",
                    if args.check { "orphaned" } else { "removed" }
                );
            }
        }
    }
    if args.check {
        if stale > 0 {
            eprintln!("{stale} file(s) out of date: run `fleetnix render`");
            return Ok(Outcome::Problem);
        }
        println!("up to date: {} file(s)", rendered.len());
        return Ok(Outcome::Ok);
    }
    outputs::apply(&ctx.root, &rendered, &changes).map_err(CliError::msg)?;
    println!("rendered {} file(s), {stale} changed", rendered.len());
    Ok(Outcome::Ok)
}
