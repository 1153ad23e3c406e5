//! `status`, `health`, `route`, `dispatch`.

use super::Ctx;
use std::process::ExitCode;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Refresh continuously.
    #[arg(long)]
    pub watch: bool,
}

/// Arguments of `route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The role.
    pub role: String,
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
    /// How long one node gets to answer before failover, e.g. 5s or 500ms [default: node_timeout_seconds].
    #[arg(long, value_parser = fleetnix::bus::dispatch::parse_timeout)]
    pub timeout: Option<std::time::Duration>,
    /// NATS server URL [default: nats_url from fleet.yml]. Must not carry credentials.
    #[arg(long, env = "FLEETNIX_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS user (a node name) [default: the control plane, the only user allowed to dispatch].
    #[arg(long)]
    pub user: Option<String>,
    /// File holding the user's password (e.g. decrypted secrets/<node>/nats-password.age);
    /// otherwise the password is read from FLEETNIX_NATS_PASSWORD.
    #[arg(long)]
    pub password_file: Option<std::path::PathBuf>,
}

/// `fleetnix status`.
pub fn status(_ctx: &Ctx, _a: StatusArgs) -> ExitCode {
    super::not_yet("status")
}

/// `fleetnix health`.
pub fn health(_ctx: &Ctx, _a: HealthArgs) -> ExitCode {
    super::not_yet("health")
}

/// `fleetnix route`.
pub fn route(_ctx: &Ctx, _a: RouteArgs) -> ExitCode {
    super::not_yet("route")
}

/// `fleetnix dispatch`: prints the reply on stdout, attempts and the responder on stderr.
pub fn dispatch(ctx: &Ctx, a: DispatchArgs) -> ExitCode {
    use fleetnix::bus::{self, creds::Secret, dispatch as d};
    let fail = |msg: &dyn std::fmt::Display| {
        eprintln!("error: {msg}");
        ExitCode::from(1)
    };
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let (role, candidates) = match bus::role_nodes(&fleet, &a.role) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    let payload = match d::parse_payload(&a.payload) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let user_name = a
        .user
        .clone()
        .unwrap_or_else(|| fleet.settings.control_plane.to_string());
    let Some(user) = fleet.node(&user_name).map(|n| n.name.clone()) else {
        return fail(&bus::BusError::UnknownNode(user_name));
    };
    let password = match &a.password_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(s) => Secret::new(s.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => return fail(&format_args!("{}: {e}", path.display())),
        },
        None => match std::env::var("FLEETNIX_NATS_PASSWORD") {
            Ok(s) => Secret::new(s),
            Err(_) => {
                return fail(&format_args!(
                    "no NATS password for {user}: set FLEETNIX_NATS_PASSWORD or pass --password-file (the decrypted {})",
                    bus::creds::password_file(&user)
                ))
            }
        },
    };
    let url = a
        .nats_url
        .clone()
        .unwrap_or_else(|| fleet.settings.nats_url.clone());
    let policy = d::Policy {
        attempt_timeout: a
            .timeout
            .unwrap_or(std::time::Duration::from_secs(u64::from(
                fleet.settings.failure.node_timeout_seconds,
            ))),
        retry: fleet.settings.failure.retry_on_node_failure,
        candidates,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let result = runtime.block_on(async {
        let client = d::connect(&url, &user, &password, policy.attempt_timeout).await?;
        d::dispatch(&client, &role, payload, &policy).await
    });
    match result {
        Ok(done) => {
            if ctx.verbose > 0 || done.attempts.len() > 1 {
                for at in &done.attempts {
                    eprintln!("attempt: {at}");
                }
            }
            eprintln!(
                "task {} answered by {} ({} attempt(s))",
                done.task_id,
                done.responder.as_deref().unwrap_or("an unnamed node"),
                done.attempts.len()
            );
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let ok = out.write_all(&done.reply).and_then(|()| {
                if done.reply.ends_with(b"\n") {
                    Ok(())
                } else {
                    out.write_all(b"\n")
                }
            });
            match ok {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Err(e) => fail(&e),
    }
}
