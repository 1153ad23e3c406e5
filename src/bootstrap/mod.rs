//! `fleetnix bootstrap NODE --ssh USER@HOST`: bring a fresh VM (public address, root SSH, no
//! Tailscale) into the fleet.
//!
//! | # | step | what | done when |
//! |---|---|---|---|
//! | 1 | `host-key` | pin the VM's SSH host key by its fingerprint (`ssh-keyscan`, nothing else is sent) | nodes.yml has `host_key` |
//! | 2 | `record` | write `host_key` into nodes.yml (comments and order kept) | same |
//! | 2 | `secret` | encrypt the node's auth key to it (`secrets/<node>/tailscale-authkey.age`) | the secret is up to date |
//! | 2 | `hardware` | when the VM runs NixOS: write `hosts/<node>/hardware-configuration.nix` (its `nixos-generate-config --show-hardware-config`) and `hosts/<node>/boot.nix` (its boot loader) | the hardware configuration exists |
//! | 3 | `install` | deploy's own runner over the public address: the non-NixOS installer, or a first `nixos-rebuild` | the node is in the tailnet |
//! | 4 | `join` | wait until `tailscale status` shows the node (bounded) | it does |
//! | 4 | `address` | its address vs. `tailscale_ip`: set it through the API, or record the assigned one | they agree |
//! | 5 | `handover` | drop the public-address pin: from now on the node is reached over Tailscale | no pin left |
//!
//! Every step checks before it acts, so a re-run after success changes nothing and a re-run after
//! a failure resumes; a failure names its step and how to resume ([`BootstrapError`]).
//!
//! Executor. Imports: everything below it, including `deploy` (its runner) and `manifest::edit`
//! (recording the host key).

pub mod authkey;
pub mod cloudinit;
pub mod hostkey;
mod options;
mod report;
mod run;
mod steps;

pub use options::{
    BootstrapOptions, HostKeyPrompt, SshDest, SshDestError, DEFAULT_WAIT, KEYSCAN_ENV,
};
pub use report::{BootstrapError, Event, Report, Status, Step, StepReport};

use run::Run;
use tokio::sync::mpsc;

/// Bootstraps `node` (see the module docs). `prompt` is asked when no fingerprint was given
/// (interactive use); without one, an unverified key is refused. Reads the fleet from
/// `opts.fleet_dir` and re-reads it after editing nodes.yml.
pub async fn bootstrap(
    node: &str,
    opts: &BootstrapOptions,
    prompt: Option<&dyn HostKeyPrompt>,
    events: Option<mpsc::UnboundedSender<Event>>,
) -> Result<Report, BootstrapError> {
    let run::Begun {
        mut run,
        fleet,
        already,
    } = Run::begin(node, opts, events).await?;
    let in_tailnet = already.is_some();

    run.start(Step::HostKey);
    let pinned = steps::host_key::run(&mut run, &fleet, already.as_ref(), prompt).await?;
    // A device already in the tailnet under the node's name skips the install and gets the
    // address: only if it is the VM whose key was just pinned.
    if let Some(device) = &already {
        run::check_device_key(node, device, &pinned.key, Step::HostKey, &run.resume)?;
    }
    run.start(Step::Record);
    let fleet = steps::record::run(&mut run, fleet, &pinned)?;
    run.start(Step::Secret);
    let held = steps::secret::run(&mut run, &fleet, in_tailnet).await?;
    run.start(Step::Hardware);
    steps::hardware::run(&mut run, &fleet, &pinned.key, in_tailnet).await?;
    run.start(Step::Install);
    if !in_tailnet {
        steps::names::run(&mut run).await?;
    }
    steps::install::run(&mut run, &fleet, &pinned.key, held, already.as_ref()).await?;
    run.start(Step::Join);
    let device = steps::join::run(&mut run, already).await?;
    run::check_device_key(node, &device, &pinned.key, Step::Join, &run.resume)?;
    run.start(Step::Address);
    let final_ip = steps::address::run(&mut run, &fleet, &device).await?;
    run.start(Step::Handover);
    steps::handover::run(&mut run, final_ip)?;
    Ok(run.report(final_ip))
}
