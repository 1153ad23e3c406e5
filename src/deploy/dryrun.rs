//! `--dry-run`: per node, exactly the commands that would run and the environment they get,
//! built with the same functions the executor uses. Secrets are named, never shown; nothing
//! connects anywhere and nothing is written.

use super::fallback;
use super::guard;
use super::hostkeys;
use super::nixos;
use super::transport::{LocalCommand, SshTarget, CONTROL_PERSIST_SECS};
use super::{shell, AuthKeySource, DeployOptions, RenderState};
use crate::model::Os;
use crate::plan::NodePlan;
use std::fmt::Write;
use std::path::PathBuf;

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

struct Listing<'a> {
    out: String,
    n: usize,
    opts: &'a DeployOptions,
    target: SshTarget,
    /// Has the shared connection been closed already?
    closed: bool,
}

impl Listing<'_> {
    /// A local command, exactly as run.
    fn local(&mut self, what: &str, cmd: &LocalCommand) {
        self.n += 1;
        let _ = writeln!(self.out, "  {}. {what}", self.n);
        let _ = writeln!(self.out, "     $ {}", cmd.display());
    }

    /// A script run on the node as `$SSH 'sh -c <script>'` (the ssh command is printed once per node).
    fn remote(&mut self, what: &str, script: &str, stdin: Option<&str>) {
        self.remote_via("SSH", what, script, stdin);
    }

    /// A script run on the node through the ssh command printed as `<var> = …`.
    fn remote_via(&mut self, var: &str, what: &str, script: &str, stdin: Option<&str>) {
        self.n += 1;
        let _ = writeln!(self.out, "  {}. {what}", self.n);
        let sudo = if self.target.sudo { "sudo -n " } else { "" };
        let _ = writeln!(
            self.out,
            "     $ ${var} {}",
            shell::sh_quote(&format!("{sudo}sh -c <script>"))
        );
        self.out.push_str(&indent(script, "       | "));
        if let Some(s) = stdin {
            let _ = writeln!(self.out, "     stdin: {s}");
        }
    }

    fn ssh_line(&mut self) {
        // The SSH command without the remote command: everything before it, exactly.
        let mut cmd = self.opts.ssh.command(&self.target, "");
        cmd.args.pop();
        let _ = writeln!(self.out, "  SSH = {}", cmd.display());
    }

    /// The guard's confirmation command: always a new connection.
    fn ssh_new_line(&mut self) {
        let mut cmd = self.opts.ssh.command(&self.target.fresh(), "");
        cmd.args.pop();
        let _ = writeln!(self.out, "  SSH_NEW = {}", cmd.display());
    }

    /// Closing the node's shared connection.
    fn close(&mut self, when: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Some(cmd) = self.opts.ssh.close_command(&self.target) {
            self.local(when, &cmd);
        }
    }
}

