//! `--dry-run`: per node, a header (which host keys are pinned, the SSH command) and the
//! listing of the very [`program::Program`] the runner executes. Secrets are named, never
//! shown; nothing connects anywhere and nothing is written.

use super::hostkeys;
use super::program::{self, Vars};
use super::{AuthKeySource, DeployOptions, RenderState};
use crate::exec::ssh::CONTROL_PERSIST_SECS;
use crate::model::Os;
use crate::spec::NodeSpec;
use std::fmt::Write;
use std::path::PathBuf;

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// The dry-run text for `plans` (sorted by node, deterministic).
pub fn dry_run(
    plans: &[NodeSpec],
    opts: &DeployOptions,
    authkeys: &dyn AuthKeySource,
    render: &RenderState,
) -> String {
    let mut out = String::new();
    match render {
        RenderState::Current => out.push_str("rendered files: up to date\n"),
        RenderState::WouldRender(files) | RenderState::Rendered(files) => {
            let _ = writeln!(
                out,
                "rendered files: {} out of date, `fleetnix render` runs first (refused with --no-render): {}",
                files.len(),
                files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "dry run: {} node(s), {} at a time; nothing connects, nothing is written",
        plans.len(),
        opts.parallel
    );
    if opts.multiplex {
        let _ = writeln!(
            out,
            "one shared SSH connection per node (closed after {CONTROL_PERSIST_SECS}s idle at the latest); {CONTROL_DIR} is a private directory made for the run and removed at its end"
        );
    }
    out.push('\n');
    for (index, plan) in plans.iter().enumerate() {
        out.push_str(&node(index, plan, opts, authkeys));
        out.push('\n');
    }
    out
}

/// Stands for the run's control socket directory (a new temporary directory each run).
const CONTROL_DIR: &str = "<control-dir>";

fn node(
    index: usize,
    plan: &NodeSpec,
    opts: &DeployOptions,
    authkeys: &dyn AuthKeySource,
) -> String {
    let os = match plan.access.os {
        Os::Nixos => "nixos",
        Os::Linux => "linux",
        Os::Auto => "auto (from /etc/os-release)",
    };
    let kh = opts.known_hosts_path(&plan.name);
    let mut out = format!("{} ({os}, {})\n", plan.name, plan.access.ssh_target);
    match &plan.access.host_key {
        Some(k) => {
            let _ = writeln!(out, "  known_hosts {} pins:", kh.display());
            out.push_str(&indent(
                &hostkeys::known_hosts(&plan.access.address, &[k.to_string()]),
                "    ",
            ));
            if opts.tailscale.is_some() {
                out.push_str(
                    "    (plus any sshHostKeys `tailscale status --json` reports for this peer)\n",
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "  ! no host_key in the manifest: the deploy uses only keys `tailscale status --json` reports for {}{}",
                plan.access.address,
                if opts.tailscale.is_some() { "" } else { " (tailscale CLI not found: none)" }
            );
            let _ = writeln!(
                out,
                "    fetch it, check it out of band, and set host_key in nodes.yml: {}",
                hostkeys::keyscan_hint(&plan.access.address)
            );
        }
    }
    let control = opts
        .multiplex
        .then(|| PathBuf::from(CONTROL_DIR).join(index.to_string()));
    let program = super::build::build(
        plan,
        opts,
        program::node_target(opts, plan, control),
        authkeys,
    );
    // The SSH command without the remote command: everything before it, exactly.
    let mut ssh = opts.ssh.command(&program.target, "");
    ssh.args.pop();
    let _ = writeln!(out, "  SSH = {}", ssh.display());
    for entry in program.listing(&opts.ssh, &Vars::placeholders()) {
        out.push_str(&entry.text);
    }
    let _ = writeln!(out, "  log: {}", opts.log_path(&plan.name).display());
    out
}
