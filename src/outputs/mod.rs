//! Every text fleetnix writes for others to read, in one place: pure renderers (plan → text) on
//! one Tera engine ([`engine`]) with one set of escaping filters.
//!
//! | output | module | written to |
//! |---|---|---|
//! | per-node NixOS modules | [`node`] | `nix/nodes/<node>.nix` |
//! | the control plane's NATS module | [`nats`] | `nix/services/nats.nix` |
//! | agenix rules | [`crate::secrets::secrets_nix`] | `secrets/secrets.nix` |
//! | the Tailscale policy | [`crate::acl::render`] | `fleet/acl-policy.hujson` (`fleetnix acl render`) |
//! | cloud-init user-data | [`cloudinit`] | `fleetnix cloud-init` |
//! | the agent's systemd unit | [`agent`] | non-NixOS hosts (deploy, cloud-init) |
//!
//! Filters of the engine: `nix` (any value as an escaped Nix literal, [`crate::nix::literal`]) and
//! `comment` (text made safe for a one-line `#` comment, [`crate::nix::one_line`]). Autoescape is off: the
//! outputs are Nix, not HTML, and every value goes through one of the filters or is a validated
//! name. This module also holds what `fleetnix render` does with the rendered files: [`compare`]
//! them with the disk and [`apply`] the changes atomically.
//!
//! Stage 3 (outputs). Imports: `model`, `spec`, `bus` (the server plan it renders), the
//! foundations. Never an executor.

pub mod agent;
pub mod cloudinit;
pub mod nats;
pub mod node;

use crate::bus;
use crate::fsutil::write_atomic_in_repo;
use crate::model::Fleet;
use crate::spec::NodeSpec;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use node::{node_path, render_all, render_node, NODES_DIR};

/// The templates, by name (`templates/*.tera`).
const TEMPLATES: [(&str, &str); 2] = [
    ("node.nix", include_str!("../../templates/node.nix.tera")),
    ("nats.nix", include_str!("../../templates/nats.nix.tera")),
];

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

/// The `nix` filter: any value as a Nix literal (escaped).
fn nix_filter(v: &tera::Value, _: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    Ok(tera::Value::String(crate::nix::literal(v)))
}

/// The `comment` filter: a string made safe for a one-line comment ([`crate::nix::one_line`]).
fn comment_filter(v: &tera::Value, _: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    match v {
        tera::Value::String(s) => Ok(tera::Value::String(crate::nix::one_line(s))),
        other => Err(tera::Error::msg(format!(
            "the comment filter takes a string, not {other}"
        ))),
    }
}

/// The Tera engine of every template, with the escaping filters; autoescape off (Nix, not
/// HTML).
pub fn engine() -> Result<tera::Tera, RenderError> {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    t.register_filter("nix", nix_filter);
    t.register_filter("comment", comment_filter);
    for (name, text) in TEMPLATES {
        t.add_raw_template(name, text)
            .map_err(|source| RenderError::Template {
                name: name.into(),
                source,
            })?;
    }
    Ok(t)
}

/// Renders `name` with `cx`, then checks that the text parses as Nix (it is written to `path`).
pub(crate) fn render_nix(
    engine: &tera::Tera,
    name: &str,
    cx: &tera::Context,
    path: PathBuf,
) -> Result<String, RenderError> {
    let text = engine
        .render(name, cx)
        .map_err(|source| RenderError::Template {
            name: name.into(),
            source,
        })?;
    crate::nix::check_syntax(&text).map_err(|errors| RenderError::Syntax { path, errors })?;
    Ok(text)
}

/// Renders everything `fleetnix render` writes: every node's module and the control plane's
/// NATS bus module (`nix/services/nats.nix`). Pure: nothing is written.
pub fn render_fleet(
    fleet: &Fleet,
    plans: &[NodeSpec],
    sources: &str,
) -> Result<Rendered, RenderError> {
    let engine = engine()?;
    let mut files = node::render_all_with(&engine, plans, sources)?;
    let server = bus::server_plan(fleet)?;
    files.insert(
        PathBuf::from(nats::NIX_PATH),
        nats::render_with(&engine, &server, sources)?,
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
                write_atomic_in_repo(root, &path, text.as_bytes(), 0o644)
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
