//! Moved to [`super::linux`] (the plain Linux installer path); re-exported here so existing
//! paths keep working.

pub use super::linux::*;
