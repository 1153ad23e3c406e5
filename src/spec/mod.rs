//! Each node's resolved settings, its [`NodeSpec`]: everything it gets (tags, `tailscale up`
//! flags, ports, agent arguments, secrets, how it is reached). Every output (NixOS module, ACL,
//! secrets, cloud-init, deploy commands) is a pure function of these. (`fleetnix plan`, what a
//! deploy would change, is another thing: `deploy::plan`.)
//!
//! - [`secrets`]: which secrets exist, their files and names.
//!
//! Stage 2 (spec). Imports: `model`. Everything after it (outputs, acl, secrets, executors)
//! reads [`NodeSpec`]s, never the manifest.

pub mod secrets;

use crate::model::{
    CredentialError, Fleet, HostKey, Node, NodeName, Os, Protocol, Role, SshLogin, TailscaleAuth,
};
use crate::secret::Secret;
use secrets::{SecretId, SecretKind, AUTHKEY_SECRET};
use serde::Serialize;
use std::net::IpAddr;

/// Tailscale's default WireGuard UDP port, the only port opened outside `tailscale0`.
pub const TAILSCALE_UDP_PORT: u16 = 41641;

/// The arguments of `omp agent start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentArgs {
    /// `--node-name`.
    pub node_name: String,
    /// `--control-plane`, `<cp-ip>:<port>`.
    pub control_plane: String,
    /// `--roles`, in manifest order.
    pub roles: Vec<String>,
    /// `--nats-url`.
    pub nats_url: String,
}

impl AgentArgs {
    /// The argv after `omp`: `agent start --node-name … --control-plane … --roles a,b --nats-url …`.
    pub fn argv(&self) -> Vec<String> {
        vec![
            "agent".into(),
            "start".into(),
            "--node-name".into(),
            self.node_name.clone(),
            "--control-plane".into(),
            self.control_plane.clone(),
            "--roles".into(),
            self.roles.join(","),
            "--nats-url".into(),
            self.nats_url.clone(),
        ]
    }
}

/// An age secret a node needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    /// agenix name (`age.secrets.<name>`).
    pub name: String,
    /// Path of the `.age` file relative to the repository root.
    pub file: String,
}

/// A service a node hosts, with its open port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostedService {
    /// Service id.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// How the operator reaches the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    /// Tailnet address.
    pub address: IpAddr,
    /// SSH user.
    pub ssh_user: SshLogin,
    /// `user@address` for ssh / `--target-host` (IPv6 in brackets).
    pub ssh_target: String,
    /// OS, which picks the deploy path.
    pub os: Os,
    /// Pinned SSH host key, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key: Option<HostKey>,
    /// Public address for bootstrap, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
}

/// Does a login as `ssh_user` need `sudo` for root's work (remote scripts through `sudo -n`,
/// `nixos-rebuild --sudo`)? The one statement of that rule: every user but `root`.
pub fn needs_sudo(ssh_user: &str) -> bool {
    ssh_user != "root"
}

impl Access {
    /// Does this login need `sudo` ([`needs_sudo`])?
    pub fn needs_sudo(&self) -> bool {
        needs_sudo(&self.ssh_user)
    }
}

/// Everything one node gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    /// Node name (= hostname).
    pub name: NodeName,
    /// Roles in manifest order.
    pub roles: Vec<Role>,
    /// Tailscale tags, sorted.
    pub tags: Vec<String>,
    /// `tailscale up` flags beyond the auth key.
    pub up_flags: Vec<String>,
    /// What the node enrols with (`tailscale_auth` of fleet.yml); omitted when `preauth`.
    #[serde(skip_serializing_if = "TailscaleAuth::is_default")]
    pub tailscale_auth: TailscaleAuth,
    /// Services it hosts, in catalog order.
    pub services: Vec<HostedService>,
    /// TCP ports opened on `tailscale0`, sorted and unique.
    pub tcp_ports: Vec<u16>,
    /// UDP ports opened on `tailscale0`, sorted and unique.
    pub udp_ports: Vec<u16>,
    /// The agent's arguments.
    pub agent: AgentArgs,
    /// Secrets it needs.
    pub secrets: Vec<SecretRef>,
    /// How it is reached.
    pub access: Access,
    /// Is it the control plane?
    pub is_control_plane: bool,
    /// `system.stateVersion` (the node's `state_version`, else the fleet's), if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<String>,
    /// Models it serves (`models:` in nodes.yml).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// GPUs its `resources` declare (more than 0), which the deploy's health gate checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

