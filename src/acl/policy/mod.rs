//! The tailnet policy file as typed values, parsed from HuJSON (JSON with comments and
//! trailing commas) with the line and column of every rule and value.
//!
//! Parsing is tolerant: syntax errors fail, but everything the Tailscale server would reject
//! for its content (unknown fields, malformed `host:port`, bad ports, wrong types) is collected
//! as an [`Issue`] and the rest of the policy is still read, so a checker can report all at once.
//!
//! `types` holds the values, `parser` reads them from the text; both are re-exported here.

mod parser;
mod types;

pub use parser::*;
pub use types::*;
