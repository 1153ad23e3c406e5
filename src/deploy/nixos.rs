//! The NixOS path: `nixos-rebuild <action> --flake <root>#<node> --target-host <user>@<ip>`
//! with `NIX_SSHOPTS` pinning the node's host key and sharing fleetnix's connection to it.

use super::flake::{override_args, OverrideInput};
use super::shell::sh_quote;
use super::transport::{LocalCommand, SshConfig, SshTarget};
use super::{Action, BuildOn};
use crate::plan::NodePlan;
use std::path::Path;

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
pub fn check_sshopts(ssh: &SshConfig, target: &SshTarget) -> Result<(), String> {
    match ssh
        .target_options(target)
        .into_iter()
        .find(|o| super::hostkeys::has_whitespace(o))
    {
        Some(o) => Err(format!(
            "the SSH option {o:?} holds whitespace, which NIX_SSHOPTS cannot carry (Nix splits it on whitespace without removing quotes): use paths without whitespace (for the repository, the known_hosts files move to $XDG_STATE_HOME/fleetnix/known_hosts)"
        )),
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
    plan: &NodePlan,
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
    plan: &NodePlan,
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
pub fn build_dir(state_dir: &Path, plan: &NodePlan) -> std::path::PathBuf {
    state_dir.join("build").join(plan.name.as_str())
}

fn command(
    program: &Path,
    verb: &str,
    build_on: BuildOn,
    root: &Path,
    plan: &NodePlan,
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
    if plan.access.ssh_user != "root" {
        args.push("--sudo".to_string());
    }
    args.extend(override_args(override_inputs));
    LocalCommand {
        program: program.to_path_buf(),
        args,
        env: vec![("NIX_SSHOPTS".to_string(), nix_sshopts)],
    }
}
