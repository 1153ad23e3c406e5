//! `validate`: the fleet files, and each NixOS node's hardware configuration and state version.

use super::{CmdResult, Ctx, Outcome};

/// `fleetnix validate`: the fleet files, and each NixOS node's hardware configuration and state
/// version.
pub fn run(ctx: &Ctx) -> CmdResult {
    let fleet = ctx.fleet()?;
    fleetnix::manifest::hosts::validate(&ctx.root, &fleet)?;
    println!(
        "ok: {} nodes, {} roles, {} services",
        fleet.nodes.len(),
        fleet.catalog.roles.len(),
        fleet.catalog.services.len()
    );
    Ok(Outcome::Ok)
}
