//! `nodes.yml`: the machines, and the duplicate checks between them.

use super::decode::{join, Cx};
use super::yaml::{Node as Y, Value};
use crate::model::*;
use crate::suggest::closest;
use std::collections::HashMap;
use std::net::IpAddr;

/// A node plus the positions needed for cross checks, and its `state_version`.
pub(super) struct NodeSpans<'y> {
    pub(super) item: &'y Y,
    pub(super) name: Option<&'y Y>,
    pub(super) ip: Option<&'y Y>,
    pub(super) state_version: Option<StateVersion>,
}

/// What `state_version` must look like.
pub(super) const STATE_VERSION_EXPECTED: &str = "the NixOS release the node was first installed with, as a quoted \"YY.MM\" like \"25.11\" (never changed after installation)";

pub(super) fn decode_nodes<'y>(
    cx: &mut Cx,
    root: &'y Y,
    catalog: Option<&Catalog>,
) -> Option<Vec<(Node, NodeSpans<'y>)>> {
    let f = cx.fields(root, "", &["nodes"])?;
    let list = cx.required(&f, "nodes", "a list of nodes")?;
    let items = cx.list(list, "nodes", "nodes")?;
    let mut out = Vec::new();
    let mut ok = true;
    const FIELDS: [&str; 10] = [
        "name",
        "tailscale_ip",
        "roles",
        "resources",
        "os",
        "ssh_user",
        "host_key",
        "public_address",
        "state_version",
        "models",
    ];
    for (i, item) in items.iter().enumerate() {
        let path = format!("nodes[{i}]");
        // Name the node in every message about it, even those found before its name is checked.
        cx.node = match &item.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some("name"))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string),
            _ => None,
        };
        let Some(nf) = cx.fields(item, &path, &FIELDS) else {
            ok = false;
            continue;
        };
        let name_node = cx.required(&nf, "name", "a hostname label like worker-01");
        let name = name_node.and_then(|v| {
            cx.checked(
                v,
                &join(&path, "name"),
                "an RFC 1123 hostname label (lowercase letters, digits, '-', at most 63)",
                NodeName::parse,
            )
        });
        cx.node = name
            .as_ref()
            .map(|n| n.to_string())
            .or_else(|| name_node.and_then(|v| v.as_str()).map(str::to_string));
        let ip_node = cx.required(
            &nf,
            "tailscale_ip",
            "a Tailscale address in 100.64.0.0/10 or fd7a:115c:a1e0::/48",
        );
        let tailscale_ip = ip_node.and_then(|v| {
            cx.checked(
                v,
                &join(&path, "tailscale_ip"),
                "a Tailscale address in 100.64.0.0/10 or fd7a:115c:a1e0::/48",
                |s| {
                    let ip: IpAddr = s.parse().map_err(|_| "not an IP address")?;
                    if is_tailnet_addr(&ip) {
                        Ok(ip)
                    } else {
                        Err("outside Tailscale's address ranges")
                    }
                },
            )
        });
        let mut roles: Vec<Role> = Vec::new();
        let mut roles_ok = true;
        if let Some(v) = cx.required(&nf, "roles", "a list of roles from fleet/services.yml") {
            let items = cx.list(v, &join(&path, "roles"), "roles");
            roles_ok &= items.is_some();
            for (j, r) in items.unwrap_or(&[]).iter().enumerate() {
                let field = format!("{path}.roles[{j}]");
                let Some(role) = cx.checked(
                    r,
                    &field,
                    "a role name (lowercase letters, digits, '-')",
                    Role::parse,
                ) else {
                    roles_ok = false;
                    continue;
                };
                if let Some(cat) = catalog {
                    if !cat.roles.contains_key(&role) {
                        let known: Vec<&str> = cat.roles.keys().map(Role::as_str).collect();
                        let hint = match closest(role.as_str(), &known) {
                            Some(c) => {
                                format!("a role of fleet/services.yml (did you mean `{c}`?)")
                            }
                            None => format!("one of {}", known.join(", ")),
                        };
                        cx.err(
                            r,
                            &field,
                            format!("role `{role}` is not in the catalog"),
                            Some(hint),
                        );
                        roles_ok = false;
                    }
                }
                if roles.contains(&role) {
                    cx.err(
                        r,
                        &field,
                        format!("role `{role}` is listed twice"),
                        Some("each role once".into()),
                    );
                    roles_ok = false;
                    continue;
                }
                roles.push(role);
            }
            if roles.is_empty() && roles_ok {
                cx.err(
                    v,
                    &join(&path, "roles"),
                    "the node has no roles",
                    Some("at least one role".into()),
                );
                roles_ok = false;
            }
        } else {
            roles_ok = false;
        }
        let mut resources = None;
        if let Some(v) = cx.required(&nf, "resources", "a mapping { cpu, ram_gb }") {
            let rpath = join(&path, "resources");
            if let Some(rf) = cx.fields(v, &rpath, &["cpu", "ram_gb", "gpu"]) {
                let cpu = cx
                    .required(&rf, "cpu", "a positive number of cores")
                    .and_then(|v| cx.positive(v, &join(&rpath, "cpu")));
                let ram = cx
                    .required(&rf, "ram_gb", "a positive number of GiB")
                    .and_then(|v| cx.positive(v, &join(&rpath, "ram_gb")));
                let gpu = match rf.get("gpu") {
                    Some(v) => cx
                        .int(v, &join(&rpath, "gpu"), "a number of GPUs")
                        .and_then(|g| {
                            if (0..=1024).contains(&g) {
                                Some(g as u32)
                            } else {
                                cx.err(
                                    v,
                                    &join(&rpath, "gpu"),
                                    format!("{g} GPUs"),
                                    Some("0 to 1024".into()),
                                );
                                None
                            }
                        })
                        .map(Some),
                    None => Some(None),
                };
                if let (Some(cpu), Some(ram_gb), Some(gpu)) = (cpu, ram, gpu) {
                    resources = Some(Resources { cpu, ram_gb, gpu });
                }
            }
        }
        let os = match nf.get("os") {
            None => Some(Os::Nixos),
            Some(v) => cx.checked(v, &join(&path, "os"), "nixos, linux or auto", |s| match s {
                "nixos" => Ok(Os::Nixos),
                "linux" => Ok(Os::Linux),
                "auto" => Ok(Os::Auto),
                _ => Err(InvalidValue::from("unknown OS")),
            }),
        };
        let ssh_user = match nf.get("ssh_user") {
            None => Some(SshLogin::root()),
            Some(v) => cx.checked(
                v,
                &join(&path, "ssh_user"),
                "a Unix user name",
                SshLogin::parse,
            ),
        };
        let host_key = match nf.get("host_key") {
            None => Some(None),
            Some(v) => cx
                .checked(
                    v,
                    &join(&path, "host_key"),
                    "an SSH host public key (ssh-ed25519 AAAA… or ssh-rsa AAAA…)",
                    HostKey::parse,
                )
                .map(Some),
        };
        let state_version = match nf.get("state_version") {
            None => Some(None),
            Some(v) => cx
                .checked(
                    v,
                    &join(&path, "state_version"),
                    STATE_VERSION_EXPECTED,
                    StateVersion::parse,
                )
                .map(Some),
        };
        let public_address = match nf.get("public_address") {
            None => Some(None),
            Some(v) => cx
                .checked(
                    v,
                    &join(&path, "public_address"),
                    "a host name or IP address",
                    |s| check_host(s).map(|()| s.to_string()),
                )
                .map(Some),
        };
        let mut models: Vec<String> = Vec::new();
        let mut models_ok = true;
        if let Some(v) = nf.get("models") {
            let field = join(&path, "models");
            let items = cx.list(v, &field, "a list of model names");
            models_ok &= items.is_some();
            for (j, m) in items.unwrap_or(&[]).iter().enumerate() {
                let field = format!("{field}[{j}]");
                let Some(model) = cx.checked(
                    m,
                    &field,
                    "a model name like glm-4.5-air (letters, digits and . _ - : / + @)",
                    |s| check_model(s).map(|()| s.to_string()),
                ) else {
                    models_ok = false;
                    continue;
                };
                if models.contains(&model) {
                    cx.err(
                        m,
                        &field,
                        format!("model `{model}` is listed twice"),
                        Some("each model once".into()),
                    );
                    models_ok = false;
                    continue;
                }
                models.push(model);
            }
        }
        match (
            name,
            tailscale_ip,
            resources,
            os,
            ssh_user,
            host_key,
            public_address,
            state_version,
        ) {
            (
                Some(name),
                Some(tailscale_ip),
                Some(resources),
                Some(os),
                Some(ssh_user),
                Some(host_key),
                Some(public_address),
                Some(state_version),
            ) if roles_ok && models_ok => {
                out.push((
                    Node {
                        name,
                        tailscale_ip,
                        roles,
                        resources,
                        os,
                        ssh_user,
                        host_key,
                        public_address,
                        models,
                    },
                    NodeSpans {
                        item,
                        name: name_node,
                        ip: ip_node,
                        state_version,
                    },
                ));
            }
            _ => ok = false,
        }
    }
    cx.node = None;
    // Duplicates are checked here, on what decoded, so they are reported even when other nodes are broken.
    let mut names: HashMap<&NodeName, ()> = HashMap::new();
    let mut ips: HashMap<IpAddr, &NodeName> = HashMap::new();
    for (node, spans) in &out {
        if names.insert(&node.name, ()).is_some() {
            let at = spans.name.unwrap_or(spans.item);
            cx.node = Some(node.name.to_string());
            cx.err(
                at,
                "nodes[].name",
                format!("duplicate node name `{}`", node.name),
                Some("unique node names".into()),
            );
            ok = false;
        }
        if let Some(other) = ips.insert(node.tailscale_ip, &node.name) {
            let at = spans.ip.unwrap_or(spans.item);
            cx.node = Some(node.name.to_string());
            cx.err(
                at,
                "nodes[].tailscale_ip",
                format!(
                    "duplicate tailscale_ip {} (also used by {other})",
                    node.tailscale_ip
                ),
                Some("a unique address per node".into()),
            );
            ok = false;
        }
    }
    cx.node = None;
    if ok {
        Some(out)
    } else {
        None
    }
}
