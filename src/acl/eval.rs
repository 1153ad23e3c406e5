//! A small policy evaluator: can a source reach a destination on a port, and may it SSH as a user?
//!
//! Identities are [`Principal`]s: a tagged node, a user, "some member of a group", a user with an
//! admin-console role, a user of another tailnet (`autogroup:shared`), a device at an address, or a
//! node of the fleet (its tags and address). Semantics follow the policy reference: deny by default;
//! a rule applies when one of its sources matches the source and one of its destinations matches
//! the destination, port and protocol; a rule without `proto` allows TCP and UDP, and ICMP goes
//! wherever any traffic goes; tagged devices are never a user's devices (`autogroup:self`, users
//! and groups as destinations only match untagged devices); SSH `check` wins over `accept`.
//! Address selectors (IPs, CIDRs, `hosts`, `ipsets`) match a device when they cover its known
//! address, or the whole range of the address the fleet files do not give ([`super::addrs`]);
//! where that cannot be told they match nothing here, and [`Evaluator::covers`] says so.

use super::addrs::{self, AddrSet, Covers};
use super::policy::{
    parse_test_dst, proto_has_ports, proto_name, AclTest, Loc, NetRule, Policy, Proto, Selector,
    SshAction, SshRule, SshTest, ICMP, ICMPV6, SCTP, TCP, UDP,
};
use super::ports::PortSet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Autogroups of admin-console roles.
pub const ROLE_AUTOGROUPS: &[&str] = &[
    "admin",
    "owner",
    "network-admin",
    "it-admin",
    "billing-admin",
    "auditor",
];

/// An identity on the tailnet: the source or destination of a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Principal {
    /// How to show it (`tag:worker`, `group:operators`, `worker-01`).
    pub name: String,
    /// Its tags (a tagged device has no user identity).
    pub tags: BTreeSet<String>,
    /// The user login, for a user or a user's device.
    pub user: Option<String>,
    /// Groups it is known to belong to.
    pub groups: BTreeSet<String>,
    /// A human member of the tailnet (untagged).
    pub member: bool,
    /// Role autogroups of its user (`admin`, `network-admin`, …), or `shared` for a user of another tailnet.
    pub autogroups: BTreeSet<String>,
    /// Its Tailscale address, if known.
    pub ip: Option<IpAddr>,
    /// A tailnet device whose address of the other family (IPv6 in `fd7a:115c:a1e0::/48` when `ip`
    /// is IPv4, and the reverse) exists but is not known.
    pub other_ip_unknown: bool,
}

impl Principal {
    fn blank(name: &str) -> Self {
        Principal {
            name: name.to_string(),
            tags: BTreeSet::new(),
            user: None,
            groups: BTreeSet::new(),
            member: false,
            autogroups: BTreeSet::new(),
            ip: None,
            other_ip_unknown: false,
        }
    }

    /// A device carrying exactly the tag `tag`.
    pub fn tag(tag: &str) -> Self {
        Principal {
            tags: BTreeSet::from([tag.to_string()]),
            ..Self::blank(tag)
        }
    }

    /// A node: its name, address and tags (its address of the other family is unknown).
    pub fn node(name: &str, ip: IpAddr, tags: &[String]) -> Self {
        Principal {
            tags: tags.iter().cloned().collect(),
            member: tags.is_empty(),
            ip: Some(ip),
            other_ip_unknown: true,
            ..Self::blank(name)
        }
    }

    /// Some member of group `group` (or one of their devices).
    pub fn group(group: &str) -> Self {
        Principal {
            groups: BTreeSet::from([group.to_string()]),
            member: true,
            ..Self::blank(group)
        }
    }

    /// Some member of the tailnet in no particular group.
    pub fn any_member() -> Self {
        Principal {
            member: true,
            ..Self::blank("autogroup:member")
        }
    }

    /// The user `login` (or one of their devices); groups come from the policy.
    pub fn user(login: &str, policy: &Policy) -> Self {
        Principal {
            groups: policy
                .groups
                .iter()
                .filter(|(_, m)| m.value.iter().any(|x| x == login))
                .map(|(g, _)| g.clone())
                .collect(),
            ..Self::login(login)
        }
    }

