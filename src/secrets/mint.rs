//! `fleetnix authkey mint NODE`: a one-off auth key minted through the Tailscale API
//! ([`mint_authkey`]) and stored straight into the node's age secret. The key stays a
//! [`Secret`](crate::secret::Secret) in memory and leaves only as age ciphertext.

use super::error::SecretsError;
use super::{SecretId, SecretKind};
use crate::model::{Fleet, NodeName};
use crate::tailscale::api::{ApiError, Client};
use crate::tailscale::authkey::mint_authkey;
use std::path::Path;

/// Errors of [`mint_and_store`]. None contains the key.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The key could not be stored, and so none was minted (checked before asking the API).
    #[error("{0}; no auth key was minted")]
    NotStorable(#[source] SecretsError),
    /// The API refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Minted, but writing the secret failed: the key is lost (never shown).
    #[error("auth key {id} was minted for {node} but could not be stored: {source}; it was not shown and expires {expires}: revoke it in the Tailscale admin console (Settings → Keys)")]
    Store {
        /// The node.
        node: String,
        /// The key's id (not secret).
        id: String,
        /// Its expiry as the server wrote it.
        expires: String,
        /// Why.
        #[source]
        source: SecretsError,
    },
}

/// What [`mint_and_store`] did.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The key's id (not secret; it names the key in the admin console).
    pub id: String,
    /// Its expiry as the server wrote it.
    pub expires: Option<String>,
    /// Tags every device enrolled with it gets.
    pub tags: Vec<String>,
    /// The secret written.
    pub report: super::Report,
}

/// Mints a one-off, pre-authorised, tagged auth key for `node` ([`mint_authkey`]) and encrypts it
/// to `secrets/<node>/tailscale-authkey.age` under `root` ([`super::set_authkey`]).
///
/// Whether it can be stored (node known, host key present, manifest keys valid) is checked
/// before the API is asked, so no key is minted that would be lost.
pub async fn mint_and_store(
    client: &Client,
    fleet: &Fleet,
    root: &Path,
    node: &NodeName,
    expiry_seconds: u64,
) -> Result<Minted, MintError> {
    let id = SecretId::new(node.clone(), SecretKind::TailscaleAuthkey);
    super::check_writable(fleet, root, &id).map_err(MintError::NotStorable)?;
    let n = fleet
        .node(node.as_str())
        .ok_or_else(|| MintError::NotStorable(unknown(node)))?;
    let key = mint_authkey(client, fleet, n, expiry_seconds).await?;
    let report = super::set_authkey(fleet, root, std::slice::from_ref(node), &key.key).map_err(
        |source| MintError::Store {
            node: node.to_string(),
            id: key.id.clone(),
            expires: key.expires.clone().unwrap_or_else(|| "soon".into()),
            source,
        },
    )?;
    Ok(Minted {
        id: key.id,
        expires: key.expires,
        tags: fleet.tags_of(n),
        report,
    })
}

/// Invariant: `check_writable` already found the node.
fn unknown(node: &NodeName) -> SecretsError {
    SecretsError::UnknownNode {
        name: node.to_string(),
        suggestion: None,
    }
}
