//! Compares any policy file with the fleet: over-grants, missing grants, format problems,
//! unknown tags and groups, tags without owners, SSH that deploys need, failing tests.
//!
//! "Allowed" is what the rendered policy ([`super::render`]) allows, evaluated with the same
//! [`Evaluator`]: an over-grant is access the checked policy gives and the rendered one does not;
//! a missing grant is the reverse, explained by the catalog row or configuration need behind it.
//! Protocols are not compared (a rule without `proto` is not an over-grant for opening UDP too).

use super::eval::{Evaluator, Principal, SshDecision};
use super::policy::{self, IssueKind, Loc, NetRule, Policy, PolicyError, Selector};
use super::ports::PortSet;
use super::render::{self, Intents};
use crate::model::{Fleet, Node};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A field that is not part of the policy format.
    UnknownField,
    /// A field given twice.
    DuplicateField,
    /// A value the format does not allow.
    InvalidValue,
    /// A destination that is not `host:ports`.
    MalformedHostPort,
    /// A tag not defined in `tagOwners`.
    UnknownTag,
    /// A group not defined in `groups`.
    UnknownGroup,
    /// A host alias not defined in `hosts`.
    UnknownHost,
    /// A tag the fleet's nodes carry that has no `tagOwners` entry.
    TagWithoutOwner,
    /// A source reaches a port the catalog does not allow it.
    OverGrant,
    /// Something the catalog or the rendered configuration needs is not allowed.
    MissingGrant,
    /// No `ssh` section: Tailscale SSH is denied to everyone.
    NoSsh,
    /// The control plane cannot deploy to a node over Tailscale SSH.
    SshDeploy,
    /// The operators cannot SSH to a node.
    SshOperators,
    /// One of the policy's own `tests`/`sshTests` fails.
    TestFails,
}

impl From<IssueKind> for FindingKind {
    fn from(k: IssueKind) -> Self {
        match k {
            IssueKind::UnknownField => FindingKind::UnknownField,
            IssueKind::DuplicateField => FindingKind::DuplicateField,
            IssueKind::InvalidValue => FindingKind::InvalidValue,
            IssueKind::MalformedHostPort => FindingKind::MalformedHostPort,
        }
    }
}

/// One problem of the checked policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// Line in the policy (1-based).
    pub line: usize,
    /// Column in the policy (1-based).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What would be right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The source identity concerned (grant findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The nodes concerned, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The ports concerned (grant findings), e.g. `5432,6379,7233`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
}

