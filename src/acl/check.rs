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
use super::matrix::NONROOT_PROBE;
use super::policy::{self, IssueKind, Loc, NetRule, Policy, PolicyError, Selector, TCP, UDP};
use super::ports::PortSet;
use crate::model::{Fleet, Node, Protocol};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

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
    let r = super::render::render(fleet, "the fleet");
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
            Selector::IpSet(i) => (
                FindingKind::UnknownIpset,
                i,
                policy.ipsets.contains_key(i),
                "ipsets",
                policy.ipsets.keys().collect(),
            ),
            _ => return,
        };
        if defined || !seen.insert((name.clone(), loc)) {
            return;
        }
        let close = crate::suggest::closest_in(name, known.iter().map(|k| k.as_str()))
            .map(|k| format!("did you mean {k:?}? "))
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

/// Logins, domains, role autogroups and `autogroup:shared` a policy names.
#[derive(Debug, Default)]
struct Named {
    logins: BTreeSet<String>,
    domains: BTreeSet<String>,
    roles: BTreeSet<String>,
    shared: bool,
}

impl Named {
    fn selector(&mut self, s: &Selector) {
        match s {
            Selector::User(u) => {
                self.logins.insert(u.clone());
            }
            Selector::UserDomain(d) => {
                self.domains.insert(d.clone());
            }
            Selector::Autogroup(a) if a == "shared" => self.shared = true,
            Selector::Autogroup(a) if ROLE_AUTOGROUPS.contains(&a.as_str()) => {
                self.roles.insert(a.clone());
            }
            _ => {}
        }
    }

    fn text(&mut self, s: &str) {
        if let Ok(sel) = Selector::parse(s) {
            self.selector(&sel);
        }
    }

    fn policy(&mut self, policy: &Policy) {
        for r in &policy.rules {
            for s in &r.src {
                self.selector(&s.value);
            }
            for d in &r.dst {
                self.selector(&d.value.host);
            }
        }
        for r in policy.ssh.iter().flatten() {
            for s in r.src.iter().chain(r.dst.iter()) {
                self.selector(&s.value);
            }
        }
        for owners in policy.tag_owners.values() {
            for o in &owners.value {
                self.text(&o.value);
            }
        }
        for members in policy.groups.values() {
            self.logins.extend(members.value.iter().cloned());
        }
        for t in &policy.tests {
            self.text(&t.src.value);
        }
        for t in &policy.ssh_tests {
            self.text(&t.src.value);
        }
    }
}

/// The identities compared: tags and groups of either side, any member, every login either side
/// names, a user of each `user:*@domain`, each role autogroup and `autogroup:shared` named.
fn identities(intents: &Intents, policy: &Policy, rendered: &Policy) -> Vec<Principal> {
    let mut out: Vec<Principal> = Vec::new();
    let tags: BTreeSet<&String> = intents
        .all_tags
        .iter()
        .chain(policy.tag_owners.keys())
        .collect();
    out.extend(tags.into_iter().map(|t| Principal::tag(t)));
    let groups: BTreeSet<&String> = intents.groups.iter().chain(policy.groups.keys()).collect();
    out.extend(groups.into_iter().map(|g| Principal::group(g)));
    out.push(Principal::any_member());
    out.extend(named_principals(&[policy, rendered]));
    out
}

/// One principal per login the policies name, a user of each `user:*@domain`, each role
/// autogroup and `autogroup:shared` they name.
pub fn named_principals(policies: &[&Policy]) -> Vec<Principal> {
    let mut named = Named::default();
    for p in policies {
        named.policy(p);
    }
    let mut out: Vec<Principal> = named.logins.iter().map(|l| Principal::login(l)).collect();
    out.extend(named.domains.iter().map(|d| Principal::domain_user(d)));
    out.extend(named.roles.iter().map(|r| Principal::role(r)));
    if named.shared {
        out.push(Principal::shared());
    }
    out
}

