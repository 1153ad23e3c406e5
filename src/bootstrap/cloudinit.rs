//! `#cloud-config` user-data that makes a fresh cloud VM a fleet node on first boot.
//!
//! The VM, on first boot:
//! 1. writes the node's Tailscale auth key to
//!    [`AUTHKEY_PATH`](crate::outputs::cloudinit::AUTHKEY_PATH) (tmpfs, mode 0600);
//! 2. downloads Tailscale's install script to a file and runs it (no `curl | sh`: a failed
//!    download must not run half a script);
//! 3. runs `tailscale up --auth-key=file:<path>` with the node's flags from the plan, so the
//!    key is never in a command line;
//! 4. deletes the key file (runcmd goes on after a failed step, so this always runs);
//! 5. optionally installs and enables the agent's systemd unit.
//!
//! The user-data is rendered by [`crate::outputs::cloudinit`]; this module holds the auth key it
//! carries, where that key comes from, and the whole of `fleetnix cloud-init` ([`make`]).

use crate::model::{Fleet, Node, Os};
use crate::outputs::cloudinit::{self as output, AuthKey, UserDataError};
use crate::secrets::source::{KeyContext, KeyError, KeySource, Minter};
use crate::secrets::{SecretId, SecretKind};
use crate::tailscale::api::{ApiError, Client};
use std::path::{Path, PathBuf};

/// Errors of building user-data. None of them contains the auth key.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// The user-data could not be rendered (the key, the install URL or the agent's unit).
    #[error(transparent)]
    UserData(#[from] UserDataError),
    /// No source of the auth key applies.
    #[error("no Tailscale auth key for {node}: set TAILSCALE_AUTHKEY, pipe the key on stdin, pass --identity FILE to decrypt {file} (written by `fleetnix secrets set-authkey {node}` or `fleetnix authkey mint {node}`), or --mint with TS_API_KEY set")]
    NoAuthKey {
        /// The node.
        node: String,
        /// Its auth-key secret, relative to the repository root.
        file: String,
    },
    /// The auth key could not be read, decrypted or minted.
    #[error(transparent)]
    Key(Box<KeyError>),
    /// The credential is of the wrong kind for the fleet (`tailscale_auth`).
    #[error("the Tailscale credential for {node} {reason}")]
    Credential {
        /// The node.
        node: String,
        /// What is wrong (never the credential).
        reason: crate::model::CredentialError,
    },
    /// The Tailscale API client (for `--mint`) could not be made.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The user-data file could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The user-data could not be written to the stream (standard output).
    #[error(transparent)]
    Stream(std::io::Error),
}

impl From<KeyError> for CloudInitError {
    fn from(e: KeyError) -> Self {
        CloudInitError::Key(Box::new(e))
    }
}

/// What [`key_source`] decides from.
#[derive(Debug, Clone, Default)]
pub struct KeyInputs<'a> {
    /// The node (for the error message).
    pub node: &'a str,
    /// `--mint` was given.
    pub mint: bool,
    /// `--identity FILE`, if given.
    pub identity: Option<&'a Path>,
    /// The identity used when none is given (`~/.ssh/id_ed25519`), if known.
    pub default_identity: Option<&'a Path>,
    /// `TAILSCALE_AUTHKEY` is set.
    pub env_set: bool,
    /// Standard input is a terminal (nothing piped).
    pub stdin_is_terminal: bool,
    /// The node's auth-key secret, relative to the repository root.
    pub secret_file: &'a str,
    /// That file exists.
    pub secret_exists: bool,
}

/// Picks the auth key's source. Explicit choices first: `--mint`, then `--identity` (the
/// `.age` file); then `TAILSCALE_AUTHKEY`; then piped stdin; then, on a terminal, the node's
/// `.age` file with the default identity if the file exists.
pub fn key_source(i: &KeyInputs<'_>) -> Result<KeySource, CloudInitError> {
    crate::secrets::source::KeyChoice {
        mint: i.mint,
        identity: i.identity,
        default_identity: i.default_identity,
        env_set: i.env_set,
        stdin_is_terminal: i.stdin_is_terminal,
        secret_exists: i.secret_exists,
    }
    .pick()
    .ok_or_else(|| CloudInitError::NoAuthKey {
        node: i.node.to_string(),
        file: i.secret_file.to_string(),
    })
}

/// What `fleetnix cloud-init` is asked for, besides the node: where its auth key may come from
/// (the flags and the caller's situation) and what the user-data holds.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The repository root (the node's `.age` file is under it).
    pub root: &'a Path,
    /// `--mint`: a one-off key through the Tailscale API.
    pub mint: bool,
    /// `--identity FILE`, if given.
    pub identity: Option<&'a Path>,
    /// The identity tried when none is given (`~/.ssh/id_ed25519`), if known.
    pub default_identity: Option<&'a Path>,
    /// `TAILSCALE_AUTHKEY` is set.
    pub env_set: bool,
    /// Standard input is a terminal (nothing piped).
    pub stdin_is_terminal: bool,
    /// Lifetime of a minted key, in seconds.
    pub expiry_seconds: u64,
    /// The user-data's options.
    pub options: output::Options,
}

