//! The error of loading the fleet files: a file that cannot be read, or every problem found.

use super::Problem;
use std::path::PathBuf;

/// Errors of [`super::load`].
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A fleet file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The fleet files are invalid.
    #[error("{}", render_problems(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
        /// The text of each file read, for diagnostics with source snippets.
        sources: Vec<(PathBuf, String)>,
    },
}

fn render_problems(problems: &[Problem]) -> String {
    let mut s = format!("{} problem(s) in the fleet files:", problems.len());
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}
