//! `node sync`: registers the fleet in the control plane's `fleet-nodes` bucket (the work is in
//! `fleetnix::bus::registry`); `node drain` / `node undrain`: the router sends a drained node no
//! new task (`fleetnix::bus::drain`).

use super::bus::{registry_password, url, Conn};
use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::bus::users::Service;
use fleetnix::bus::{self, dispatch as d, drain, registry};
use std::time::Duration;

/// `fleetnix node …`.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Register the fleet's nodes in the control plane's `fleet-nodes` bucket (idempotent), as
    /// NATS user `_registry` (its password: secrets/<control plane>/nats-registry-password.age).
    Sync(NodeSyncArgs),
    /// Send NODE no new task through the router; its running tasks finish. Prints its in-flight count.
    Drain(NodeDrainArgs),
    /// Give NODE tasks again.
    Undrain(NodeDrainArgs),
}

/// Arguments of `node drain` / `node undrain`.
#[derive(Debug, clap::Args)]
pub struct NodeDrainArgs {
    /// The node.
    pub node: String,
    /// Wait up to this long (e.g. 5m) for its running tasks to finish (drain only).
    #[arg(long, value_parser = d::parse_timeout)]
    pub wait: Option<Duration>,
    /// Why (kept with the drain, for people).
    #[arg(long, default_value = "fleetnix node drain")]
    pub reason: String,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

fn drain(ctx: &Ctx, a: NodeDrainArgs, draining: bool) -> CmdResult {
    let fleet = ctx.fleet()?;
    let node = super::node(&fleet, &a.node)?.name.clone();
    // The registry's user, as for `node sync`: it writes `fleet-drain`, nothing of the task bus.
    let pw = registry_password(ctx, &fleet, &a.conn)?;
    let url = url(&fleet, &a.conn);
    let timeout = Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds));
    let rt = runtime()?;
    let entry = rt
        .block_on(async {
            let client = d::connect_as(&url, Service::Registry.user(), &pw, timeout).await?;
            let js = async_nats::jetstream::new(client);
            drain::set(&js, &node, draining, &a.reason).await?;
            match (draining, a.wait) {
                (true, Some(limit)) => drain::wait_idle(&js, &node, limit).await,
                _ => drain::health(&js, &node).await,
            }
        })
        .map_err(CliError::msg)?;
    let load = match &entry {
        Some(e) => format!("{} of {} task(s) in flight", e.in_flight, e.capacity),
        None => "the router has not reported it yet".into(),
    };
    if !draining {
        println!("{node}: undrained ({load})");
    } else if a.wait.is_some() && entry.as_ref().is_some_and(|e| e.in_flight > 0) {
        println!("{node}: drained; still running after the wait: {load}");
    } else {
        println!("{node}: drained ({load})");
    }
    Ok(Outcome::Ok)
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
    let a = match c {
        NodeCommand::Sync(a) => a,
        NodeCommand::Drain(a) => return drain(ctx, a, true),
        NodeCommand::Undrain(a) => return drain(ctx, a, false),
    };
    let fleet = ctx.fleet()?;
    // Its own user, `_registry`: the fleet-nodes bucket and nothing of the task bus.
    let pw = registry_password(ctx, &fleet, &a.conn)?;
    let url = url(&fleet, &a.conn);
    let timeout = Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds));
    let rt = runtime()?;
    let result = rt.block_on(async {
        let client = d::connect_as(&url, Service::Registry.user(), &pw, timeout).await?;
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