/// The addresses of an address selector, if it is one the evaluator can read.
fn addr_set(ev: &Evaluator, sel: &Selector) -> Option<AddrSet> {
    match sel {
        Selector::Ip(ip) => Some(AddrSet::net(ipnet::IpNet::from(*ip))),
        Selector::Cidr(n) => Some(AddrSet::net(*n)),
        Selector::Host(h) => ev.policy().hosts.get(h).map(|n| AddrSet::net(n.value)),
        Selector::IpSet(name) => ev.ipset(name).and_then(|r| r.as_ref().ok()).cloned(),
        _ => None,
    }
}

/// Sources of `rule` through its address selectors: the nodes they cover, and for each selector
/// a device at one of its addresses that is not a node (named by the selector).
fn address_sources(ev: &Evaluator, rule: &NetRule, nodes: &[Principal]) -> Vec<Principal> {
    let taken: Vec<IpAddr> = nodes.iter().filter_map(|n| n.ip).collect();
    let mut out: Vec<Principal> = nodes
        .iter()
        .filter(|n| {
            rule.src
                .iter()
                .any(|s| ev.covers(&s.value, n) == Some(Covers::Yes))
        })
        .cloned()
        .collect();
    let mut seen = BTreeSet::new();
    for s in &rule.src {
        let Some(set) = addr_set(ev, &s.value) else {
            continue;
        };
        let name = s.value.to_string();
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(ip) = set.sample(&taken) {
            out.push(Principal::address(&name, ip));
        }
    }
    out
}

/// Explains why `over` is not allowed to a source on `node`: the catalog rows of that protocol using those ports.
fn explain_over(fleet: &Fleet, node: &Node, key: ProtoKey, over: &PortSet) -> String {
    let rows: Vec<String> = fleet
        .services_of(node)
        .filter(|s| ProtoKey::Number(iana(s.protocol)) == key && over.contains(s.port))
        .map(|s| format!("{} {} is for {} only", s.name, s.port, s.allow.join(", ")))
        .collect();
    if rows.is_empty() {
        String::new()
    } else {
        format!(" ({})", rows.join("; "))
    }
}

/// The IANA number of a catalog protocol.
fn iana(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => TCP,
        Protocol::Udp => UDP,
    }
}

fn join_nodes(nodes: &[String]) -> String {
    nodes.join(", ")
}

/// What `want` (the rendered policy) lets one source reach on each node: as written, and with
/// ICMP following other traffic.
struct WantRow {
    written: Vec<Access>,
    implied: Vec<Access>,
}

/// The rendered policy's access per source, computed once per source.
struct WantCache<'a, 'p> {
    ev: &'a Evaluator<'p>,
    nodes: &'a [Principal],
    /// Keyed by the whole principal: a `hosts` alias may share a node's name.
    rows: HashMap<Principal, WantRow>,
}

impl<'a, 'p> WantCache<'a, 'p> {
    fn row(&mut self, src: &Principal) -> &WantRow {
        let (ev, nodes) = (self.ev, self.nodes);
        self.rows.entry(src.clone()).or_insert_with(|| {
            let written: Vec<Access> = nodes.iter().map(|d| ev.access(src, d)).collect();
            let implied = written
                .iter()
                .map(|a| a.clone().with_implied_icmp())
                .collect();
            WantRow { written, implied }
        })
    }
}

/// `every tcp port (1-21,23-65535)`, `5432,6379/tcp`, `icmp`.
fn over_text(key: ProtoKey, over: &PortSet, allowed: &PortSet) -> String {
    if key.has_ports() && (over.is_all() || over.union(allowed).is_all()) {
        format!("every {key} port ({over})")
    } else {
        entry_text(key, over)
    }
}

fn allowed_of(acc: &Access, key: ProtoKey) -> PortSet {
    match key {
        ProtoKey::Number(n) => acc.get(n).clone(),
        ProtoKey::Other => acc
            .entries()
            .into_iter()
            .find(|(k, _)| *k == ProtoKey::Other)
            .map(|(_, p)| p)
            .unwrap_or_default(),
    }
}

