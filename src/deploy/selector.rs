//! Which nodes a deploy targets: node names, `@role`, or `--all`, parsed into a [`Selector`]
//! before any work starts. A target that matches no node is an error, never a silent no-op.

use crate::model::{check_label, Fleet, Node};
use std::fmt;
use std::str::FromStr;

/// One target on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A node by name (`worker-01`).
    Node(String),
    /// Every node with a role (`@glm-worker`).
    Role(String),
    /// Every node (`--all`).
    All,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => f.write_str(n),
            Target::Role(r) => write!(f, "@{r}"),
            Target::All => f.write_str("--all"),
        }
    }
}

/// Why a selection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Neither targets nor `--all`.
    #[error("no target: name nodes (worker-01), roles (@glm-worker) or pass --all")]
    Empty,
    /// A target is not a valid node or role name.
    #[error("invalid target `{target}`: {reason} (expected a node name, @role or --all)")]
    Invalid {
        /// What was given.
        target: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A node name that is not in the manifest.
    #[error("no node `{name}` in the manifest{}; nodes: {}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(), known.join(", "))]
    UnknownNode {
        /// The name given.
        name: String,
        /// The closest known name, if close.
        suggestion: Option<String>,
        /// All node names.
        known: Vec<String>,
    },
    /// A role that no node has.
    #[error("`@{role}` matches no node; roles in use: {}", known.join(", "))]
    NoNodeWithRole {
        /// The role given.
        role: String,
        /// Roles that some node has, sorted.
        known: Vec<String>,
    },
}

impl FromStr for Target {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| SelectorError::Invalid {
            target: s.to_string(),
            reason,
        };
        if s == "--all" {
            return Ok(Target::All);
        }
        if let Some(role) = s.strip_prefix('@') {
            check_label(role).map_err(|r| invalid(format!("role name: {r}")))?;
            return Ok(Target::Role(role.to_string()));
        }
        check_label(s).map_err(|r| invalid(format!("node name: {r}")))?;
        Ok(Target::Node(s.to_string()))
    }
}

/// A parsed selection: targets OR'd together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    targets: Vec<Target>,
}

impl Selector {
    /// Parses command-line targets; `all` adds [`Target::All`]. No targets at all is an error.
    pub fn parse<S: AsRef<str>>(targets: &[S], all: bool) -> Result<Self, SelectorError> {
        let mut parsed = targets
            .iter()
            .map(|t| t.as_ref().parse())
            .collect::<Result<Vec<Target>, _>>()?;
        if all {
            parsed.push(Target::All);
        }
        if parsed.is_empty() {
            return Err(SelectorError::Empty);
        }
        Ok(Selector { targets: parsed })
    }

    /// The targets, in command-line order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The selected nodes, in manifest (name) order, each once. Every target must match a node.
    pub fn select<'a>(&self, fleet: &'a Fleet) -> Result<Vec<&'a Node>, SelectorError> {
        let mut chosen = vec![false; fleet.nodes.len()];
        for t in &self.targets {
            let mut hit = false;
            for (i, n) in fleet.nodes.iter().enumerate() {
                let m = match t {
                    Target::All => true,
                    Target::Node(name) => n.name.as_str() == name,
                    Target::Role(role) => n.roles.iter().any(|r| r.as_str() == role),
                };
                if m {
                    chosen[i] = true;
                    hit = true;
                }
            }
            if !hit {
                return Err(match t {
                    Target::Node(name) => {
                        let known: Vec<String> =
                            fleet.nodes.iter().map(|n| n.name.to_string()).collect();
                        let suggestion =
                            crate::suggest::closest_in(name, known.iter().map(String::as_str))
                                .map(str::to_string);
                        SelectorError::UnknownNode {
                            name: name.clone(),
                            suggestion,
                            known,
                        }
                    }
                    Target::Role(role) => SelectorError::NoNodeWithRole {
                        role: role.clone(),
                        known: fleet.roles_in_use(),
                    },
                    // A fleet always has nodes (validation), so --all always matches.
                    Target::All => SelectorError::Empty,
                });
            }
        }
        Ok(fleet
            .nodes
            .iter()
            .zip(chosen)
            .filter_map(|(n, c)| c.then_some(n))
            .collect())
    }
}