    /// The user `login` (or one of their devices), in the groups each evaluated policy puts them in.
    pub fn login(login: &str) -> Self {
        Principal {
            user: Some(login.to_string()),
            member: true,
            ..Self::blank(login)
        }
    }

    /// Some user of `domain` (`user:*@domain`) whom no policy names: in no group.
    pub fn domain_user(domain: &str) -> Self {
        Principal {
            user: Some(format!("*@{domain}")),
            member: true,
            ..Self::blank(&format!("user:*@{domain}"))
        }
    }

    /// A member with admin-console role `role` (`admin`, `network-admin`, …), in no group.
    pub fn role(role: &str) -> Self {
        Principal {
            member: true,
            autogroups: BTreeSet::from([role.to_string()]),
            ..Self::blank(&format!("autogroup:{role}"))
        }
    }

    /// A user of another tailnet a device was shared with (`autogroup:shared`): not a member.
    pub fn shared() -> Self {
        Principal {
            autogroups: BTreeSet::from(["shared".to_string()]),
            ..Self::blank("autogroup:shared")
        }
    }

    /// A device at `ip` about which nothing else is known, shown as `name`.
    pub fn address(name: &str, ip: IpAddr) -> Self {
        Principal {
            ip: Some(ip),
            ..Self::blank(name)
        }
    }

    fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A protocol of an [`Access`]: one IANA number, or every protocol not named otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ProtoKey {
    /// One IANA protocol number.
    Number(u8),
    /// Every protocol without an entry of its own.
    Other,
}

impl ProtoKey {
    /// Does this protocol have ports (TCP, UDP, SCTP)?
    pub fn has_ports(&self) -> bool {
        matches!(self, ProtoKey::Number(n) if proto_has_ports(*n))
    }
}

impl fmt::Display for ProtoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoKey::Number(n) => f.write_str(&proto_name(*n)),
            ProtoKey::Other => f.write_str("every other IP protocol"),
        }
    }
}

/// Protocols an [`Access`] always lists on their own, in this order.
const LISTED: [u8; 5] = [TCP, UDP, SCTP, ICMP, ICMPV6];

/// What a source may reach on a destination, per IP protocol: the ports (for protocols without
/// ports, the set of every port means "allowed").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    named: BTreeMap<u8, PortSet>,
    other: PortSet,
}

impl Access {
    /// Nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ports allowed for protocol `n`.
    pub fn get(&self, n: u8) -> &PortSet {
        self.named.get(&n).unwrap_or(&self.other)
    }

    fn entry(&mut self, n: u8) -> &mut PortSet {
        let other = &self.other;
        self.named.entry(n).or_insert_with(|| other.clone())
    }

    /// Allows `ports` for the protocols of `proto`.
    pub fn add(&mut self, proto: Proto, ports: &PortSet) {
        match proto {
            Proto::Number(n) => self.entry(n).insert_set(ports),
            Proto::Default => {
                for n in [TCP, UDP] {
                    self.entry(n).insert_set(ports);
                }
            }
            Proto::Any => {
                self.other.insert_set(ports);
                for v in self.named.values_mut() {
                    v.insert_set(ports);
                }
            }
        }
    }

    fn combine(&self, o: &Access, f: impl Fn(&PortSet, &PortSet) -> PortSet) -> Access {
        let keys: BTreeSet<u8> = self.named.keys().chain(o.named.keys()).copied().collect();
        Access {
            named: keys
                .into_iter()
                .map(|k| (k, f(self.get(k), o.get(k))))
                .collect(),
            other: f(&self.other, &o.other),
        }
    }

    /// Everything either allows.
    pub fn union(&self, o: &Access) -> Access {
        self.combine(o, PortSet::union)
    }

    /// What `self` allows and `o` does not.
    pub fn minus(&self, o: &Access) -> Access {
        self.combine(o, PortSet::minus)
    }

    /// Adds everything `o` allows.
    pub fn insert(&mut self, o: &Access) {
        if o.is_empty() {
            return;
        }
        *self = self.union(o);
    }

    /// Nothing allowed?
    pub fn is_empty(&self) -> bool {
        self.other.is_empty() && self.named.values().all(PortSet::is_empty)
    }

    /// With ICMP (and ICMPv6) allowed if anything is: "ICMP is allowed whenever any traffic is allowed".
    pub fn with_implied_icmp(mut self) -> Access {
        if !self.is_empty() {
            for n in [ICMP, ICMPV6] {
                *self.entry(n) = PortSet::all();
            }
        }
        self
    }

