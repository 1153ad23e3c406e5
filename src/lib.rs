//! fleetnix: provision a fleet of NixOS machines on a Tailscale mesh.
//!
//! Data flows one way: [`manifest`] reads and validates the fleet files into a
//! [`model::Fleet`]; [`plan`] derives what each node gets; outputs such as [`render`]
//! are pure functions of the plan; executors have the side effects.

pub mod deploy;
pub mod fsutil;
pub mod manifest;
pub mod model;
pub mod nix;
pub mod plan;
pub mod render;
