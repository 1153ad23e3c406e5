//! Tailscale credential kinds, told apart by prefix (`tskey-auth-`, `tskey-client-`,
//! `tskey-api-`), and how the fleet's nodes enrol (`tailscale_auth` in fleet.yml).
//!
//! Facts from the shared reference (tailscale-enrolment.md): a pre-auth key is used as is; an
//! OAuth client secret is accepted by `tailscale up` directly but enrols an **ephemeral**,
//! non-preauthorised node unless `?ephemeral=false&preauthorized=true` is appended, and needs
//! `--advertise-tags`; an API access token is no auth key at all.

use serde::Serialize;
use std::fmt;

/// What a `tskey-…` credential is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// `tskey-auth-…`: a pre-auth key (1–90 days, single-use or reusable).
    PreAuthKey,
    /// `tskey-client-…`: an OAuth client secret (never expires).
    OauthClientSecret,
    /// `tskey-api-…`: an API access token (not an auth key).
    ApiToken,
    /// Anything else.
    Unknown,
}

/// The prefix of pre-auth keys.
pub const PREAUTH_PREFIX: &str = "tskey-auth-";
/// The prefix of OAuth client secrets.
pub const OAUTH_CLIENT_PREFIX: &str = "tskey-client-";
/// The prefix of API access tokens.
pub const API_TOKEN_PREFIX: &str = "tskey-api-";

impl CredentialKind {
    /// The kind of `credential` (only its prefix is looked at).
    pub fn of(credential: &str) -> Self {
        let c = credential.trim_start();
        if c.starts_with(PREAUTH_PREFIX) {
            CredentialKind::PreAuthKey
        } else if c.starts_with(OAUTH_CLIENT_PREFIX) {
            CredentialKind::OauthClientSecret
        } else if c.starts_with(API_TOKEN_PREFIX) {
            CredentialKind::ApiToken
        } else {
            CredentialKind::Unknown
        }
    }

    /// Words for messages: `pre-auth key (tskey-auth-…)`, ….
    pub fn describe(self) -> &'static str {
        match self {
            CredentialKind::PreAuthKey => "pre-auth key (tskey-auth-…)",
            CredentialKind::OauthClientSecret => "OAuth client secret (tskey-client-…)",
            CredentialKind::ApiToken => "API access token (tskey-api-…)",
            CredentialKind::Unknown => "credential of unknown kind",
        }
    }

    /// Short name for tables and JSON: `pre-auth-key`, `oauth-client-secret`, `api-token`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::PreAuthKey => "pre-auth-key",
            CredentialKind::OauthClientSecret => "oauth-client-secret",
            CredentialKind::ApiToken => "api-token",
            CredentialKind::Unknown => "unknown",
        }
    }

    /// The id of a pre-auth key (`tskey-auth-<id>-<secret>` → `<id>`, e.g. `k123456CNTRL`), the
    /// name `GET /tailnet/-/keys/{id}` knows it by. Not secret. `None` for other kinds.
    pub fn preauth_key_id(credential: &str) -> Option<&str> {
        let rest = credential.trim().strip_prefix(PREAUTH_PREFIX)?;
        let (id, secret) = rest.split_once('-')?;
        let ok = !id.is_empty()
            && !secret.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric());
        ok.then_some(id)
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a credential cannot be a node's enrolment key. Never contains the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// An API token where an auth key belongs.
    #[error("is an API access token (tskey-api-…), not an auth key: give the token as TS_API_KEY or --token-file (then `fleetnix authkey mint NODE` stores a one-off pre-auth key), or create a pre-auth key (tskey-auth-…) in the admin console (Settings → Keys)")]
    ApiToken,
    /// Not a known kind.
    #[error(
        "is neither a pre-auth key (tskey-auth-…) nor an OAuth client secret (tskey-client-…)"
    )]
    Unknown,
    /// A client secret that carries its own `?…` parameters.
    #[error("is an OAuth client secret with `?…` parameters: store the secret alone; fleetnix appends ?ephemeral=false&preauthorized=true itself")]
    OauthParameters,
    /// An OAuth client secret in a fleet that enrols with pre-auth keys.
    #[error("is an OAuth client secret (tskey-client-…), but fleet.yml says `tailscale_auth: preauth`: a node enrolled with it would be ephemeral (removed once offline); set `tailscale_auth: oauth-client` in fleet.yml (then fleetnix enrols with ephemeral=false, preauthorized=true and --advertise-tags), or use a pre-auth key (tskey-auth-…)")]
    OauthInPreauthFleet,
    /// An OAuth enrolment of a node without tags.
    #[error("cannot enrol a node without tags: OAuth client secrets need --advertise-tags (give the node a role with a tag, or set default_tag in services.yml)")]
    Untagged,
    /// A pre-auth key in a fleet that enrols with OAuth client secrets.
    #[error("is a pre-auth key (tskey-auth-…), but fleet.yml says `tailscale_auth: oauth-client`: give the OAuth client secret (tskey-client-…), or set `tailscale_auth: preauth`")]
    PreauthInOauthFleet,
}

