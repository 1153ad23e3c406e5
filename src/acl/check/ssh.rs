//! SSH and tag ownership: who may log in as whom, what deploys need, who may apply which tag.

use super::*;

/// What `p` may do on each node under `ev`: access as written, and the SSH users it is accepted as.
pub(super) fn privileges(
    ev: &Evaluator,
    p: &Principal,
    nodes: &[Principal],
) -> Vec<(Access, Vec<String>)> {
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
pub(super) fn gain_text(
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
pub(super) fn owner_principal(sel: &Selector) -> Option<Principal> {
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
pub(super) fn tag_owners(
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
pub(super) fn ssh_over_grants(
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
