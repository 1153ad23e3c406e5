//! Checks across the three files: the control plane, the hosting roles and groups, and the
//! default NATS URL.

use super::catalog::CatalogSpans;
use super::decode::Cx;
use super::nodes::NodeSpans;
use super::settings::RawSettings;
use super::{yaml, FleetTexts, Problem, CONTROL_PLANE_ROLE};
use crate::model::*;
use crate::suggest::closest;

pub(super) fn cross_check<'t>(
    cx: &mut Cx<'t>,
    texts: &'t FleetTexts,
    catalog: Catalog,
    cat_spans: &CatalogSpans,
    raw: RawSettings,
    nodes: Vec<(Node, NodeSpans)>,
) -> Option<Fleet> {
    let mut ok = true;
    let cp_role = Role::parse(CONTROL_PLANE_ROLE).ok()?;
    let nodes_root_pos = nodes.first().map(|(_, s)| s.item);
    if !nodes.iter().any(|(n, _)| n.has_role(&cp_role)) {
        cx.file = &texts.paths.nodes;
        if let Some(at) = nodes_root_pos {
            cx.err(
                at,
                "nodes[].roles",
                format!("no node has the `{CONTROL_PLANE_ROLE}` role"),
                Some(format!(
                    "exactly the control plane node to list `{CONTROL_PLANE_ROLE}`"
                )),
            );
        } else {
            cx.problems.push(
                Problem::at(
                    &texts.paths.nodes,
                    yaml::Pos::START,
                    1,
                    "nodes",
                    "there are no nodes".into(),
                )
                .expected("at least the control-plane node"),
            );
        }
        ok = false;
    }
    let mut settings = raw.settings;
    match nodes.iter().find(|(n, _)| n.name == settings.control_plane) {
        None => {
            cx.file = &texts.paths.fleet;
            let known: Vec<&str> = nodes.iter().map(|(n, _)| n.name.as_str()).collect();
            let hint = match closest(settings.control_plane.as_str(), &known) {
                Some(c) => format!("a node of nodes.yml (did you mean `{c}`?)"),
                None => format!("one of {}", known.join(", ")),
            };
            cx.err(
                raw.control_plane,
                "control_plane",
                format!("node `{}` is not in nodes.yml", settings.control_plane),
                Some(hint),
            );
            ok = false;
        }
        Some((cp, _)) if !cp.has_role(&cp_role) => {
            cx.file = &texts.paths.fleet;
            cx.err(
                raw.control_plane,
                "control_plane",
                format!(
                    "node `{}` does not have the `{CONTROL_PLANE_ROLE}` role",
                    cp.name
                ),
                Some(format!("the node with role `{CONTROL_PLANE_ROLE}`")),
            );
            ok = false;
        }
        Some((cp, _)) => {
            if !raw.nats_url_given {
                let port = catalog
                    .services
                    .iter()
                    .find(|s| s.name.as_str() == "nats")
                    .map_or(4222, |s| s.port);
                settings.nats_url = NatsUrl::at(cp.tailscale_ip, port);
            }
        }
    }
    cx.file = &texts.paths.services;
    for (svc, at) in catalog.services.iter().zip(&cat_spans.services) {
        if !nodes.iter().any(|(n, _)| n.has_role(&svc.role)) {
            cx.err(
                at,
                &format!("services.{}.role", svc.name),
                format!(
                    "service `{}` is hosted by role `{}`, which no node has",
                    svc.name, svc.role
                ),
                Some("a role that at least one node in nodes.yml lists".into()),
            );
            ok = false;
        }
        for a in &svc.allow {
            if a.starts_with("group:") && *a != settings.operators.group {
                cx.err(
                    at,
                    &format!("services.{}.allow", svc.name),
                    format!("unknown group `{a}`"),
                    Some(format!(
                        "the operators' group `{}` from fleet.yml",
                        settings.operators.group
                    )),
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    settings.node_state_versions = nodes
        .iter()
        .filter_map(|(n, s)| Some((n.name.clone(), s.state_version.clone()?)))
        .collect();
    let mut nodes: Vec<Node> = nodes.into_iter().map(|(n, _)| n).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Some(Fleet {
        nodes,
        catalog,
        settings,
        sources: texts.paths.clone(),
    })
}
