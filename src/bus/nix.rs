//! Moved: the control plane's NixOS module for the bus is rendered by [`crate::outputs::nats`].
//! This path re-exports it.

pub use crate::outputs::nats::*;
