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
                    "the fleet allows Tailscale SSH from the deployers ({}: root and each node's ssh_user) and from {} (non-root users) only",
                    fleet.settings.deployers.join(", "),
                    fleet.settings.operators.group
                ));
                f.source = Some(src.name.clone());
                f.nodes = names;
                out.push(f);
            }
        }
    }
}

/// The local user the operators must be able to log in as: root when they are deployers, else
/// any non-root user.
pub(super) fn operator_user(fleet: &Fleet) -> &'static str {
    let ops = &fleet.settings.operators.group;
    if fleet.settings.deployers.iter().any(|d| d == ops) {
        "root"
    } else {
        NONROOT_PROBE
    }
}

/// Tailscale SSH the fleet needs: every deployer to every node as its `ssh_user` (accept rule and
/// port 22), the operators to every node (root when they deploy, else a non-root user).
pub(super) fn ssh_needed(
    fleet: &Fleet,
    policy: &Policy,
    have: &Evaluator,
    intents: &Intents,
    nodes: &[Principal],
    out: &mut Vec<Finding>,
) {
    let deployers = intents.deploy_src.join(", ");
    let ops = &fleet.settings.operators.group;
    let Some(_) = &policy.ssh else {
        out.push(
            Finding::at(
                FindingKind::NoSsh,
                Loc { line: 1, column: 1 },
                format!("the policy has no \"ssh\" section, so Tailscale SSH is denied to everyone: deploys from {deployers} as root fail, and operators cannot log in"),
            )
            .hint(if intents.is_deployer(ops) && intents.deploy_src.len() == 1 {
                format!("add an ssh rule: {ops} (the deployers) -> every node's tags as root and autogroup:nonroot")
            } else {
                format!("add ssh rules: {deployers} -> every node's tags as root; {ops} -> autogroup:nonroot")
            }),
        );
        return;
    };
    let ssh_loc = top(policy, "ssh");
    for d in &intents.deploy_src {
        let p = deployer_principal(d);
        let mut cut = Vec::new();
        let mut no_port = Vec::new();
        for (n, dst) in fleet.nodes.iter().zip(nodes.iter()) {
            if !matches!(have.ssh(&p, dst, &n.ssh_user), SshDecision::Accept(_)) {
                cut.push(format!("{} as {}", n.name, n.ssh_user));
            } else if have.reach(&p, dst, 22, policy::TCP).is_none() {
                no_port.push(n.name.to_string());
            }
        }
        if cut.is_empty() && no_port.is_empty() {
            continue;
        }
        let mut parts = Vec::new();
        if !cut.is_empty() {
            parts.push(format!("no ssh rule accepts {d} to {}", cut.join(", ")));
        }
        if !no_port.is_empty() {
            parts.push(format!(
                "no acls rule lets it reach port 22 of {}",
                no_port.join(", ")
            ));
        }
        let mut f = Finding::at(
            FindingKind::SshDeploy,
            ssh_loc,
            format!(
                "Tailscale SSH deploys from {d} (fleet.yml deployers) fail: {}",
                parts.join("; ")
            ),
        )
        .hint(format!(
            "{{\"action\": \"accept\", \"src\": [{d:?}], \"dst\": {:?}, \"users\": [\"root\"]}}",
            intents.node_tags
        ));
        f.source = Some(d.clone());
        out.push(f);
    }
    let user = operator_user(fleet);
    let p = Principal::group(ops);
    let denied: Vec<String> = fleet
        .nodes
        .iter()
        .zip(nodes.iter())
        .filter(|(_, d)| have.ssh(&p, d, user) == SshDecision::Deny)
        .map(|(n, _)| n.name.to_string())
        .collect();
    if !denied.is_empty() {
        let as_user = if user == "root" {
            "root"
        } else {
            "a non-root user"
        };
        let mut f = Finding::at(
            FindingKind::SshOperators,
            ssh_loc,
            format!(
                "{ops} cannot Tailscale-SSH as {as_user} to {}",
                denied.join(", ")
            ),
        );
        f.source = Some(ops.clone());
        f.nodes = denied;
        out.push(f);
    }
}

/// SSH as root by anyone but the deployers: per `ssh` rule (accept or check) and source, the
/// nodes it lets in as root. A source is a deployer when the rendered policy says so (a login is
/// one through the groups fleet.yml gives it, not through a group the checked policy adds it to).
#[allow(clippy::too_many_arguments)]
pub(super) fn ssh_root(
    fleet: &Fleet,
    policy: &Policy,
    have: &Evaluator,
    want: &Evaluator,
    intents: &Intents,
    idents: &[Principal],
    nodes: &[Principal],
    out: &mut Vec<Finding>,
) {
    let deployer_sels: Vec<Selector> = intents
        .deploy_src
        .iter()
        .filter_map(|d| Selector::parse(d).ok())
        .collect();
    let is_deployer = |p: &Principal| deployer_sels.iter().any(|s| want.src_matches(s, p));
    for r in policy.ssh.iter().flatten() {
        for src in idents
            .iter()
            .filter(|p| !is_deployer(p))
            .filter(|p| r.src.iter().any(|s| have.src_matches(&s.value, p)))
        {
            let names: Vec<String> = fleet
                .nodes
                .iter()
                .zip(nodes)
                .filter(|(_, d)| have.ssh_rule_applies(r, src, d, "root"))
                .map(|(n, _)| n.name.to_string())
                .collect();
            if names.is_empty() {
                continue;
            }
            let mut f = Finding::at(
                FindingKind::SshRoot,
                r.loc,
                format!(
                    "ssh[{}] (line {}): {src} may Tailscale-SSH as root to {}, but only the deployers ({}) may",
                    r.index,
                    r.loc.line,
                    join_nodes(&names),
                    intents.deploy_src.join(", ")
                ),
            )
            .hint(format!(
                "remove root from this rule for {src}; to let it deploy, list it under `deployers:` in fleet.yml (a dedicated tag such as tag:deployer on a machine that runs no services, never tag:control-plane)"
            ));
            f.source = Some(src.name.clone());
            f.nodes = names;
            out.push(f);
        }
    }
}
