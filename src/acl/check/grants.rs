//! Network access: over-grants (what the checked policy allows and the rendered one does not)
//! and missing grants (the reverse, explained by the catalog row behind it).

use super::*;

/// Explains why `over` is not allowed to a source on `node`: the catalog rows of that protocol using those ports.
pub(super) fn explain_over(fleet: &Fleet, node: &Node, key: ProtoKey, over: &PortSet) -> String {
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
pub(super) fn iana(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => TCP,
        Protocol::Udp => UDP,
    }
}

pub(super) fn join_nodes(nodes: &[String]) -> String {
    nodes.join(", ")
}

/// What `want` (the rendered policy) lets one source reach on each node: as written, and with
/// ICMP following other traffic.
pub(super) struct WantRow {
    pub(super) written: Vec<Access>,
    pub(super) implied: Vec<Access>,
}

/// The rendered policy's access per source, computed once per source.
pub(super) struct WantCache<'a, 'p> {
    pub(super) ev: &'a Evaluator<'p>,
    pub(super) nodes: &'a [Principal],
    /// Keyed by the whole principal: a `hosts` alias may share a node's name.
    pub(super) rows: HashMap<Principal, WantRow>,
}

impl<'a, 'p> WantCache<'a, 'p> {
    pub(super) fn row(&mut self, src: &Principal) -> &WantRow {
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
pub(super) fn over_text(key: ProtoKey, over: &PortSet, allowed: &PortSet) -> String {
    if key.has_ports() && (over.is_all() || over.union(allowed).is_all()) {
        format!("every {key} port ({over})")
    } else {
        entry_text(key, over)
    }
}

pub(super) fn allowed_of(acc: &Access, key: ProtoKey) -> PortSet {
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
pub(super) fn over_grants(
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
pub(super) fn aliases(p: &Principal, rendered: &Policy) -> Vec<String> {
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
pub(super) fn reasons<'i>(
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
pub(super) fn other_proto_rule<'p>(
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
pub(super) struct Missing {
    pub(super) lines: Vec<String>,
    pub(super) names: Vec<String>,
    pub(super) all: PortSet,
    pub(super) required: bool,
    pub(super) instead: Option<(Loc, String)>,
}

/// Missing grants: per source and protocol, each port with the needs and catalog rows behind it.
#[allow(clippy::too_many_arguments)]
pub(super) fn missing_grants(
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
pub(super) fn unverifiable(
    policy: &Policy,
    have: &Evaluator,
    nodes: &[Principal],
    out: &mut Vec<Finding>,
) {
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
