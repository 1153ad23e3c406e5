//! Reads `fleet/nodes.yml`, `fleet/fleet.yml` and `fleet/services.yml` into a
//! validated [`Fleet`], reporting every problem with its file, line and field.
//! Nothing after this module sees YAML.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`load`] and [`parse`]: the three files in, a [`Fleet`] or every problem out |
//! | `error.rs` | [`ManifestError`] |
//! | `decode.rs` | the decoder context: fields, scalars, lists, each problem at its place |
//! | `validate.rs` | checks of single values (groups, logins, host names, users) |
//! | `catalog.rs`, `settings.rs`, `nodes.rs` | `services.yml`, `fleet.yml`, `nodes.yml` |
//! | `cross.rs` | checks across the files |
//! | `diag.rs`, `yaml.rs`, `edit.rs` | problems, the YAML reader with positions, in-place edits |
//!
//! Stage 1 (manifest). Imports: `model` and the foundations. Nothing else imports YAML.

mod catalog;
mod cross;
mod decode;
pub mod diag;
pub mod edit;
mod error;
pub mod hosts;
mod nodes;
mod settings;
mod validate;
pub mod yaml;

pub use diag::Problem;
pub use error::ManifestError;
pub use validate::SOURCE_AUTOGROUPS;

use crate::model::*;
use catalog::decode_catalog;
use cross::cross_check;
use decode::{parse_yaml, Cx};
use nodes::decode_nodes;
use settings::decode_settings;
use std::path::{Path, PathBuf};

/// The role that marks the control plane.
pub const CONTROL_PLANE_ROLE: &str = "control-plane";

/// The texts of the three fleet files.
#[derive(Debug, Clone)]
pub struct FleetTexts {
    /// Paths the texts were read from.
    pub paths: SourceFiles,
    /// `nodes.yml`.
    pub nodes: String,
    /// `fleet.yml`.
    pub fleet: String,
    /// `services.yml`.
    pub services: String,
}

impl FleetTexts {
    /// Reads the three files from `dir`.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let paths = SourceFiles {
            nodes: dir.join("nodes.yml"),
            fleet: dir.join("fleet.yml"),
            services: dir.join("services.yml"),
        };
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|source| ManifestError::Read {
                path: p.clone(),
                source,
            })
        };
        Ok(FleetTexts {
            nodes: read(&paths.nodes)?,
            fleet: read(&paths.fleet)?,
            services: read(&paths.services)?,
            paths,
        })
    }
}

/// Reads and validates the fleet in `dir` (`nodes.yml`, `fleet.yml`, `services.yml`).
pub fn load(dir: &Path) -> Result<Fleet, ManifestError> {
    parse(&FleetTexts::read(dir)?)
}

/// Validates already-read fleet files.
pub fn parse(texts: &FleetTexts) -> Result<Fleet, ManifestError> {
    let mut problems = Vec::new();
    let services_root = parse_yaml(&texts.paths.services, &texts.services, &mut problems);
    let fleet_root = parse_yaml(&texts.paths.fleet, &texts.fleet, &mut problems);
    let nodes_root = parse_yaml(&texts.paths.nodes, &texts.nodes, &mut problems);

    let mut cx = Cx {
        file: &texts.paths.services,
        problems: &mut problems,
        node: None,
    };
    let catalog = services_root
        .as_ref()
        .and_then(|r| decode_catalog(&mut cx, r));
    cx.file = &texts.paths.fleet;
    let settings = fleet_root
        .as_ref()
        .and_then(|r| decode_settings(&mut cx, r));
    cx.file = &texts.paths.nodes;
    let nodes = nodes_root
        .as_ref()
        .and_then(|r| decode_nodes(&mut cx, r, catalog.as_ref().map(|c| &c.0)));

    if let (Some((catalog, cat_spans)), Some(settings), Some(nodes)) = (catalog, settings, nodes) {
        let fleet = cross_check(&mut cx, texts, catalog, &cat_spans, settings, nodes);
        if problems.is_empty() {
            if let Some(fleet) = fleet {
                return Ok(fleet);
            }
        }
    }
    problems.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    problems.dedup();
    Err(ManifestError::Invalid {
        problems,
        sources: vec![
            (texts.paths.nodes.clone(), texts.nodes.clone()),
            (texts.paths.fleet.clone(), texts.fleet.clone()),
            (texts.paths.services.clone(), texts.services.clone()),
        ],
    })
}
