//! Where a secret comes from when fleetnix needs its plaintext: one [`KeySource`] (a file, an
//! environment variable, standard input, the `.age` file decrypted with an identity, or a key
//! minted through the Tailscale API) with one [`KeySource::resolve`], used by deploy, bootstrap,
//! cloud-init, `secrets set-authkey` and the bus commands (`dispatch`, `node sync`).
//!
//! Which secret is in [`KeyContext::id`]: a node's Tailscale auth key (checked with
//! [`super::parse_authkey`]) or a NATS password (text, trailing newline dropped). The value is a
//! [`Secret`] from the moment it is read; errors name where it came from, never the value.

use super::error::SecretsError;
use super::{SecretId, SecretKind};
use crate::model::Fleet;
use crate::secret::{env, Secret};
use crate::tailscale::api::{ApiError, Client};
use std::path::{Path, PathBuf};

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding it (`--authkey-file`, `--from-file`, `--password-file`).
    File(PathBuf),
    /// Its environment variable ([`env_var`]: `TAILSCALE_AUTHKEY`, `FLEETNIX_NATS_PASSWORD`).
    Env,
    /// Standard input: piped, or typed at a hidden prompt on a terminal.
    Stdin,
    /// Its `.age` file (`secrets/<node>/<name>.age`), decrypted with this identity (an
    /// operator's SSH or age private key).
    Decrypt(PathBuf),
    /// A one-off, pre-authorised, tagged auth key minted through the Tailscale API (auth keys
    /// only).
    Mint,
}

/// The environment variable a secret of `kind` is read from ([`KeySource::Env`]): the auth
/// key's `TAILSCALE_AUTHKEY`, the NATS passwords' `FLEETNIX_NATS_PASSWORD`; `None` for the
/// server environment file.
pub fn env_var(kind: SecretKind) -> Option<&'static str> {
    match kind {
        SecretKind::TailscaleAuthkey => Some(env::AUTHKEY),
        SecretKind::NatsPassword
        | SecretKind::NatsRouterPassword
        | SecretKind::NatsSupervisorPassword
        | SecretKind::NatsRegistryPassword
        | SecretKind::NatsObserverPassword => Some(env::NATS_PASSWORD),
        SecretKind::NatsServerEnv => None,
    }
}

/// What [`KeySource::resolve`] needs besides the source.
#[derive(Clone, Copy)]
pub struct KeyContext<'a> {
    /// Which secret (whose, and which kind).
    pub id: &'a SecretId,
    /// Repository root (for the `.age` file).
    pub root: &'a Path,
    /// The API client and key lifetime, for [`KeySource::Mint`].
    pub mint: Option<Minter<'a>>,
}

impl<'a> KeyContext<'a> {
    /// The context for `id` under `root`, without an API client.
    pub fn new(id: &'a SecretId, root: &'a Path) -> Self {
        KeyContext {
            id,
            root,
            mint: None,
        }
    }
}

/// How [`KeySource::Mint`] mints: through `client`, for a node of `fleet`.
#[derive(Clone, Copy)]
pub struct Minter<'a> {
    /// The Tailscale API client.
    pub client: &'a Client,
    /// The fleet (the node's tags).
    pub fleet: &'a Fleet,
    /// Lifetime of the minted key.
    pub expiry_seconds: u64,
}

/// A resolved secret and where it came from.
#[derive(Debug)]
pub struct ResolvedKey {
    /// The value (an auth key trimmed, one line, non-empty; a password without its newline).
    pub key: Secret,
    /// Where it came from, for messages (`$TAILSCALE_AUTHKEY`, a file name, …); never the value.
    pub origin: String,
    /// For a minted key: its id and expiry (not secret).
    pub minted: Option<MintedKey>,
}

/// The public facts of a minted key.
#[derive(Debug, Clone)]
pub struct MintedKey {
    /// The key's id (names it in the admin console).
    pub id: String,
    /// Its expiry as the server wrote it.
    pub expires: Option<String>,
}

