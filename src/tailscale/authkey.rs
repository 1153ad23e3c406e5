//! A node's Tailscale auth key: minting a one-off key through the API ([`mint_authkey`], which
//! [`KeySource::Mint`](crate::secrets::source::KeySource::Mint) resolves with), and minting
//! straight into the node's age secret (`fleetnix authkey mint NODE`, [`mint_and_store`]). Where
//! a key comes from is [`crate::secrets::source::KeySource`].
//!
//! The key stays a [`Secret`](crate::secret::Secret) in memory: it only ever leaves as age ciphertext, on a child's
//! stdin or in the user-data the operator asked for; never in argv, logs or errors.

use crate::model::{Fleet, Node, NodeName};
use crate::secrets::{self, SecretId, SecretKind, SecretsError};
use crate::tailscale::api::{ApiError, AuthKey, AuthKeyRequest, Client};
use std::path::Path;

/// The variable holding a node's auth key (`TAILSCALE_AUTHKEY`), from [`crate::secret::env`].
pub const AUTHKEY_ENV: &str = crate::secret::env::AUTHKEY;

/// Default lifetime of a minted auth key: one hour.
pub const AUTHKEY_EXPIRY_SECONDS: u64 = 3600;

/// The auth-key request for `node`: one-off, pre-authorised, not ephemeral, tagged with the
/// node's tags, expiring after `expiry_seconds`.
pub fn authkey_request(fleet: &Fleet, node: &Node, expiry_seconds: u64) -> AuthKeyRequest {
    // Node names are hostname labels: letters, digits and hyphens, as descriptions allow.
    let mut description = format!("fleetnix {}", node.name);
    description.truncate(50);
    AuthKeyRequest {
        reusable: false,
        ephemeral: false,
        preauthorized: true,
        tags: fleet.tags_of(node),
        expiry_seconds,
        description,
    }
}

/// Mints a one-off auth key for `node`. The key is returned as a [`Secret`](crate::secret::Secret), to be handed to
/// the secrets module or a child's stdin; it is never printed.
pub async fn mint_authkey(
    client: &Client,
    fleet: &Fleet,
    node: &Node,
    expiry_seconds: u64,
) -> Result<AuthKey, ApiError> {
    client
        .create_auth_key(&authkey_request(fleet, node, expiry_seconds))
        .await
}

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
    pub report: secrets::Report,
}

/// Mints a one-off, pre-authorised, tagged auth key for `node` ([`mint_authkey`]) and encrypts it
/// to `secrets/<node>/tailscale-authkey.age` under `root` ([`secrets::set_authkey`]).
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
    secrets::check_writable(fleet, root, &id).map_err(MintError::NotStorable)?;
    let n = fleet
        .node(node.as_str())
        .ok_or_else(|| MintError::NotStorable(unknown(node)))?;
    let key = mint_authkey(client, fleet, n, expiry_seconds).await?;
    let report = secrets::set_authkey(fleet, root, std::slice::from_ref(node), &key.key).map_err(
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
