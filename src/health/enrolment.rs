//! `fleetnix status --enrolment`: could every node log in to the tailnet again today?
//!
//! An auth key is needed only to log in: at first enrolment, after the node's state is lost
//! (re-image, new disk), after a logout, or after its node key expired (shared reference
//! tailscale-enrolment.md). A pre-auth key lives at most 90 days and a single-use one is spent
//! once used, so a node whose stored key is dead and that must log in never comes back (NixOS's
//! autoconnect unit waits on it). Per node this reports the kind of credential in its secret
//! (decrypted with an operator identity when one is given; else `unknown`), for pre-auth keys
//! their expiry and validity from the API (`GET /tailnet/-/keys/{id}`), whether it is joined,
//! and its node key's expiry; it names every **stranded** node (not joined, or its node key
//! expires within a day, and its credential cannot log in) with the command that fixes it.
//!
//! [`gather`] collects the facts (secrets, API, `tailscale status`); [`assess`] is a pure
//! function of them.

use crate::model::{CredentialKind, Fleet, NodeName, TailscaleAuth};
use crate::tailscale::api::Client;
use crate::tailscale::devices::{ApiDevice, KeyInfo};
use crate::tailscale::{parse_time, TailscaleStatus};
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// How far ahead "today" looks for node keys: one expiring within this must log in today.
pub const HORIZON: Duration = Duration::from_secs(24 * 3600);

/// A pre-auth key expiring within this is treated as expired: the margin for the deploy that
/// brings it to the node (`fleetnix authkey mint`'s one-hour keys pass).
pub const KEY_MARGIN: Duration = Duration::from_secs(10 * 60);

/// What the node's `.age` secret holds, as far as can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No `secrets/<node>/tailscale-authkey.age`.
    Missing,
    /// It exists but was not (or could not be) decrypted.
    Unknown(String),
    /// Decrypted: its kind, and the key id of a pre-auth key.
    Known {
        /// The kind.
        kind: CredentialKind,
        /// `tskey-auth-<id>-…`'s id.
        key_id: Option<String>,
    },
}

/// What the API says about the stored pre-auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// Not asked (no API token, or not a pre-auth key).
    NotAsked,
    /// The key's metadata.
    Found(KeyInfo),
    /// 404: the server no longer knows it.
    Gone,
    /// The API failed (message names what to fix).
    Failed(String),
}

/// The node's device, as the API or `tailscale status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceFacts {
    /// Online (connected to the control server).
    pub online: bool,
    /// Node key expiry disabled (tagged devices by default).
    pub key_expiry_disabled: bool,
    /// Node key expiry (RFC 3339), when enabled and known.
    pub node_key_expires: Option<String>,
}

/// The facts about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node.
    pub node: NodeName,
    /// Its stored credential.
    pub stored: Stored,
    /// The API's word on it.
    pub key: KeyCheck,
    /// Its device, if the tailnet has one by its name.
    pub device: Option<DeviceFacts>,
}

/// Could the node log in with its stored credential today?
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", content = "why", rename_all = "snake_case")]
pub enum CanLogIn {
    /// Yes.
    Yes,
    /// No, because …
    No(String),
    /// Cannot tell, because …
    Unknown(String),
}

/// One node's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeEnrolment {
    /// The node.
    pub node: NodeName,
    /// `pre-auth-key`, `oauth-client-secret`, `api-token`, `unknown`, `missing`.
    pub credential: String,
    /// The pre-auth key's id.
    pub key_id: Option<String>,
    /// Its expiry (from the API).
    pub key_expires: Option<String>,
    /// Its validity (from the API; `None` when not asked).
    pub key_valid: Option<bool>,
    /// Online in the tailnet.
    pub joined: bool,
    /// Node key expiry: a time, `never` (disabled), or `None` when not joined/unknown.
    pub node_key_expires: Option<String>,
    /// Could it log in today?
    pub can_log_in: CanLogIn,
}

/// A node that cannot get (back) into the tailnet, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stranded {
    /// The node.
    pub node: NodeName,
    /// Why.
    pub reason: String,
    /// The commands that fix it.
    pub fix: String,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrolmentReport {
    /// What the fleet enrols with.
    pub tailscale_auth: TailscaleAuth,
    /// Every node, in manifest order.
    pub nodes: Vec<NodeEnrolment>,
    /// Nodes that must log in and cannot.
    pub stranded: Vec<Stranded>,
    /// Joined nodes that could not log in again if they had to (re-install, logout): warnings.
    pub at_risk: Vec<Stranded>,
}

