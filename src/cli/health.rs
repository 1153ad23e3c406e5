//! `status`, `health`, `route`, `dispatch`.

use super::Ctx;
use std::process::ExitCode;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Refresh continuously.
    #[arg(long)]
    pub watch: bool,
}

/// Arguments of `route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The role.
    pub role: String,
}

/// Arguments of `dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The role.
    #[arg(long)]
    pub role: String,
}

/// `fleetnix status`.
pub fn status(_ctx: &Ctx, _a: StatusArgs) -> ExitCode {
    super::not_yet("status")
}

/// `fleetnix health`.
pub fn health(_ctx: &Ctx, _a: HealthArgs) -> ExitCode {
    super::not_yet("health")
}

/// `fleetnix route`.
pub fn route(_ctx: &Ctx, _a: RouteArgs) -> ExitCode {
    super::not_yet("route")
}

/// `fleetnix dispatch`.
pub fn dispatch(_ctx: &Ctx, _a: DispatchArgs) -> ExitCode {
    super::not_yet("dispatch")
}
