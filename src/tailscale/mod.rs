//! Everything fleetnix says to Tailscale, in one place:
//!
//! - [`cli`]: the local `tailscale` CLI (`tailscale status --json`), re-exported here;
//! - [`api`]: the Tailscale API v2 client (policy file, auth keys);
//! - [`devices`]: the API's device records and auth-key metadata;
//! - [`authkey`]: minting a node's auth key through the API (storing it is
//!   `crate::secrets::mint`; where a key comes from is `crate::secrets::source::KeySource`).
//!
//! Executor. Imports: `model` and the foundations: it knows the CLI and the API, not the
//! secrets store or the plan.

pub mod api;
pub mod authkey;
pub mod cli;
pub mod devices;
pub mod names;
pub mod prefs;

pub use cli::*;
