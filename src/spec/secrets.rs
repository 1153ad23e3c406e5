//! Which secrets exist: every secret is a ([`NodeName`], [`SecretKind`]) pair with its own file
//! `secrets/<node>/<kind>.age`, encrypted to that node's host key and the operators' keys.
//!
//! | kind | file | what | who has one |
//! |---|---|---|---|
//! | `tailscale-authkey` | `secrets/<node>/tailscale-authkey.age` | the node's Tailscale auth key | every node |
//! | `nats-password` | `secrets/<node>/nats-password.age` | the node's NATS password | every node |
//! | `nats-server-env` | `secrets/<cp>/nats-server-env.age` | `NATS_PASSWORD_<NODE>=…` lines | the control plane |
//! | `nats-router-password` | `secrets/<cp>/nats-router-password.age` | the router's NATS password | the control plane |
//! | `nats-supervisor-password` | `secrets/<cp>/nats-supervisor-password.age` | the supervisors' NATS password (`_supervisor`) | the control plane |
//! | `nats-registry-password` | `secrets/<cp>/nats-registry-password.age` | `node sync`'s NATS password (`_registry`) | the control plane |
//!
//! [`SecretId`] owns every path of a secret: the `.age` file ([`SecretId::age_path`]), its path
//! below `secrets/` as rendered modules reference it ([`SecretId::secrets_path`]), its agenix name
//! ([`SecretId::nix_name`]) and where the plaintext lives on the node ([`SecretId::runtime_path`]).
//! The plan, the bus module, the renderers and the secrets store all ask it.

use crate::model::{Fleet, NodeName, Os};
use serde::Serialize;
use std::fmt;

/// The secrets directory, relative to the repository root.
pub const SECRETS_DIR: &str = "secrets";

/// Longest auth key accepted, in bytes (Tailscale's keys are under 100).
pub const MAX_AUTHKEY_BYTES: usize = 4096;

/// The agenix name of a node's Tailscale auth key.
pub const AUTHKEY_SECRET: &str = "tailscale-authkey";
/// The agenix name of a node's NATS password.
pub const PASSWORD_SECRET: &str = "nats-password";
/// The agenix name of the nats-server environment file (on the control plane).
pub const SERVER_ENV_SECRET: &str = "nats-server-env";
/// The agenix name of the router's NATS password (on the control plane).
pub const ROUTER_SECRET: &str = "nats-router-password";
/// The agenix name of the supervisors' NATS password (user `_supervisor`, on the control plane).
pub const SUPERVISOR_SECRET: &str = "nats-supervisor-password";
/// The agenix name of `node sync`'s NATS password (user `_registry`, on the control plane).
pub const REGISTRY_SECRET: &str = "nats-registry-password";
/// The agenix name of `health`'s NATS password (user `_observer`, on the control plane).
pub const OBSERVER_SECRET: &str = "nats-observer-password";

/// Where agenix decrypts secrets on a NixOS node (`config.age.secrets.<name>.path`).
pub const AGENIX_DIR: &str = "/run/agenix";
/// Where a non-NixOS node's auth key waits for `tailscale up` (cloud-init writes it).
pub const FALLBACK_AUTHKEY_PATH: &str = "/run/fleetnix/tailscale-authkey";
/// Where a non-NixOS node keeps its NATS password (deploy's fallback installer writes it).
pub const FALLBACK_NATS_PASSWORD_PATH: &str = "/etc/fleetnix/nats-password";

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
    /// The supervisors' NATS password, on the control plane (`fleetnix secrets set-nats`).
    NatsSupervisorPassword,
    /// `node sync`'s NATS password, on the control plane (`fleetnix secrets set-nats`).
    NatsRegistryPassword,
    /// `health`'s NATS password (read-only), on the control plane (`fleetnix secrets set-nats`).
    NatsObserverPassword,
}

impl SecretKind {
    /// Every kind, in listing order.
    pub const ALL: [SecretKind; 7] = [
        SecretKind::TailscaleAuthkey,
        SecretKind::NatsPassword,
        SecretKind::NatsServerEnv,
        SecretKind::NatsRouterPassword,
        SecretKind::NatsSupervisorPassword,
        SecretKind::NatsRegistryPassword,
        SecretKind::NatsObserverPassword,
    ];

    /// Is it a secret of the control plane only?
    pub fn control_plane_only(self) -> bool {
        matches!(
            self,
            SecretKind::NatsServerEnv
                | SecretKind::NatsRouterPassword
                | SecretKind::NatsSupervisorPassword
                | SecretKind::NatsRegistryPassword
                | SecretKind::NatsObserverPassword
        )
    }

