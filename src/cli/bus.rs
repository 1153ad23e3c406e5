//! What the NATS commands (`dispatch`, `node sync`, `router`) share: the connection arguments,
//! the URL and the password lookup.

use super::{CliError, Ctx};
use fleetnix::bus::creds::Secret;
use fleetnix::model::Fleet;
use fleetnix::secrets::{decrypt_secret, SecretId};
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