/// The dry-run text for `plans` (sorted by node, deterministic).
pub fn dry_run(
    plans: &[NodePlan],
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
    plan: &NodePlan,
    opts: &DeployOptions,
    authkeys: &dyn AuthKeySource,
) -> String {
    let os = match plan.access.os {
        Os::Nixos => "nixos",
        Os::Linux => "linux",
        Os::Auto => "auto (from /etc/os-release)",
    };
    let kh = opts.known_hosts_path(&plan.name);
    let mut l = Listing {
        out: format!("{} ({os}, {})\n", plan.name, plan.access.ssh_target),
        n: 0,
        opts,
        target: SshTarget {
            destination: plan.access.ssh_target.clone(),
            known_hosts: kh.clone(),
            sudo: plan.access.ssh_user != "root",
            control: opts
                .multiplex
                .then(|| PathBuf::from(CONTROL_DIR).join(index.to_string())),
        },
        closed: false,
    };
    match &plan.access.host_key {
        Some(k) => {
            let _ = writeln!(l.out, "  known_hosts {} pins:", kh.display());
            l.out.push_str(&indent(
                &hostkeys::known_hosts(&plan.access.address, &[k.to_string()]),
                "    ",
            ));
            if opts.tailscale.is_some() {
                l.out.push_str(
                    "    (plus any sshHostKeys `tailscale status --json` reports for this peer)\n",
                );
            }
        }
        None => {
            let _ = writeln!(
                l.out,
                "  ! no host_key in the manifest: the deploy uses only keys `tailscale status --json` reports for {}{}",
                plan.access.address,
                if opts.tailscale.is_some() { "" } else { " (tailscale CLI not found: none)" }
            );
            let _ = writeln!(
                l.out,
                "    fetch it, check it out of band, and set host_key in nodes.yml: {}",
                hostkeys::keyscan_hint(&plan.access.address)
            );
        }
    }
    l.ssh_line();
    match plan.access.os {
        Os::Nixos => nixos_steps(&mut l, plan, opts),
        Os::Linux | Os::Auto => {
            l.remote(
                "probe: /etc/os-release, is tailscale installed, tailscale status",
                &fallback::probe_script(),
                None,
            );
            if plan.access.os == Os::Auto {
                let _ = writeln!(
                    l.out,
                    "  if ID=nixos: the NixOS steps below; otherwise the fallback steps:"
                );
                nixos_steps(&mut l, plan, opts);
                // The other branch has its own close.
                l.closed = false;
                let _ = writeln!(l.out, "  otherwise:");
            }
            l.remote(
                "if tailscale is missing: run the install script",
                &fallback::install_script(&opts.install_url),
                None,
            );
            let source = format!(
                "the auth key from {} (redacted)",
                authkeys.describe(&plan.name)
            );
            l.remote(
                "if not up as this node: tailscale up, key in a 0600 file written from stdin, deleted afterwards",
                &fallback::up_script(plan),
                Some(&source),
            );
            l.remote(
                &format!(
                    "install {} if it differs, enable, restart",
                    fallback::AGENT_UNIT
                ),
                &fallback::agent_script(),
                Some("the unit file below"),
            );
            let unit = fallback::agent_unit(plan).unwrap_or_else(|e| format!("error: {e}\n"));
            l.out.push_str(&indent(&unit, "       | "));
            let pw = crate::secrets::SecretId::new(
                plan.name.clone(),
                crate::secrets::SecretKind::NatsPassword,
            )
            .file();
            l.remote(
                &format!(
                    "install the agent's NATS password as {} if {pw} exists",
                    crate::agent::NATS_PASSWORD_PATH
                ),
                &fallback::nats_password_script(),
                Some("the password, decrypted in memory (redacted)"),
            );
            l.remote(
                &format!(
                    "install {} if it differs, load its rules",
                    fallback::FIREWALL_UNIT
                ),
                &fallback::firewall_script(),
                Some("the unit file below"),
            );
            l.out
                .push_str(&indent(&fallback::firewall_unit(plan), "       | "));
        }
    }
    l.close("close the shared SSH connection");
    let _ = writeln!(l.out, "  log: {}", opts.log_path(&plan.name).display());
    l.out
}

/// Stands for the generation step 1 reads (dry runs connect nowhere).
const RUNNING: &str = "RUNNING_SYSTEM";
/// Stands for the store path `nixos-rebuild build` prints.
const BUILT: &str = "NEW_SYSTEM";

fn nixos_steps(l: &mut Listing, plan: &NodePlan, opts: &DeployOptions) {
    let guarded = opts.guarded();
    l.remote(
        &format!("connect (pinned key), read the running generation ({RUNNING})"),
        &guard::current_generation_script(),
        None,
    );
    let program = opts
        .nixos_rebuild
        .clone()
        .unwrap_or_else(|| PathBuf::from("nixos-rebuild"));
    let sshopts = nixos::nix_sshopts(&opts.ssh, &l.target);
    let cmd = if guarded {
        nixos::build_command(
            &program,
            opts.build_on,
            &opts.root,
            plan,
            sshopts,
            &opts.override_inputs,
        )
    } else {
        nixos::rebuild_command(
            &program,
            opts.action,
            opts.build_on,
            &opts.root,
            plan,
            sshopts,
            &opts.override_inputs,
        )
    };
    let what = match (guarded, opts.nixos_rebuild.is_some()) {
        (_, false) => {
            "nixos-rebuild (NOT FOUND on PATH: install it or set FLEETNIX_NIXOS_REBUILD)".to_string()
        }
        (true, true) => format!(
            "nixos-rebuild build, in {}: build the system and copy it to the node, nothing activated or made the default; it prints the store path ({BUILT})",
            nixos::build_dir(&opts.state_dir, plan).display()
        ),
        (false, true) => "nixos-rebuild".to_string(),
    };
    l.local(&what, &cmd);
    if guarded {
        let id = guard::GuardId::placeholder();
        l.remote(
            &format!(
                "take the node's lock and arm the rollback guard {} ({} = a new id per deploy): back to {RUNNING} in {}s unless confirmed",
                id.unit(),
                id.as_str(),
                opts.rollback_grace.as_secs()
            ),
            &guard::arm_script(&id, RUNNING, opts.rollback_grace),
            None,
        );
        l.remote(
            "activate without making it the default (switch-to-configuration test)",
            &guard::activate_script(&id, BUILT),
            None,
        );
        l.close("close the shared SSH connection: the confirmation must not use it");
        l.ssh_new_line();
        l.remote_via(
            "SSH_NEW",
            "confirm over a NEW connection: disarm the guard, then make the new generation the profile and boot default and release the lock (retried through the grace period)",
            &guard::confirm_script(&id, BUILT),
            None,
        );
    }
}
