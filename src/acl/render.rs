//! Moved: the fleet's accesses are in [`super::intents`], the policy text is rendered by
//! [`crate::outputs::acl`]. This path re-exports both.

pub use super::intents::*;
pub use crate::outputs::acl::{render, Rendered};
