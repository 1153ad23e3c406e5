//! `acl` and `authkey`.

use super::Ctx;
use std::process::ExitCode;

/// `acl` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AclCommand {
    /// Render the policy file.
    Render,
}

/// `authkey` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuthkeyCommand {
    /// Mint a one-off auth key for a node.
    Mint {
        /// The node.
        node: String,
    },
}

/// `fleetnix acl …`.
pub fn run(_ctx: &Ctx, _cmd: AclCommand) -> ExitCode {
    super::not_yet("acl")
}

/// `fleetnix authkey …`.
pub fn authkey(_ctx: &Ctx, _cmd: AuthkeyCommand) -> ExitCode {
    super::not_yet("authkey")
}
