//! `router`: the control plane's task router, a long-running service. The work is in
//! `fleetnix::bus::router`.

use super::bus::{password, url, Conn};
use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::bus::router::{self, Lanes, RouterConfig};
use fleetnix::bus::{self, dispatch as d};
use fleetnix::health::alert::{Alerter, Ntfy};
use fleetnix::secrets::{SecretId, SecretKind};
use std::time::Duration;

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

/// `fleetnix router`: runs until SIGINT/SIGTERM.
pub fn run(ctx: &Ctx, a: RouterArgs) -> CmdResult {
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
            Ok(n) => {
                // Said at start-up: where a node going down is reported (issue 22).
                eprintln!(
                    "router: alerts (node down/back) go to ntfy at {} (FLEETNIX_NTFY_URL overrides; alert_on_node_down: false turns them off)",
                    n.url()
                );
                Some(Alerter::new(n))
            }
            Err(e) => return Err(CliError::msg(e)),
        }
    } else {
        eprintln!("router: alerts are off (alert_on_node_down: false)");
        None
    };
    let url = url(&fleet, &a.conn);
    let rt = runtime()?;
    let result = rt.block_on(async {
        let lanes = Lanes::connect(&url, &pw, config.lanes, config.node_timeout)
            .await
            .map_err(router::RouterError::from)?;
        eprintln!(
            "router: serving fleet.dispatch.> on {url} ({:?}, retry {}, node timeout {:.1}s, {} lanes)",
            config.strategy,
            config.retry,
            config.node_timeout.as_secs_f64(),
            lanes.count()
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        router::run(lanes, config, alerter, shutdown).await
    });
    result.map_err(CliError::msg)?;
    Ok(Outcome::Ok)
}
