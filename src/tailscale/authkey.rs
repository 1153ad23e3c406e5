//! A node's Tailscale auth key: minting a one-off key through the API ([`mint_authkey`], which
//! `secrets::source::KeySource::Mint` resolves with). Minting straight into the node's age secret
//! (`fleetnix authkey mint NODE`) is `secrets::mint::mint_and_store`: this module knows the API,
//! not the secrets store.
//!
//! The key stays a [`Secret`](crate::secret::Secret) in memory: it only ever leaves as age ciphertext, on a child's
//! stdin or in the user-data the operator asked for; never in argv, logs or errors.

use crate::model::{Fleet, Node};
use crate::tailscale::api::{ApiError, AuthKey, AuthKeyRequest, Client};

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
    if fleet.settings.tailscale_auth == crate::model::TailscaleAuth::OauthClient {
        return Err(ApiError::NotAsked(format!(
            "fleet.yml says `tailscale_auth: oauth-client`: {} enrols with the fleet's OAuth client secret (`fleetnix secrets set-authkey {}`), which never expires, so no pre-auth key was minted",
            node.name, node.name
        )));
    }
    client
        .create_auth_key(&authkey_request(fleet, node, expiry_seconds))
        .await
}