    /// The ports of the protocols that have ports (TCP, UDP, SCTP), together.
    pub fn port_union(&self) -> PortSet {
        self.get(TCP).union(self.get(UDP)).union(self.get(SCTP))
    }

    /// What is allowed, per protocol: TCP, UDP, SCTP, ICMP, ICMPv6, other named protocols, then
    /// every other protocol; empty entries left out.
    pub fn entries(&self) -> Vec<(ProtoKey, PortSet)> {
        let mut keys: Vec<u8> = LISTED.to_vec();
        keys.extend(self.named.keys().filter(|k| !LISTED.contains(k)));
        let mut out: Vec<(ProtoKey, PortSet)> = keys
            .into_iter()
            .map(|k| (ProtoKey::Number(k), self.get(k).clone()))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        if !self.other.is_empty() {
            out.push((ProtoKey::Other, self.other.clone()));
        }
        out
    }

    /// `22,4000/tcp 53/udp icmp`; `-` when empty.
    pub fn text(&self) -> String {
        let parts: Vec<String> = self
            .entries()
            .iter()
            .map(|(k, p)| entry_text(*k, p))
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// `22,80/tcp`, `icmp`, `every other IP protocol`.
pub fn entry_text(k: ProtoKey, ports: &PortSet) -> String {
    if k.has_ports() {
        format!("{ports}/{k}")
    } else {
        k.to_string()
    }
}

/// The outcome of an SSH question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SshDecision {
    /// Allowed by the rule at this location.
    Accept(Loc),
    /// Allowed after re-authentication, by the rule at this location.
    Check(Loc),
    /// No rule allows it.
    Deny,
}

impl SshDecision {
    /// `Accept`, `Check` or `Deny`, as the server's tests word it.
    pub fn word(&self) -> &'static str {
        match self {
            SshDecision::Accept(_) => "Accept",
            SshDecision::Check(_) => "Check",
            SshDecision::Deny => "Deny",
        }
    }
}

/// A failed `tests` or `sshTests` assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestFailure {
    /// Where the failing entry is.
    pub loc: Loc,
    /// `tests[2]` / `sshTests[0]`.
    pub test: String,
    /// The test's `src` (the server's answer groups failures by it, as `data[].user`).
    pub src: String,
    /// What failed, e.g. `address "tag:control-plane:4222": want: Accept, got: Drop`.
    pub message: String,
}

/// Evaluates a policy.
#[derive(Debug, Clone)]
pub struct Evaluator<'p> {
    policy: &'p Policy,
    nodes: Vec<Principal>,
    ipsets: BTreeMap<String, Result<AddrSet, crate::model::InvalidValue>>,
}

impl<'p> Evaluator<'p> {
    /// An evaluator of `policy`.
    pub fn new(policy: &'p Policy) -> Self {
        Evaluator {
            policy,
            nodes: Vec::new(),
            ipsets: addrs::resolve_ipsets(policy),
        }
    }

    /// Makes known devices (e.g. the fleet's nodes), so that an address names a tagged node.
    pub fn with_nodes(mut self, nodes: Vec<Principal>) -> Self {
        self.nodes = nodes;
        self
    }