/// Where the user-data goes.
pub enum Destination<'a> {
    /// A file, written atomically with mode 0600 (it holds the auth key).
    File(&'a Path),
    /// A stream, such as standard output.
    Stream(&'a mut dyn std::io::Write),
}

/// `fleetnix cloud-init NODE`: picks where `node`'s auth key comes from ([`key_source`]), gets
/// it (minting through the client `api` makes, which is asked for only when minting), renders
/// the user-data and writes it to `to`. `note` hears what the operator should be told, as it
/// happens: where the key came from (minted, decrypted), then, once written, that the user-data
/// holds the key and, for an `os: nixos` node, that it is for a non-NixOS image. Nothing is
/// written when anything fails.
pub async fn make(
    fleet: &Fleet,
    node: &Node,
    req: &Request<'_>,
    api: impl FnOnce() -> Result<Client, ApiError>,
    to: Destination<'_>,
    note: &mut dyn FnMut(String),
) -> Result<(), CloudInitError> {
    let plan = crate::spec::node_spec(fleet, node);
    let id = SecretId::new(node.name.clone(), SecretKind::TailscaleAuthkey);
    let secret_file = id.age_path();
    let source = key_source(&KeyInputs {
        node: node.name.as_str(),
        mint: req.mint,
        identity: req.identity,
        default_identity: req.default_identity,
        env_set: req.env_set,
        stdin_is_terminal: req.stdin_is_terminal,
        secret_file: &secret_file,
        secret_exists: req.root.join(&secret_file).is_file(),
    })?;
    let client = match source {
        KeySource::Mint => Some(api()?),
        _ => None,
    };
    let cx = KeyContext {
        mint: client.as_ref().map(|client| Minter {
            client,
            fleet,
            expiry_seconds: req.expiry_seconds,
        }),
        ..KeyContext::new(&id, req.root)
    };
    let resolved = source.resolve(&cx).await?;
    match (&source, &resolved.minted) {
        (_, Some(k)) => note(format!(
            "minted auth key {} for {} (one-off, pre-authorised, expires {}); it is only in this user-data",
            k.id,
            plan.name,
            k.expires.as_deref().unwrap_or("as requested")
        )),
        (KeySource::Decrypt(identity), None) => note(format!(
            "auth key from {secret_file} (decrypted with {})",
            identity.display()
        )),
        _ => {}
    }
    // The fleet's enrolment kind: a client secret gets ?ephemeral=false&preauthorized=true.
    let up_key =
        plan.enrolment_key(&resolved.key)
            .map_err(|reason| CloudInitError::Credential {
                node: plan.name.to_string(),
                reason,
            })?;
    drop(resolved);
    let key = AuthKey::parse(up_key.expose())?;
    drop(up_key);
    let text = output::user_data(&plan, &key, &req.options)?;
    let file = match to {
        Destination::File(path) => {
            crate::fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| {
                CloudInitError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            Some(path)
        }
        Destination::Stream(w) => {
            w.write_all(text.as_bytes())
                .map_err(CloudInitError::Stream)?;
            None
        }
    };
    note(format!(
        "this user-data contains {}'s Tailscale auth key, its only secret{}; the VM deletes the key file after `tailscale up`, but the provider keeps the user-data: prefer a single-use key with a short expiry",
        plan.name,
        file.map(|p| format!(" ({} is mode 0600)", p.display()))
            .unwrap_or_default()
    ));
    if plan.access.os == Os::Nixos {
        note(format!(
            "{} is declared os: nixos; this user-data is for the provider's non-NixOS image (Tailscale's install script refuses NixOS)",
            plan.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_source_prefers_explicit_choices() {
        let id = Path::new("/k/op");
        let def = Path::new("/home/.ssh/id_ed25519");
        let base = KeyInputs {
            node: "worker-03",
            default_identity: Some(def),
            secret_file: "secrets/worker-03/tailscale-authkey.age",
            stdin_is_terminal: true,
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut KeyInputs)| {
            let mut i = base.clone();
            f(&mut i);
            key_source(&i)
        };
        assert_eq!(
            with(&|i| {
                i.mint = true;
                i.env_set = true;
                i.identity = Some(id);
            })
            .unwrap(),
            KeySource::Mint
        );
        assert_eq!(
            with(&|i| {
                i.identity = Some(id);
                i.env_set = true;
            })
            .unwrap(),
            KeySource::Decrypt(id.into())
        );
        assert_eq!(
            with(&|i| {
                i.env_set = true;
                i.secret_exists = true;
            })
            .unwrap(),
            KeySource::Env
        );
        assert_eq!(
            with(&|i| {
                i.stdin_is_terminal = false;
                i.secret_exists = true;
            })
            .unwrap(),
            KeySource::Stdin
        );
        assert_eq!(
            with(&|i| i.secret_exists = true).unwrap(),
            KeySource::Decrypt(def.into())
        );
        let e = with(&|_| {}).unwrap_err().to_string();
        assert!(
            e.contains("worker-03") && e.contains("--identity") && e.contains("--mint"),
            "{e}"
        );
    }
}
