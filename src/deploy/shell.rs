//! Moved to [`crate::exec::quote`] (the one home of shell quoting); re-exported here so
//! existing paths keep working.

pub use crate::exec::quote::{check_no_nul, sh_join, sh_quote, UnsafeValue};
