//! Step 3, `install`: deploy's runner (the same code path as `fleetnix deploy`) over the public
//! address with the pinned key — the non-NixOS installer or a first `nixos-rebuild` — unless the
//! node is in the tailnet already.

use crate::bootstrap::authkey::BootstrapKey;
use crate::bootstrap::report::{fail, BootstrapError, Event, Status, Step};
use crate::bootstrap::run::{ips, ssh_target, Run};
use crate::deploy::report::{Cancel, Outcome};
use crate::deploy::schedule;
use crate::deploy::{ensure_rendered, RenderMode};
use crate::exec::ssh::SshTransport;
use crate::model::Fleet;
use crate::secret::Secret;
use crate::spec;
use crate::tailscale::PeerStatus;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Installs; `pinned` is the host key, `held` the auth key when the secret step holds it,
/// `already` the node's device when it is in the tailnet (then nothing is installed).
pub(crate) async fn run(
    run: &mut Run<'_>,
    fleet: &Fleet,
    pinned: &str,
    held: Option<Secret>,
    already: Option<&PeerStatus>,
) -> Result<(), BootstrapError> {
    if let Some(p) = already {
        run.finish(
            Step::Install,
            Status::Skipped,
            format!(
                "already in the tailnet as {}: not contacted over its public address",
                ips(&p.tailscale_ips)
            ),
        );
        return Ok(());
    }
    let opts = run.opts;
    let name = &run.name.clone();
    let resume = run.resume.clone();
    let root = &opts.deploy.root;
    let plans = spec::node_specs(fleet);
    let rendered = ensure_rendered(fleet, root, &plans, &opts.sources_label, RenderMode::Write)
        .map_err(|e| {
            fail(
                Step::Install,
                e.to_string(),
                format!("fix the cause, then {resume}"),
            )
        })?;
    if let crate::deploy::RenderState::Rendered(files) = rendered {
        run.note(format!("rendered {} stale file(s) first", files.len()));
    }
    let mut plan = plans
        .into_iter()
        .find(|p| p.name == *name)
        .ok_or_else(|| BootstrapError::Setup("node vanished".into()))?;
    plan.access.address = opts.address;
    plan.access.ssh_user = crate::model::SshLogin::parse(&opts.ssh_user)
        .map_err(|e| BootstrapError::Setup(format!("the login `{}`: {e}", opts.ssh_user)))?;
    plan.access.ssh_target = ssh_target(&opts.ssh_user, &opts.address);
    plan.access.host_key = Some(
        crate::model::HostKey::parse(pinned)
            .map_err(|e| BootstrapError::Setup(format!("the pinned host key: {e}")))?,
    );
    let mut dopts = opts.deploy.clone();
    dopts.state_dir = opts.state_dir();
    dopts.tailscale = None;
    dopts.parallel = 1;
    dopts.fail_fast = false;
    let transport = SshTransport {
        config: dopts.ssh.clone(),
    };
    let log_path = dopts.log_path(name);
    let authkeys = Arc::new(BootstrapKey {
        key: Mutex::new(held),
        root: root.clone(),
        sources: opts.keys.clone(),
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = run.events.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if let Some(f) = &forward {
                let _ = f.send(Event::Deploy(e));
            }
        }
    });
    let summary = schedule::deploy(
        vec![plan],
        dopts,
        transport,
        authkeys,
        Some(tx),
        Cancel::default(),
    )
    .await;
    let _ = forwarder.await;
    let Some(r) = summary.nodes.first() else {
        return Err(fail(
            Step::Install,
            "deploy reported nothing",
            resume.to_string(),
        ));
    };
    match r.outcome {
        Outcome::Succeeded => {
            run.finish(
                Step::Install,
                Status::Done,
                format!("{} over {}: {}", r.action, opts.address, r.detail),
            );
            Ok(())
        }
        Outcome::Unchanged => {
            run.finish(Step::Install, Status::Unchanged, r.detail.clone());
            Ok(())
        }
        Outcome::RolledBack
        | Outcome::RollbackFailed
        | Outcome::Failed
        | Outcome::Skipped
        | Outcome::Halted => Err(fail(
            Step::Install,
            format!(
                "{}{}: {} (log: {})",
                r.outcome.as_str(),
                r.step
                    .map(|s| format!(" at {}", s.as_str()))
                    .unwrap_or_default(),
                r.detail,
                log_path.display()
            ),
            format!("fix the cause, then {resume}"),
        )),
    }
}
