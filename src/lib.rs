//! fleetnix: provision a fleet of NixOS machines on a Tailscale mesh.
//!
//! Data flows one way: [`manifest`] reads and validates the fleet files into a
//! [`model::Fleet`]; [`plan`] derives what each node gets; every rendered output ([`outputs`])
//! is a pure function of the plan; executors have the side effects.

pub mod acl;
pub mod bootstrap;
pub mod bus;
pub mod deploy;
pub mod exec;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod lock;
pub mod manifest;
pub mod model;
pub mod nix;
pub mod outputs;
pub mod secret;
pub mod secrets;
pub mod spec;
pub mod suggest;
pub mod tailscale;