/// The fix for `node` of a fleet enrolling with `auth`.
pub fn fix_for(auth: TailscaleAuth, node: &NodeName) -> String {
    match auth {
        TailscaleAuth::Preauth => format!(
            "`fleetnix authkey mint {node}` (TS_API_KEY set; or `fleetnix secrets set-authkey {node}` with a fresh pre-auth key), then `fleetnix deploy {node}` (`fleetnix bootstrap {node}` if it was re-installed)"
        ),
        TailscaleAuth::OauthClient => format!(
            "`fleetnix secrets set-authkey {node}` with the fleet's OAuth client secret, then `fleetnix deploy {node}` (`fleetnix bootstrap {node}` if it was re-installed)"
        ),
    }
}

fn expires_within(ts: &str, now: SystemTime, within: Duration) -> Option<bool> {
    parse_time(ts).map(|t| t <= now + within)
}

fn can_log_in(auth: TailscaleAuth, f: &NodeFacts, now: SystemTime) -> CanLogIn {
    let kind = match &f.stored {
        Stored::Missing => return CanLogIn::No("no auth key is stored".into()),
        Stored::Unknown(why) => return CanLogIn::Unknown(why.clone()),
        Stored::Known { kind, .. } => *kind,
    };
    match (kind, auth) {
        (CredentialKind::OauthClientSecret, TailscaleAuth::OauthClient) => CanLogIn::Yes,
        (CredentialKind::OauthClientSecret, TailscaleAuth::Preauth) => CanLogIn::No(
            "it holds an OAuth client secret but fleet.yml says `tailscale_auth: preauth` (it would enrol ephemeral)".into(),
        ),
        (CredentialKind::PreAuthKey, TailscaleAuth::OauthClient) => CanLogIn::No(
            "it holds a pre-auth key but fleet.yml says `tailscale_auth: oauth-client`".into(),
        ),
        (CredentialKind::ApiToken, _) => CanLogIn::No("it holds an API token, not an auth key".into()),
        (CredentialKind::Unknown, _) => CanLogIn::No("it holds no Tailscale auth key".into()),
        (CredentialKind::PreAuthKey, TailscaleAuth::Preauth) => match &f.key {
            KeyCheck::Found(k) if k.invalid => CanLogIn::No(format!(
                "its pre-auth key is invalid (expired, revoked or already used; expiry {})",
                if k.expires.is_empty() { "unknown" } else { &k.expires }
            )),
            KeyCheck::Found(k) => match expires_within(&k.expires, now, KEY_MARGIN) {
                Some(true) => CanLogIn::No(format!("its pre-auth key expired (or expires within minutes): {}", k.expires)),
                Some(false) => CanLogIn::Yes,
                None => CanLogIn::Unknown("the API gave no expiry for its pre-auth key".into()),
            },
            KeyCheck::Gone => CanLogIn::No("the API no longer knows its pre-auth key (revoked or expired)".into()),
            KeyCheck::NotAsked => CanLogIn::Unknown(
                "no Tailscale API token to check its pre-auth key (set TS_API_KEY or --token-file)".into(),
            ),
            KeyCheck::Failed(e) => CanLogIn::Unknown(e.clone()),
        },
    }
}

