//! Per-node NixOS modules (`nix/nodes/<node>.nix`), rendered from the plan with the shared engine
//! ([`super::engine`]) and checked with `rnix`.

use super::{render_nix, RenderError, Rendered};
use crate::model::Os;
use crate::spec::secrets::{SecretId, SecretKind};
use crate::spec::secrets::{AUTHKEY_SECRET, PASSWORD_SECRET};
use crate::spec::NodeSpec;
use std::path::{Path, PathBuf};

/// Where node modules go, relative to the repository root.
pub const NODES_DIR: &str = "nix/nodes";

/// Renders the module of one node. `sources` names the manifest files for the header.
pub fn render_node(
    engine: &tera::Tera,
    plan: &NodeSpec,
    sources: &str,
) -> Result<String, RenderError> {
    let mut cx = tera::Context::new();
    cx.insert("sources", sources);
    cx.insert("name", plan.name.as_str());
    cx.insert("roles", &plan.roles);
    cx.insert("tags", &plan.tags);
    cx.insert("up_flags", &plan.up_flags);
    cx.insert("set_flags", &plan.set_flags());
    cx.insert(
        "oauth_client",
        &(plan.tailscale_auth == crate::model::TailscaleAuth::OauthClient),
    );
    cx.insert("secret", AUTHKEY_SECRET);
    cx.insert("is_control_plane", &plan.is_control_plane);
    cx.insert("bus_module", &format!("../../{}", super::nats::NIX_PATH));
    cx.insert("nats_secret", PASSWORD_SECRET);
    cx.insert(
        "nats_secret_file",
        &SecretId::new(plan.name.clone(), SecretKind::NatsPassword).secrets_path(),
    );
    cx.insert(
        "secret_file",
        &SecretId::new(plan.name.clone(), SecretKind::TailscaleAuthkey).secrets_path(),
    );
    cx.insert("tcp_ports", &plan.tcp_ports);
    cx.insert("udp_ports", &plan.udp_ports);
    let summary: Vec<String> = plan
        .services
        .iter()
        .map(|s| format!("{} {}/{}", s.name, s.port, s.protocol))
        .collect();
    cx.insert(
        "services_summary",
        &if summary.is_empty() {
            "none".to_string()
        } else {
            summary.join(", ")
        },
    );
    cx.insert("agent", &plan.agent);
    cx.insert("state_version", &plan.state_version);
    render_nix(engine, "node.nix", &cx, node_path(plan.name.as_str()))
}

/// `nix/nodes/<node>.nix`.
pub fn node_path(node: &str) -> PathBuf {
    Path::new(NODES_DIR).join(format!("{node}.nix"))
}

/// Renders the module of every node that may run NixOS (not `os: linux`, which gets no NixOS
/// configuration). Pure: nothing is written.
pub fn render_all(plans: &[NodeSpec], sources: &str) -> Result<Rendered, RenderError> {
    render_all_with(&super::engine()?, plans, sources)
}

/// [`render_all`] with a given engine.
pub(crate) fn render_all_with(
    engine: &tera::Tera,
    plans: &[NodeSpec],
    sources: &str,
) -> Result<Rendered, RenderError> {
    plans
        .iter()
        .filter(|p| p.access.os != Os::Linux)
        .map(|p| Ok((node_path(p.name.as_str()), render_node(engine, p, sources)?)))
        .collect()
}
