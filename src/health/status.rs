//! `fleetnix status`: the manifest's nodes as the tailnet sees them, and the drift
//! between the two. A pure function of a [`Fleet`] and a [`TailscaleStatus`].

use crate::model::{Fleet, NodeName, Role};
use crate::tailscale::{Connection, TailscaleStatus};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// One manifest node as the tailnet sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: NodeName,
    /// Its roles, in manifest order.
    pub roles: Vec<Role>,
    /// The manifest's address.
    pub address: IpAddr,
    /// Is there a tailnet device for it?
    pub present: bool,
    /// The device's tailnet addresses (empty when absent).
    pub tailnet_addresses: Vec<IpAddr>,
    /// Connected to the control server.
    pub online: bool,
    /// How traffic reaches it (`None` when absent).
    pub connection: Option<Connection>,
    /// Last seen (RFC 3339), only while offline.
    pub last_seen: Option<String>,
    /// Tags the device carries.
    pub tags: Vec<String>,
    /// Tags its roles give it.
    pub expected_tags: Vec<String>,
}

/// A difference between the manifest and the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// A manifest node with no tailnet device.
    Missing {
        /// The node.
        node: NodeName,
    },
    /// The device does not hold the manifest's address.
    Address {
        /// The node.
        node: NodeName,
        /// Manifest address.
        expected: IpAddr,
        /// The device's addresses.
        actual: Vec<IpAddr>,
    },
    /// The device's tags differ from the roles' tags.
    Tags {
        /// The node.
        node: NodeName,
        /// Tags from the roles, sorted.
        expected: Vec<String>,
        /// Tags on the device, sorted.
        actual: Vec<String>,
    },
    /// The node's device has a suffixed MagicDNS name (`worker-01-1`): an old device record
    /// held its name when it logged in.
    Renamed {
        /// The node.
        node: NodeName,
        /// The device's MagicDNS label.
        dns_label: String,
    },
    /// A tailnet device that is no manifest node.
    Unmanaged {
        /// Its host name.
        host_name: String,
        /// Its MagicDNS name.
        dns_name: String,
        /// Its addresses.
        addresses: Vec<IpAddr>,
    },
}

fn ips(v: &[IpAddr]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing { node } => write!(f, "{node}: in the manifest but not in the tailnet"),
            Drift::Address {
                node,
                expected,
                actual,
            } => write!(
                f,
                "{node}: manifest address {expected}, tailnet has {}",
                ips(actual)
            ),
            Drift::Tags {
                node,
                expected,
                actual,
            } => write!(
                f,
                "{node}: roles give tags {}, tailnet has {}",
                list(expected),
                list(actual)
            ),
            Drift::Renamed { node, dns_label } => write!(
                f,
                "{node}: its MagicDNS name is {dns_label}, not {node} (an old device record held the name when it logged in); fix: delete the old, offline record (admin console → Machines, or `DELETE /api/v2/device/{{id}}`; `fleetnix bootstrap {node}` with TS_API_KEY does it before a login), then rename this device to {node} (admin console → Edit machine name)"
            ),
            Drift::Unmanaged {
                host_name,
                addresses,
                ..
            } => write!(
                f,
                "{host_name}: in the tailnet ({}) but not in the manifest",
                ips(addresses)
            ),
        }
    }
}

/// The whole `status` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// Tailnet name, if logged in.
    pub tailnet: Option<String>,
    /// Backend state (`Running`, …).
    pub backend_state: String,
    /// Manifest nodes, sorted by name.
    pub nodes: Vec<NodeStatus>,
    /// Drift, sorted (missing, address, tags, renamed, unmanaged; then by name).
    pub drift: Vec<Drift>,
}

/// Compares the manifest with the tailnet.
pub fn status_report(fleet: &Fleet, ts: &TailscaleStatus) -> StatusReport {
    let devices = ts.devices();
    let mut matched: BTreeSet<usize> = BTreeSet::new();
    let mut nodes = Vec::with_capacity(fleet.nodes.len());
    let mut drift = Vec::new();
    for node in &fleet.nodes {
        let expected_tags = fleet.tags_of(node);
        let idx = devices
            .iter()
            .position(|d| d.peer.host_name == node.name.as_str())
            .or_else(|| {
                devices
                    .iter()
                    .position(|d| d.peer.dns_label() == node.name.as_str())
            });
        let Some(idx) = idx else {
            drift.push(Drift::Missing {
                node: node.name.clone(),
            });
            nodes.push(NodeStatus {
                name: node.name.clone(),
                roles: node.roles.clone(),
                address: node.tailscale_ip,
                present: false,
                tailnet_addresses: Vec::new(),
                online: false,
                connection: None,
                last_seen: None,
                tags: Vec::new(),
                expected_tags,
            });
            continue;
        };
        matched.insert(idx);
        let dev = devices[idx];
        let p = dev.peer;
        if !p.tailscale_ips.contains(&node.tailscale_ip) {
            drift.push(Drift::Address {
                node: node.name.clone(),
                expected: node.tailscale_ip,
                actual: p.tailscale_ips.clone(),
            });
        }
        if crate::tailscale::names::renamed(p.dns_label(), node.name.as_str()) {
            drift.push(Drift::Renamed {
                node: node.name.clone(),
                dns_label: p.dns_label().to_string(),
            });
        }
        let mut tags = p.tags.clone();
        tags.sort();
        tags.dedup();
        if tags != expected_tags {
            drift.push(Drift::Tags {
                node: node.name.clone(),
                expected: expected_tags.clone(),
                actual: tags.clone(),
            });
        }
        nodes.push(NodeStatus {
            name: node.name.clone(),
            roles: node.roles.clone(),
            address: node.tailscale_ip,
            present: true,
            tailnet_addresses: p.tailscale_ips.clone(),
            online: p.online,
            connection: Some(dev.connection()),
            last_seen: p.last_seen_time().map(|_| p.last_seen.clone()),
            tags,
            expected_tags,
        });
    }
    for (i, d) in devices.iter().enumerate() {
        if !matched.contains(&i) {
            drift.push(Drift::Unmanaged {
                host_name: d.peer.host_name.clone(),
                dns_name: d.peer.dns_name.clone(),
                addresses: d.peer.tailscale_ips.clone(),
            });
        }
    }
    drift.sort();
    StatusReport {
        tailnet: ts.current_tailnet.as_ref().map(|t| t.name.clone()),
        backend_state: ts.backend_state.clone(),
        nodes,
        drift,
    }
}