/// Errors of [`KeySource::resolve`] and of deploy's key providers. None contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading, decrypting or checking the secret failed.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Minting through the API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// [`KeySource::Env`] but the variable is not set.
    #[error("${0} is not set")]
    EnvUnset(&'static str),
    /// [`KeySource::Env`] for a secret that is never read from the environment.
    #[error("the {0} is never read from the environment")]
    NoEnvVar(&'static str),
    /// A password file could not be read.
    #[error("{origin}: {source}")]
    ReadFile {
        /// The file.
        origin: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or decrypted secret that is not UTF-8 text.
    #[error("{0} does not hold a text password")]
    NotText(String),
    /// [`KeySource::Mint`] without an API client, for a secret that is not an auth key, or
    /// through [`KeySource::resolve_local`].
    #[error(
        "minting an auth key needs the Tailscale API: set {} or pass --token-file FILE",
        crate::tailscale::api::TOKEN_ENV
    )]
    NoApi,
    /// [`KeySource::Mint`] for a node the fleet does not have.
    #[error("unknown node `{0}`")]
    UnknownNode(String),
    /// Deploy without an identity: `TAILSCALE_AUTHKEY` is not set.
    #[error(
        "no Tailscale auth key: set {} (or store one with `fleetnix secrets set-authkey`)",
        env::AUTHKEY
    )]
    NoEnvKey,
    /// Deploy: no auth key in the environment and the node's `.age` file could not be decrypted.
    #[error("no Tailscale auth key (${var} is not set): {source}", var = env::AUTHKEY)]
    NotInEnv {
        /// Why the `.age` file gave none.
        #[source]
        source: SecretsError,
    },
    /// Bootstrap's installer: the key is only in the `.age` file and no identity was given.
    #[error("no Tailscale auth key for `tailscale up`: {file} exists, but bootstrap needs the key itself: pass --identity FILE (an operator key that can decrypt it), --authkey-file FILE or set {}", env::AUTHKEY)]
    NeedsIdentity {
        /// The node's `.age` file, relative to the repository root.
        file: String,
    },
}

/// Deploy's step failures carry their reason as text.
impl From<KeyError> for String {
    fn from(e: KeyError) -> String {
        e.to_string()
    }
}

impl KeySource {
    /// The secret from this source. Auth keys are checked like every other
    /// ([`super::parse_authkey`]: trimmed, non-empty, one line, not too long); passwords lose
    /// their trailing newline.
    pub async fn resolve(&self, cx: &KeyContext<'_>) -> Result<ResolvedKey, KeyError> {
        let KeySource::Mint = self else {
            return self.resolve_local(cx);
        };
        let m = match (cx.mint, cx.id.kind) {
            (Some(m), SecretKind::TailscaleAuthkey) => m,
            _ => return Err(KeyError::NoApi),
        };
        let node = m
            .fleet
            .node(cx.id.node.as_str())
            .ok_or_else(|| KeyError::UnknownNode(cx.id.node.to_string()))?;
        let k = crate::tailscale::authkey::mint_authkey(m.client, m.fleet, node, m.expiry_seconds)
            .await?;
        Ok(ResolvedKey {
            key: k.key,
            origin: format!(
                "a one-off auth key minted through the API (id {}, expires in {}s)",
                k.id, m.expiry_seconds
            ),
            minted: Some(MintedKey {
                id: k.id,
                expires: k.expires,
            }),
        })
    }

    /// [`KeySource::resolve`] for the sources that need no network, synchronously (deploy's
    /// key providers and the CLI's synchronous commands): [`KeySource::Mint`] is
    /// [`KeyError::NoApi`].
    pub fn resolve_local(&self, cx: &KeyContext<'_>) -> Result<ResolvedKey, KeyError> {
        let authkey = cx.id.kind == SecretKind::TailscaleAuthkey;
        let (key, origin) = match self {
            KeySource::File(f) => {
                let origin = f.display().to_string();
                let key = if authkey {
                    super::authkey_from_file(f)?
                } else {
                    let bytes = std::fs::read(f).map_err(|source| KeyError::ReadFile {
                        origin: origin.clone(),
                        source,
                    })?;
                    password(zeroize::Zeroizing::new(bytes).to_vec(), &origin)?
                };
                (key, origin)
            }
            KeySource::Env => {
                let var = env_var(cx.id.kind).ok_or(KeyError::NoEnvVar(cx.id.kind.describe()))?;
                let key = if authkey {
                    super::authkey_from_env(var)?
                } else {
                    std::env::var_os(var)
                        .map(|v| password(v.into_encoded_bytes(), &format!("${var}")))
                        .transpose()?
                };
                (key.ok_or(KeyError::EnvUnset(var))?, format!("${var}"))
            }
            KeySource::Stdin => (read_stdin()?, "standard input".to_string()),
            KeySource::Decrypt(identity) => {
                let file = cx.id.age_path();
                let key = if authkey {
                    super::decrypt_authkey(cx.root, &cx.id.node, identity)?
                } else {
                    let bytes = super::decrypt_secret(cx.root, cx.id, identity)?;
                    password(bytes.to_vec(), &file)?
                };
                (key, format!("{file} decrypted with {}", identity.display()))
            }
            KeySource::Mint => return Err(KeyError::NoApi),
        };
        Ok(ResolvedKey {
            key,
            origin,
            minted: None,
        })
    }
}

