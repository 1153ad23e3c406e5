//! `node sync`, `router`, `nats-conf`: the bus commands (parsing and printing); the NATS
//! connection arguments and password lookup that `dispatch` shares.

use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::alert::{Alerter, Ntfy};
use fleetnix::bus::{self, creds::Secret, dispatch as d, registry};
use fleetnix::model::Fleet;
use fleetnix::router::{self, RouterConfig};
use fleetnix::secrets::{decrypt_secret, SecretId, SecretKind};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the fleet's NATS and which password to use.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// NATS server URL [default: nats_url from fleet.yml]. Must not carry credentials.
    #[arg(long, env = "FLEETNIX_NATS_URL")]
    pub nats_url: Option<String>,
    /// File holding the password; otherwise it is read from FLEETNIX_NATS_PASSWORD, else
    /// decrypted in memory from the user's age secret with --identity.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Operator identity that decrypts the password's .age file [default: ~/.ssh/id_ed25519].
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

/// `fleetnix node …`.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Register the fleet's nodes in the control plane's `fleet-nodes` bucket (idempotent).
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

/// Arguments of `router`.
#[derive(Debug, clap::Args)]
pub struct RouterArgs {
    /// Connection (the router's user; its password is secrets/<control plane>/nats-router-password.age).
    #[command(flatten)]
    pub conn: Conn,
    /// Override node_timeout_seconds (e.g. 500ms, 5s): the bound of one attempt and the
    /// heartbeat silence after which a node is degraded.
    #[arg(long, value_parser = d::parse_timeout)]
    pub node_timeout: Option<Duration>,
}

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

/// The NATS URL: `--nats-url`, else the fleet's.
pub(super) fn url(fleet: &Fleet, conn: &Conn) -> String {
    conn.nats_url
        .clone()
        .unwrap_or_else(|| fleet.settings.nats_url.clone())
}

/// The password of `who` (a node's, or the router's when `kind` says so).
pub(super) fn password(
    ctx: &Ctx,
    conn: &Conn,
    id: &SecretId,
    who: &str,
) -> Result<Secret, CliError> {
    if let Some(path) = &conn.password_file {
        return match std::fs::read_to_string(path) {
            Ok(s) => Ok(Secret::new(s.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(CliError::msg(format_args!("{}: {e}", path.display()))),
        };
    }
    if let Ok(s) = std::env::var("FLEETNIX_NATS_PASSWORD") {
        return Ok(Secret::new(s));
    }
    let decrypted = super::secrets::identity_or_default(conn.identity.clone())
        .and_then(|identity| decrypt_secret(&ctx.root, id, &identity));
    match decrypted {
        Ok(bytes) => match String::from_utf8(bytes.to_vec()) {
            Ok(s) => Ok(Secret::new(s.trim_end_matches(['\n', '\r']).to_string())),
            Err(_) => Err(CliError::msg(format_args!("{} does not hold a text password", id.file()))),
        },
        Err(e) => Err(CliError::msg(format_args!(
            "no NATS password for {who}: set FLEETNIX_NATS_PASSWORD, pass --password-file, or let --identity decrypt {} ({e})",
            id.file()
        ))),
    }
}

/// `fleetnix node sync`.
pub fn node(ctx: &Ctx, c: NodeCommand) -> CmdResult {
    let NodeCommand::Sync(a) = c;
    let fleet = ctx.fleet()?;
    let cp = fleet.settings.control_plane.clone();
    let pw = password(
        ctx,
        &a.conn,
        &SecretId::new(cp.clone(), SecretKind::NatsPassword),
        cp.as_str(),
    )?;
    let url = url(&fleet, &a.conn);
    let timeout = Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds));
    let rt = runtime()?;
    let result = rt.block_on(async {
        let client = d::connect(&url, &cp, &pw, timeout).await?;
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

/// `fleetnix router`: runs until SIGINT/SIGTERM.
pub fn router(ctx: &Ctx, a: RouterArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let cp = fleet.settings.control_plane.clone();
    let pw = password(
        ctx,
        &a.conn,
        &SecretId::new(cp, SecretKind::NatsRouterPassword),
        bus::ROUTER_USER,
    )?;
    let mut config = RouterConfig::for_fleet(&fleet);
    if let Some(t) = a.node_timeout {
        config = RouterConfig::new(config.strategy, config.retry, t);
    }
    let alerter = if fleet.settings.failure.alert_on_node_down {
        match Ntfy::for_fleet(&fleet, Duration::from_secs(10)) {
            Ok(n) => Some(Alerter::new(n)),
            Err(e) => return Err(CliError::msg(e)),
        }
    } else {
        None
    };
    let url = url(&fleet, &a.conn);
    let rt = runtime()?;
    let result = rt.block_on(async {
        let client = d::connect_as(&url, bus::ROUTER_USER, &pw, config.node_timeout)
            .await
            .map_err(router::RouterError::from)?;
        eprintln!(
            "router: serving fleet.dispatch.> on {url} ({:?}, retry {}, node timeout {:.1}s)",
            config.strategy,
            config.retry,
            config.node_timeout.as_secs_f64()
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        router::run(client, config, alerter, shutdown).await
    });
    result.map_err(CliError::msg)?;
    Ok(Outcome::Ok)
}

/// `fleetnix nats-conf`: the control plane's nats-server configuration (no secret in it).
pub fn nats_conf(ctx: &Ctx, a: NatsConfArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let mut plan = bus::server_plan(&fleet).map_err(CliError::msg)?;
    if let Some(l) = a.listen {
        plan = plan.with_listen(l.ip(), l.port());
    }
    if let Some(dir) = a.store_dir {
        plan = plan.with_store_dir(dir);
    }
    print!("{}", plan.to_conf());
    Ok(Outcome::Ok)
}
