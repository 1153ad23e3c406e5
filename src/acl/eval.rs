//! A small policy evaluator: can a source reach a destination on a port, and may it SSH as a user?
//!
//! Identities are [`Principal`]s: a tagged node, a user, "some member of a group", or a node of the
//! fleet (its tags and address). Semantics follow the policy reference: deny by default; a rule
//! applies when one of its sources matches the source and one of its destinations matches the
//! destination, port and protocol; tagged devices are never a user's devices (`autogroup:self`,
//! users and groups as destinations only match untagged devices); SSH `check` wins over `accept`.
//! Autogroups that depend on admin-console roles (`autogroup:admin`, …) and `ipset:`s match nothing
//! here: the evaluator cannot know them, so it never claims access through them.

use super::policy::{
    parse_test_dst, AclTest, Loc, NetRule, Policy, Proto, Selector, SshAction, SshRule, SshTest,
    TCP, UDP,
};
use super::ports::PortSet;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

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
    /// Its Tailscale address, if known.
    pub ip: Option<IpAddr>,
}

impl Principal {
    /// A device carrying exactly the tag `tag`.
    pub fn tag(tag: &str) -> Self {
        Principal {
            name: tag.to_string(),
            tags: BTreeSet::from([tag.to_string()]),
            user: None,
            groups: BTreeSet::new(),
            member: false,
            ip: None,
        }
    }

    /// A node: its name, address and tags.
    pub fn node(name: &str, ip: IpAddr, tags: &[String]) -> Self {
        Principal {
            name: name.to_string(),
            tags: tags.iter().cloned().collect(),
            user: None,
            groups: BTreeSet::new(),
            member: tags.is_empty(),
            ip: Some(ip),
        }
    }

    /// Some member of group `group` (or one of their devices).
    pub fn group(group: &str) -> Self {
        Principal {
            name: group.to_string(),
            tags: BTreeSet::new(),
            user: None,
            groups: BTreeSet::from([group.to_string()]),
            member: true,
            ip: None,
        }
    }

    /// Some member of the tailnet in no particular group.
    pub fn any_member() -> Self {
        Principal {
            name: "autogroup:member".to_string(),
            tags: BTreeSet::new(),
            user: None,
            groups: BTreeSet::new(),
            member: true,
            ip: None,
        }
    }

