//! `nats-conf`: the control plane's nats-server configuration (no secret in it). The work is in
//! `fleetnix::bus`.

use super::{CmdResult, Ctx, Outcome};
use fleetnix::bus;

/// Arguments of `nats-conf`.
#[derive(Debug, clap::Args)]
pub struct NatsConfArgs {
    /// Listen on HOST:PORT instead of the control plane's tailnet address (e.g. 127.0.0.1:4222).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// JetStream store directory [default: /var/lib/nats].
    #[arg(long)]
    pub store_dir: Option<String>,
}

/// `fleetnix nats-conf`: the control plane's nats-server configuration (no secret in it).
pub fn run(ctx: &Ctx, a: NatsConfArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let mut plan = bus::server_plan(&fleet).map_err(super::CliError::msg)?;
    if let Some(l) = a.listen {
        plan = plan.with_listen(l.ip(), l.port());
    }
    if let Some(dir) = a.store_dir {
        plan = plan.with_store_dir(dir);
    }
    print!("{}", plan.to_conf());
    Ok(Outcome::Ok)
}