impl NodeSpec {
    /// The flags `tailscale set` applies to a running node (`services.tailscale.extraSetFlags`):
    /// every `up` flag but `--advertise-tags`, which `set` does not take (tags change through
    /// the API, see `tailscale::prefs`).
    pub fn set_flags(&self) -> Vec<String> {
        self.up_flags
            .iter()
            .filter(|f| !f.starts_with("--advertise-tags"))
            .cloned()
            .collect()
    }

    /// What `tailscale up --auth-key` gets on this node for its stored credential `key`: checked
    /// against the fleet's `tailscale_auth` (an API token, or a client secret in a `preauth`
    /// fleet, is refused), an OAuth client secret with `?ephemeral=false&preauthorized=true`
    /// appended. An OAuth enrolment also needs tags (`--advertise-tags`): a node without any is
    /// refused (the manifest gives every node at least the default tag).
    pub fn enrolment_key(&self, key: &Secret) -> Result<Secret, CredentialError> {
        self.tailscale_auth.check(key.expose())?;
        if self.tailscale_auth == TailscaleAuth::OauthClient && self.tags.is_empty() {
            return Err(CredentialError::Untagged);
        }
        Ok(Secret::new(self.tailscale_auth.up_key(key.expose())))
    }
}

/// Path of a node's encrypted auth key, relative to the repository root.
pub fn authkey_file(node: &NodeName) -> String {
    SecretId::new(node.clone(), SecretKind::TailscaleAuthkey).age_path()
}

/// `ip:port`, with brackets for IPv6.
pub fn host_port(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Plans one node.
pub fn node_spec(fleet: &Fleet, node: &Node) -> NodeSpec {
    let tags = fleet.tags_of(node);
    let services: Vec<HostedService> = fleet
        .services_of(node)
        .map(|s| HostedService {
            name: s.name.to_string(),
            port: s.port,
            protocol: s.protocol,
        })
        .collect();
    let ports = |p: Protocol| {
        let mut v: Vec<u16> = services
            .iter()
            .filter(|s| s.protocol == p)
            .map(|s| s.port)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let cp = fleet.control_plane();
    let up_flags = vec![
        "--ssh".to_string(),
        "--accept-routes".to_string(),
        format!("--hostname={}", node.name),
        format!("--advertise-tags={}", tags.join(",")),
    ];
    // OpenSSH's destination takes a bare IPv6 address (`user@fd7a::1`): brackets are for
    // scp and URLs, and `ssh user@[fd7a::1]` fails to resolve `[fd7a::1]`.
    let ssh_target = format!("{}@{}", node.ssh_user, node.tailscale_ip);
    NodeSpec {
        name: node.name.clone(),
        roles: node.roles.clone(),
        up_flags,
        tailscale_auth: fleet.settings.tailscale_auth,
        tcp_ports: ports(Protocol::Tcp),
        udp_ports: ports(Protocol::Udp),
        services,
        agent: AgentArgs {
            node_name: node.name.to_string(),
            control_plane: host_port(&cp.tailscale_ip, fleet.settings.control_plane_port),
            roles: node.roles.iter().map(|r| r.to_string()).collect(),
            nats_url: fleet.settings.nats_url.to_string(),
        },
        secrets: vec![SecretRef {
            name: AUTHKEY_SECRET.to_string(),
            file: authkey_file(&node.name),
        }],
        access: Access {
            address: node.tailscale_ip,
            ssh_user: node.ssh_user.clone(),
            ssh_target,
            os: node.os,
            host_key: node.host_key.clone(),
            public_address: node.public_address.clone(),
        },
        is_control_plane: node.name == fleet.settings.control_plane,
        state_version: fleet.state_version_of(node).map(|v| v.to_string()),
        models: node.models.clone(),
        gpus: node.resources.gpu.filter(|g| *g > 0),
        tags,
    }
}

/// Plans every node, sorted by name.
pub fn node_specs(fleet: &Fleet) -> Vec<NodeSpec> {
    fleet.nodes.iter().map(|n| node_spec(fleet, n)).collect()
}
