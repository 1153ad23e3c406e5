//! `dispatch`: sends a task to a role over NATS (through the control plane's router, or
//! directly with `--direct`); the reply on stdout, who answered on stderr.

use super::bus::{password, url, Conn};
use super::{runtime, CliError, CmdResult, Ctx, Outcome};
use fleetnix::bus::router::{self, Answer};
use fleetnix::bus::users::Service;
use fleetnix::bus::{self, dispatch as d};
use fleetnix::secrets::{SecretId, SecretKind};
use std::io::Write;
use std::time::Duration;

/// Arguments of `dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The role whose nodes should run the task.
    #[arg(long)]
    pub role: String,
    /// The task, as JSON (sent unchanged).
    #[arg(
        long,
        required_unless_present = "payload_file",
        conflicts_with = "payload_file"
    )]
    pub payload: Option<String>,
    /// Read the task's JSON from FILE (`-`: standard input), for payloads too large for argv.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<std::path::PathBuf>,
    /// Prefer nodes that serve this model (ignored when none does).
    #[arg(long)]
    pub model: Option<String>,
    /// How long to wait: with the router, for its answer [default: node_timeout_seconds × (nodes
    /// of the role + 1)]; with --direct, per attempt [default: node_timeout_seconds].
    #[arg(long, value_parser = d::parse_timeout)]
    pub timeout: Option<Duration>,
    /// Bypass the router: publish to the role's queue group and fail over from this process
    /// (the answering node is then only as claimed by the worker). Only the router's user may
    /// publish tasks, so this connects as `_router` (its password:
    /// secrets/<control plane>/nats-router-password.age).
    #[arg(long)]
    pub direct: bool,
    /// NATS user: `_supervisor`, `_router` or a node name [default: `_supervisor`, the
    /// supervisors' user, which may only ask the router; `_router` with --direct].
    #[arg(long)]
    pub user: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

fn print_reply(reply: &[u8]) -> CmdResult {
    let mut out = std::io::stdout().lock();
    let ok = out.write_all(reply).and_then(|()| {
        if reply.ends_with(b"\n") {
            Ok(())
        } else {
            out.write_all(b"\n")
        }
    });
    ok.map_err(CliError::msg)?;
    Ok(Outcome::Ok)
}

/// `fleetnix dispatch`: prints the reply on stdout, the responder and attempts on stderr.
pub fn run(ctx: &Ctx, a: DispatchArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let (role, nodes) = bus::role_nodes(&fleet, &a.role).map_err(CliError::msg)?;
    if let Some(m) = &a.model {
        fleetnix::model::check_model(m).map_err(|e| CliError::msg(format_args!("--model: {e}")))?;
    }
    let text = match (&a.payload, &a.payload_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| CliError::msg(format_args!("--payload-file -: {e}")))?;
            s
        }
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| CliError::msg(format_args!("--payload-file {}: {e}", f.display())))?,
        // Invariant: clap requires one of them.
        (None, None) => return Err(CliError::msg("--payload or --payload-file is required")),
    };
    let payload = d::parse_payload(&text).map_err(CliError::msg)?;
    let default = if a.direct {
        Service::Router
    } else {
        Service::Supervisor
    };
    let user = a.user.clone().unwrap_or_else(|| default.user().to_string());
    let secret = match (Service::from_user(&user), fleet.node(&user)) {
        (Some(s), _) => SecretId::new(fleet.settings.control_plane.clone(), s.secret_kind()),
        (None, Some(n)) => SecretId::new(n.name.clone(), SecretKind::NatsPassword),
        (None, None) => return Err(CliError::msg(bus::BusError::UnknownNode(user))),
    };
    let pw = password(ctx, &a.conn, &secret, &user)?;
    let url = url(&fleet, &a.conn);
    let node_timeout = Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds));
    let rt = runtime()?;
    if a.direct {
        // Failover order under the fleet's strategy (round robin continues where `route` left off).
        let router =
            fleetnix::bus::route::Router::new(&fleet).with_state_dir(ctx.root.join(".fleetnix"));
        let candidates = router
            .route_with(role.as_str(), |_| None)
            .map_err(CliError::msg)?
            .order;
        let policy = d::Policy {
            attempt_timeout: a.timeout.unwrap_or(node_timeout),
            retry: fleet.settings.failure.retry_on_node_failure,
            candidates,
        };
        let result = rt.block_on(async {
            let client = d::connect_as(&url, &user, &pw, policy.attempt_timeout).await?;
            d::dispatch(&client, &role, payload, &policy).await
        });
        let done = result.map_err(CliError::msg)?;
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
        return print_reply(&done.reply);
    }
    // Through the router: it may try every node of the role, each for one node timeout.
    let wait = a
        .timeout
        .unwrap_or(node_timeout * (u32::try_from(nodes.len()).unwrap_or(u32::MAX - 1) + 1));
    let result = rt.block_on(async {
        let client = d::connect_as(&url, &user, &pw, node_timeout)
            .await
            .map_err(router::RouterError::from)?;
        router::ask(&client, &role, payload, a.model.as_deref(), wait).await
    });
    match result.map_err(CliError::msg)? {
        Answer::Done {
            payload,
            node,
            claimed,
            attempts,
            task_id,
        } => {
            eprintln!(
                "task {task_id} answered by {node} ({attempts} attempt(s), through the router)"
            );
            if let Some(c) = claimed {
                eprintln!("warning: the worker on {node} claimed to be {c:?}");
            }
            print_reply(&payload)
        }
        Answer::Failed(e) => Err(CliError::msg(format_args!(
            "router: {} ({})",
            e.error, e.code
        ))),
    }
}
