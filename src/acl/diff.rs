//! The blast radius of a policy change (`fleetnix acl diff`, and what `acl set` shows before it
//! applies): per principal, the node:port pairs it gains and loses and the Tailscale SSH logins it
//! gains and loses, both policies evaluated with the same [`Evaluator`] against the fleet's nodes.
//!
//! Principals: every tag and group of the fleet or of either policy, "any member"
//! (`autogroup:member`), the logins, `user:*@domain`s, role autogroups and `autogroup:shared`
//! either policy names, and each fleet node whose change is not just that of its tags (a rule
//! naming its address). Access is compared per IP protocol as the rules write it (ICMP following
//! other traffic is not listed); SSH is probed as `root`, as any non-root user and as every user
//! either policy's `ssh` rules name.

use super::check::principals::{named_principals, node_principals, NONROOT_PROBE};
use super::eval::{entry_text, Access, Evaluator, Principal, SshDecision};
use super::intents;
use super::policy::{self, Policy, PolicyError};
use crate::model::Fleet;
use serde::Serialize;
use std::collections::BTreeSet;

/// Network access to one node over one protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortChange {
    /// The node.
    pub node: String,
    /// The ports and protocol, as `acl matrix` writes them: `22/tcp`, `1-21,23-65535/tcp`, `icmp`.
    pub ports: String,
}

/// One Tailscale SSH login.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SshChange {
    /// The node.
    pub node: String,
    /// The local user (`root`, `any non-root user`, or a name an `ssh` rule lists).
    pub user: String,
    /// `accept`, or `check` (re-authentication first).
    pub action: String,
}

/// What one principal gains and loses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrincipalDiff {
    /// The principal (`tag:worker`, `group:operators`, `alice@example.com`, `worker-01`).
    pub principal: String,
    /// Network access it gains, sorted by node then protocol.
    pub gains: Vec<PortChange>,
    /// Network access it loses.
    pub loses: Vec<PortChange>,
    /// SSH logins it gains.
    pub ssh_gains: Vec<SshChange>,
    /// SSH logins it loses.
    pub ssh_loses: Vec<SshChange>,
}

impl PrincipalDiff {
    fn is_empty(&self) -> bool {
        self.gains.is_empty()
            && self.loses.is_empty()
            && self.ssh_gains.is_empty()
            && self.ssh_loses.is_empty()
    }

    /// Does it lose anything?
    pub fn has_losses(&self) -> bool {
        !self.loses.is_empty() || !self.ssh_loses.is_empty()
    }

    /// Same changes as `o`, whoever the principal?
    fn same_changes(&self, o: &PrincipalDiff) -> bool {
        self.gains == o.gains
            && self.loses == o.loses
            && self.ssh_gains == o.ssh_gains
            && self.ssh_loses == o.ssh_loses
    }
}

/// The blast radius of replacing one policy with another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// What the old policy is called (a file, `tailnet (remote)`).
    pub old: String,
    /// What the new policy is called.
    pub new: String,
    /// The principals whose access changes, sorted by name.
    pub principals: Vec<PrincipalDiff>,
}

impl PolicyDiff {
    /// No principal's access changes?
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
    }

    /// Does any principal lose access?
    pub fn has_losses(&self) -> bool {
        self.principals.iter().any(PrincipalDiff::has_losses)
    }

    /// The principals that lose something, sorted.
    pub fn losers(&self) -> Vec<String> {
        self.principals
            .iter()
            .filter(|p| p.has_losses())
            .map(|p| p.principal.clone())
            .collect()
    }

    /// The diff as JSON: `old`, `new`, `losses` (does anyone lose access), `principals`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "old": self.old,
            "new": self.new,
            "losses": self.has_losses(),
            "principals": self.principals,
        })
    }

    /// The diff as text: one block per principal, `-`/`+` lines for lost and gained access.
    pub fn text(&self) -> String {
        if self.is_empty() {
            return format!("no change in access from {} to {}\n", self.old, self.new);
        }
        let mut o = format!("access from {} to {}:\n", self.old, self.new);
        for p in &self.principals {
            o.push_str(&format!("{}\n", p.principal));
            for c in &p.loses {
                o.push_str(&format!("  - {}:{}\n", c.node, c.ports));
            }
            for c in &p.ssh_loses {
                o.push_str(&format!(
                    "  - ssh {} as {}{}\n",
                    c.node,
                    c.user,
                    check_mark(c)
                ));
            }
            for c in &p.gains {
                o.push_str(&format!("  + {}:{}\n", c.node, c.ports));
            }
            for c in &p.ssh_gains {
                o.push_str(&format!(
                    "  + ssh {} as {}{}\n",
                    c.node,
                    c.user,
                    check_mark(c)
                ));
            }
        }
        o
    }
}

fn check_mark(c: &SshChange) -> &'static str {
    if c.action == "check" {
        " (check)"
    } else {
        ""
    }
}

/// What one principal may do on every node under one policy.
struct Reach {
    access: Vec<Access>,
    ssh: Vec<BTreeSet<SshChange>>,
}

