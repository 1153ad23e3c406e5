//! Moved: the control plane's NixOS module for the bus is rendered by [`crate::outputs::nats`].
//! This path re-exports it only for `tests/bus_nix.rs` (owned by the router work); nothing in
//! `src/` uses it. Delete this file and `pub mod nix;` once that test imports `outputs::nats`.

pub use crate::outputs::nats::*;
