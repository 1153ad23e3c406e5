//! The deny-by-default Tailscale policy: rendered from the fleet's catalog, checked,
//! evaluated, and applied through the Tailscale API.
//!
//! - [`policy`]: typed policy file parsed from HuJSON, every value with its line and column;
//! - [`addrs`]: what IPs, CIDRs, `hosts` and `ipsets` cover of devices whose addresses are partly known;
//! - [`eval`]: a small evaluator (can S reach node D on port P, may S SSH as user U);
//! - [`intents`]: the accesses the fleet needs (the policy text is rendered by
//!   [`crate::acl::render`], deterministic commented HuJSON);
//! - [`check`]: compares any policy with the fleet (over-grants, missing grants, format problems);
//! - [`matrix`]: who can reach what, as a table or a Graphviz graph;
//! - [`diff`]: the blast radius of a policy change, per principal (`acl diff`, `acl set`);
//! - [`files`]: the policy files of `fleetnix acl` (which policy a command works on, `acl check`'s report);
//! - [`apply`]: `get` / `diff` / `set` through [`crate::tailscale::api`], with backups and a
//!   lock-out guard.
//!
//! Stage 3 (acl), with its executor `apply`. Imports: `model`, `spec`, `tailscale::api` (apply
//! only), the foundations.

pub mod addrs;
pub mod apply;
pub mod check;
pub mod diff;
pub mod eval;
pub mod files;
pub mod intents;
pub mod matrix;
pub mod policy;
pub mod ports;
pub mod render;
