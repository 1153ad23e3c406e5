//! `bootstrap` and `cloud-init`.

use super::Ctx;
use std::process::ExitCode;

/// Arguments of `bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The node.
    pub node: String,
}

/// Arguments of `cloud-init`.
#[derive(Debug, clap::Args)]
pub struct CloudInitArgs {
    /// The node.
    pub node: String,
}

/// `fleetnix bootstrap`.
pub fn bootstrap(_ctx: &Ctx, _a: BootstrapArgs) -> ExitCode {
    super::not_yet("bootstrap")
}

/// `fleetnix cloud-init`.
pub fn cloud_init(_ctx: &Ctx, _a: CloudInitArgs) -> ExitCode {
    super::not_yet("cloud-init")
}
