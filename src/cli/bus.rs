//! What the NATS commands (`dispatch`, `node sync`, `router`) share: the connection arguments,
//! the URL and the password lookup.

use super::{CliError, Ctx};
use fleetnix::model::Fleet;
use fleetnix::secret::Secret;
use fleetnix::secrets::source::{KeyContext, KeyError, KeySource};
use fleetnix::secrets::SecretId;
use std::path::PathBuf;

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

/// The NATS URL: `--nats-url`, else the fleet's.
pub(super) fn url(fleet: &Fleet, conn: &Conn) -> String {
    conn.nats_url
        .clone()
        .unwrap_or_else(|| fleet.settings.nats_url.to_string())
}

/// The password of `who` (a node's, or the router's when `kind` says so): --password-file,
/// else `FLEETNIX_NATS_PASSWORD`, else the `.age` file decrypted with --identity.
pub(super) fn password(
    ctx: &Ctx,
    conn: &Conn,
    id: &SecretId,
    who: &str,
) -> Result<Secret, CliError> {
    let no_password = |e: &dyn std::fmt::Display| {
        CliError::msg(format_args!(
            "no NATS password for {who}: set {}, pass --password-file, or let --identity decrypt {} ({e})",
            fleetnix::secret::env::NATS_PASSWORD,
            id.file()
        ))
    };
    let source = if let Some(path) = &conn.password_file {
        KeySource::File(path.clone())
    } else if std::env::var(fleetnix::secret::env::NATS_PASSWORD).is_ok() {
        KeySource::Env
    } else {
        match fleetnix::secrets::identity_or_default(conn.identity.clone()) {
            Ok(identity) => KeySource::Decrypt(identity),
            Err(e) => return Err(no_password(&e)),
        }
    };
    match source.resolve_local(&KeyContext::new(id, &ctx.root)) {
        Ok(r) => Ok(r.key),
        Err(KeyError::Secrets(e)) if matches!(source, KeySource::Decrypt(_)) => {
            Err(no_password(&e))
        }
        Err(e) => Err(CliError::msg(e)),
    }
}

/// The password of the control plane's `_registry` user (`node sync`, `node drain`, deploy's
/// drain), found as [`password`] says.
pub(super) fn registry_password(ctx: &Ctx, fleet: &Fleet, conn: &Conn) -> Result<Secret, CliError> {
    service_password(ctx, fleet, conn, fleetnix::bus::users::Service::Registry)
}

/// The password of a control-plane service's user (`_observer`, `_registry`, …), found as
/// [`password`] says.
pub(super) fn service_password(
    ctx: &Ctx,
    fleet: &Fleet,
    conn: &Conn,
    service: fleetnix::bus::users::Service,
) -> Result<Secret, CliError> {
    password(
        ctx,
        conn,
        &SecretId::new(fleet.settings.control_plane.clone(), service.secret_kind()),
        service.user(),
    )
}
