//! Where bootstrap gets the node's Tailscale auth key: `--authkey-file`, `TAILSCALE_AUTHKEY`,
//! the node's existing `.age` file (decrypted with `--identity`), or a key minted through the
//! Tailscale API. The key stays in memory ([`SecretString`]) and only ever leaves it as age
//! ciphertext or on SSH's stdin.

use crate::deploy::transport::Secret;
use crate::deploy::AuthKeySource;
use crate::model::NodeName;
use crate::plan::authkey_file;
use crate::secrets;
use secrecy::{ExposeSecret, SecretString};
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

impl KeySources {
    /// The key from `--authkey-file` or `TAILSCALE_AUTHKEY`, with where it came from.
    pub fn supplied(&self) -> Result<Option<(SecretString, String)>, String> {
        if let Some(f) = &self.file {
            let k = secrets::authkey_from_file(f).map_err(|e| e.to_string())?;
            return Ok(Some((k, f.display().to_string())));
        }
        if self.env {
            if let Some(k) =
                secrets::authkey_from_env(secrets::AUTHKEY_ENV).map_err(|e| e.to_string())?
            {
                return Ok(Some((k, format!("${}", secrets::AUTHKEY_ENV))));
            }
        }
        Ok(None)
    }

    /// The node's `.age` file decrypted with `--identity`, if one is given.
    pub fn decrypt(&self, root: &Path, node: &NodeName) -> Option<Result<SecretString, String>> {
        let id = self.identity.as_ref()?;
        Some(secrets::decrypt_authkey(root, node, id).map_err(|e| e.to_string()))
    }
}

/// The [`AuthKeySource`] handed to deploy's fallback installer: the key this run already holds
/// (supplied, decrypted or minted), else the `.age` file decrypted with `--identity`.
pub struct BootstrapKey {
    /// The key resolved earlier in this run, if any.
    pub key: Mutex<Option<SecretString>>,
    /// Repository root (for the `.age` file).
    pub root: PathBuf,
    /// Key sources for the fallback.
    pub sources: KeySources,
}

impl AuthKeySource for BootstrapKey {
    fn authkey(&self, node: &NodeName) -> Result<Secret, String> {
        // A poisoned lock only means another thread panicked while holding it; the value is intact.
        let held = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = held.as_ref() {
            return Ok(Secret::new(k.expose_secret()));
        }
        match self.sources.decrypt(&self.root, node) {
            Some(Ok(k)) => Ok(Secret::new(k.expose_secret())),
            Some(Err(e)) => Err(e),
            None => Err(format!(
                "no Tailscale auth key for `tailscale up`: {} exists, but bootstrap needs the key itself: pass --identity FILE (an operator key that can decrypt it), --authkey-file FILE or set {}",
                authkey_file(node),
                secrets::AUTHKEY_ENV
            )),
        }
    }

    fn describe(&self, node: &NodeName) -> String {
        format!("the auth key for {node} (bootstrap; never shown)")
    }
}