/// Over-grants of `rule`, per source, protocol and node group.
fn over_grants(
    fleet: &Fleet,
    have: &Evaluator,
    want: &mut WantCache,
    rule: &NetRule,
    idents: &[Principal],
    nodes: &[Principal],
    out: &mut Vec<Finding>,
) {
    let fixed = idents
        .iter()
        .filter(|p| rule.src.iter().any(|s| have.src_matches(&s.value, p)))
        .cloned();
    let srcs: Vec<Principal> = fixed.chain(address_sources(have, rule, nodes)).collect();
    for src in &srcs {
        let mut groups: BTreeMap<(ProtoKey, PortSet), Vec<usize>> = BTreeMap::new();
        let row = want.row(src);
        for (k, dst) in nodes.iter().enumerate() {
            let over = have.access_by_rule(rule, src, dst).minus(&row.implied[k]);
            for e in over.entries() {
                groups.entry(e).or_default().push(k);
            }
        }
        for ((key, over), ks) in groups {
            let names: Vec<String> = ks
                .iter()
                .map(|&k| fleet.nodes[k].name.to_string())
                .collect();
            let first = ks[0];
            let allowed = allowed_of(&row.written[first], key);
            let mut f = Finding::at(
                FindingKind::OverGrant,
                rule.loc,
                format!(
                    "{}: {src} may reach {} on {}, which the catalog does not allow{}",
                    rule.label(),
                    join_nodes(&names),
                    over_text(key, &over, &allowed),
                    explain_over(fleet, &fleet.nodes[first], key, &over)
                ),
            )
            .hint(format!(
                "the fleet allows {src} on {}: {}",
                join_nodes(&names),
                if row.written[first].is_empty() {
                    "nothing".to_string()
                } else {
                    row.written[first].text()
                }
            ));
            f.source = Some(src.name.clone());
            f.nodes = names;
            if key.has_ports() {
                f.ports = Some(over.to_string());
            }
            f.proto = Some(key.to_string());
            out.push(f);
        }
    }
}

/// The names under which the intents may list `p`: itself, its groups (as the rendered policy
/// has them), and `autogroup:member` for a member.
fn aliases(p: &Principal, rendered: &Policy) -> Vec<String> {
    let mut out = vec![p.name.clone()];
    out.extend(p.groups.iter().cloned());
    if let Some(u) = &p.user {
        out.extend(
            rendered
                .groups
                .iter()
                .filter(|(_, m)| m.value.contains(u))
                .map(|(g, _)| g.clone()),
        );
    }
    if p.member && p.tags.is_empty() {
        out.push("autogroup:member".into());
    }
    out
}

/// The intents behind `port`/`proto` for any of `idents` on a node with `tags`.
fn reasons<'i>(
    intents: &'i Intents,
    idents: &[String],
    tags: &[String],
    port: u16,
    proto: u8,
) -> Vec<&'i Intent> {
    let mut out: Vec<&Intent> = Vec::new();
    for id in idents {
        for i in intents.reasons(id, tags, port) {
            if iana(i.protocol) == proto && !out.iter().any(|o| std::ptr::eq(*o, i)) {
                out.push(i);
            }
        }
    }
    out
}

/// A rule of the checked policy that opens `port` from `src` to `dst` over another protocol than `proto`.
fn other_proto_rule<'p>(
    have: &Evaluator<'p>,
    src: &Principal,
    dst: &Principal,
    port: u16,
    proto: u8,
) -> Option<(&'p NetRule, String)> {
    have.policy().rules.iter().find_map(|r| {
        let acc = have.access_by_rule(r, src, dst);
        acc.entries()
            .into_iter()
            .find(|(k, p)| k.has_ports() && *k != ProtoKey::Number(proto) && p.contains(port))
            .map(|(k, _)| (r, k.to_string()))
    })
}

/// One missing-grant finding in the making (one source, one protocol).
#[derive(Default)]
struct Missing {
    lines: Vec<String>,
    names: Vec<String>,
    all: PortSet,
    required: bool,
    instead: Option<(Loc, String)>,
}

