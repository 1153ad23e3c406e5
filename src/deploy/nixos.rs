//! The NixOS path: `nixos-rebuild <action> --flake <root>#<node> --target-host <user>@<ip>`
//! with `NIX_SSHOPTS` pinning the node's host key and sharing fleetnix's connection to it, and
//! for a guarded `switch` the rollback guard's steps around it ([`super::program`], [`ops`]).

use super::flake::{override_args, OverrideInput};
use super::program::{
    Builder, Effect, Limit, Local, LocalEffect, Op, OpKind, Remote, Script, When, BUILT, RUNNING,
};
use super::report::Step;
use super::{guard, Action, BuildOn, DeployOptions};
use crate::exec::process::LocalCommand;
use crate::exec::quote::sh_quote;
use crate::exec::ssh::{SshConfig, SshTarget};
use crate::spec::NodeSpec;
use std::path::{Path, PathBuf};

/// The NixOS steps: read the running generation, then `nixos-rebuild <action>`; or, for a
/// guarded `switch`, `nixos-rebuild build`, arm the guard, activate with `test`, close the
/// shared connection, pass the health gate (unless `--no-health-gate`) and confirm over a
/// new connection. A node that runs an agent is drained before the activation and undrained
/// after ([`super::drain`]) unless the action is `boot` or `--no-drain`.
pub fn ops(b: &mut Builder, plan: &NodeSpec, opts: &DeployOptions, target: &SshTarget) -> Vec<Op> {
    let guarded = opts.guarded();
    let mut ops = vec![b.op(OpKind::Remote(Remote {
        effect: Effect::Generation,
        ..Remote::new(
            Step::Connect,
            format!("connect (pinned key), read the running generation ({RUNNING})"),
            Script::Fixed(super::preflight::current_generation_script()),
        )
    }))];
    let program = opts
        .nixos_rebuild
        .clone()
        .unwrap_or_else(|| PathBuf::from("nixos-rebuild"));
    let sshopts = nix_sshopts(&opts.ssh, target);
    let dir = build_dir(&opts.state_dir, plan);
    let (cmd, effect) = if guarded {
        let cmd = build_command(
            &program,
            opts.build_on,
            &opts.root,
            plan,
            sshopts,
            &opts.override_inputs,
        );
        (cmd, LocalEffect::Built { dir: dir.clone() })
    } else {
        let cmd = rebuild_command(
            &program,
            opts.action,
            opts.build_on,
            &opts.root,
            plan,
            sshopts,
            &opts.override_inputs,
        );
        let verb = opts.action.as_str();
        (cmd, LocalEffect::Rebuilt { verb })
    };
    let what = match (guarded, opts.nixos_rebuild.is_some()) {
        (_, false) => {
            "nixos-rebuild (NOT FOUND on PATH: install it or set FLEETNIX_NIXOS_REBUILD)".to_string()
        }
        (true, true) => format!(
            "nixos-rebuild build, in {}: build the system and copy it to the node, nothing activated or made the default; it prints the store path ({BUILT})",
            dir.display()
        ),
        (false, true) => "nixos-rebuild".to_string(),
    };
    let missing = opts.nixos_rebuild.is_none().then(|| {
        format!(
            "nixos-rebuild not found on PATH (or set {})",
            super::env::NIXOS_REBUILD
        )
    });
    // A node that runs an agent is drained before anything activates ([`super::drain`]):
    // unguarded, before `nixos-rebuild <action>` (which activates); guarded, after the build
    // and before the guard is armed (so the wait does not eat into the guard's grace).
    let drains = super::drain::applies(opts, plan);
    let drain = |b: &mut Builder| {
        b.op(OpKind::Drain {
            what: super::drain::drain_text(plan, opts),
        })
    };
    if drains && !guarded {
        ops.push(drain(b));
    }
    ops.push(b.op(OpKind::Local(Local {
        step: Step::Rebuild,
        what,
        cmd,
        missing,
        effect,
    })));
    let undrain = |b: &mut Builder| {
        b.op(OpKind::Undrain {
            what: super::drain::undrain_text(plan, opts),
        })
    };
    if !guarded {
        if drains {
            ops.push(undrain(b));
        }
        return ops;
    }
    let id = guard::GuardId::placeholder();
    let grace = opts.rollback_grace;
    let reboot = opts.reboot != super::reboot::RebootMode::Never;
    // Without a reboot, the guarded switch's steps; with one, these run only when the node
    // does not reboot (`--reboot auto` and nothing that needs it).
    let no_reboot = if reboot {
        When::NotRebooting
    } else {
        When::Always
    };
    // With --reboot, the listing says which steps run on which path.
    let if_not = |what: String| {
        if reboot {
            format!("if it does not reboot: {what}")
        } else {
            what
        }
    };
    if reboot {
        ops.push(b.op(OpKind::Remote(Remote {
            effect: Effect::RebootCheck,
            ..Remote::new(
                Step::Reboot,
                format!(
                    "does {BUILT} need a reboot? its kernel, initrd, kernel-modules, kernel-params and systemd against /run/booted-system (--reboot {})",
                    opts.reboot.as_str()
                ),
                Script::RebootCheck,
            )
        })));
    }
    if drains {
        ops.push(drain(b));
    }
    ops.push(b.op(OpKind::Remote(Remote {
        when: no_reboot,
        effect: Effect::Arm,
        ..Remote::new(
            Step::ArmGuard,
            if_not(format!(
                "take the node's lock and arm the rollback guard {} ({} = a new id per deploy): back to {RUNNING} in {}s unless confirmed; then how tailscaled and the agent are before the switch (what the gate compares with)",
                id.unit(),
                id.as_str(),
                grace.as_secs()
            )),
            Script::Arm {
                grace,
                gpus: plan.gpus,
            },
        )
    })));
    ops.push(b.op(OpKind::Remote(Remote {
        limit: Limit::Long,
        when: no_reboot,
        effect: Effect::Activate,
        ..Remote::new(
            Step::Activate,
            if_not("activate without making it the default (switch-to-configuration test)".into()),
            Script::Activate,
        )
    })));
    if reboot {
        ops.push(b.op(OpKind::Remote(Remote {
            when: When::Rebooting,
            effect: Effect::ArmBoot,
            ..Remote::new(
                Step::ArmGuard,
                format!(
                    "if it reboots: take the node's lock, arm the boot guard on the node's disk ({dir}, {unit}.timer in {units}: {secs}s after a boot without confirmation, {RUNNING} is the boot default again and the node reboots into it), make {BUILT} the profile and boot default; then how tailscaled and the agent are before the reboot",
                    dir = super::guard::BOOT_GUARD_DIR,
                    unit = super::guard::BOOT_GUARD_UNIT,
                    units = super::guard::BOOT_GUARD_UNIT_DIR,
                    secs = grace.as_secs(),
                ),
                Script::ArmBoot {
                    bound: grace,
                    gpus: plan.gpus,
                },
            )
        })));
        ops.push(b.op(OpKind::Remote(Remote {
            when: When::Rebooting,
            effect: Effect::Reboot,
            ..Remote::new(
                Step::Reboot,
                format!(
                    "if it reboots: reboot into {BUILT}, then wait (new connections, within {}s) until the node answers from its new boot",
                    opts.reboot_timeout.as_secs()
                ),
                Script::Reboot,
            )
        })));
    }
    // The close is part of the first step on a new connection: the gate, when there is one.
    let first_fresh = if opts.health_gate {
        Step::HealthGate
    } else {
        Step::Confirm
    };
    ops.push(b.op(OpKind::Close {
        step: Some(first_fresh),
        what: "close the shared SSH connection: the confirmation must not use it",
    }));
    if opts.health_gate {
        ops.push(b.op(OpKind::Remote(Remote {
            fresh: true,
            effect: Effect::HealthGate,
            ..Remote::new(
                Step::HealthGate,
                super::gate::describe(plan, opts.node_timeout),
                Script::Gate { gpus: plan.gpus },
            )
        })));
    }
    if reboot {
        ops.push(b.op(OpKind::Remote(Remote {
            fresh: true,
            when: When::Rebooting,
            effect: Effect::ConfirmBoot,
            ..Remote::new(
                Step::Confirm,
                format!("if it rebooted: confirm the reboot over a NEW connection: only if the node booted {BUILT}, disarm and remove the boot guard and release the lock"),
                Script::ConfirmBoot,
            )
        })));
    }
    ops.push(b.op(OpKind::Remote(Remote {
        fresh: true,
        when: no_reboot,
        effect: Effect::Confirm,
        ..Remote::new(
            Step::Confirm,
            if_not("confirm over a NEW connection: disarm the guard, then make the new generation the profile and boot default and release the lock (retried through the grace period)".into()),
            Script::Confirm,
        )
    })));
    if drains {
        ops.push(undrain(b));
    }
    ops
}