    /// The policy evaluated.
    pub fn policy(&self) -> &'p Policy {
        self.policy
    }

    /// The addresses of `ipset`, or why they cannot be verified; `None` if it is not defined.
    pub fn ipset(&self, ipset: &str) -> Option<&Result<AddrSet, crate::model::InvalidValue>> {
        self.ipsets.get(ipset)
    }

    fn in_group(&self, p: &Principal, group: &str) -> bool {
        p.groups.contains(group)
            || p.user.as_ref().is_some_and(|u| {
                self.policy
                    .groups
                    .get(group)
                    .is_some_and(|m| m.value.contains(u))
            })
    }

    /// Does address selector `sel` (IP, CIDR, `hosts` alias, `ipset:`) cover device `p`?
    /// `None` when `sel` is not an address selector; undefined aliases and ipsets cover nothing.
    pub fn covers(&self, sel: &Selector, p: &Principal) -> Option<Covers> {
        let net = match sel {
            Selector::Ip(ip) => ipnet::IpNet::from(*ip),
            Selector::Cidr(n) => *n,
            Selector::Host(h) => match self.policy.hosts.get(h) {
                Some(n) => n.value,
                None => return Some(Covers::No),
            },
            Selector::IpSet(name) => {
                return Some(match self.ipsets.get(name) {
                    Some(Ok(set)) => set.covers_device(p.ip, p.other_ip_unknown),
                    Some(Err(_)) => Covers::Unknown,
                    None => Covers::No,
                })
            }
            _ => return None,
        };
        Some(AddrSet::net(net).covers_device(p.ip, p.other_ip_unknown))
    }

    fn addr_matches(&self, sel: &Selector, p: &Principal) -> bool {
        self.covers(sel, p) == Some(Covers::Yes)
    }

    fn autogroup_src(&self, a: &str, p: &Principal) -> bool {
        match a {
            "member" | "members" => p.member && !p.is_tagged(),
            "tagged" => p.is_tagged(),
            "danger-all" => true,
            "shared" => p.autogroups.contains("shared"),
            role if ROLE_AUTOGROUPS.contains(&role) => {
                !p.is_tagged() && p.autogroups.contains(role)
            }
            _ => false,
        }
    }

    /// Does source selector `sel` match `p`?
    pub fn src_matches(&self, sel: &Selector, p: &Principal) -> bool {
        match sel {
            Selector::Any => true,
            Selector::Tag(t) => p.tags.contains(t),
            Selector::Group(g) => !p.is_tagged() && self.in_group(p, g),
            Selector::User(u) => !p.is_tagged() && p.user.as_deref() == Some(u),
            Selector::UserDomain(d) => {
                !p.is_tagged()
                    && p.user
                        .as_deref()
                        .is_some_and(|u| u.ends_with(&format!("@{d}")))
            }
            Selector::Autogroup(a) => self.autogroup_src(a, p),
            Selector::Ip(_) | Selector::Cidr(_) | Selector::Host(_) | Selector::IpSet(_) => {
                self.addr_matches(sel, p)
            }
            Selector::LocalPart(_) => false,
        }
    }

    /// Does destination host selector `sel` match device `dst` for a connection from `src`?
    pub fn dst_matches(&self, sel: &Selector, src: &Principal, dst: &Principal) -> bool {
        match sel {
            Selector::Any => true,
            Selector::Tag(t) => dst.tags.contains(t),
            Selector::Group(_) | Selector::User(_) | Selector::UserDomain(_) => {
                !dst.is_tagged() && self.src_matches(sel, dst)
            }
            Selector::Autogroup(a) => match a.as_str() {
                "self" => {
                    !dst.is_tagged()
                        && !src.is_tagged()
                        && src.user.is_some()
                        && src.user == dst.user
                }
                "shared" => false,
                other => self.autogroup_src(other, dst),
            },
            Selector::Ip(_) | Selector::Cidr(_) | Selector::Host(_) | Selector::IpSet(_) => {
                self.addr_matches(sel, dst)
            }
            Selector::LocalPart(_) => false,
        }
    }

    /// What `rule` alone lets `src` reach on `dst`, per protocol (no implied ICMP).
    pub fn access_by_rule(&self, rule: &NetRule, src: &Principal, dst: &Principal) -> Access {
        let mut acc = Access::new();
        if !rule.src.iter().any(|s| self.src_matches(&s.value, src)) {
            return acc;
        }
        for t in &rule.dst {
            let t = &t.value;
            if self.dst_matches(&t.host, src, dst) {
                acc.add(t.proto, &t.ports);
            }
        }
        acc
    }

    /// What the policy lets `src` reach on `dst`, per protocol, as the rules write it (ICMP
    /// following other traffic is not added: see [`Access::with_implied_icmp`]).
    pub fn access(&self, src: &Principal, dst: &Principal) -> Access {
        let mut acc = Access::new();
        for r in &self.policy.rules {
            acc.insert(&self.access_by_rule(r, src, dst));
        }
        acc
    }

    /// The ports of `dst` that `rule` opens to `src` (TCP, UDP and SCTP together).
    pub fn ports_by_rule(&self, rule: &NetRule, src: &Principal, dst: &Principal) -> PortSet {
        self.access_by_rule(rule, src, dst).port_union()
    }

    /// Every port of `dst` that `src` may reach, for protocol `proto` (IANA number), or for TCP,
    /// UDP and SCTP together if `None`.
    pub fn ports(&self, src: &Principal, dst: &Principal, proto: Option<u8>) -> PortSet {
        let acc = self.access(src, dst);
        match proto {
            Some(n) => acc.with_implied_icmp().get(n).clone(),
            None => acc.port_union(),
        }
    }

    /// The first rule letting `src` reach `dst` on `port` with protocol `proto` (IANA number), if
    /// any; for ICMP, the first rule allowing any traffic.
    pub fn reach(
        &self,
        src: &Principal,
        dst: &Principal,
        port: u16,
        proto: u8,
    ) -> Option<&'p NetRule> {
        let hit = |a: &Access| {
            let ps = a.get(proto);
            if proto_has_ports(proto) {
                ps.contains(port)
            } else {
                !ps.is_empty()
            }
        };
        let rules = &self.policy.rules;
        rules
            .iter()
            .find(|r| hit(&self.access_by_rule(r, src, dst)))
            .or_else(|| {
                if matches!(proto, ICMP | ICMPV6) {
                    rules
                        .iter()
                        .find(|r| !self.access_by_rule(r, src, dst).is_empty())
                } else {
                    None
                }
            })
    }

    fn ssh_dst_matches(&self, sel: &Selector, src: &Principal, dst: &Principal) -> bool {
        match sel {
            Selector::User(u) => {
                !dst.is_tagged() && dst.user.as_deref() == Some(u) && src.user.as_deref() == Some(u)
            }
            other => self.dst_matches(other, src, dst),
        }
    }

    fn user_matches(&self, pattern: &str, src: &Principal, user: &str) -> bool {
        if pattern == "autogroup:nonroot" {
            return user != "root";
        }
        if let Some(domain) = pattern.strip_prefix("localpart:*@") {
            return src
                .user
                .as_deref()
                .and_then(|u| u.strip_suffix(&format!("@{domain}")))
                .is_some_and(|local| local == user);
        }
        pattern == user
    }

    /// Does `ssh` rule `r` (accept or check) let `src` in to `dst` as local user `user`?
    pub fn ssh_rule_applies(
        &self,
        r: &SshRule,
        src: &Principal,
        dst: &Principal,
        user: &str,
    ) -> bool {
        r.src.iter().any(|s| self.src_matches(&s.value, src))
            && r.dst
                .iter()
                .any(|d| self.ssh_dst_matches(&d.value, src, dst))
            && r.users
                .iter()
                .any(|u| self.user_matches(&u.value, src, user))
    }

    /// May `src` open Tailscale SSH to `dst` as local user `user`, by the `ssh` rules alone?
    pub fn ssh(&self, src: &Principal, dst: &Principal, user: &str) -> SshDecision {
        let rules = self.policy.ssh.as_deref().unwrap_or(&[]);
        let mut accept = None;
        for r in rules {
            if self.ssh_rule_applies(r, src, dst, user) {
                match r.action {
                    SshAction::Check => return SshDecision::Check(r.loc),
                    SshAction::Accept => accept = accept.or(Some(r.loc)),
                }
            }
        }
        accept.map_or(SshDecision::Deny, SshDecision::Accept)
    }

    /// Does Tailscale SSH from `src` to `dst` as `user` work without interaction: an `accept`
    /// SSH rule and a network rule to TCP port 22?
    pub fn ssh_works(&self, src: &Principal, dst: &Principal, user: &str) -> bool {
        matches!(self.ssh(src, dst, user), SshDecision::Accept(_))
            && self.reach(src, dst, 22, TCP).is_some()
    }

    /// The identity a test names: a tag, group, user, address or host alias.
    pub fn principal_for(&self, text: &str) -> Result<Principal, crate::model::InvalidValue> {
        let sel = Selector::parse(text)?;
        self.principal_for_selector(&sel, text)
    }

    fn principal_for_selector(
        &self,
        sel: &Selector,
        text: &str,
    ) -> Result<Principal, crate::model::InvalidValue> {
        let by_ip = |ip: IpAddr| {
            self.nodes
                .iter()
                .find(|n| n.ip == Some(ip))
                .cloned()
                .unwrap_or_else(|| Principal::address(&ip.to_string(), ip))
        };
        match sel {
            Selector::Tag(t) => Ok(Principal::tag(t)),
            Selector::Group(g) => Ok(Principal::group(g)),
            Selector::User(u) => Ok(Principal::user(u, self.policy)),
            Selector::Ip(ip) => Ok(by_ip(*ip)),
            Selector::Host(h) => match self.policy.hosts.get(h).map(|n| n.value) {
                Some(n) if n.prefix_len() == n.max_prefix_len() => Ok(by_ip(n.addr())),
                Some(_) => Err(format!("host {h:?} is a range, not one device").into()),
                None => Err(format!("unknown host {h:?}").into()),
            },
            _ => Err(format!(
                "{text:?} does not name one identity (use a user, group, tag, IP or host)"
            )
            .into()),
        }
    }

    fn run_acl_test(&self, t: &AclTest, out: &mut Vec<TestFailure>) {
        let label = format!("tests[{}]", t.index);
        let src = match self.principal_for(&t.src.value) {
            Ok(p) => p,
            Err(e) => {
                out.push(TestFailure {
                    loc: t.src.loc,
                    test: label,
                    src: t.src.value.clone(),
                    message: e.to_string(),
                });
                return;
            }
        };
        let protos: Vec<u8> = match t.proto {
            Proto::Number(n) => vec![n],
            Proto::Default | Proto::Any => vec![TCP, UDP],
        };
        for (want_accept, list) in [(true, &t.accept), (false, &t.deny)] {
            for d in list {
                let (sel, port) = match parse_test_dst(&d.value) {
                    Ok(x) => x,
                    Err(e) => {
                        out.push(TestFailure {
                            loc: d.loc,
                            test: label.clone(),
                            src: t.src.value.clone(),
                            message: e.into(),
                        });
                        continue;
                    }
                };
                let dst = match self.principal_for_selector(&sel, &d.value) {
                    Ok(p) => p,
                    Err(e) => {
                        out.push(TestFailure {
                            loc: d.loc,
                            test: label.clone(),
                            src: t.src.value.clone(),
                            message: e.to_string(),
                        });
                        continue;
                    }
                };
                let got = protos
                    .iter()
                    .any(|&p| self.reach(&src, &dst, port, p).is_some());
                if got != want_accept {
                    let w = |b: bool| if b { "Accept" } else { "Drop" };
                    out.push(TestFailure {
                        loc: d.loc,
                        test: label.clone(),
                        src: t.src.value.clone(),
                        message: format!(
                            "{}: address {:?}: want: {}, got: {}",
                            t.src.value,
                            d.value,
                            w(want_accept),
                            w(got)
                        ),
                    });
                }
            }
        }
    }

    fn run_ssh_test(&self, t: &SshTest, out: &mut Vec<TestFailure>) {
        let label = format!("sshTests[{}]", t.index);
        let src = match self.principal_for(&t.src.value) {
            Ok(p) => p,
            Err(e) => {
                out.push(TestFailure {
                    loc: t.src.loc,
                    test: label,
                    src: t.src.value.clone(),
                    message: e.to_string(),
                });
                return;
            }
        };
        for d in &t.dst {
            let dst = match self.principal_for(&d.value) {
                Ok(p) => p,
                Err(e) => {
                    out.push(TestFailure {
                        loc: d.loc,
                        test: label.clone(),
                        src: t.src.value.clone(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            for (want, list) in [
                ("Accept", &t.accept),
                ("Check", &t.check),
                ("Deny", &t.deny),
            ] {
                for u in list {
                    let got = self.ssh(&src, &dst, &u.value).word();
                    if got != want {
                        out.push(TestFailure {
                            loc: u.loc,
                            test: label.clone(),
                            src: t.src.value.clone(),
                            message: format!(
                                "{} -> {} as {:?}: want: {want}, got: {got}",
                                t.src.value, d.value, u.value
                            ),
                        });
                    }
                }
            }
        }
    }

    /// Runs the policy's own `tests` and `sshTests`; returns the failures (empty: all pass).
    pub fn run_tests(&self) -> Vec<TestFailure> {
        let mut out = Vec::new();
        for t in &self.policy.tests {
            self.run_acl_test(t, &mut out);
        }
        for t in &self.policy.ssh_tests {
            self.run_ssh_test(t, &mut out);
        }
        out
    }
}
