//! Problems found in the fleet files, each with file, line, column and field.

use super::yaml::Pos;
use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a fleet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the offending value.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The node it concerns, if any.
    pub node: Option<String>,
    /// The field path, e.g. `nodes[1].tailscale_ip`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What would be right.
    pub expected: Option<String>,
}

impl Problem {
    /// A problem at `pos`.
    pub fn at(file: &std::path::Path, pos: Pos, len: usize, field: &str, message: String) -> Self {
        Problem {
            file: file.to_path_buf(),
            offset: pos.offset,
            len,
            line: pos.line,
            col: pos.col,
            node: None,
            field: field.to_string(),
            message,
            expected: None,
        }
    }

    /// Adds what was expected.
    pub fn expected(mut self, e: impl Into<String>) -> Self {
        self.expected = Some(e.into());
        self
    }

    /// Names the node.
    pub fn node(mut self, n: Option<&str>) -> Self {
        self.node = n.map(str::to_string);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.field
        )?;
        if let Some(n) = &self.node {
            write!(f, " (node {n})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(e) = &self.expected {
            write!(f, "; expected {e}")?;
        }
        Ok(())
    }
}
