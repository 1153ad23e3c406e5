//! Which secrets exist: every secret is a ([`NodeName`], [`SecretKind`]) pair with its own file
//! `secrets/<node>/<kind>.age`, encrypted to that node's host key and the operators' keys.
//!
//! | kind | file | what | who has one |
//! |---|---|---|---|
//! | `tailscale-authkey` | `secrets/<node>/tailscale-authkey.age` | the node's Tailscale auth key | every node |
//! | `nats-password` | `secrets/<node>/nats-password.age` | the node's NATS password | every node |
//! | `nats-server-env` | `secrets/<cp>/nats-server-env.age` | `NATS_PASSWORD_<NODE>=…` lines | the control plane |
//! | `nats-router-password` | `secrets/<cp>/nats-router-password.age` | the router's NATS password | the control plane |

use crate::bus::creds::{
    password_file, router_password_file, server_env_file, PASSWORD_SECRET, ROUTER_SECRET,
    SERVER_ENV_SECRET,
};
use crate::model::{Fleet, NodeName};
use crate::plan::{authkey_file, AUTHKEY_SECRET};
use serde::Serialize;
use std::fmt;

/// A kind of per-node secret. The order is the order secrets of one node are listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// The node's Tailscale auth key (`fleetnix secrets set-authkey`, `fleetnix authkey mint`).
    TailscaleAuthkey,
    /// The node's NATS password (`fleetnix secrets set-nats`).
    NatsPassword,
    /// The control plane's nats-server environment file (`fleetnix secrets set-nats`).
    NatsServerEnv,
    /// The router's NATS password, on the control plane (`fleetnix secrets set-nats`).
    NatsRouterPassword,
}

impl SecretKind {
    /// Every kind, in listing order.
    pub const ALL: [SecretKind; 4] = [
        SecretKind::TailscaleAuthkey,
        SecretKind::NatsPassword,
        SecretKind::NatsServerEnv,
        SecretKind::NatsRouterPassword,
    ];

    /// Is it a secret of the control plane only?
    pub fn control_plane_only(self) -> bool {
        matches!(
            self,
            SecretKind::NatsServerEnv | SecretKind::NatsRouterPassword
        )
    }

    /// The agenix name (`age.secrets.<name>`), also the file's stem.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::TailscaleAuthkey => AUTHKEY_SECRET,
            SecretKind::NatsPassword => PASSWORD_SECRET,
            SecretKind::NatsServerEnv => SERVER_ENV_SECRET,
            SecretKind::NatsRouterPassword => ROUTER_SECRET,
        }
    }

    /// The kind whose file is `<name>.age`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Path of `node`'s secret of this kind, relative to the repository root — the same
    /// functions the plan and the bus module use for the paths the rendered modules reference.
    pub fn file(self, node: &NodeName) -> String {
        match self {
            SecretKind::TailscaleAuthkey => authkey_file(node),
            SecretKind::NatsPassword => password_file(node),
            SecretKind::NatsServerEnv => server_env_file(node),
            SecretKind::NatsRouterPassword => router_password_file(node),
        }
    }

    /// What it holds, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            SecretKind::TailscaleAuthkey => "Tailscale auth key",
            SecretKind::NatsPassword => "NATS password",
            SecretKind::NatsServerEnv => "nats-server environment file",
            SecretKind::NatsRouterPassword => "router's NATS password",
        }
    }

    /// The longest plaintext accepted when decrypting one (a password or key is short; the
    /// server environment has a line of about 60 bytes per node).
    pub fn max_bytes(self) -> usize {
        match self {
            SecretKind::TailscaleAuthkey
            | SecretKind::NatsPassword
            | SecretKind::NatsRouterPassword => super::MAX_AUTHKEY_BYTES,
            SecretKind::NatsServerEnv => 256 * 1024,
        }
    }

    /// The command that writes a missing secret of this kind for `node`.
    pub fn set_command(self, node: &NodeName) -> String {
        match self {
            SecretKind::TailscaleAuthkey => format!("fleetnix secrets set-authkey {node}"),
            SecretKind::NatsPassword
            | SecretKind::NatsServerEnv
            | SecretKind::NatsRouterPassword => "fleetnix secrets set-nats".to_string(),
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One secret: whose, and which.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretId {
    /// The node it belongs to (its host key is a recipient).
    pub node: NodeName,
    /// Which secret.
    pub kind: SecretKind,
}

impl SecretId {
    /// `node`'s secret of kind `kind`.
    pub fn new(node: NodeName, kind: SecretKind) -> Self {
        SecretId { node, kind }
    }

    /// Path relative to the repository root (`secrets/worker-01/nats-password.age`).
    pub fn file(&self) -> String {
        self.kind.file(&self.node)
    }

    /// Path relative to `secrets/`, as agenix names it in `secrets.nix`
    /// (`worker-01/nats-password.age`).
    pub fn rules_key(&self) -> String {
        format!("{}/{}.age", self.node, self.kind.name())
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file())
    }
}

/// Every secret the manifest wants, by node in manifest order, then by kind: each node's auth
/// key and NATS password (its rendered module references both), and the control plane's
/// nats-server environment file (the bus module references it) and router password (the
/// router module references it).
pub fn wanted(fleet: &Fleet) -> Vec<SecretId> {
    let mut out = Vec::new();
    for node in &fleet.nodes {
        for kind in SecretKind::ALL {
            if !kind.control_plane_only() || node.name == fleet.settings.control_plane {
                out.push(SecretId::new(node.name.clone(), kind));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_files_and_serde_agree() {
        let n = NodeName::parse("worker-01").unwrap();
        for kind in SecretKind::ALL {
            let id = SecretId::new(n.clone(), kind);
            assert_eq!(id.file(), format!("secrets/{}", id.rules_key()));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.name())
            );
            assert_eq!(SecretKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(SecretKind::from_name("other"), None);
    }
}
