//! `deploy`.

use super::Ctx;
use std::process::ExitCode;

/// Arguments of `deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Node names or `@role`.
    pub targets: Vec<String>,
}

/// `fleetnix deploy`.
pub fn run(_ctx: &Ctx, _args: DeployArgs) -> ExitCode {
    super::not_yet("deploy")
}
