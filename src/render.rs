//! Moved: rendered outputs live in [`crate::outputs`] (node modules in
//! [`crate::outputs::node`]). This path re-exports what `fleetnix render` uses.

pub use crate::outputs::node::{node_path, render_all, render_node, NODES_DIR};
pub use crate::outputs::{apply, compare, engine, render_fleet, Change, RenderError, Rendered};
