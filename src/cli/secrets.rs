//! `secrets`.

use super::Ctx;
use std::process::ExitCode;

/// `secrets` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// List secrets and their recipients.
    List,
}

/// `fleetnix secrets …`.
pub fn run(_ctx: &Ctx, _cmd: SecretsCommand) -> ExitCode {
    super::not_yet("secrets")
}