/// `NIX_SSHOPTS`: the pinning and connection-sharing options of `target` (so nixos-rebuild's
/// own ssh and `nix copy` reuse the node's shared connection; ssh takes the first value of an
/// option, so these win over the `ControlPath` nixos-rebuild appends itself), shell-quoted
/// where needed (nixos-rebuild splits it like a shell).
pub fn nix_sshopts(ssh: &SshConfig, target: &SshTarget) -> String {
    ssh.target_options(target)
        .iter()
        .map(|o| sh_quote(o))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Refuses SSH options that `NIX_SSHOPTS` cannot carry: Nix 2.8 splits it on whitespace with
/// no quote removal (and ssh splits a `UserKnownHostsFile` value on whitespace), so a value
/// with whitespace would silently become other options.
pub fn check_sshopts(
    ssh: &SshConfig,
    target: &SshTarget,
) -> Result<(), crate::model::InvalidValue> {
    match ssh
        .target_options(target)
        .into_iter()
        .find(|o| super::hostkeys::has_whitespace(o))
    {
        Some(o) => Err(format!(
            "the SSH option {o:?} holds whitespace, which NIX_SSHOPTS cannot carry (Nix splits it on whitespace without removing quotes): use paths without whitespace (for the repository, the known_hosts files move to $XDG_STATE_HOME/fleetnix/known_hosts)"
        ).into()),
        None => Ok(()),
    }
}

/// The `nixos-rebuild` invocation for one node. `--sudo` when the SSH user is not root;
/// `--build-host` = the target with `--build-on target`; `--override-input INPUT URL` per
/// override (nixos-rebuild passes it on to every `nix` it runs).
pub fn rebuild_command(
    program: &Path,
    action: Action,
    build_on: BuildOn,
    root: &Path,
    plan: &NodeSpec,
    nix_sshopts: String,
    override_inputs: &[OverrideInput],
) -> LocalCommand {
    command(
        program,
        action.as_str(),
        build_on,
        root,
        plan,
        nix_sshopts,
        override_inputs,
    )
}

/// `nixos-rebuild build` for the guarded switch: builds the system and copies its closure to
/// the node (nixos-rebuild copies to `--target-host` for `build` too), activating nothing and
/// touching neither profile nor boot loader; the store path is the last line of its stdout.
/// It leaves a `result` link in its working directory (see [`build_dir`]).
pub fn build_command(
    program: &Path,
    build_on: BuildOn,
    root: &Path,
    plan: &NodeSpec,
    nix_sshopts: String,
    override_inputs: &[OverrideInput],
) -> LocalCommand {
    command(
        program,
        "build",
        build_on,
        root,
        plan,
        nix_sshopts,
        override_inputs,
    )
}

/// Where `nixos-rebuild build` runs for a node: `<state dir>/build/<node>`, whose `result`
/// link then keeps the node's last built system from the local garbage collector.
pub fn build_dir(state_dir: &Path, plan: &NodeSpec) -> PathBuf {
    state_dir.join("build").join(plan.name.as_str())
}

fn command(
    program: &Path,
    verb: &str,
    build_on: BuildOn,
    root: &Path,
    plan: &NodeSpec,
    nix_sshopts: String,
    override_inputs: &[OverrideInput],
) -> LocalCommand {
    let mut args = vec![
        verb.to_string(),
        "--flake".to_string(),
        format!("{}#{}", root.display(), plan.name),
        "--target-host".to_string(),
        plan.access.ssh_target.clone(),
    ];
    if build_on == BuildOn::Target {
        args.extend(["--build-host".to_string(), plan.access.ssh_target.clone()]);
    }
    if plan.access.needs_sudo() {
        args.push("--sudo".to_string());
    }
    args.extend(override_args(override_inputs));
    LocalCommand {
        program: program.to_path_buf(),
        args,
        env: vec![("NIX_SSHOPTS".to_string(), nix_sshopts)],
    }
}
