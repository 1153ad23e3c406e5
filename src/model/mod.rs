//! The validated fleet model. Values of these types passed validation: node names
//! and roles are safe hostname labels, addresses are inside the tailnet ranges.
//!
//! Stage: the validated types every stage shares. Imports nothing of the crate.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

mod credential;
mod values;
pub use credential::*;
pub use values::*;

/// Checks an RFC 1123 hostname label: 1–63 chars of `a-z`, `0-9`, `-`, not starting or ending with `-`.
pub fn check_label(s: &str) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > 63 {
        return Err(format!("it is {} characters long (at most 63)", s.len()).into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "it contains {c:?} (only lowercase letters, digits and '-' are allowed)"
        )
        .into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("it starts or ends with '-'".into());
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` as a hostname label.
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                check_label(s).map(|()| Self(s.to_string()))
            }
            /// The label.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_type!(
    /// A node name: a valid hostname label, safe in Nix strings, shell words and unit names.
    NodeName
);
label_type!(
    /// A role name: same alphabet as node names.
    Role
);

/// Is `ip` inside Tailscale's ranges: 100.64.0.0/10 or fd7a:115c:a1e0::/48?
pub fn is_tailnet_addr(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xC0) == 64
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
    }
}

/// A NixOS state version (`system.stateVersion`): `"YY.MM"`, the release a node was first
/// installed with. It must not change after installation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StateVersion(String);

impl StateVersion {
    /// Validates `s` as `YY.MM`: two digits, a dot, a month 01–12.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 5 || b[2] != b'.' || !digits(0..2) || !digits(3..5) {
            return Err("it is not of the form YY.MM (e.g. 25.11)".into());
        }
        let month = (b[3] - b'0') * 10 + (b[4] - b'0');
        if !(1..=12).contains(&month) {
            return Err(format!("month {month:02} does not exist").into());
        }
        Ok(StateVersion(s.to_string()))
    }

    /// The version, e.g. `25.11`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StateVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a model name: 1–128 characters of ASCII letters, digits and `.` `_` `-` `:` `/` `+`
/// `@`, starting with a letter or digit (`glm-4.5-air`, `llama3:8b`, `Qwen/Qwen2.5-7B`).
/// Nothing in such a name needs escaping in a NATS header, JSON or a Nix string.
pub fn check_model(s: &str) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > 128 {
        return Err(format!("it is {} characters long (at most 128)", s.len()).into());
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("it does not start with a letter or digit".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-:/+@".contains(*c)))
    {
        return Err(format!(
            "it contains {c:?} (only letters, digits and . _ - : / + @ are allowed)"
        )
        .into());
    }
    Ok(())
}

/// Operating system of a node, which decides how it is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    /// NixOS: deployed with `nixos-rebuild`.
    #[default]
    Nixos,
    /// Another Linux: Tailscale install script and a systemd unit.
    Linux,
    /// Decided at deploy time from `/etc/os-release`.
    Auto,
}

/// Declared resources of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Resources {
    /// CPU cores (> 0).
    pub cpu: u32,
    /// Memory in GiB (> 0).
    pub ram_gb: u32,
    /// GPUs, if declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

/// One machine of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Unique name, also its tailnet hostname.
    pub name: NodeName,
    /// Its address on the tailnet.
    pub tailscale_ip: IpAddr,
    /// Roles in manifest order, no duplicates.
    pub roles: Vec<Role>,
    /// Declared resources.
    pub resources: Resources,
    /// Operating system.
    pub os: Os,
    /// SSH user for deploys.
    pub ssh_user: SshLogin,
    /// The node's SSH host public key (`ssh-ed25519 AAAA…`), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key: Option<HostKey>,
    /// A public address for bootstrapping, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
    /// Models the node serves (`models:` in nodes.yml), in manifest order, each once; checked
    /// by [`check_model`]. The router prefers these nodes for a request's `preferred_model`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

impl Node {
    /// Does the node have `role`?
    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
}

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A role of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleSpec {
    /// The role.
    pub name: Role,
    /// The Tailscale tag nodes with this role carry, if the role sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<Tag>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One row of the port reference table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Service id (a label).
    pub name: Role,
    /// Human name (e.g. "LiteLLM Proxy").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Port it listens on.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The role whose nodes host it.
    pub role: Role,
    /// Who may reach it: `tag:…`, `group:…` or `autogroup:…` selectors, sorted.
    pub allow: Vec<String>,
}

/// The service and role catalog (`fleet/services.yml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Catalog {
    /// Known roles by name.
    pub roles: BTreeMap<Role, RoleSpec>,
    /// Tag for nodes none of whose roles sets one.
    pub default_tag: Tag,
    /// Services in file order.
    pub services: Vec<Service>,
}

/// How a task is re-routed when a node fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailoverStrategy {
    /// Next node in turn.
    #[default]
    RoundRobin,
    /// The node with the most free capacity.
    LeastLoaded,
    /// A random healthy node.
    Random,
}

