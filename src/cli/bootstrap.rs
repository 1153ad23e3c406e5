//! `bootstrap` and `cloud-init`.

use super::Ctx;
use std::process::ExitCode;

/// Arguments of `bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The node.
    pub node: String,
}

/// Arguments of `cloud-init`. The auth key comes from `TAILSCALE_AUTHKEY`, else from stdin.
#[derive(Debug, clap::Args)]
pub struct CloudInitArgs {
    /// The node.
    pub node: String,
    /// Write the user-data to FILE (mode 0600, atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Also install and enable the agent's systemd unit.
    #[arg(long)]
    pub with_agent: bool,
    /// Tailscale install script URL (https).
    #[arg(long, default_value = fleetnix::cloudinit::DEFAULT_INSTALL_URL)]
    pub install_url: String,
    /// Path of the agent binary on the VM (with --with-agent).
    #[arg(long, default_value = fleetnix::cloudinit::DEFAULT_AGENT_BIN)]
    pub agent_bin: String,
}

/// `fleetnix bootstrap`.
pub fn bootstrap(_ctx: &Ctx, _a: BootstrapArgs) -> ExitCode {
    super::not_yet("bootstrap")
}

/// `fleetnix cloud-init NODE [-o FILE]`: user-data on stdout or in FILE; notes on stderr.
pub fn cloud_init(ctx: &Ctx, a: CloudInitArgs) -> ExitCode {
    use fleetnix::cloudinit::{self as ci, AuthKey};
    use std::io::{IsTerminal, Read, Write};
    let fail = |msg: &dyn std::fmt::Display| {
        eprintln!("error: {msg}");
        ExitCode::from(1)
    };
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let Some(node) = fleet.node(&a.node) else {
        let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        return fail(&format_args!(
            "no node `{}` in {} (nodes: {})",
            a.node,
            fleet.sources.nodes.display(),
            names.join(", ")
        ));
    };
    let plan = fleetnix::plan::plan_node(&fleet, node);
    let raw = match std::env::var("TAILSCALE_AUTHKEY") {
        Ok(k) => k,
        Err(_) if std::io::stdin().is_terminal() => {
            return fail(&"no auth key: set TAILSCALE_AUTHKEY or pipe the key on stdin");
        }
        Err(_) => {
            let mut k = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut k) {
                return fail(&format_args!("reading the auth key from stdin: {e}"));
            }
            k
        }
    };
    let key = match AuthKey::parse(&raw) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let opts = ci::Options {
        install_url: a.install_url.clone(),
        with_agent: a.with_agent,
        agent_bin: a.agent_bin.clone(),
    };
    let text = match ci::user_data(&plan, &key, &opts) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let written = match &a.output {
        Some(path) => fleetnix::fsutil::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = written {
        return fail(&e);
    }
    eprintln!(
        "note: this user-data contains {}'s Tailscale auth key, its only secret{}; the VM deletes the key file after `tailscale up`, but the provider keeps the user-data: prefer a single-use key with a short expiry",
        plan.name,
        a.output
            .as_ref()
            .map(|p| format!(" ({} is mode 0600)", p.display()))
            .unwrap_or_default()
    );
    if plan.access.os == fleetnix::model::Os::Nixos {
        eprintln!(
            "note: {} is declared os: nixos; this user-data is for the provider's non-NixOS image (Tailscale's install script refuses NixOS)",
            plan.name
        );
    }
    ExitCode::SUCCESS
}