    /// The agenix name (`age.secrets.<name>`), also the file's stem.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::TailscaleAuthkey => AUTHKEY_SECRET,
            SecretKind::NatsPassword => PASSWORD_SECRET,
            SecretKind::NatsServerEnv => SERVER_ENV_SECRET,
            SecretKind::NatsRouterPassword => ROUTER_SECRET,
            SecretKind::NatsSupervisorPassword => SUPERVISOR_SECRET,
            SecretKind::NatsRegistryPassword => REGISTRY_SECRET,
            SecretKind::NatsObserverPassword => OBSERVER_SECRET,
        }
    }

    /// The kind whose file is `<name>.age`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Path of `node`'s secret of this kind, relative to the repository root
    /// ([`SecretId::age_path`]).
    pub fn file(self, node: &NodeName) -> String {
        SecretId::new(node.clone(), self).age_path()
    }

    /// What it holds, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            SecretKind::TailscaleAuthkey => "Tailscale auth key",
            SecretKind::NatsPassword => "NATS password",
            SecretKind::NatsServerEnv => "nats-server environment file",
            SecretKind::NatsRouterPassword => "router's NATS password",
            SecretKind::NatsSupervisorPassword => "supervisors' NATS password",
            SecretKind::NatsRegistryPassword => "registry's NATS password",
            SecretKind::NatsObserverPassword => "observer's NATS password",
        }
    }

    /// The longest plaintext accepted when decrypting one (a password or key is short; the
    /// server environment has a line of about 60 bytes per node).
    pub fn max_bytes(self) -> usize {
        match self {
            SecretKind::TailscaleAuthkey
            | SecretKind::NatsPassword
            | SecretKind::NatsRouterPassword
            | SecretKind::NatsSupervisorPassword
            | SecretKind::NatsRegistryPassword
            | SecretKind::NatsObserverPassword => MAX_AUTHKEY_BYTES,
            SecretKind::NatsServerEnv => 256 * 1024,
        }
    }

    /// The command that writes a missing secret of this kind for `node`.
    pub fn set_command(self, node: &NodeName) -> String {
        match self {
            SecretKind::TailscaleAuthkey => format!("fleetnix secrets set-authkey {node}"),
            SecretKind::NatsPassword
            | SecretKind::NatsServerEnv
            | SecretKind::NatsRouterPassword
            | SecretKind::NatsSupervisorPassword
            | SecretKind::NatsRegistryPassword
            | SecretKind::NatsObserverPassword => "fleetnix secrets set-nats".to_string(),
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
        self.age_path()
    }

    /// Path of the `.age` file relative to the repository root
    /// (`secrets/worker-01/nats-password.age`).
    pub fn age_path(&self) -> String {
        format!("{SECRETS_DIR}{}", self.secrets_path())
    }

    /// Path below `secrets/`, with its leading slash, as rendered modules append it to
    /// `../../secrets` (`/worker-01/nats-password.age`).
    pub fn secrets_path(&self) -> String {
        format!("/{}", self.rules_key())
    }

    /// The agenix name (`age.secrets.<name>`).
    pub fn nix_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Where the plaintext lives on a node running `os`: agenix's `/run/agenix/<name>` on
    /// NixOS; on other Linux the files cloud-init and deploy's installer write. `None` when it
    /// is not known (`os: auto` before detection) or there is none (the control plane's
    /// secrets, which only a NixOS control plane has).
    pub fn runtime_path(&self, os: Os) -> Option<String> {
        match (os, self.kind) {
            (Os::Nixos, _) => Some(format!("{AGENIX_DIR}/{}", self.nix_name())),
            (Os::Linux, SecretKind::TailscaleAuthkey) => Some(FALLBACK_AUTHKEY_PATH.to_string()),
            (Os::Linux, SecretKind::NatsPassword) => Some(FALLBACK_NATS_PASSWORD_PATH.to_string()),
            _ => None,
        }
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
/// nats-server environment file (the bus module references it) and its services' passwords
/// (router, supervisors, registry).
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
            assert_eq!(id.age_path(), format!("secrets{}", id.secrets_path()));
            assert_eq!(
                id.runtime_path(Os::Nixos),
                Some(format!("/run/agenix/{}", id.nix_name()))
            );
        }
        assert_eq!(SecretKind::from_name("other"), None);
        let id = SecretId::new(n.clone(), SecretKind::NatsRouterPassword);
        assert_eq!(id.age_path(), "secrets/worker-01/nats-router-password.age");
        assert_eq!(id.secrets_path(), "/worker-01/nats-router-password.age");
        assert_eq!(id.runtime_path(Os::Linux), None);
        let id = SecretId::new(n, SecretKind::TailscaleAuthkey);
        assert_eq!(
            id.runtime_path(Os::Linux).as_deref(),
            Some("/run/fleetnix/tailscale-authkey")
        );
    }
}