/// A password from its bytes: UTF-8 text, without a trailing newline. The buffer is zeroized.
fn password(bytes: Vec<u8>, origin: &str) -> Result<Secret, KeyError> {
    let bytes = zeroize::Zeroizing::new(bytes);
    let text = std::str::from_utf8(&bytes).map_err(|_| KeyError::NotText(origin.to_string()))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// An auth key from standard input: a hidden prompt on a terminal, else everything piped in.
fn read_stdin() -> Result<Secret, SecretsError> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let key =
            age::cli_common::read_secret("Tailscale auth key", "Auth key", None).map_err(|e| {
                SecretsError::ReadKey {
                    origin: "the terminal".into(),
                    error: std::io::Error::other(e.to_string()),
                }
            })?;
        // Re-check (trim, non-empty, one line) like every other source.
        use secrecy::ExposeSecret;
        return super::parse_authkey(key.expose_secret().as_bytes(), "the terminal");
    }
    super::read_authkey(std::io::stdin().lock(), "standard input")
}

/// `identity` if given (`--identity`), else [`crate::secret::default_identity`]
/// (`~/.ssh/id_ed25519`, `~` expanded from `$HOME`); an error naming `--identity` without `$HOME`.
pub fn identity_or_default(identity: Option<PathBuf>) -> Result<PathBuf, SecretsError> {
    identity
        .or_else(crate::secret::default_identity)
        .ok_or_else(|| SecretsError::IdentityInvalid {
            path: PathBuf::from("~/.ssh/id_ed25519"),
            reason: "$HOME is not set; pass --identity".into(),
        })
}

/// The source order of an auth key for a node (`cloud-init NODE`, deploy, bootstrap):
/// explicit choices first (`--mint`, then `--identity` for the `.age` file); then
/// `TAILSCALE_AUTHKEY`; then piped stdin; then, on a terminal, the `.age` file with the default
/// identity if the file exists. `None`: no source applies.
#[derive(Debug, Clone, Default)]
pub struct KeyChoice<'a> {
    /// `--mint`.
    pub mint: bool,
    /// `--identity`.
    pub identity: Option<&'a Path>,
    /// The identity used when none is given, if known ([`crate::secret::default_identity`]).
    pub default_identity: Option<&'a Path>,
    /// `TAILSCALE_AUTHKEY` is set.
    pub env_set: bool,
    /// Standard input is a terminal.
    pub stdin_is_terminal: bool,
    /// The node's `.age` file exists.
    pub secret_exists: bool,
}

impl KeyChoice<'_> {
    /// The source these inputs pick (see the type's documentation).
    pub fn pick(&self) -> Option<KeySource> {
        if self.mint {
            return Some(KeySource::Mint);
        }
        if let Some(id) = self.identity {
            return Some(KeySource::Decrypt(id.to_path_buf()));
        }
        if self.env_set {
            return Some(KeySource::Env);
        }
        if !self.stdin_is_terminal {
            return Some(KeySource::Stdin);
        }
        match self.default_identity {
            Some(id) if self.secret_exists => Some(KeySource::Decrypt(id.to_path_buf())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeName;

    #[test]
    fn passwords_are_text_without_their_newline() {
        assert_eq!(password(b"pw\r\n".to_vec(), "f").unwrap().expose(), "pw");
        let e = password(vec![0xff, 0xfe], "secrets/x.age")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "secrets/x.age does not hold a text password");
    }

    #[test]
    fn env_and_files_resolve_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeName::parse("worker-01").unwrap();
        let pw_id = SecretId::new(node.clone(), SecretKind::NatsPassword);
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret-pw\n").unwrap();
        let r = KeySource::File(f.clone())
            .resolve_local(&KeyContext::new(&pw_id, dir.path()))
            .unwrap();
        assert_eq!(r.key.expose(), "s3cret-pw");
        assert_eq!(r.origin, f.display().to_string());
        let key_id = SecretId::new(node, SecretKind::TailscaleAuthkey);
        std::fs::write(&f, "two words\n").unwrap();
        let e = KeySource::File(f)
            .resolve_local(&KeyContext::new(&key_id, dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("one key, on one line") && !e.contains("two words"),
            "{e}"
        );
        let e = KeySource::Mint
            .resolve_local(&KeyContext::new(&key_id, dir.path()))
            .unwrap_err();
        assert!(matches!(e, KeyError::NoApi), "{e}");
        let e = KeySource::Decrypt(dir.path().join("none"))
            .resolve_local(&KeyContext::new(&key_id, dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tailscale-authkey.age"), "{e}");
    }

    #[test]
    fn an_identity_given_wins_over_the_default() {
        let given = PathBuf::from("/k/op");
        assert_eq!(identity_or_default(Some(given.clone())).unwrap(), given);
        if let Some(def) = crate::secret::default_identity() {
            assert_eq!(identity_or_default(None).unwrap(), def);
            assert!(!def.to_string_lossy().contains('~'));
        }
    }
}
