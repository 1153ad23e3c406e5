//! The accesses the fleet needs ([`intents`]), derived from the catalog and the rendered
//! configuration; the policy is rendered from them by [`crate::acl::render`] and checked against
//! them by [`super::check`].
//!
//! Access comes from [`intents`]: every catalog row (its `allow` sources → the tags of the nodes
//! hosting its role, on its port), what the rendered node configuration needs (every agent → the
//! control plane's LiteLLM port and NATS), the deployers' SSH as root (fleet.yml `deployers`:
//! the operators' group by default), the control plane's health checks (the services on the other
//! nodes), and the operators' SSH. The control plane itself has no SSH: Tailscale SSH authorises a
//! device, not the process on it, so SSH from it would make every service there root on every node. The same intents
//! generate the policy's `tests` and `sshTests`, so the control server refuses a drifted policy.

use crate::model::{Fleet, Protocol};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Default NATS port when the URL names none.
pub const NATS_DEFAULT_PORT: u16 = 4222;

/// Why an access exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Purpose {
    /// A row of `services.yml`.
    Service {
        /// Service id.
        name: String,
        /// Human name.
        description: Option<String>,
        /// Hosting role.
        role: String,
    },
    /// Agents connect to the control plane's LiteLLM (`--control-plane`, fleet.yml `control_plane_port`).
    AgentLitellm,
    /// Agents connect to NATS (`--nats-url`, fleet.yml `nats_url`).
    AgentNats,
    /// Deploys: the deployers (fleet.yml `deployers`) reach every node over Tailscale SSH as root.
    Deploy,
    /// Health checks: the control plane probes the services of the other nodes.
    Health,
    /// Operators reach every node over Tailscale SSH.
    OperatorSsh,
}

impl Purpose {
    /// Is this something the rendered configuration cannot work without (as opposed to a catalog permission)?
    pub fn required(&self) -> bool {
        !matches!(self, Purpose::Service { .. })
    }

    /// A few words: `services.yml nats`, `needed: agents' NATS (nats_url)`.
    pub fn short(&self) -> String {
        match self {
            Purpose::Service { name, .. } => format!("services.yml {name}"),
            Purpose::AgentLitellm => "needed: agents' LiteLLM (control_plane_port)".into(),
            Purpose::AgentNats => "needed: agents' NATS (nats_url)".into(),
            Purpose::Deploy => "needed: deploys over SSH".into(),
            Purpose::Health => "needed: health checks".into(),
            Purpose::OperatorSsh => "needed: operators' SSH".into(),
        }
    }

    /// A short human description.
    pub fn describe(&self) -> String {
        match self {
            Purpose::Service {
                name,
                description,
                role,
            } => match description {
                Some(d) => format!("catalog row {name} ({d}, role {role})"),
                None => format!("catalog row {name} (role {role})"),
            },
            Purpose::AgentLitellm => {
                "agents' LiteLLM endpoint (omp --control-plane, fleet.yml control_plane_port)"
                    .into()
            }
            Purpose::AgentNats => {
                "agents' NATS connection (omp --nats-url, fleet.yml nats_url)".into()
            }
            Purpose::Deploy => {
                "deploys: the deployers (fleet.yml deployers) over Tailscale SSH as root".into()
            }
            Purpose::Health => "health checks from the control plane".into(),
            Purpose::OperatorSsh => "operators' SSH (fleet.yml operators)".into(),
        }
    }
}

/// A network access the fleet needs or allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Intent {
    /// Why.
    pub purpose: Purpose,
    /// Source selectors, sorted.
    pub src: Vec<String>,
    /// Destination tags, sorted.
    pub dst_tags: Vec<String>,
    /// Ports, sorted.
    pub ports: Vec<u16>,
    /// Protocol.
    pub protocol: Protocol,
}

/// A Tailscale SSH access the fleet needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshIntent {
    /// Why.
    pub purpose: Purpose,
    /// Source selectors, sorted.
    pub src: Vec<String>,
    /// Destination tags, sorted.
    pub dst_tags: Vec<String>,
    /// Local users.
    pub users: Vec<String>,
}

