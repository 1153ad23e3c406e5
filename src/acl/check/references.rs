//! References to what the policy does not define: unknown tags, groups, hosts and ipsets.

use super::*;

pub(super) fn top(policy: &Policy, section: &str) -> Loc {
    policy
        .sections
        .get(section)
        .copied()
        .unwrap_or(Loc { line: 1, column: 1 })
}

pub(super) fn references(policy: &Policy, out: &mut Vec<Finding>) {
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
