//! Renders per-node NixOS modules (`nix/nodes/<node>.nix`) from the plan with tera,
//! checks them with `rnix`, and writes them atomically. `--check` compares instead.

use crate::bus;
use crate::fsutil::write_atomic;
use crate::model::{Fleet, Os};
use crate::nix;
use crate::plan::{NodePlan, AUTHKEY_SECRET};
use crate::secrets::{SecretId, SecretKind};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where node modules go, relative to the repository root.
pub const NODES_DIR: &str = "nix/nodes";

const NODE_TEMPLATE: &str = include_str!("../templates/node.nix.tera");

/// Errors of rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template failed (a bug in fleetnix's templates).
    #[error("template {name} failed: {source}")]
    Template {
        /// Template name.
        name: String,
        /// tera's error.
        #[source]
        source: tera::Error,
    },
    /// The rendered text is not valid Nix (a bug; nothing was written).
    #[error("rendered {} is not valid Nix (nothing written): {}", path.display(), errors.join("; "))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// rnix's messages.
        errors: Vec<String>,
    },
    /// The NATS bus module could not be rendered.
    #[error("NATS bus module: {0}")]
    Bus(#[from] bus::BusError),
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Rendered files by path relative to the repository root.
pub type Rendered = BTreeMap<PathBuf, String>;

/// A tera filter turning any value into a Nix literal (escaped).
fn nix_filter(v: &tera::Value, _: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    Ok(tera::Value::String(nix::literal(v)))
}

/// A tera instance with fleetnix's templates and the `nix` filter; autoescape off (Nix, not HTML).
pub fn engine() -> Result<tera::Tera, RenderError> {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    t.register_filter("nix", nix_filter);
    t.add_raw_template("node.nix", NODE_TEMPLATE)
        .map_err(|source| RenderError::Template {
            name: "node.nix".into(),
            source,
        })?;
    Ok(t)
}

/// Renders the module of one node. `sources` names the manifest files for the header.
pub fn render_node(
    engine: &tera::Tera,
    plan: &NodePlan,
    sources: &str,
) -> Result<String, RenderError> {
    let mut cx = tera::Context::new();
    // Comments must stay on one line whatever the paths contain.
    let one_line = |s: &str| {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
    };
    cx.insert("sources", &one_line(sources));
    cx.insert("name", plan.name.as_str());
    cx.insert("roles", &plan.roles);
    cx.insert("tags", &plan.tags);
    cx.insert("up_flags", &plan.up_flags);
    cx.insert("secret", AUTHKEY_SECRET);
    cx.insert("is_control_plane", &plan.is_control_plane);
    cx.insert("bus_module", &format!("../../{}", bus::nix::NIX_PATH));
    cx.insert("nats_secret", bus::creds::PASSWORD_SECRET);
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
    let text = engine
        .render("node.nix", &cx)
        .map_err(|source| RenderError::Template {
            name: "node.nix".into(),
            source,
        })?;
    let path = node_path(plan.name.as_str());
    nix::check_syntax(&text).map_err(|errors| RenderError::Syntax { path, errors })?;
    Ok(text)
}

/// `nix/nodes/<node>.nix`.
pub fn node_path(node: &str) -> PathBuf {
    Path::new(NODES_DIR).join(format!("{node}.nix"))
}

/// Renders the module of every node that may run NixOS (not `os: linux`, which gets no NixOS
/// configuration). Pure: nothing is written.
pub fn render_all(plans: &[NodePlan], sources: &str) -> Result<Rendered, RenderError> {
    let engine = engine()?;
    plans
        .iter()
        .filter(|p| p.access.os != Os::Linux)
        .map(|p| {
            Ok((
                node_path(p.name.as_str()),
                render_node(&engine, p, sources)?,
            ))
        })
        .collect()
}

/// Renders everything `fleetnix render` writes: every node's module and the control plane's
/// NATS bus module (`nix/services/nats.nix`). Pure: nothing is written.
pub fn render_fleet(
    fleet: &Fleet,
    plans: &[NodePlan],
    sources: &str,
) -> Result<Rendered, RenderError> {
    let mut files = render_all(plans, sources)?;
    let server = bus::server_plan(fleet)?;
    files.insert(
        PathBuf::from(bus::nix::NIX_PATH),
        bus::nix::render(&server, sources)?,
    );
    Ok(files)
}

/// What writing the rendered files would do to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file does not exist yet.
    Create,
    /// The file differs; a unified diff (old → new).
    Update(String),
    /// Up to date.
    Unchanged,
    /// A node module of a node no longer in the manifest.
    Orphan,
}

/// Compares rendered files with what is on disk under `root`.
pub fn compare(root: &Path, rendered: &Rendered) -> Result<Vec<(PathBuf, Change)>, RenderError> {
    let mut out = Vec::new();
    for (rel, new) in rendered {
        let path = root.join(rel);
        let change = match std::fs::read_to_string(&path) {
            Ok(old) if old == *new => Change::Unchanged,
            Ok(old) => Change::Update(
                similar::TextDiff::from_lines(&old, new)
                    .unified_diff()
                    .header(
                        &format!("a/{}", rel.display()),
                        &format!("b/{}", rel.display()),
                    )
                    .to_string(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Change::Create,
            Err(source) => return Err(RenderError::Io { path, source }),
        };
        out.push((rel.clone(), change));
    }
    let dir = root.join(NODES_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(RenderError::Io { path: dir, source }),
    };
    let mut orphans = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RenderError::Io {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().to_string();
        let rel = Path::new(NODES_DIR).join(&name);
        if name.ends_with(".nix") && !rendered.contains_key(&rel) {
            orphans.push((rel, Change::Orphan));
        }
    }
    orphans.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(orphans);
    Ok(out)
}

/// Applies a comparison: writes created/updated files atomically and removes orphans.
pub fn apply(
    root: &Path,
    rendered: &Rendered,
    changes: &[(PathBuf, Change)],
) -> Result<(), RenderError> {
    for (rel, change) in changes {
        let path = root.join(rel);
        match change {
            Change::Create | Change::Update(_) => {
                // Invariant: compare() only reports Create/Update for rendered paths.
                let text = &rendered[rel];
                write_atomic(&path, text.as_bytes(), 0o644)
                    .map_err(|source| RenderError::Io { path, source })?
            }
            Change::Orphan => {
                std::fs::remove_file(&path).map_err(|source| RenderError::Io { path, source })?
            }
            Change::Unchanged => {}
        }
    }
    Ok(())
}
