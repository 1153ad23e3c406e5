//! `show NODE [--json]`: one node's plan.

use super::{CliError, CmdResult, Ctx, Outcome};
use fleetnix::spec;

/// Arguments of `show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The node.
    pub node: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `fleetnix show NODE [--json]`.
pub fn run(ctx: &Ctx, args: ShowArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let node = super::node(&fleet, &args.node)?;
    let p = spec::node_spec(&fleet, node);
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