/// Missing grants: per source and protocol, each port with the needs and catalog rows behind it.
#[allow(clippy::too_many_arguments)]
fn missing_grants(
    fleet: &Fleet,
    policy: &Policy,
    rendered: &Policy,
    intents: &Intents,
    have: &Evaluator,
    want: &mut WantCache,
    idents: &[Principal],
    nodes: &[Principal],
    out: &mut Vec<Finding>,
) {
    let acls_loc = top(policy, "acls");
    for src in idents {
        let names_of = aliases(src, rendered);
        let row = want.row(src);
        let mut per: BTreeMap<ProtoKey, Missing> = BTreeMap::new();
        for (k, (n, dst)) in fleet.nodes.iter().zip(nodes.iter()).enumerate() {
            let written = &row.written[k];
            if written.is_empty() {
                continue;
            }
            let missing = written.minus(&have.access(src, dst).with_implied_icmp());
            let tags = fleet.tags_of(n);
            for (key, ports) in missing.entries() {
                let e = per.entry(key).or_default();
                let mut per_port = Vec::new();
                match key {
                    ProtoKey::Number(proto) if key.has_ports() => {
                        for &(lo, hi) in ports.ranges() {
                            for port in lo..=hi {
                                let why = reasons(intents, &names_of, &tags, port, proto);
                                e.required |= why.iter().any(|i| i.purpose.required());
                                let why: Vec<String> =
                                    why.iter().map(|i| i.purpose.short()).collect();
                                per_port.push(format!("{port} ({})", why.join(", ")));
                                if e.instead.is_none() {
                                    if let Some((r, other)) =
                                        other_proto_rule(have, src, dst, port, proto)
                                    {
                                        e.instead = Some((
                                            r.loc,
                                            format!(
                                                "{} (line {}) opens it over {other} only",
                                                r.label(),
                                                r.loc.line
                                            ),
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    _ => per_port.push(key.to_string()),
                }
                e.lines
                    .push(format!("{} on {}", n.name, per_port.join(", ")));
                e.names.push(n.name.to_string());
                e.all.insert_set(&ports);
            }
        }
        for (key, e) in per {
            let what = if e.required {
                "which the rendered configuration needs or the catalog allows"
            } else {
                "which the catalog allows"
            };
            let (loc, instead) = match &e.instead {
                Some((loc, text)) => (*loc, format!("; {text}")),
                None => (acls_loc, String::new()),
            };
            let mut f = Finding::at(
                FindingKind::MissingGrant,
                loc,
                format!(
                    "{src} cannot reach over {key}: {}, {what}{instead}",
                    e.lines.join("; ")
                ),
            )
            .hint(format!(
                "add acls rules from {src} to these {key} ports (see `fleetnix acl render`)"
            ));
            f.source = Some(src.name.clone());
            f.nodes = e.names;
            if key.has_ports() {
                f.ports = Some(e.all.to_string());
            }
            f.proto = Some(key.to_string());
            out.push(f);
        }
    }
}

/// Address selectors whose reach the checker cannot evaluate.
fn unverifiable(policy: &Policy, have: &Evaluator, nodes: &[Principal], out: &mut Vec<Finding>) {
    for rule in &policy.rules {
        let sels = rule.src.iter().map(|s| (&s.value, s.loc, "source")).chain(
            rule.dst
                .iter()
                .map(|d| (&d.value.host, d.loc, "destination")),
        );
        let mut seen = BTreeSet::new();
        for (sel, loc, side) in sels {
            if !seen.insert((sel.to_string(), loc)) {
                continue;
            }
            if let Selector::IpSet(name) = sel {
                if let Some(Err(why)) = have.ipset(name) {
                    let mut f = Finding::at(
                        FindingKind::Unverifiable,
                        loc,
                        format!(
                            "{}: {side} {name} cannot be verified: {why}; the checker claims no access through it, so this rule may open more than reported",
                            rule.label()
                        ),
                    )
                    .hint("write the ipset as \"add\"/\"remove\" of IPs, CIDRs and hosts aliases, or use tags");
                    f.source = Some(name.clone());
                    out.push(f);
                    continue;
                }
            }
            let unknown: Vec<&Principal> = nodes
                .iter()
                .filter(|n| have.covers(sel, n) == Some(Covers::Unknown))
                .collect();
            if unknown.is_empty() {
                continue;
            }
            let names: Vec<String> = unknown.iter().map(|n| n.name.clone()).collect();
            let v4_known = unknown.iter().all(|n| n.ip.is_some_and(|i| i.is_ipv4()));
            let (range, family, given) = if v4_known {
                (TAILNET_V6, "IPv6", "IPv4")
            } else {
                (TAILNET_V4, "IPv4", "IPv6")
            };
            let mut f = Finding::at(
                FindingKind::Unverifiable,
                loc,
                format!(
                    "{}: whether {side} {sel} covers {} cannot be verified: it covers part of {range}, and nodes.yml gives only their {given} address (tailscale_ip), so their {family} address is unknown",
                    rule.label(),
                    join_nodes(&names)
                ),
            )
            .hint(format!("name tags instead of addresses, or cover all of {range}"));
            if side == "source" {
                f.source = Some(sel.to_string());
            }
            f.nodes = names;
            out.push(f);
        }
    }
}

/// What `p` may do on each node under `ev`: access as written, and the SSH users it is accepted as.
fn privileges(ev: &Evaluator, p: &Principal, nodes: &[Principal]) -> Vec<(Access, Vec<String>)> {
    nodes
        .iter()
        .map(|d| {
            let ssh = ["root", NONROOT_PROBE]
                .iter()
                .filter(|u| ev.ssh(p, d, u) != SshDecision::Deny)
                .map(|u| u.to_string())
                .collect();
            (ev.access(p, d), ssh)
        })
        .collect()
}

/// What `owned` has beyond `owner`, node by node, as text; empty if nothing.
fn gain_text(
    owned: &[(Access, Vec<String>)],
    owner: &[(Access, Vec<String>)],
    nodes: &[Principal],
) -> (String, Vec<String>) {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((a, s), ((b, t), n)) in owned.iter().zip(owner.iter().zip(nodes)) {
        let acc = a.minus(b);
        let ssh: Vec<&String> = s.iter().filter(|u| !t.contains(u)).collect();
        let mut parts = Vec::new();
        if !acc.is_empty() {
            parts.push(acc.text());
        }
        if !ssh.is_empty() {
            let users: Vec<&str> = ssh.iter().map(|u| u.as_str()).collect();
            parts.push(format!("Tailscale SSH as {}", users.join(", ")));
        }
        if !parts.is_empty() {
            groups
                .entry(parts.join(", "))
                .or_default()
                .push(n.name.clone());
        }
    }
    let mut all_nodes: Vec<String> = groups.values().flatten().cloned().collect();
    all_nodes.sort();
    let text = groups
        .iter()
        .map(|(what, ns)| format!("{what} on {}", ns.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    (text, all_nodes)
}

/// The identity an owner entry stands for, to see what it gains by taking the tag.
fn owner_principal(sel: &Selector) -> Option<Principal> {
    Some(match sel {
        Selector::Tag(t) => Principal::tag(t),
        Selector::Group(g) => Principal::group(g),
        Selector::User(u) => Principal::login(u),
        Selector::UserDomain(d) => Principal::domain_user(d),
        Selector::Autogroup(a) => match a.as_str() {
            "member" | "members" => Principal::any_member(),
            // A device with some tag: the pseudo-tag matches no `tag:` selector.
            "tagged" => Principal::tag("autogroup:tagged"),
            role if ROLE_AUTOGROUPS.contains(&role) => Principal::role(role),
            _ => return None,
        },
        _ => return None,
    })
}

/// Tag owners other than the operators' group, `autogroup:admin` or no one; a tag owning a tag
/// with more access is an escalation.
fn tag_owners(
    fleet: &Fleet,
    policy: &Policy,
    have: &Evaluator,
    nodes: &[Principal],
    out: &mut Vec<Finding>,
) {
    let ops = &fleet.settings.operators.group;
    let none: Vec<(Access, Vec<String>)> =
        nodes.iter().map(|_| (Access::new(), Vec::new())).collect();
    for (tag, owners) in &policy.tag_owners {
        let bad: Vec<_> = owners
            .value
            .iter()
            .filter(|o| o.value != *ops && o.value != "autogroup:admin")
            .collect();
        if bad.is_empty() {
            continue;
        }
        let owned = privileges(have, &Principal::tag(tag), nodes);
        for o in bad {
            let sel = Selector::parse(&o.value).ok();
            let owner = sel.as_ref().and_then(owner_principal);
            let base = match &owner {
                Some(p) => privileges(have, p, nodes),
                None => none.clone(),
            };
            let (gain, gain_nodes) = gain_text(&owned, &base, nodes);
            let is_tag = matches!(sel, Some(Selector::Tag(_)));
            let hint = format!(
                "only {ops}, autogroup:admin or no one ([]) may own a tag: remove {:?} from \"{tag}\"",
                o.value
            );
            let mut f = if is_tag && !gain.is_empty() {
                Finding::at(
                    FindingKind::TagEscalation,
                    o.loc,
                    format!(
                        "tagOwners: {} owns {tag}, which has more access: a device tagged {} can take {tag} and gain {gain}",
                        o.value, o.value
                    ),
                )
            } else {
                let gets = if gain.is_empty() {
                    String::new()
                } else {
                    format!(", gaining {gain}")
                };
                Finding::at(
                    FindingKind::TagOwner,
                    o.loc,
                    format!(
                        "tagOwners: {} may give {tag} to devices (auth keys, `tailscale up --advertise-tags`){gets}",
                        o.value
                    ),
                )
            }
            .hint(hint);
            f.source = Some(o.value.clone());
            f.nodes = gain_nodes;
            out.push(f);
        }
    }
}

/// SSH over-grants: per `ssh` rule and source, the local users and nodes it lets in that the
/// rendered policy does not (users probed: `root`, any non-root user, and the names the rule lists).
fn ssh_over_grants(
    fleet: &Fleet,
    policy: &Policy,
    have: &Evaluator,
    want: &Evaluator,
    idents: &[Principal],
    nodes: &[Principal],
    out: &mut Vec<Finding>,
) {
    for r in policy.ssh.iter().flatten() {
        let mut users: Vec<&str> = vec!["root", NONROOT_PROBE];
        for u in &r.users {
            if !u.value.contains(':') && !users.contains(&u.value.as_str()) {
                users.push(&u.value);
            }
        }
        let srcs = idents
            .iter()
            .filter(|p| r.src.iter().any(|s| have.src_matches(&s.value, p)));
        for src in srcs {
            let mut groups: BTreeMap<Vec<&str>, Vec<String>> = BTreeMap::new();
            for (n, d) in fleet.nodes.iter().zip(nodes) {
                let over: Vec<&str> = users
                    .iter()
                    .copied()
                    .filter(|u| {
                        have.ssh_rule_applies(r, src, d, u)
                            && want.ssh(src, d, u) == SshDecision::Deny
                    })
                    .collect();
                if !over.is_empty() {
                    groups.entry(over).or_default().push(n.name.to_string());
                }
            }
            for (over, names) in groups {
                let as_users: Vec<String> = over
                    .iter()
                    .map(|u| {
                        if *u == NONROOT_PROBE {
                            "any non-root user".to_string()
                        } else {
                            (*u).to_string()
                        }
                    })
                    .collect();
                let mut f = Finding::at(
                    FindingKind::SshOverGrant,
                    r.loc,
                    format!(
                        "ssh[{}]: {src} may Tailscale-SSH to {} as {}, which the fleet does not allow",
                        r.index,
                        join_nodes(&names),
                        as_users.join(", ")
                    ),
                )
                .hint(format!(
                    "the fleet allows Tailscale SSH from the control plane's tags (deploys, as each node's ssh_user) and from {} (root and non-root users) only",
                    fleet.settings.operators.group
                ));
                f.source = Some(src.name.clone());
                f.nodes = names;
                out.push(f);
            }
        }
    }
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
