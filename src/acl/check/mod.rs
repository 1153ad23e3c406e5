//! Compares any policy file with the fleet: over-grants, missing grants, format problems,
//! unknown tags, groups, hosts and ipsets, tag ownership, SSH that deploys need, failing tests.
//!
//! "Allowed" is what the rendered policy ([`crate::acl::render`]) allows, evaluated with the same
//! [`Evaluator`]: an over-grant is access the checked policy gives and the rendered one does not;
//! a missing grant is the reverse, explained by the catalog row or configuration need behind it.
//! Both are compared per IP protocol. The identities compared are every tag and group, any member,
//! every login either policy names, a user of each `user:*@domain`, each role autogroup and
//! `autogroup:shared` the policy names, and for rules naming addresses the nodes they cover and
//! "another device" at those addresses. What cannot be evaluated (an ipset the checker cannot
//! read, an address range covering part of the IPv6 range when nodes.yml gives only IPv4) is
//! reported as `unverifiable`, never taken as matching nothing.

use super::addrs::{AddrSet, Covers, TAILNET_V4, TAILNET_V6};
use super::eval::{
    entry_text, Access, Evaluator, Principal, ProtoKey, SshDecision, ROLE_AUTOGROUPS,
};
use super::intents::{Intent, Intents};
use super::policy::{self, IssueKind, Loc, NetRule, Policy, PolicyError, Selector, TCP, UDP};
use super::ports::PortSet;
use crate::model::{Fleet, Node, Protocol};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

mod grants;
pub mod principals;
mod references;
mod ssh;
use grants::*;
use principals::*;
use references::*;
use ssh::*;

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
    /// An `ipset:` not defined in `ipsets`.
    UnknownIpset,
    /// A tag the fleet's nodes carry that has no `tagOwners` entry.
    TagWithoutOwner,
    /// A tag owner other than the operators' group or `autogroup:admin`.
    TagOwner,
    /// A tag owns a tag with more access: its devices can give themselves that access.
    TagEscalation,
    /// Access the checker cannot evaluate (an ipset it cannot read, a partly covered address range).
    Unverifiable,
    /// A source reaches a port the catalog does not allow it.
    OverGrant,
    /// Something the catalog or the rendered configuration needs is not allowed.
    MissingGrant,
    /// An `ssh` rule lets a source in as a user the fleet does not allow it.
    SshOverGrant,
    /// No `ssh` section: Tailscale SSH is denied to everyone.
    NoSsh,
    /// A deployer cannot deploy to a node over Tailscale SSH.
    SshDeploy,
    /// A source other than the deployers (fleet.yml `deployers`) may SSH to a node as root.
    SshRoot,
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
    /// The IP protocol concerned (grant findings): `tcp`, `udp`, `icmp`, `proto 47`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
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
            proto: None,
        }
    }

    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

/// Parses and evaluates the policy rendered for `fleet`.
pub fn rendered_policy(fleet: &Fleet) -> Result<(Policy, Intents), PolicyError> {
    let r = super::render::render(fleet, "the fleet");
    let parsed = policy::parse(&r.text)?;
    Ok((parsed.policy, r.intents))
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
    let want_ev = Evaluator::new(&rendered).with_nodes(nodes.clone());
    let have = Evaluator::new(policy).with_nodes(nodes.clone());
    let mut want = WantCache {
        ev: &want_ev,
        nodes: &nodes,
        rows: HashMap::new(),
    };

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
    tag_owners(fleet, policy, &have, &nodes, &mut out);
    unverifiable(policy, &have, &nodes, &mut out);

    let idents = identities(&intents, policy, &rendered);
    for rule in &policy.rules {
        over_grants(fleet, &have, &mut want, rule, &idents, &nodes, &mut out);
    }
    missing_grants(
        fleet, policy, &rendered, &intents, &have, &mut want, &idents, &nodes, &mut out,
    );
    ssh_over_grants(fleet, policy, &have, &want_ev, &idents, &nodes, &mut out);
    ssh_root(
        fleet, policy, &have, &want_ev, &intents, &idents, &nodes, &mut out,
    );

    // SSH for deploys and operators.
    ssh_needed(fleet, policy, &have, &intents, &nodes, &mut out);

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
