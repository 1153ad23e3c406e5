//! `validate`, `render`, `show`.

use super::Ctx;
use fleetnix::plan;
use fleetnix::render::{self, Change};
use std::process::ExitCode;

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
pub fn validate(ctx: &Ctx) -> ExitCode {
    match ctx.fleet() {
        Ok(fleet) => {
            if let Err(e) = fleetnix::hosts::validate(&ctx.root, &fleet) {
                super::report_manifest_error(&e);
                return ExitCode::from(1);
            }
            println!(
                "ok: {} nodes, {} roles, {} services",
                fleet.nodes.len(),
                fleet.catalog.roles.len(),
                fleet.catalog.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `fleetnix render [--check]`.
pub fn render(ctx: &Ctx, args: RenderArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let plans = plan::plan(&fleet);
    let result = render::render_fleet(&fleet, &plans, &ctx.sources_label(&fleet))
        .and_then(|rendered| Ok((render::compare(&ctx.root, &rendered)?, rendered)));
    let (changes, rendered) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
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
            return ExitCode::from(1);
        }
        println!("up to date: {} file(s)", rendered.len());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = render::apply(&ctx.root, &rendered, &changes) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    println!("rendered {} file(s), {stale} changed", rendered.len());
    ExitCode::SUCCESS
}

/// `fleetnix show NODE [--json]`.
pub fn show(ctx: &Ctx, args: ShowArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let node = match super::node(&fleet, &args.node) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let p = plan::plan_node(&fleet, node);
    if args.json {
        match serde_json::to_string_pretty(&p) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
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
    ExitCode::SUCCESS
}
