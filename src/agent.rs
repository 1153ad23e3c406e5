//! Moved: the agent's systemd unit is rendered by [`crate::outputs::agent`]. This path re-exports
//! it.

pub use crate::outputs::agent::*;
