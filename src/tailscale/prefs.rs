//! Prefs that follow the manifest on running nodes. `extraUpFlags` reach a node only when it
//! logs in; a running node keeps its tags until they are changed through the API
//! (`POST /device/{id}/tags`, shared reference tailscale-api.md: `tailscale set` cannot change
//! tags). The other flags are applied on every start by `services.tailscale.extraSetFlags`
//! (NixOS, rendered from [`crate::spec::NodeSpec::set_flags`]).

use super::api::{ApiError, Client};
use super::devices::ApiDevice;
use super::names::holds_name;
use crate::model::{Fleet, NodeName};
use serde::Serialize;

/// A device whose tags are to be replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagChange {
    /// The node.
    pub node: NodeName,
    /// The device's id in `/device/{id}` paths.
    pub device_id: String,
    /// Its tags now, sorted.
    pub from: Vec<String>,
    /// The tags its roles give it, sorted.
    pub to: Vec<String>,
}

/// The device of `node` among `devices`: the online record named like it, else the only one.
pub fn device_of<'a>(devices: &'a [ApiDevice], node: &str) -> Option<&'a ApiDevice> {
    let recs: Vec<&ApiDevice> = devices
        .iter()
        .filter(|d| d.hostname == node || holds_name(d.dns_label(), node))
        .collect();
    recs.iter()
        .find(|d| d.online() == Some(true))
        .copied()
        .or(if recs.len() == 1 { Some(recs[0]) } else { None })
}

/// For each of `nodes`, the tag change its device needs (none when they agree or it has no
/// device). Pure.
pub fn tag_changes(fleet: &Fleet, nodes: &[NodeName], devices: &[ApiDevice]) -> Vec<TagChange> {
    let mut out = Vec::new();
    for name in nodes {
        let Some(node) = fleet.node(name.as_str()) else {
            continue;
        };
        let Some(d) = device_of(devices, name.as_str()) else {
            continue;
        };
        let mut from = d.tags.clone();
        from.sort();
        from.dedup();
        let to = fleet.tags_of(node);
        if from != to {
            out.push(TagChange {
                node: name.clone(),
                device_id: d.path_id().to_string(),
                from,
                to,
            });
        }
    }
    out
}

/// Retags the devices of `nodes` whose tags differ from their roles' (`POST /device/{id}/tags`);
/// returns what was changed. Stops at the first API error (the changes before it are done).
pub async fn reconcile_tags(
    client: &Client,
    fleet: &Fleet,
    nodes: &[NodeName],
) -> Result<Vec<TagChange>, ApiError> {
    let devices = client.list_devices().await?;
    let changes = tag_changes(fleet, nodes, &devices);
    for c in &changes {
        client.set_device_tags(&c.device_id, &c.to).await?;
    }
    Ok(changes)
}
