//! Where bootstrap gets the node's Tailscale auth key: `--authkey-file`, `TAILSCALE_AUTHKEY`,
//! the node's existing `.age` file (decrypted with `--identity`), or a key minted through the
//! Tailscale API — each a [`KeySource`] resolved the one way every command resolves it. The key
//! stays in memory ([`Secret`]) and only ever leaves it as age ciphertext or on SSH's stdin.

use crate::deploy::AuthKeySource;
use crate::model::NodeName;
use crate::secret::{env, Secret};
use crate::secrets::source::{KeyContext, KeyError, KeySource};
use crate::secrets::{SecretId, SecretKind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The operator-supplied key sources.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// `--authkey-file`: checked first.
    pub file: Option<PathBuf>,
    /// Read `TAILSCALE_AUTHKEY` (after the file).
    pub env: bool,
    /// `--identity`: decrypts the node's existing `.age` file when no key is supplied.
    pub identity: Option<PathBuf>,
}

fn authkey_id(node: &NodeName) -> SecretId {
    SecretId::new(node.clone(), SecretKind::TailscaleAuthkey)
}

impl KeySources {
    /// The sources of a supplied key, in order: `--authkey-file`, then `TAILSCALE_AUTHKEY` if
    /// it is set.
    pub fn supplied_sources(&self) -> Vec<KeySource> {
        let mut out: Vec<KeySource> = self.file.iter().cloned().map(KeySource::File).collect();
        if self.env && std::env::var_os(env::AUTHKEY).is_some() {
            out.push(KeySource::Env);
        }
        out
    }

    /// The key from `--authkey-file` or `TAILSCALE_AUTHKEY`, with where it came from.
    pub fn supplied(&self, node: &NodeName) -> Result<Option<(Secret, String)>, KeyError> {
        let Some(source) = self.supplied_sources().into_iter().next() else {
            return Ok(None);
        };
        let id = authkey_id(node);
        let r = source.resolve_local(&KeyContext::new(&id, Path::new(".")))?;
        Ok(Some((r.key, r.origin)))
    }

    /// The node's `.age` file decrypted with `--identity`, if one is given.
    pub fn decrypt(&self, root: &Path, node: &NodeName) -> Option<Result<Secret, KeyError>> {
        let identity = self.identity.clone()?;
        let id = authkey_id(node);
        Some(
            KeySource::Decrypt(identity)
                .resolve_local(&KeyContext::new(&id, root))
                .map(|r| r.key),
        )
    }
}

/// The [`AuthKeySource`] handed to deploy's fallback installer: the key this run already holds
/// (supplied, decrypted or minted), else the `.age` file decrypted with `--identity`.
pub struct BootstrapKey {
    /// The key resolved earlier in this run, if any.
    pub key: Mutex<Option<Secret>>,
    /// Repository root (for the `.age` file).
    pub root: PathBuf,
    /// Key sources for the fallback.
    pub sources: KeySources,
}

impl AuthKeySource for BootstrapKey {
    fn authkey(&self, node: &NodeName) -> Result<Secret, KeyError> {
        // A poisoned lock only means another thread panicked while holding it; the value is intact.
        let held = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = held.as_ref() {
            return Ok(k.clone());
        }
        match self.sources.decrypt(&self.root, node) {
            Some(r) => r,
            None => Err(KeyError::NeedsIdentity {
                file: authkey_id(node).age_path(),
            }),
        }
    }

    fn describe(&self, node: &NodeName) -> String {
        format!("the auth key for {node} (bootstrap; never shown)")
    }
}