impl FailoverStrategy {
    /// All names accepted in fleet.yml.
    pub const NAMES: [&'static str; 3] = ["round_robin", "least_loaded", "random"];

    /// Parses a fleet.yml name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round_robin" => Some(Self::RoundRobin),
            "least_loaded" => Some(Self::LeastLoaded),
            "random" => Some(Self::Random),
            _ => None,
        }
    }
}

/// The seed's `fleet:` failure-handling block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureSettings {
    /// Seconds before a node is considered unreachable.
    pub node_timeout_seconds: u32,
    /// Retry a failed node once.
    pub retry_on_node_failure: bool,
    /// Re-routing strategy.
    pub failover_strategy: FailoverStrategy,
    /// Send an ntfy alert when a node goes down.
    pub alert_on_node_down: bool,
    /// A task's deadline when its request names none (`task_timeout_seconds`, default 300).
    pub task_timeout_seconds: u32,
}

/// An operator's public key (age recipient or SSH public key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorKey {
    /// Who it belongs to.
    pub name: String,
    /// `age1…`, `ssh-ed25519 …` or `ssh-rsa …`.
    pub key: String,
}

/// The human operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operators {
    /// Their Tailscale group, e.g. `group:operators`.
    pub group: String,
    /// Group members (Tailscale login names).
    pub members: Vec<String>,
    /// Their keys, recipients of every secret.
    pub keys: Vec<OperatorKey>,
}

/// ntfy alerting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NtfySettings {
    /// Topic name.
    pub topic: String,
    /// Port of ntfy on the control plane.
    pub port: u16,
}

/// Fleet-wide settings (`fleet/fleet.yml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The control-plane node.
    pub control_plane: NodeName,
    /// NATS URL agents connect to.
    pub nats_url: NatsUrl,
    /// Port of the control plane's LiteLLM endpoint agents are given.
    pub control_plane_port: u16,
    /// Tailnet name for the API (`-` = the token's default tailnet).
    pub tailnet: String,
    /// Operators.
    pub operators: Operators,
    /// Who may Tailscale-SSH as root to the nodes (fleet.yml `deployers`): the operators' group
    /// by default; groups, tags (e.g. `tag:deployer` for a CI runner) or logins. Sorted.
    pub deployers: Vec<String>,
    /// Failure handling.
    pub failure: FailureSettings,
    /// Alerts.
    pub ntfy: NtfySettings,
    /// The fleet's default `system.stateVersion` (`state_version` in fleet.yml), if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<StateVersion>,
    /// Per-node overrides of it (`state_version` of a node in nodes.yml).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_state_versions: BTreeMap<NodeName, StateVersion>,
    /// How nodes enrol in the tailnet (`tailscale_auth` in fleet.yml, default `preauth`).
    #[serde(skip_serializing_if = "TailscaleAuth::is_default")]
    pub tailscale_auth: TailscaleAuth,
}

/// Where the fleet was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFiles {
    /// `nodes.yml`.
    pub nodes: PathBuf,
    /// `fleet.yml`.
    pub fleet: PathBuf,
    /// `services.yml`.
    pub services: PathBuf,
}

/// A validated fleet: nodes, catalog and settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fleet {
    /// Nodes, sorted by name.
    pub nodes: Vec<Node>,
    /// Roles and services.
    pub catalog: Catalog,
    /// Fleet-wide settings.
    pub settings: Settings,
    /// Where it came from.
    #[serde(skip)]
    pub sources: SourceFiles,
}

impl Fleet {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name.as_str() == name)
    }

    /// The control-plane node (validated to exist).
    pub fn control_plane(&self) -> &Node {
        // Invariant: validation rejects a fleet whose control plane is not a node.
        self.node(self.settings.control_plane.as_str())
            .expect("validated: control plane is a node")
    }

    /// The tags a node carries: those its roles set, else the catalog's default tag. Sorted.
    pub fn tags_of(&self, node: &Node) -> Vec<String> {
        let mut tags: Vec<String> = node
            .roles
            .iter()
            .filter_map(|r| self.catalog.roles.get(r).and_then(|s| s.tag.as_ref()))
            .map(Tag::to_string)
            .collect();
        if tags.is_empty() {
            tags.push(self.catalog.default_tag.to_string());
        }
        tags.sort();
        tags.dedup();
        tags
    }

    /// The `system.stateVersion` of a node: its own `state_version`, else the fleet's.
    pub fn state_version_of(&self, node: &Node) -> Option<&StateVersion> {
        self.settings
            .node_state_versions
            .get(&node.name)
            .or(self.settings.state_version.as_ref())
    }

    /// Every role some node has, sorted and unique (for "known roles" in error messages).
    pub fn roles_in_use(&self) -> Vec<String> {
        let roles: std::collections::BTreeSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.roles.iter().map(Role::as_str))
            .collect();
        roles.into_iter().map(str::to_string).collect()
    }

    /// Services hosted by a node (those whose role it has), in catalog order.
    pub fn services_of<'a>(&'a self, node: &'a Node) -> impl Iterator<Item = &'a Service> + 'a {
        self.catalog
            .services
            .iter()
            .filter(move |s| node.has_role(&s.role))
    }
}
