//! `node sync`, `router`, `dispatch`, `nats-conf`: the bus commands (parsing and printing).

use super::{fail, runtime, Ctx};
use fleetnix::alert::{Alerter, Ntfy};
use fleetnix::bus::{self, creds::Secret, dispatch as d, registry};
use fleetnix::model::Fleet;
use fleetnix::router::{self, Answer, RouterConfig};
use fleetnix::secrets::{decrypt_secret, SecretId, SecretKind};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
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

/// Arguments of `dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The role whose nodes should run the task.
    #[arg(long)]
    pub role: String,
    /// The task, as JSON (sent unchanged).
    #[arg(long)]
    pub payload: String,
    /// Prefer nodes that serve this model (ignored when none does).
    #[arg(long)]
    pub model: Option<String>,
    /// How long to wait: with the router, for its answer [default: node_timeout_seconds × (nodes
    /// of the role + 1)]; with --direct, per attempt [default: node_timeout_seconds].
    #[arg(long, value_parser = d::parse_timeout)]
    pub timeout: Option<Duration>,
    /// Bypass the router: publish to the role's queue group and fail over from this process
    /// (the answering node is then only as claimed by the worker).
    #[arg(long)]
    pub direct: bool,
    /// NATS user (a node name) [default: the control plane, the only user allowed to dispatch].
    #[arg(long)]
    pub user: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
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

fn url(fleet: &Fleet, conn: &Conn) -> String {
    conn.nats_url
        .clone()
        .unwrap_or_else(|| fleet.settings.nats_url.to_string())
}