impl Finding {
    fn at(kind: FindingKind, loc: Loc, message: String) -> Self {
        Finding {
            kind,
            line: loc.line,
            column: loc.column,
            message,
            hint: None,
            source: None,
            nodes: Vec::new(),
            ports: None,
        }
    }

    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

fn node_principal(fleet: &Fleet, n: &Node) -> Principal {
    Principal::node(n.name.as_str(), n.tailscale_ip, &fleet.tags_of(n))
}

/// The fleet's nodes as principals.
pub fn node_principals(fleet: &Fleet) -> Vec<Principal> {
    fleet
        .nodes
        .iter()
        .map(|n| node_principal(fleet, n))
        .collect()
}

/// Parses and evaluates the policy rendered for `fleet`.
pub fn rendered_policy(fleet: &Fleet) -> Result<(Policy, Intents), PolicyError> {
    let r = render::render(fleet, "the fleet");
    let parsed = policy::parse(&r.text)?;
    Ok((parsed.policy, r.intents))
}

fn top(policy: &Policy, section: &str) -> Loc {
    policy
        .sections
        .get(section)
        .copied()
        .unwrap_or(Loc { line: 1, column: 1 })
}

fn references(policy: &Policy, out: &mut Vec<Finding>) {
    let mut seen = BTreeSet::new();
    let mut check = |sel: &Selector, loc: Loc, out: &mut Vec<Finding>| {
        let (kind, name, defined, section, known): (_, _, _, _, Vec<&String>) = match sel {
            Selector::Tag(t) => (
                FindingKind::UnknownTag,
                t,
                policy.tag_owners.contains_key(t),
                "tagOwners",
                policy.tag_owners.keys().collect(),
            ),
            Selector::Group(g) => (
                FindingKind::UnknownGroup,
                g,
                policy.groups.contains_key(g),
                "groups",
                policy.groups.keys().collect(),
            ),
            Selector::Host(h) => (
                FindingKind::UnknownHost,
                h,
                policy.hosts.contains_key(h),
                "hosts",
                policy.hosts.keys().collect(),
            ),
            _ => return,
        };
        if defined || !seen.insert((name.clone(), loc)) {
            return;
        }
        let close = known
            .iter()
            .map(|k| (strsim::jaro_winkler(name, k), *k))
            .filter(|(s, _)| *s > 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| format!("did you mean {k:?}? "))
            .unwrap_or_default();
        out.push(
            Finding::at(kind, loc, format!("{name:?} is not defined in {section:?}"))
                .hint(format!("{close}define it in \"{section}\" or remove it")),
        );
    };
    let parse_at = |s: &str| Selector::parse(s).ok();
    for r in &policy.rules {
        for s in &r.src {
            check(&s.value, s.loc, out);
        }
        for d in &r.dst {
            check(&d.value.host, d.loc, out);
        }
    }
    for r in policy.ssh.iter().flatten() {
        for s in r.src.iter().chain(r.dst.iter()) {
            check(&s.value, s.loc, out);
        }
    }
    for owners in policy.tag_owners.values() {
        for o in &owners.value {
            if let Some(sel) = parse_at(&o.value) {
                check(&sel, o.loc, out);
            }
        }
    }
    for t in &policy.tests {
        if let Some(sel) = parse_at(&t.src.value) {
            check(&sel, t.src.loc, out);
        }
        for d in t.accept.iter().chain(t.deny.iter()) {
            if let Ok((sel, _)) = policy::parse_test_dst(&d.value) {
                check(&sel, d.loc, out);
            }
        }
    }
    for t in &policy.ssh_tests {
        for s in std::iter::once(&t.src).chain(t.dst.iter()) {
            if let Some(sel) = parse_at(&s.value) {
                check(&sel, s.loc, out);
            }
        }
    }
}

/// Does `rule` apply to node principal `p` through an address selector (IP, CIDR, host)?
fn by_address(ev: &Evaluator, rule: &NetRule, p: &Principal) -> bool {
    rule.src.iter().any(|s| {
        matches!(
            s.value,
            Selector::Ip(_) | Selector::Cidr(_) | Selector::Host(_)
        ) && ev.src_matches(&s.value, p)
    })
}

/// Explains why ports are not allowed to `src` on `node`: the catalog rows that use them.
fn explain_over(fleet: &Fleet, node: &Node, over: &PortSet) -> String {
    let rows: Vec<String> = fleet
        .services_of(node)
        .filter(|s| over.contains(s.port))
        .map(|s| format!("{} {} is for {} only", s.name, s.port, s.allow.join(", ")))
        .collect();
    if rows.is_empty() {
        String::new()
    } else {
        format!(" ({})", rows.join("; "))
    }
}

fn join_nodes(nodes: &[String]) -> String {
    nodes.join(", ")
}

/// Checks `text` (a policy file) against `fleet`. Findings are sorted by position.
pub fn check(fleet: &Fleet, text: &str) -> Result<Vec<Finding>, PolicyError> {
    let parsed = policy::parse(text)?;
    let policy = &parsed.policy;
    let mut out: Vec<Finding> = parsed
        .issues
        .iter()
        .map(|i| Finding {
            hint: i.hint.clone(),
            ..Finding::at(i.kind.into(), i.loc, i.message.clone())
        })
        .collect();
    references(policy, &mut out);

    let nodes = node_principals(fleet);
    let (rendered, intents) = rendered_policy(fleet)?;
    let want = Evaluator::new(&rendered).with_nodes(nodes.clone());
    let have = Evaluator::new(policy).with_nodes(nodes.clone());

    // Tags the fleet's nodes carry but nobody owns.
    let mut carriers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &fleet.nodes {
        for t in fleet.tags_of(n) {
            carriers.entry(t).or_default().push(n.name.to_string());
        }
    }
    for (tag, on) in &carriers {
        if !policy.tag_owners.contains_key(tag) {
            out.push(
                Finding::at(
                    FindingKind::TagWithoutOwner,
                    top(policy, "tagOwners"),
                    format!("{tag} (carried by {}) has no \"tagOwners\" entry: no auth key or device can be given this tag", on.join(", ")),
                )
                .hint(format!("add \"{tag}\": [\"{}\"] to \"tagOwners\"", fleet.settings.operators.group)),
            );
        }
    }

    // Identities to compare: tags and groups in use on either side, any member, and the nodes
    // themselves (for rules naming addresses).
    let mut idents: Vec<Principal> = Vec::new();
    let tags: BTreeSet<&String> = intents
        .all_tags
        .iter()
        .chain(policy.tag_owners.keys())
        .collect();
    idents.extend(tags.into_iter().map(|t| Principal::tag(t)));
    let groups: BTreeSet<&String> = intents.groups.iter().chain(policy.groups.keys()).collect();
    idents.extend(groups.into_iter().map(|g| Principal::group(g)));
    idents.push(Principal::any_member());

    // Over-grants, per rule and source.
    for rule in &policy.rules {
        for src in idents.iter().chain(nodes.iter()) {
            let is_node = nodes.contains(src);
            if is_node && !by_address(&have, rule, src) {
                continue;
            }
            let mut per_node: BTreeMap<PortSet, Vec<usize>> = BTreeMap::new();
            for (k, dst) in nodes.iter().enumerate() {
                let over = have
                    .ports_by_rule(rule, src, dst)
                    .minus(&want.ports(src, dst, None));
                if !over.is_empty() {
                    per_node.entry(over).or_default().push(k);
                }
            }
            for (over, ks) in per_node {
                let names: Vec<String> = ks
                    .iter()
                    .map(|&k| fleet.nodes[k].name.to_string())
                    .collect();
                let first = ks[0];
                let allowed = want.ports(src, &nodes[first], None);
                let what = if over.is_all() || over.union(&allowed).is_all() {
                    format!("every port ({over})")
                } else {
                    over.to_string()
                };
                let mut f = Finding::at(
                    FindingKind::OverGrant,
                    rule.loc,
                    format!(
                        "{}: {src} may reach {} on {what}, which the catalog does not allow{}",
                        rule.label(),
                        join_nodes(&names),
                        explain_over(fleet, &fleet.nodes[first], &over)
                    ),
                )
                .hint(format!(
                    "the fleet allows {src} on {}: {}",
                    join_nodes(&names),
                    if allowed.is_empty() {
                        "nothing".to_string()
                    } else {
                        allowed.to_string()
                    }
                ));
                f.source = Some(src.name.clone());
                f.nodes = names;
                f.ports = Some(over.to_string());
                out.push(f);
            }
        }
    }

    // Missing grants: one finding per source, each port with the needs and catalog rows behind it.
    let acls_loc = top(policy, "acls");
    for src in &idents {
        let mut lines = Vec::new();
        let mut names = Vec::new();
        let mut all = PortSet::new();
        let mut required = false;
        for (n, dst) in fleet.nodes.iter().zip(nodes.iter()) {
            let missing = want
                .ports(src, dst, None)
                .minus(&have.ports(src, dst, None));
            if missing.is_empty() {
                continue;
            }
            let tags = fleet.tags_of(n);
            let mut per_port = Vec::new();
            for &(lo, hi) in missing.ranges() {
                for port in lo..=hi {
                    let reasons = intents.reasons(&src.name, &tags, port);
                    required |= reasons.iter().any(|i| i.purpose.required());
                    let why: Vec<String> = reasons.iter().map(|i| i.purpose.short()).collect();
                    per_port.push(format!("{port} ({})", why.join(", ")));
                }
            }
            lines.push(format!("{} on {}", n.name, per_port.join(", ")));
            names.push(n.name.to_string());
            all.insert_set(&missing);
        }
        if lines.is_empty() {
            continue;
        }
        let what = if required {
            "which the rendered configuration needs or the catalog allows"
        } else {
            "which the catalog allows"
        };
        let mut f = Finding::at(
            FindingKind::MissingGrant,
            acls_loc,
            format!("{src} cannot reach {}, {what}", lines.join("; ")),
        )
        .hint(format!(
            "add acls rules from {src} to these ports (see `fleetnix acl render`)"
        ));
        f.source = Some(src.name.clone());
        f.nodes = names;
        f.ports = Some(all.to_string());
        out.push(f);
    }

    // SSH for deploys and operators.
    let cp = fleet.control_plane();
    let cp_p = node_principal(fleet, cp);
    let deploy_src = intents.deploy_src.join(", ");
    match &policy.ssh {
        None => out.push(
            Finding::at(
                FindingKind::NoSsh,
                Loc { line: 1, column: 1 },
                format!("the policy has no \"ssh\" section, so Tailscale SSH is denied to everyone: deploys from {deploy_src} ({}) as root fail, and operators cannot log in", cp.name),
            )
            .hint(format!("add ssh rules: {deploy_src} -> every node's tags as root; {} -> root, autogroup:nonroot", fleet.settings.operators.group)),
        ),
        Some(_) => {
            let ssh_loc = top(policy, "ssh");
            let mut cut = Vec::new();
            let mut no_port = Vec::new();
            for (n, dst) in fleet.nodes.iter().zip(nodes.iter()) {
                if !matches!(have.ssh(&cp_p, dst, &n.ssh_user), SshDecision::Accept(_)) {
                    cut.push(format!("{} as {}", n.name, n.ssh_user));
                } else if have.reach(&cp_p, dst, 22, policy::TCP).is_none() {
                    no_port.push(n.name.to_string());
                }
            }
            if !cut.is_empty() || !no_port.is_empty() {
                let mut parts = Vec::new();
                if !cut.is_empty() {
                    parts.push(format!("no ssh rule accepts {deploy_src} ({}) to {}", cp.name, cut.join(", ")));
                }
                if !no_port.is_empty() {
                    parts.push(format!("no acls rule lets it reach port 22 of {}", no_port.join(", ")));
                }
                let mut f = Finding::at(FindingKind::SshDeploy, ssh_loc, format!("Tailscale SSH deploys fail: {}", parts.join("; ")))
                    .hint(format!("{{\"action\": \"accept\", \"src\": {:?}, \"dst\": {:?}, \"users\": [\"root\"]}}", intents.deploy_src, intents.node_tags));
                f.source = Some(deploy_src.clone());
                out.push(f);
            }
            let ops = Principal::group(&fleet.settings.operators.group);
            let denied: Vec<String> = fleet
                .nodes
                .iter()
                .zip(nodes.iter())
                .filter(|(_, d)| have.ssh(&ops, d, "root") == SshDecision::Deny)
                .map(|(n, _)| n.name.to_string())
                .collect();
            if !denied.is_empty() {
                let mut f = Finding::at(
                    FindingKind::SshOperators,
                    ssh_loc,
                    format!("{} cannot Tailscale-SSH as root to {}", ops, denied.join(", ")),
                );
                f.source = Some(ops.name.clone());
                f.nodes = denied;
                out.push(f);
            }
        }
    }

    for t in have.run_tests() {
        out.push(Finding::at(
            FindingKind::TestFails,
            t.loc,
            format!("{} fails: {}", t.test, t.message),
        ));
    }

    out.sort_by(|a, b| {
        (a.line, a.column, a.kind, &a.message).cmp(&(b.line, b.column, b.kind, &b.message))
    });
    out.dedup();
    Ok(out)
}