/// The report for `facts` (one per node, any order) at `now`. Pure.
pub fn assess(fleet: &Fleet, facts: &[NodeFacts], now: SystemTime) -> EnrolmentReport {
    let auth = fleet.settings.tailscale_auth;
    let mut nodes = Vec::new();
    let mut stranded = Vec::new();
    let mut at_risk = Vec::new();
    for node in &fleet.nodes {
        let Some(f) = facts.iter().find(|f| f.node == node.name) else {
            continue;
        };
        let verdict = can_log_in(auth, f, now);
        let (credential, key_id) = match &f.stored {
            Stored::Missing => ("missing".to_string(), None),
            Stored::Unknown(_) => ("unknown".to_string(), None),
            Stored::Known { kind, key_id } => (kind.to_string(), key_id.clone()),
        };
        let (key_expires, key_valid) = match &f.key {
            KeyCheck::Found(k) => (
                (!k.expires.is_empty()).then(|| k.expires.clone()),
                Some(!k.invalid && expires_within(&k.expires, now, KEY_MARGIN) != Some(true)),
            ),
            KeyCheck::Gone => (None, Some(false)),
            _ => (None, None),
        };
        let joined = f.device.as_ref().is_some_and(|d| d.online);
        let node_key_expires = f.device.as_ref().and_then(|d| {
            if d.key_expiry_disabled {
                Some("never".to_string())
            } else {
                d.node_key_expires.clone()
            }
        });
        // Must it log in (again) today?
        let must_log_in = if !joined {
            Some("it is not online in the tailnet (if it lost its state, it has to log in)")
        } else {
            match f.device.as_ref() {
                Some(d) if !d.key_expiry_disabled => d
                    .node_key_expires
                    .as_deref()
                    .and_then(|t| expires_within(t, now, HORIZON))
                    .filter(|e| *e)
                    .map(|_| "its node key expires within a day"),
                _ => None,
            }
        };
        if let CanLogIn::No(why) = &verdict {
            let entry = Stranded {
                node: node.name.clone(),
                reason: match must_log_in {
                    Some(m) => format!("{m}, and {why}"),
                    None => format!("it is joined, but could not log in again: {why}"),
                },
                fix: fix_for(auth, &node.name),
            };
            if must_log_in.is_some() {
                stranded.push(entry);
            } else {
                at_risk.push(entry);
            }
        }
        nodes.push(NodeEnrolment {
            node: node.name.clone(),
            credential,
            key_id,
            key_expires,
            key_valid,
            joined,
            node_key_expires,
            can_log_in: verdict,
        });
    }
    EnrolmentReport {
        tailscale_auth: auth,
        nodes,
        stranded,
        at_risk,
    }
}

/// The device records named like `node` (host name, or MagicDNS label `node` / `node-N`).
pub fn records_of<'a>(devices: &'a [ApiDevice], node: &str) -> Vec<&'a ApiDevice> {
    devices
        .iter()
        .filter(|d| d.hostname == node || d.dns_label() == node)
        .collect()
}

/// Collects the facts of every node: its secret (`stored`, which knows how to read it: the CLI
/// decrypts with the operator's identity), its pre-auth key's metadata and its device through the
/// API when `api` is given, else its device from `ts`.
pub async fn gather(
    fleet: &Fleet,
    stored: impl Fn(&NodeName) -> Stored,
    api: Option<&Client>,
    ts: Option<&TailscaleStatus>,
) -> Result<Vec<NodeFacts>, crate::tailscale::api::ApiError> {
    let devices = match api {
        Some(c) => Some(c.list_devices().await?),
        None => None,
    };
    let mut out = Vec::new();
    for node in &fleet.nodes {
        let stored = stored(&node.name);
        let key = match (&stored, api) {
            (
                Stored::Known {
                    kind: CredentialKind::PreAuthKey,
                    key_id: Some(id),
                },
                Some(c),
            ) => match c.get_key(id).await {
                Ok(Some(k)) => KeyCheck::Found(k),
                Ok(None) => KeyCheck::Gone,
                Err(e) => KeyCheck::Failed(e.to_string()),
            },
            _ => KeyCheck::NotAsked,
        };
        let local_online = ts
            .and_then(|s| s.find(node.name.as_str()))
            .map(|d| d.is_self || d.peer.online);
        let device = match &devices {
            Some(list) => {
                let recs = records_of(list, node.name.as_str());
                // The online record if any (a stale offline one may share the name).
                let best = recs
                    .iter()
                    .find(|d| d.online() == Some(true))
                    .or_else(|| recs.first());
                best.map(|d| DeviceFacts {
                    online: d.online().or(local_online).unwrap_or(false),
                    key_expiry_disabled: d.key_expiry_disabled,
                    node_key_expires: (!d.expires.is_empty()).then(|| d.expires.clone()),
                })
            }
            None => local_online.map(|online| DeviceFacts {
                online,
                // Without the API the node key's expiry is not known.
                key_expiry_disabled: false,
                node_key_expires: None,
            }),
        };
        out.push(NodeFacts {
            node: node.name.clone(),
            stored,
            key,
            device,
        });
    }
    Ok(out)
}