/// The password of `who` (a node's, or the router's when `kind` says so).
fn password(ctx: &Ctx, conn: &Conn, id: &SecretId, who: &str) -> Result<Secret, ExitCode> {
    if let Some(path) = &conn.password_file {
        return match std::fs::read_to_string(path) {
            Ok(s) => Ok(Secret::new(s.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(fail(format_args!("{}: {e}", path.display()))),
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
            Err(_) => Err(fail(format_args!("{} does not hold a text password", id.file()))),
        },
        Err(e) => Err(fail(format_args!(
            "no NATS password for {who}: set FLEETNIX_NATS_PASSWORD, pass --password-file, or let --identity decrypt {} ({e})",
            id.file()
        ))),
    }
}

/// `fleetnix node sync`.
pub fn node(ctx: &Ctx, c: NodeCommand) -> ExitCode {
    let NodeCommand::Sync(a) = c;
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let cp = fleet.settings.control_plane.clone();
    let pw = match password(
        ctx,
        &a.conn,
        &SecretId::new(cp.clone(), SecretKind::NatsPassword),
        cp.as_str(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let url = url(&fleet, &a.conn);
    let timeout = Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds));
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let client = d::connect(&url, &cp, &pw, timeout).await?;
        let js = async_nats::jetstream::new(client);
        registry::sync(&js, &fleet).await
    });
    match result {
        Ok(report) => {
            if a.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => return fail(e),
                }
            } else {
                for l in &report.lines {
                    println!("{l}");
                }
                if !report.changed() {
                    println!("{}: nothing changed", bus::NODES_BUCKET);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `fleetnix router`: runs until SIGINT/SIGTERM.
pub fn router(ctx: &Ctx, a: RouterArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let cp = fleet.settings.control_plane.clone();
    let pw = match password(
        ctx,
        &a.conn,
        &SecretId::new(cp, SecretKind::NatsRouterPassword),
        bus::ROUTER_USER,
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut config = RouterConfig::for_fleet(&fleet);
    if let Some(t) = a.node_timeout {
        config = RouterConfig::new(config.strategy, config.retry, t);
    }
    let alerter = if fleet.settings.failure.alert_on_node_down {
        match Ntfy::for_fleet(&fleet, Duration::from_secs(10)) {
            Ok(n) => Some(Alerter::new(n)),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    let url = url(&fleet, &a.conn);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `fleetnix nats-conf`: the control plane's nats-server configuration (no secret in it).
pub fn nats_conf(ctx: &Ctx, a: NatsConfArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let mut plan = match bus::server_plan(&fleet) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Some(l) = a.listen {
        plan = plan.with_listen(l.ip(), l.port());
    }
    if let Some(dir) = a.store_dir {
        plan = plan.with_store_dir(dir);
    }
    print!("{}", plan.to_conf());
    ExitCode::SUCCESS
}

fn print_reply(reply: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let ok = out.write_all(reply).and_then(|()| {
        if reply.ends_with(b"\n") {
            Ok(())
        } else {
            out.write_all(b"\n")
        }
    });
    match ok {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `fleetnix dispatch`: prints the reply on stdout, the responder and attempts on stderr.
pub fn dispatch(ctx: &Ctx, a: DispatchArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let (role, nodes) = match bus::role_nodes(&fleet, &a.role) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    if let Some(m) = &a.model {
        if let Err(e) = fleetnix::model::check_model(m) {
            return fail(format_args!("--model: {e}"));
        }
    }
    let payload = match d::parse_payload(&a.payload) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let user_name = a
        .user
        .clone()
        .unwrap_or_else(|| fleet.settings.control_plane.to_string());
    let Some(user) = fleet.node(&user_name).map(|n| n.name.clone()) else {
        return fail(bus::BusError::UnknownNode(user_name));
    };
    let pw = match password(
        ctx,
        &a.conn,
        &SecretId::new(user.clone(), SecretKind::NatsPassword),
        user.as_str(),
    ) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let url = url(&fleet, &a.conn);
    let node_timeout = Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds));
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    if a.direct {
        // Failover order under the fleet's strategy (round robin continues where `route` left off).
        let router =
            fleetnix::route::Router::new(&fleet).with_state_dir(ctx.root.join(".fleetnix"));
        let candidates = match router.route_with(role.as_str(), |_| None) {
            Ok(r) => r.order,
            Err(e) => return fail(e),
        };
        let policy = d::Policy {
            attempt_timeout: a.timeout.unwrap_or(node_timeout),
            retry: fleet.settings.failure.retry_on_node_failure,
            candidates,
        };
        let result = rt.block_on(async {
            let client = d::connect(&url, &user, &pw, policy.attempt_timeout).await?;
            d::dispatch(&client, &role, payload, &policy).await
        });
        return match result {
            Ok(done) => {
                if ctx.verbose > 0 || done.attempts.len() > 1 {
                    for at in &done.attempts {
                        eprintln!("attempt: {at}");
                    }
                }
                eprintln!(
                    "task {} answered by {} ({} attempt(s))",
                    done.task_id,
                    done.responder,
                    done.attempts.len()
                );
                print_reply(&done.reply)
            }
            Err(e) => fail(e),
        };
    }
    // Through the router: it may try every node of the role, each for one node timeout.
    let wait = a
        .timeout
        .unwrap_or(node_timeout * (u32::try_from(nodes.len()).unwrap_or(u32::MAX - 1) + 1));
    let result = rt.block_on(async {
        let client = d::connect(&url, &user, &pw, node_timeout)
            .await
            .map_err(router::RouterError::from)?;
        router::ask(&client, &role, payload, a.model.as_deref(), wait).await
    });
    match result {
        Ok(Answer::Done {
            payload,
            node,
            claimed,
            attempts,
            task_id,
        }) => {
            eprintln!(
                "task {task_id} answered by {node} ({attempts} attempt(s), through the router)"
            );
            if let Some(c) = claimed {
                eprintln!("warning: the worker on {node} claimed to be {c:?}");
            }
            print_reply(&payload)
        }
        Ok(Answer::Failed(e)) => fail(format_args!("router: {} ({})", e.error, e.code)),
        Err(e) => fail(e),
    }
}
