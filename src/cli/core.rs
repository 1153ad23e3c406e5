//! `validate`, `render`, `show`.

use super::{CliError, CmdResult, Ctx, Outcome};
use fleetnix::plan;
use fleetnix::render::{self, Change};

/// Arguments of `render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Write nothing; exit 1 with a diff if a file is stale, missing or orphaned.
    #[arg(long)]
    pub check: bool,
}

/// Arguments of `show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The node.
    pub node: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `fleetnix validate`: the fleet files, and each NixOS node's hardware configuration and state
/// version.
pub fn validate(ctx: &Ctx) -> CmdResult {
    let fleet = ctx.fleet()?;
    fleetnix::hosts::validate(&ctx.root, &fleet)?;
    println!(
        "ok: {} nodes, {} roles, {} services",
        fleet.nodes.len(),
        fleet.catalog.roles.len(),
        fleet.catalog.services.len()
    );
    Ok(Outcome::Ok)
}

/// `fleetnix render [--check]`.
pub fn render(ctx: &Ctx, args: RenderArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let plans = plan::plan(&fleet);
    let (changes, rendered) = render::render_fleet(&fleet, &plans, &ctx.sources_label(&fleet))
        .and_then(|rendered| Ok((render::compare(&ctx.root, &rendered)?, rendered)))
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
    render::apply(&ctx.root, &rendered, &changes).map_err(CliError::msg)?;
    println!("rendered {} file(s), {stale} changed", rendered.len());
    Ok(Outcome::Ok)
}

/// `fleetnix show NODE [--json]`.
pub fn show(ctx: &Ctx, args: ShowArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let node = super::node(&fleet, &args.node)?;
    let p = plan::plan_node(&fleet, node);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&p).map_err(CliError::msg)?
        );
        return Ok(Outcome::Ok);
    }
    let ports = |v: &[u16]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    println!("node        {}", p.name);
    println!(
        "roles       {}",
        p.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("tags        {}", p.tags.join(", "));
    if !p.models.is_empty() {
        println!("models      {}", p.models.join(", "));
    }
    println!("address     {}", p.access.address);
    println!("ssh         {} ({:?})", p.access.ssh_target, p.access.os);
    println!(
        "host key    {}",
        p.access
            .host_key
            .as_deref()
            .unwrap_or("unknown (run: ssh-keyscan -t ed25519 <address>)")
    );
    println!(
        "nixos       {}",
        match (&p.state_version, p.access.os) {
            (_, fleetnix::model::Os::Linux) => "none (os: linux)".to_string(),
            (Some(v), _) => format!("system.stateVersion {v}"),
            (None, _) => "no state_version (fleetnix validate says where to set it)".to_string(),
        }
    );
    println!("tailscale   tailscale up {}", p.up_flags.join(" "));
    println!("tcp ports   {} (on tailscale0)", ports(&p.tcp_ports));
    println!("udp ports   {} (on tailscale0)", ports(&p.udp_ports));
    for s in &p.services {
        println!("service     {} {}/{}", s.name, s.port, s.protocol);
    }
    println!("agent       omp {}", p.agent.argv().join(" "));
    for s in &p.secrets {
        println!("secret      {} <- {}", s.name, s.file);
    }
    Ok(Outcome::Ok)
}
