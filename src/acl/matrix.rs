//! Who can reach what: every tag and group of the fleet against every node, evaluated on a policy.

use super::check::principals::{named_principals, node_principals, NONROOT_PROBE};
use super::eval::{entry_text, Evaluator, Principal, SshDecision};
use super::intents;
use super::policy::Policy;
use super::ports::PortSet;
use crate::model::Fleet;
use serde::Serialize;
use std::collections::BTreeSet;

/// What one source may do on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Ports reachable over TCP, UDP or SCTP.
    pub ports: PortSet,
    /// What is reachable per protocol, as the rules write it: `22,4000/tcp`, `53/udp`, `icmp`.
    pub protocols: Vec<String>,
    /// Tailscale SSH: `root` and/or `nonroot` when accepted (`…(check)` when a check rule applies).
    pub ssh: Vec<String>,
}

impl Cell {
    /// `22,4000 ssh:root,nonroot` (TCP only), `22/tcp 53/udp icmp` (several protocols), or `-`
    /// when nothing is allowed.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        let tcp_only = self.protocols.len() == 1 && self.protocols[0].ends_with("/tcp");
        if tcp_only {
            parts.push(self.ports.to_string());
        } else {
            parts.extend(self.protocols.iter().cloned());
        }
        if !self.ssh.is_empty() {
            parts.push(format!("ssh:{}", self.ssh.join(",")));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Sources × nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// Row names: tags, groups, then the logins, `user:*@domain`s, role autogroups and
    /// `autogroup:shared` the policy names, each sorted.
    pub sources: Vec<String>,
    /// Column names: nodes.
    pub nodes: Vec<String>,
    /// `cells[source][node]`.
    pub cells: Vec<Vec<Cell>>,
}

/// Evaluates `policy` for every tag and group of the fleet (and of the policy), and every
/// principal the policy names ([`super::check::principals::named_principals`]), against every node.
pub fn matrix(fleet: &Fleet, policy: &Policy) -> Matrix {
    let intents = intents::intents(fleet);
    let tags: BTreeSet<&String> = intents
        .all_tags
        .iter()
        .chain(policy.tag_owners.keys())
        .collect();
    let groups: BTreeSet<&String> = intents.groups.iter().chain(policy.groups.keys()).collect();
    let sources: Vec<Principal> = tags
        .into_iter()
        .map(|t| Principal::tag(t))
        .chain(groups.into_iter().map(|g| Principal::group(g)))
        .chain(named_principals(&[policy]))
        .collect();
    let nodes = node_principals(fleet);
    let ev = Evaluator::new(policy).with_nodes(nodes.clone());
    let cells = sources
        .iter()
        .map(|s| {
            nodes
                .iter()
                .map(|d| {
                    let ssh = ["root", NONROOT_PROBE]
                        .iter()
                        .filter_map(|u| match ev.ssh(s, d, u) {
                            SshDecision::Accept(_) => Some(u.to_string()),
                            SshDecision::Check(_) => Some(format!("{u}(check)")),
                            SshDecision::Deny => None,
                        })
                        .collect();
                    let access = ev.access(s, d);
                    Cell {
                        ports: access.port_union(),
                        protocols: access
                            .entries()
                            .into_iter()
                            .map(|(k, p)| entry_text(k, &p))
                            .collect(),
                        ssh,
                    }
                })
                .collect()
        })
        .collect();
    Matrix {
        sources: sources.into_iter().map(|s| s.name).collect(),
        nodes: nodes.into_iter().map(|n| n.name).collect(),
        cells,
    }
}

impl Matrix {
    /// A plain-text table, columns padded.
    pub fn table(&self) -> String {
        let mut rows: Vec<Vec<String>> = vec![std::iter::once("source".to_string())
            .chain(self.nodes.iter().cloned())
            .collect()];
        for (s, cells) in self.sources.iter().zip(&self.cells) {
            rows.push(
                std::iter::once(s.clone())
                    .chain(cells.iter().map(Cell::text))
                    .collect(),
            );
        }
        let cols = self.nodes.len() + 1;
        let widths: Vec<usize> = (0..cols)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// A Graphviz digraph: sources → nodes, edges labelled with ports and SSH users.
    pub fn dot(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let mut out = String::from("digraph acl {\n  rankdir=LR;\n");
        for s in &self.sources {
            out.push_str(&format!("  {} [shape=box];\n", q(s)));
        }
        for n in &self.nodes {
            out.push_str(&format!("  {} [shape=ellipse];\n", q(n)));
        }
        for (s, cells) in self.sources.iter().zip(&self.cells) {
            for (n, c) in self.nodes.iter().zip(cells) {
                if c.protocols.is_empty() && c.ssh.is_empty() {
                    continue;
                }
                out.push_str(&format!(
                    "  {} -> {} [label={}];\n",
                    q(s),
                    q(n),
                    q(&c.text())
                ));
            }
        }
        out.push_str("}\n");
        out
    }
}