/// Checks that `credential` may be an auth key at all (a pre-auth key or an OAuth client secret
/// without parameters) and returns its kind.
pub fn enrolment_kind(credential: &str) -> Result<CredentialKind, CredentialError> {
    match CredentialKind::of(credential) {
        CredentialKind::ApiToken => Err(CredentialError::ApiToken),
        CredentialKind::Unknown => Err(CredentialError::Unknown),
        CredentialKind::OauthClientSecret if credential.contains('?') => {
            Err(CredentialError::OauthParameters)
        }
        k => Ok(k),
    }
}

/// How the fleet's nodes enrol (`tailscale_auth` in fleet.yml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TailscaleAuth {
    /// Pre-auth keys (`tskey-auth-…`), the default.
    #[default]
    Preauth,
    /// An OAuth client secret (`tskey-client-…`) with `ephemeral=false&preauthorized=true` and
    /// `--advertise-tags`.
    OauthClient,
}

/// The parameters appended to an OAuth client secret: never ephemeral, pre-authorised.
pub const OAUTH_KEY_PARAMETERS: &str = "?ephemeral=false&preauthorized=true";

impl TailscaleAuth {
    /// The values fleet.yml accepts.
    pub const NAMES: [&'static str; 2] = ["preauth", "oauth-client"];

    /// Parses `preauth` / `oauth-client`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "preauth" => Some(TailscaleAuth::Preauth),
            "oauth-client" => Some(TailscaleAuth::OauthClient),
            _ => None,
        }
    }

    /// The fleet.yml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TailscaleAuth::Preauth => "preauth",
            TailscaleAuth::OauthClient => "oauth-client",
        }
    }

    /// Is it the default (`preauth`)? (Serialization skips the default, so outputs of fleets
    /// that do not set it stay as they were.)
    pub fn is_default(&self) -> bool {
        *self == TailscaleAuth::Preauth
    }

    /// Checks a node's enrolment credential against this mode and returns its kind.
    pub fn check(self, credential: &str) -> Result<CredentialKind, CredentialError> {
        let kind = enrolment_kind(credential)?;
        match (self, kind) {
            (TailscaleAuth::Preauth, CredentialKind::OauthClientSecret) => {
                Err(CredentialError::OauthInPreauthFleet)
            }
            (TailscaleAuth::OauthClient, CredentialKind::PreAuthKey) => {
                Err(CredentialError::PreauthInOauthFleet)
            }
            _ => Ok(kind),
        }
    }

    /// What `tailscale up --auth-key` gets for a stored `credential` (already [`Self::check`]ed):
    /// the pre-auth key as is, the OAuth client secret with [`OAUTH_KEY_PARAMETERS`].
    pub fn up_key(self, credential: &str) -> String {
        match self {
            TailscaleAuth::Preauth => credential.to_string(),
            TailscaleAuth::OauthClient => format!("{credential}{OAUTH_KEY_PARAMETERS}"),
        }
    }
}

impl fmt::Display for TailscaleAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(prefix: &str) -> String {
        format!("{prefix}{}", "kFAKE1CNTRL-FAKEFAKE")
    }

    #[test]
    fn kinds_by_prefix() {
        assert_eq!(
            CredentialKind::of(&k(PREAUTH_PREFIX)),
            CredentialKind::PreAuthKey
        );
        assert_eq!(
            CredentialKind::of(&k(OAUTH_CLIENT_PREFIX)),
            CredentialKind::OauthClientSecret
        );
        assert_eq!(
            CredentialKind::of(&k(API_TOKEN_PREFIX)),
            CredentialKind::ApiToken
        );
        assert_eq!(CredentialKind::of("tskey-kFAKE"), CredentialKind::Unknown);
        assert_eq!(
            CredentialKind::preauth_key_id(&k(PREAUTH_PREFIX)),
            Some("kFAKE1CNTRL")
        );
        assert_eq!(
            CredentialKind::preauth_key_id(&k(OAUTH_CLIENT_PREFIX)),
            None
        );
    }

    #[test]
    fn api_tokens_are_refused_with_what_to_use() {
        let e = enrolment_kind(&k(API_TOKEN_PREFIX))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TS_API_KEY") && e.contains("authkey mint"),
            "{e}"
        );
        assert!(!e.contains("FAKEFAKE"), "{e}");
    }

    #[test]
    fn modes_refuse_the_other_kind() {
        let client = k(OAUTH_CLIENT_PREFIX);
        assert_eq!(
            TailscaleAuth::Preauth.check(&client),
            Err(CredentialError::OauthInPreauthFleet)
        );
        assert_eq!(
            TailscaleAuth::OauthClient.check(&client),
            Ok(CredentialKind::OauthClientSecret)
        );
        assert_eq!(
            TailscaleAuth::OauthClient.check(&k(PREAUTH_PREFIX)),
            Err(CredentialError::PreauthInOauthFleet)
        );
        assert_eq!(
            TailscaleAuth::OauthClient.check(&format!("{client}?ephemeral=true")),
            Err(CredentialError::OauthParameters)
        );
        assert_eq!(
            TailscaleAuth::OauthClient.up_key(&client),
            format!("{client}?ephemeral=false&preauthorized=true")
        );
        assert_eq!(TailscaleAuth::Preauth.up_key(&client), client);
    }
}
