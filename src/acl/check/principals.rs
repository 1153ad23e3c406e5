//! Who is compared: the fleet's nodes, every identity either policy names, and the
//! sources of rules that name addresses.

use super::*;

/// A user name standing for "any non-root account" when probing SSH rules.
pub const NONROOT_PROBE: &str = "nonroot";

pub(super) fn node_principal(fleet: &Fleet, n: &Node) -> Principal {
    Principal::node(n.name.as_str(), n.tailscale_ip, &fleet.tags_of(n))
}

/// The identity a `deployers` entry (fleet.yml) stands for: a tagged device, some member of a
/// group, or a login (in the groups the evaluated policy puts it in).
pub fn deployer_principal(deployer: &str) -> Principal {
    if deployer.starts_with("tag:") {
        Principal::tag(deployer)
    } else if deployer.starts_with("group:") {
        Principal::group(deployer)
    } else {
        Principal::login(deployer)
    }
}

/// The fleet's nodes as principals.
pub fn node_principals(fleet: &Fleet) -> Vec<Principal> {
    fleet
        .nodes
        .iter()
        .map(|n| node_principal(fleet, n))
        .collect()
}

/// Logins, domains, role autogroups and `autogroup:shared` a policy names.
#[derive(Debug, Default)]
pub(super) struct Named {
    pub(super) logins: BTreeSet<String>,
    pub(super) domains: BTreeSet<String>,
    pub(super) roles: BTreeSet<String>,
    pub(super) shared: bool,
}

impl Named {
    pub(super) fn selector(&mut self, s: &Selector) {
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

    pub(super) fn text(&mut self, s: &str) {
        if let Ok(sel) = Selector::parse(s) {
            self.selector(&sel);
        }
    }

    pub(super) fn policy(&mut self, policy: &Policy) {
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
pub(super) fn identities(intents: &Intents, policy: &Policy, rendered: &Policy) -> Vec<Principal> {
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
pub(super) fn addr_set(ev: &Evaluator, sel: &Selector) -> Option<AddrSet> {
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
pub(super) fn address_sources(
    ev: &Evaluator,
    rule: &NetRule,
    nodes: &[Principal],
) -> Vec<Principal> {
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
