//! `node sync`: registers the fleet in the control plane's `fleet-nodes` bucket. The work is in
//! `fleetnix::bus::registry`.

use super::bus::{password, url, Conn};
use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::bus::users::Service;
use fleetnix::bus::{self, dispatch as d, registry};
use fleetnix::secrets::SecretId;
use std::time::Duration;

/// `fleetnix node …`.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Register the fleet's nodes in the control plane's `fleet-nodes` bucket (idempotent), as
    /// NATS user `_registry` (its password: secrets/<control plane>/nats-registry-password.age).
    Sync(NodeSyncArgs),
}

/// Arguments of `node sync`.
#[derive(Debug, clap::Args)]
pub struct NodeSyncArgs {
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `fleetnix node sync`.
pub fn run(ctx: &Ctx, c: NodeCommand) -> CmdResult {
    let NodeCommand::Sync(a) = c;
    let fleet = ctx.fleet()?;
    // Its own user, `_registry`: the fleet-nodes bucket and nothing of the task bus.
    let registry = Service::Registry;
    let pw = password(
        ctx,
        &a.conn,
        &SecretId::new(fleet.settings.control_plane.clone(), registry.secret_kind()),
        registry.user(),
    )?;
    let url = url(&fleet, &a.conn);
    let timeout = Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds));
    let rt = runtime()?;
    let result = rt.block_on(async {
        let client = d::connect_as(&url, registry.user(), &pw, timeout).await?;
        let js = async_nats::jetstream::new(client);
        registry::sync(&js, &fleet).await
    });
    let report = result.map_err(CliError::msg)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(CliError::msg)?
        );
    } else {
        for l in &report.lines {
            println!("{l}");
        }
        if !report.changed() {
            println!("{}: nothing changed", bus::NODES_BUCKET);
        }
    }
    Ok(Outcome::Ok)
}