/// Everything the policy must allow, and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Intents {
    /// Network accesses, in render order.
    pub net: Vec<Intent>,
    /// SSH accesses.
    pub ssh: Vec<SshIntent>,
    /// The deployers (fleet.yml `deployers`): the only sources with SSH as root, sorted.
    pub deploy_src: Vec<String>,
    /// Every tag carried by a node, sorted.
    pub node_tags: Vec<String>,
    /// Every tag in use (nodes' and the catalog's `allow`), sorted.
    pub all_tags: Vec<String>,
    /// Every group in use (operators' and the catalog's `allow`), sorted.
    pub groups: Vec<String>,
    /// Catalog rows whose role no node has (no rule is rendered for them).
    pub unhosted: Vec<String>,
}

/// The NATS port of `nats_url` (4222 when it names none).
pub fn nats_port(nats_url: &str) -> u16 {
    url::Url::parse(nats_url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(NATS_DEFAULT_PORT)
}

fn sorted<I: IntoIterator<Item = String>>(it: I) -> Vec<String> {
    it.into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Does intent source selector `sel` cover the identity `ident` (a tag or group name)?
pub(crate) fn covers(sel: &str, ident: &str) -> bool {
    sel == ident
        || sel == "*"
        || (sel == "autogroup:member" && ident.starts_with("group:"))
        || (sel == "autogroup:tagged" && ident.starts_with("tag:"))
}

/// Derives the accesses the fleet needs from the catalog and the settings.
pub fn intents(fleet: &Fleet) -> Intents {
    let cp = fleet.control_plane();
    let cp_tags = fleet.tags_of(cp);
    let node_tags = sorted(fleet.nodes.iter().flat_map(|n| fleet.tags_of(n)));
    let mut net = Vec::new();
    let mut unhosted = Vec::new();
    for s in &fleet.catalog.services {
        let dst_tags = sorted(
            fleet
                .nodes
                .iter()
                .filter(|n| n.has_role(&s.role))
                .flat_map(|n| fleet.tags_of(n)),
        );
        if dst_tags.is_empty() {
            unhosted.push(s.name.to_string());
            continue;
        }
        net.push(Intent {
            purpose: Purpose::Service {
                name: s.name.to_string(),
                description: s.description.clone(),
                role: s.role.to_string(),
            },
            src: sorted(s.allow.iter().cloned()),
            dst_tags,
            ports: vec![s.port],
            protocol: s.protocol,
        });
    }
    // Agents run on every node: they need the control plane's LiteLLM and NATS ports.
    for (purpose, port) in [
        (Purpose::AgentLitellm, fleet.settings.control_plane_port),
        (Purpose::AgentNats, nats_port(&fleet.settings.nats_url)),
    ] {
        net.push(Intent {
            purpose,
            src: node_tags.clone(),
            dst_tags: cp_tags.clone(),
            ports: vec![port],
            protocol: Protocol::Tcp,
        });
    }
    let ops = fleet.settings.operators.group.clone();
    let deployers = sorted(fleet.settings.deployers.iter().cloned());
    // The operators' own rules already give their group port 22 and every user.
    let other_deployers: Vec<String> = deployers.iter().filter(|d| **d != ops).cloned().collect();
    if !other_deployers.is_empty() {
        net.push(Intent {
            purpose: Purpose::Deploy,
            src: other_deployers.clone(),
            dst_tags: node_tags.clone(),
            ports: vec![22],
            protocol: Protocol::Tcp,
        });
    }
    // Health checks: the services of every node but the control plane, per tag.
    let mut health: BTreeMap<(String, Protocol), BTreeSet<u16>> = BTreeMap::new();
    for n in fleet.nodes.iter().filter(|n| n.name != cp.name) {
        for s in fleet.services_of(n) {
            for t in fleet.tags_of(n) {
                health.entry((t, s.protocol)).or_default().insert(s.port);
            }
        }
    }
    for ((tag, protocol), ports) in health {
        net.push(Intent {
            purpose: Purpose::Health,
            src: cp_tags.clone(),
            dst_tags: vec![tag],
            ports: ports.into_iter().collect(),
            protocol,
        });
    }
    net.push(Intent {
        purpose: Purpose::OperatorSsh,
        src: vec![ops.clone()],
        dst_tags: node_tags.clone(),
        ports: vec![22],
        protocol: Protocol::Tcp,
    });
    // Deployers log in as each node's ssh_user (root by default), and as root.
    let deploy_users = sorted(
        fleet
            .nodes
            .iter()
            .map(|n| n.ssh_user.to_string())
            .chain(std::iter::once("root".to_string())),
    );
    let mut ssh = Vec::new();
    if !other_deployers.is_empty() {
        ssh.push(SshIntent {
            purpose: Purpose::Deploy,
            src: other_deployers,
            dst_tags: node_tags.clone(),
            users: deploy_users,
        });
    }
    // Operators get root only when they are deployers.
    let ops_users = if deployers.contains(&ops) {
        vec!["root".into(), "autogroup:nonroot".into()]
    } else {
        vec!["autogroup:nonroot".into()]
    };
    ssh.push(SshIntent {
        purpose: Purpose::OperatorSsh,
        src: vec![ops.clone()],
        dst_tags: node_tags.clone(),
        users: ops_users,
    });
    let allow_sel = || fleet.catalog.services.iter().flat_map(|s| s.allow.iter());
    let all_tags = sorted(
        node_tags
            .iter()
            .cloned()
            .chain(allow_sel().filter(|a| a.starts_with("tag:")).cloned())
            .chain(deployers.iter().filter(|d| d.starts_with("tag:")).cloned()),
    );
    let groups = sorted(
        std::iter::once(ops)
            .chain(allow_sel().filter(|a| a.starts_with("group:")).cloned())
            .chain(
                deployers
                    .iter()
                    .filter(|d| d.starts_with("group:"))
                    .cloned(),
            ),
    );
    Intents {
        net,
        ssh,
        deploy_src: deployers,
        node_tags,
        all_tags,
        groups,
        unhosted,
    }
}

impl Intents {
    /// Is a required intent already granted by the catalog rows (so it needs no rule of its own)?
    pub(crate) fn covered_by_catalog(&self, need: &Intent) -> bool {
        need.src.iter().all(|ident| {
            need.ports.iter().all(|p| {
                self.net.iter().any(|i| {
                    matches!(i.purpose, Purpose::Service { .. })
                        && i.protocol == need.protocol
                        && i.ports.contains(p)
                        && i.src.iter().any(|s| covers(s, ident))
                        && need.dst_tags.iter().all(|t| i.dst_tags.contains(t))
                })
            })
        })
    }

    /// The identities tests are generated for: every tag and group in use.
    pub fn identities(&self) -> Vec<String> {
        self.all_tags
            .iter()
            .chain(self.groups.iter())
            .cloned()
            .collect()
    }

    /// Is `ident` (a tag or group) allowed to reach tag `tag` on `port`/`protocol` by the intents?
    pub fn allows(&self, ident: &str, tag: &str, port: u16, protocol: Protocol) -> bool {
        self.net.iter().any(|i| {
            i.protocol == protocol
                && i.ports.contains(&port)
                && i.dst_tags.iter().any(|t| t == tag)
                && i.src.iter().any(|s| covers(s, ident))
        })
    }

    /// Is `ident` (a tag, group or login) one of the deployers, the only sources with SSH as root?
    pub fn is_deployer(&self, ident: &str) -> bool {
        self.deploy_src.iter().any(|d| d == ident)
    }

    /// The intents that allow `ident` to reach tag `tag` on `port`.
    pub fn reasons(&self, ident: &str, tags: &[String], port: u16) -> Vec<&Intent> {
        self.net
            .iter()
            .filter(|i| {
                i.ports.contains(&port)
                    && i.dst_tags.iter().any(|t| tags.contains(t))
                    && i.src.iter().any(|s| covers(s, ident))
            })
            .collect()
    }
}