fn reach(ev: &Evaluator, p: &Principal, nodes: &[Principal], users: &[String]) -> Reach {
    let access = nodes.iter().map(|d| ev.access(p, d)).collect();
    let ssh = nodes
        .iter()
        .map(|d| {
            users
                .iter()
                .filter_map(|u| {
                    let action = match ev.ssh(p, d, u) {
                        SshDecision::Accept(_) => "accept",
                        SshDecision::Check(_) => "check",
                        SshDecision::Deny => return None,
                    };
                    let user = if u == NONROOT_PROBE {
                        "any non-root user".to_string()
                    } else {
                        u.clone()
                    };
                    Some(SshChange {
                        node: d.name.clone(),
                        user,
                        action: action.to_string(),
                    })
                })
                .collect()
        })
        .collect();
    Reach { access, ssh }
}

fn changes(a: &Access, b: &Access, node: &str) -> Vec<PortChange> {
    a.minus(b)
        .entries()
        .into_iter()
        .map(|(k, ports)| PortChange {
            node: node.to_string(),
            ports: entry_text(k, &ports),
        })
        .collect()
}

fn principal_diff(name: &str, old: &Reach, new: &Reach, nodes: &[Principal]) -> PrincipalDiff {
    let mut d = PrincipalDiff {
        principal: name.to_string(),
        gains: Vec::new(),
        loses: Vec::new(),
        ssh_gains: Vec::new(),
        ssh_loses: Vec::new(),
    };
    for (i, n) in nodes.iter().enumerate() {
        d.gains
            .extend(changes(&new.access[i], &old.access[i], &n.name));
        d.loses
            .extend(changes(&old.access[i], &new.access[i], &n.name));
        d.ssh_gains
            .extend(new.ssh[i].difference(&old.ssh[i]).cloned());
        d.ssh_loses
            .extend(old.ssh[i].difference(&new.ssh[i]).cloned());
    }
    d
}

/// The SSH users probed: root, any non-root user, and every name either policy's `ssh` rules list.
fn ssh_users(policies: &[&Policy]) -> Vec<String> {
    let named: BTreeSet<String> = policies
        .iter()
        .flat_map(|p| p.ssh.iter().flatten())
        .flat_map(|r| r.users.iter())
        .map(|u| u.value.clone())
        .filter(|u| !u.contains(':') && u != "root")
        .collect();
    ["root".to_string(), NONROOT_PROBE.to_string()]
        .into_iter()
        .chain(named.into_iter().filter(|u| u != NONROOT_PROBE))
        .collect()
}

/// The blast radius of replacing `old` with `new` for `fleet`'s nodes.
pub fn diff(
    fleet: &Fleet,
    old: &Policy,
    new: &Policy,
    old_name: &str,
    new_name: &str,
) -> PolicyDiff {
    let intents = intents::intents(fleet);
    let tags: BTreeSet<&String> = intents
        .all_tags
        .iter()
        .chain(old.tag_owners.keys())
        .chain(new.tag_owners.keys())
        .collect();
    let groups: BTreeSet<&String> = intents
        .groups
        .iter()
        .chain(old.groups.keys())
        .chain(new.groups.keys())
        .collect();
    let sources: Vec<Principal> = tags
        .into_iter()
        .map(|t| Principal::tag(t))
        .chain(groups.into_iter().map(|g| Principal::group(g)))
        .chain(std::iter::once(Principal::any_member()))
        .chain(named_principals(&[old, new]))
        .collect();
    let nodes = node_principals(fleet);
    let users = ssh_users(&[old, new]);
    let old_ev = Evaluator::new(old).with_nodes(nodes.clone());
    let new_ev = Evaluator::new(new).with_nodes(nodes.clone());
    let of = |p: &Principal| {
        principal_diff(
            &p.name,
            &reach(&old_ev, p, &nodes, &users),
            &reach(&new_ev, p, &nodes, &users),
            &nodes,
        )
    };
    let mut out: Vec<PrincipalDiff> = sources.iter().map(of).collect();
    // A node is shown when its change is not just that of a device with its tags (a rule names
    // its address).
    for n in &nodes {
        let by_tags = Principal {
            ip: None,
            other_ip_unknown: false,
            ..n.clone()
        };
        let own = of(n);
        if !own.same_changes(&of(&by_tags)) {
            out.push(own);
        }
    }
    out.retain(|d| !d.is_empty());
    out.sort_by(|a, b| a.principal.cmp(&b.principal));
    out.dedup_by(|a, b| a.principal == b.principal);
    PolicyDiff {
        old: old_name.to_string(),
        new: new_name.to_string(),
        principals: out,
    }
}

/// [`diff`] of two policy texts (HuJSON).
pub fn diff_texts(
    fleet: &Fleet,
    old: &str,
    new: &str,
    old_name: &str,
    new_name: &str,
) -> Result<PolicyDiff, PolicyError> {
    let old_p = policy::parse(old)?.policy;
    let new_p = policy::parse(new)?.policy;
    Ok(diff(fleet, &old_p, &new_p, old_name, new_name))
}