    /// The user `login` (or one of their devices); groups come from the policy.
    pub fn user(login: &str, policy: &Policy) -> Self {
        Principal {
            name: login.to_string(),
            tags: BTreeSet::new(),
            user: Some(login.to_string()),
            groups: policy
                .groups
                .iter()
                .filter(|(_, m)| m.value.iter().any(|x| x == login))
                .map(|(g, _)| g.clone())
                .collect(),
            member: true,
            ip: None,
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
    /// What failed, e.g. `address "tag:control-plane:4222": want: Accept, got: Drop`.
    pub message: String,
}

/// Evaluates a policy.
#[derive(Debug, Clone)]
pub struct Evaluator<'p> {
    policy: &'p Policy,
    nodes: Vec<Principal>,
}

impl<'p> Evaluator<'p> {
    /// An evaluator of `policy`.
    pub fn new(policy: &'p Policy) -> Self {
        Evaluator {
            policy,
            nodes: Vec::new(),
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

    fn host_net(&self, alias: &str) -> Option<ipnet::IpNet> {
        self.policy.hosts.get(alias).map(|h| h.value)
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

    fn ip_matches(&self, sel: &Selector, p: &Principal) -> bool {
        let Some(ip) = p.ip else { return false };
        match sel {
            Selector::Ip(x) => *x == ip,
            Selector::Cidr(n) => n.contains(&ip),
            Selector::Host(h) => self.host_net(h).is_some_and(|n| n.contains(&ip)),
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
            Selector::Autogroup(a) => match a.as_str() {
                "member" | "members" => p.member && !p.is_tagged(),
                "tagged" => p.is_tagged(),
                "danger-all" => true,
                _ => false,
            },
            Selector::Ip(_) | Selector::Cidr(_) | Selector::Host(_) => self.ip_matches(sel, p),
            Selector::IpSet(_) | Selector::LocalPart(_) => false,
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
                "member" | "members" => dst.member && !dst.is_tagged(),
                "tagged" => dst.is_tagged(),
                "danger-all" => true,
                _ => false,
            },
            Selector::Ip(_) | Selector::Cidr(_) | Selector::Host(_) => self.ip_matches(sel, dst),
            Selector::IpSet(_) | Selector::LocalPart(_) => false,
        }
    }

    fn rule_ports(
        &self,
        rule: &NetRule,
        src: &Principal,
        dst: &Principal,
        proto: Option<u8>,
    ) -> PortSet {
        let mut set = PortSet::new();
        if !rule.src.iter().any(|s| self.src_matches(&s.value, src)) {
            return set;
        }
        for t in &rule.dst {
            let t = &t.value;
            let proto_ok = match proto {
                None => true,
                Some(n) => t.proto.matches(n),
            };
            if proto_ok && self.dst_matches(&t.host, src, dst) {
                set.insert_set(&t.ports);
            }
        }
        set
    }

    /// The ports of `dst` that `rule` opens to `src` (any protocol).
    pub fn ports_by_rule(&self, rule: &NetRule, src: &Principal, dst: &Principal) -> PortSet {
        self.rule_ports(rule, src, dst, None)
    }

    /// Every port of `dst` that `src` may reach, for protocol `proto` (IANA number), or for any protocol if `None`.
    pub fn ports(&self, src: &Principal, dst: &Principal, proto: Option<u8>) -> PortSet {
        let mut set = PortSet::new();
        for r in &self.policy.rules {
            set.insert_set(&self.rule_ports(r, src, dst, proto));
        }
        set
    }

    /// The first rule letting `src` reach `dst` on `port` with protocol `proto` (IANA number), if any.
    pub fn reach(
        &self,
        src: &Principal,
        dst: &Principal,
        port: u16,
        proto: u8,
    ) -> Option<&'p NetRule> {
        self.policy
            .rules
            .iter()
            .find(|r| self.rule_ports(r, src, dst, Some(proto)).contains(port))
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

    fn ssh_rule_applies(&self, r: &SshRule, src: &Principal, dst: &Principal, user: &str) -> bool {
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
    pub fn principal_for(&self, text: &str) -> Result<Principal, String> {
        let sel = Selector::parse(text)?;
        self.principal_for_selector(&sel, text)
    }

    fn principal_for_selector(&self, sel: &Selector, text: &str) -> Result<Principal, String> {
        let by_ip = |ip: IpAddr| {
            self.nodes
                .iter()
                .find(|n| n.ip == Some(ip))
                .cloned()
                .unwrap_or_else(|| Principal {
                    name: ip.to_string(),
                    tags: BTreeSet::new(),
                    user: None,
                    groups: BTreeSet::new(),
                    member: false,
                    ip: Some(ip),
                })
        };
        match sel {
            Selector::Tag(t) => Ok(Principal::tag(t)),
            Selector::Group(g) => Ok(Principal::group(g)),
            Selector::User(u) => Ok(Principal::user(u, self.policy)),
            Selector::Ip(ip) => Ok(by_ip(*ip)),
            Selector::Host(h) => match self.host_net(h) {
                Some(n) if n.prefix_len() == n.max_prefix_len() => Ok(by_ip(n.addr())),
                Some(_) => Err(format!("host {h:?} is a range, not one device")),
                None => Err(format!("unknown host {h:?}")),
            },
            _ => Err(format!(
                "{text:?} does not name one identity (use a user, group, tag, IP or host)"
            )),
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
                    message: e,
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
                            message: e,
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
                            message: e,
                        });
                        continue;
                    }
                };
                let got = protos.iter().any(|&p| {
                    if p == 1 || p == 58 {
                        // ICMP goes wherever any traffic is allowed.
                        !self.ports(&src, &dst, None).is_empty()
                    } else {
                        self.reach(&src, &dst, port, p).is_some()
                    }
                });
                if got != want_accept {
                    let w = |b: bool| if b { "Accept" } else { "Drop" };
                    out.push(TestFailure {
                        loc: d.loc,
                        test: label.clone(),
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
                    message: e,
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
                        message: e,
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
