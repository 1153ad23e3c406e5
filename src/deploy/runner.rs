//! Deploying many nodes: a bounded number at once on tokio, one log per node, events for
//! progress, and a [`Summary`] with one [`NodeReport`] per node.

use super::fallback::{self, Probe};
use super::guard;
use super::hostkeys;
use super::nixos;
use super::transport::{
    run_process, run_process_in, ControlDir, LocalCommand, NodeLog, ProcError, ProcOutput,
    SshTarget, Transport,
};
use super::{AuthKeySource, DeployOptions};
use crate::fsutil::write_atomic;
use crate::model::Os;
use crate::plan::NodePlan;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// A step of a node's deploy, named in failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Building the pinned known_hosts file.
    HostKey,
    /// The first SSH connection.
    Connect,
    /// Tailscale's install script.
    Install,
    /// `tailscale up`.
    TailscaleUp,
    /// The agent's systemd unit.
    Agent,
    /// The nftables rules.
    Firewall,
    /// `nixos-rebuild` (`build` when guarded: build and copy; nothing changes on the node).
    Rebuild,
    /// Taking the node's lock and arming the rollback guard.
    ArmGuard,
    /// Activating the new generation with `test` (guarded `switch`).
    Activate,
    /// The post-activation confirmation over a new connection.
    Confirm,
    /// Making the confirmed generation the system profile and boot default.
    BootDefault,
}

impl Step {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::HostKey => "host-key",
            Step::Connect => "connect",
            Step::Install => "install",
            Step::TailscaleUp => "tailscale-up",
            Step::Agent => "agent",
            Step::Firewall => "firewall",
            Step::Rebuild => "rebuild",
            Step::ArmGuard => "arm-guard",
            Step::Activate => "activate",
            Step::Confirm => "confirm",
            Step::BootDefault => "boot-default",
        }
    }
}

/// How a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Deployed; something changed.
    Succeeded,
    /// Already as planned; nothing changed.
    Unchanged,
    /// Activated, but not confirmed: the guard returned the node to its previous generation
    /// (seen done on the node).
    RolledBack,
    /// The guard fired and its rollback failed: the node needs a hand.
    RollbackFailed,
    /// Failed (see step and detail).
    Failed,
    /// Not started (Ctrl-C or `--fail-fast`).
    Skipped,
    /// Not started: the rollout halted (a canary failed, or more than `--max-failures`).
    Halted,
}

impl Outcome {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::RolledBack => "rolled back",
            Outcome::RollbackFailed => "rollback FAILED",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
            Outcome::Halted => "skipped (halted)",
        }
    }

    /// Does this count as success for the exit code?
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::Unchanged)
    }
}

/// The result of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    /// Node name.
    pub node: String,
    /// What was done: the NixOS action, or `install` for the fallback path.
    pub action: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The failing step, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// One line: what happened or why it failed.
    pub detail: String,
    /// Wall time.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Attempts made (2 after a retry).
    pub attempts: u32,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_millis() as f64) / 1000.0)
}

/// All nodes' results, in node-name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// One per selected node.
    pub nodes: Vec<NodeReport>,
    /// Was the run interrupted (Ctrl-C)?
    pub interrupted: bool,
}

impl Summary {
    /// Did every node succeed?
    pub fn success(&self) -> bool {
        !self.interrupted && self.nodes.iter().all(|n| n.outcome.is_success())
    }
}

/// Progress, sent as it happens. Printing is the caller's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node started.
    Started {
        /// Node.
        node: String,
    },
    /// A node entered a step.
    Step {
        /// Node.
        node: String,
        /// Step.
        step: Step,
    },
    /// A node failed and is tried again.
    Retrying {
        /// Node.
        node: String,
        /// Why the first attempt failed.
        reason: String,
    },
    /// A node finished.
    Finished(NodeReport),
    /// Something worth telling that is not a node's result.
    Warning(String),
}

/// Stops new nodes from starting (Ctrl-C). Running nodes finish.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Requests the stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Was a stop requested?
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    step: Step,
    reason: String,
    /// The node could not be reached: worth one retry.
    unreachable: bool,
}

impl Failure {
    fn new(step: Step, reason: impl Into<String>) -> Self {
        Failure {
            step,
            reason: reason.into(),
            unreachable: false,
        }
    }
}

/// Classifies an SSH-level failure from ssh's stderr.
fn ssh_failure(step: Step, out: &ProcOutput) -> Failure {
    let err = out.stderr.to_ascii_lowercase();
    let last = out.last_line();
    if err.contains("host key verification failed")
        || err.contains("remote host identification has changed")
    {
        return Failure::new(
            step,
            format!("host key verification failed: the node's key does not match the pinned host_key ({last})"),
        );
    }
    if err.contains("permission denied") {
        return Failure::new(step, format!("SSH login refused ({last})"));
    }
    let unreachable = [
        "timed out",
        "connection refused",
        "no route to host",
        "network is unreachable",
        "could not resolve",
        "connection closed",
        "connection reset",
    ]
    .iter()
    .any(|p| err.contains(p))
        || out.code == Some(255);
    Failure {
        step,
        reason: format!("unreachable: {last}"),
        unreachable,
    }
}

fn proc_failure(step: Step, e: ProcError) -> Failure {
    let unreachable = matches!(e, ProcError::Timeout { .. });
    Failure {
        step,
        reason: e.to_string(),
        unreachable,
    }
}

/// Shared state of one deploy run.
struct Ctx<T> {
    opts: DeployOptions,
    transport: T,
    authkeys: Arc<dyn AuthKeySource>,
    tailnet_keys: BTreeMap<IpAddr, Vec<String>>,
    events: Option<mpsc::UnboundedSender<Event>>,
    /// The run's control sockets (shared SSH connections), if multiplexing.
    control: Option<ControlDir>,
}

impl<T: Transport> Ctx<T> {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn step(&self, plan: &NodePlan, step: Step, log: &NodeLog) {
        log.line(&format!("## {}", step.as_str()));
        self.emit(Event::Step {
            node: plan.name.to_string(),
            step,
        });
    }

    /// Runs a remote script; ssh failures (exit 255) become classified failures,
    /// a failing script becomes `step` failing with its last output line.
    async fn remote(
        &self,
        step: Step,
        target: &SshTarget,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        log: &NodeLog,
    ) -> Result<ProcOutput, Failure> {
        let out = self
            .transport
            .run(target, script, stdin, timeout, log)
            .await
            .map_err(|e| proc_failure(step, e))?;
        if out.code == Some(255) {
            return Err(ssh_failure(step, &out));
        }
        if !out.success() {
            return Err(Failure::new(step, out.last_line()));
        }
        Ok(out)
    }

    /// The node's SSH target: pinned known_hosts file, and its shared connection's control
    /// socket (the `index`-th node of the run) when multiplexing.
    fn target(&self, index: usize, plan: &NodePlan) -> SshTarget {
        SshTarget {
            destination: plan.access.ssh_target.clone(),
            known_hosts: self.opts.known_hosts_path(&plan.name),
            sudo: plan.access.ssh_user != "root",
            control: self.control.as_ref().and_then(|c| c.socket(index)),
        }
    }

    /// Writes the node's known_hosts file from the manifest key and the tailnet's keys.
    fn pin(&self, index: usize, plan: &NodePlan) -> Result<SshTarget, Failure> {
        let mut keys: Vec<String> = plan.access.host_key.iter().map(|k| k.to_string()).collect();
        if let Some(k) = self.tailnet_keys.get(&plan.access.address) {
            keys.extend(k.iter().cloned());
        }
        let text = hostkeys::known_hosts(&plan.access.address, &keys);
        if text.is_empty() {
            return Err(Failure::new(
                Step::HostKey,
                format!(
                    "no pinned host key (not in the manifest, not reported by tailscale status): check the key out of band, e.g. `{}`, and set host_key in nodes.yml",
                    hostkeys::keyscan_hint(&plan.access.address)
                ),
            ));
        }
        let target = self.target(index, plan);
        let path = &target.known_hosts;
        write_atomic(path, text.as_bytes(), 0o644)
            .map_err(|e| Failure::new(Step::HostKey, format!("{}: {e}", path.display())))?;
        Ok(target)
    }

    async fn attempt(
        &self,
        index: usize,
        plan: &NodePlan,
        log: &NodeLog,
    ) -> Result<(Outcome, String), Failure> {
        self.step(plan, Step::HostKey, log);
        let target = self.pin(index, plan)?;
        let quick = self.opts.node_timeout + Duration::from_secs(5);
        match plan.access.os {
            Os::Nixos => {
                self.step(plan, Step::Connect, log);
                let generation = self.read_generation(&target, quick, log).await?;
                self.nixos(plan, &target, &generation, log).await
            }
            Os::Linux | Os::Auto => {
                self.step(plan, Step::Connect, log);
                let out = self
                    .remote(
                        Step::Connect,
                        &target,
                        &fallback::probe_script(),
                        None,
                        quick,
                        log,
                    )
                    .await?;
                let probe = fallback::parse_probe(&out.stdout, plan);
                if plan.access.os == Os::Auto && probe.os_id == "nixos" {
                    let generation = self.read_generation(&target, quick, log).await?;
                    return self.nixos(plan, &target, &generation, log).await;
                }
                self.fallback(plan, &target, &probe, log).await
            }
        }
    }

    async fn nixos(
        &self,
        plan: &NodePlan,
        target: &SshTarget,
        generation: &str,
        log: &NodeLog,
    ) -> Result<(Outcome, String), Failure> {
        let Some(program) = &self.opts.nixos_rebuild else {
            return Err(Failure::new(
                Step::Rebuild,
                format!(
                    "nixos-rebuild not found on PATH (or set {})",
                    super::env::NIXOS_REBUILD
                ),
            ));
        };
        let sshopts = nixos::nix_sshopts(&self.opts.ssh, target);
        self.step(plan, Step::Rebuild, log);
        if !self.opts.guarded() {
            let action = self.opts.action;
            let cmd = nixos::rebuild_command(
                program,
                action,
                self.opts.build_on,
                &self.opts.root,
                plan,
                sshopts,
                &self.opts.override_inputs,
            );
            self.rebuild(&cmd, None, action.as_str(), log).await?;
            return Ok((Outcome::Succeeded, format!("{} done", action.as_str())));
        }
        // Guarded switch: build and copy (nothing changes on the node), so the guard's clock
        // does not run during a long build; then arm, activate with `test`, confirm, and only
        // then make the new generation the profile and boot default.
        let prev =
            guard::parse_generation(generation).map_err(|e| Failure::new(Step::Connect, e))?;
        let cmd = nixos::build_command(
            program,
            self.opts.build_on,
            &self.opts.root,
            plan,
            sshopts,
            &self.opts.override_inputs,
        );
        let dir = nixos::build_dir(&self.opts.state_dir, plan);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::new(Step::Rebuild, format!("{}: {e}", dir.display())))?;
        let out = self.rebuild(&cmd, Some(&dir), "build", log).await?;
        let new = guard::parse_built(&out.stdout).map_err(|e| Failure::new(Step::Rebuild, e))?;
        self.guarded_switch(plan, target, &prev, &new, log).await
    }

    /// Runs nixos-rebuild, classifying its failures.
    async fn rebuild(
        &self,
        cmd: &LocalCommand,
        dir: Option<&std::path::Path>,
        verb: &str,
        log: &NodeLog,
    ) -> Result<ProcOutput, Failure> {
        match run_process_in(cmd, dir, None, self.opts.step_timeout, log).await {
            Ok(out) if out.success() => Ok(out),
            Ok(out)
                if out
                    .stderr
                    .to_ascii_lowercase()
                    .contains("host key verification failed") =>
            {
                Err(ssh_failure(Step::Rebuild, &out))
            }
            Ok(out) => {
                let mut f = ssh_failure(Step::Rebuild, &out);
                if !f.unreachable {
                    f.reason = format!("nixos-rebuild {verb} failed: {}", out.last_line());
                }
                Err(f)
            }
            Err(e) => Err(proc_failure(Step::Rebuild, e)),
        }
    }

    /// Arm, activate (`test`), confirm over a new connection (which also makes `new` the
    /// boot default). `prev` runs now; `new` is built and copied.
    async fn guarded_switch(
        &self,
        plan: &NodePlan,
        target: &SshTarget,
        prev: &str,
        new: &str,
        log: &NodeLog,
    ) -> Result<(Outcome, String), Failure> {
        let quick = self.opts.node_timeout + Duration::from_secs(5);
        let id = guard::GuardId::new();
        log.line(&format!(
            "# guard {}: running {prev}, activating {new}",
            id.unit()
        ));
        self.step(plan, Step::ArmGuard, log);
        let grace = self.opts.rollback_grace;
        let armed_at = Instant::now();
        // A failure here leaves the node as it was: nothing activated, profile and boot
        // default untouched, the lock released.
        self.remote(
            Step::ArmGuard,
            target,
            &guard::arm_script(&id, prev, grace),
            None,
            quick,
            log,
        )
        .await
        .map_err(|mut f| {
            f.reason = format!("{}; nothing was activated", f.reason);
            f
        })?;
        self.step(plan, Step::Activate, log);
        let left = format!(
            "the rollback guard returns the node to {prev} within {}s",
            grace.as_secs()
        );
        match self
            .transport
            .run(
                target,
                &guard::activate_script(&id, new),
                None,
                self.opts.step_timeout,
                log,
            )
            .await
        {
            // Lost connection during activation (e.g. tailscaled restarting): the confirmation decides.
            Ok(out) if out.code == Some(255) => log.line(&format!(
                "connection lost during activation ({}); confirming",
                out.last_line()
            )),
            Ok(out) if !out.success() => {
                let why = format!("activation failed: {}", out.last_line());
                return self.roll_back_now(target, &id, prev, &why, log).await;
            }
            Ok(_) => {}
            Err(e) => log.line(&format!("activation: {e}; confirming")),
        }
        self.step(plan, Step::Confirm, log);
        // The confirmation proves that a NEW connection works after activation: close the
        // shared one and never use it (ControlMaster=no, ControlPath=none).
        self.transport.close(target, log).await;
        let fresh = target.fresh();
        // Retry on fresh connections through the grace period and, once the guard has fired,
        // long enough to see how its rollback ended. Which of confirmation and rollback wins
        // is decided on the node, so a late confirmation cannot undo a rollback.
        let verify = Duration::from_secs(60).max(quick * 2);
        let deadline = armed_at + grace + verify;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            let left_t = deadline.saturating_duration_since(Instant::now());
            let t = quick.min(left_t).max(Duration::from_secs(1));
            match self
                .transport
                .run(&fresh, &guard::confirm_script(&id, new), None, t, log)
                .await
            {
                Ok(out) if out.success() => match guard::parse_confirm(&out.stdout) {
                    Some(answer) => {
                        if let Some(done) = self.confirmed(answer, &id, prev, new, out)? {
                            return Ok(done);
                        }
                        last = "the rollback is still running".into();
                    }
                    None => last = format!("unexpected answer {:?}", out.stdout.trim()),
                },
                Ok(out) => last = out.last_line(),
                Err(e) => last = e.to_string(),
            }
            log.line(&format!("confirmation: {last}; retrying"));
            let pause =
                Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        Err(Failure::new(
            Step::Confirm,
            format!(
                "not confirmed: no answer over a new connection within {}s of arming ({last}); {left}, but fleetnix could not reach the node to see it done: check it (journalctl -u {})",
                (grace + verify).as_secs(),
                id.unit()
            ),
        ))
    }

    /// After a failed activation (the connection works): roll back at once instead of waiting
    /// for the timer, and report what the node says, retrying while a rollback runs.
    async fn roll_back_now(
        &self,
        target: &SshTarget,
        id: &guard::GuardId,
        prev: &str,
        why: &str,
        log: &NodeLog,
    ) -> Result<(Outcome, String), Failure> {
        let quick = self.opts.node_timeout + Duration::from_secs(5);
        let deadline = Instant::now() + self.opts.rollback_grace + Duration::from_secs(60);
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            let t = self
                .opts
                .step_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            match self
                .transport
                .run(
                    target,
                    &guard::rollback_now_script(id, prev),
                    None,
                    t.max(quick),
                    log,
                )
                .await
            {
                Ok(out) if out.success() => match guard::parse_confirm(&out.stdout) {
                    Some(guard::Confirm::Fired) => {
                        return Err(Failure::new(
                            Step::Activate,
                            format!("{why}; rolled back to {prev} at once (seen done)"),
                        ))
                    }
                    Some(guard::Confirm::RollbackFailed) => {
                        return Ok((
                            Outcome::RollbackFailed,
                            format!("{why}; {}", guard::rollback_failed_help(id, prev)),
                        ))
                    }
                    Some(guard::Confirm::RollingBack) => {
                        last = "the rollback is still running".into()
                    }
                    _ => last = format!("unexpected answer {:?}", out.stdout.trim()),
                },
                Ok(out) => last = out.last_line(),
                Err(e) => last = e.to_string(),
            }
            log.line(&format!(
                "rollback after the failed activation: {last}; retrying"
            ));
            let pause =
                Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        Err(Failure::new(
            Step::Activate,
            format!(
                "{why}; rolling back at once did not answer ({last}): the rollback guard returns the node to {prev} within {}s",
                self.opts.rollback_grace.as_secs()
            ),
        ))
    }

    /// The report for a confirmation answer; `None`: ask again (the rollback is running).
    fn confirmed(
        &self,
        answer: guard::Confirm,
        id: &guard::GuardId,
        prev: &str,
        new: &str,
        out: ProcOutput,
    ) -> Result<Option<(Outcome, String)>, Failure> {
        use guard::Confirm;
        Ok(Some(match answer {
            Confirm::Confirmed => (
                Outcome::Succeeded,
                "switched; confirmed over a new connection, guard disarmed, now the boot default"
                    .into(),
            ),
            Confirm::BootDefaultFailed => {
                return Err(Failure::new(
                    Step::BootDefault,
                    format!(
                        "confirmed and running {new}, but making it the profile and boot default failed ({}): a reboot would return to {prev}; deploy again",
                        out.last_line()
                    ),
                ))
            }
            Confirm::Fired => (
                Outcome::RolledBack,
                format!("the guard fired before the confirmation: back on {prev}"),
            ),
            Confirm::RollingBack => return Ok(None),
            Confirm::RollbackFailed => (
                Outcome::RollbackFailed,
                guard::rollback_failed_help(id, prev),
            ),
            Confirm::Gone(now) if now == prev => (
                Outcome::RolledBack,
                format!(
                    "the node restarted before the confirmation and booted {prev}, its boot default; the new generation was never made the default"
                ),
            ),
            Confirm::Gone(now) => {
                return Err(Failure::new(
                    Step::Confirm,
                    format!(
                        "the guard's state is gone (the node restarted?) and it runs {now}, neither {prev} nor the deployed {new}: check it"
                    ),
                ))
            }
        }))
    }

    /// The connect step on a NixOS node: reads the running generation (the rollback target).
    async fn read_generation(
        &self,
        target: &SshTarget,
        timeout: Duration,
        log: &NodeLog,
    ) -> Result<String, Failure> {
        let out = self
            .remote(
                Step::Connect,
                target,
                &guard::current_generation_script(),
                None,
                timeout,
                log,
            )
            .await?;
        Ok(out.stdout)
    }

    async fn fallback(
        &self,
        plan: &NodePlan,
        target: &SshTarget,
        probe: &Probe,
        log: &NodeLog,
    ) -> Result<(Outcome, String), Failure> {
        let long = self.opts.step_timeout;
        let quick = self.opts.node_timeout + Duration::from_secs(5);
        let mut changed = Vec::new();
        if !probe.has_tailscale {
            self.step(plan, Step::Install, log);
            self.remote(
                Step::Install,
                target,
                &fallback::install_script(&self.opts.install_url),
                None,
                long,
                log,
            )
            .await?;
            changed.push("installed tailscale");
        }
        if !probe.up_as_planned {
            self.step(plan, Step::TailscaleUp, log);
            let key = self
                .authkeys
                .authkey(&plan.name)
                .map_err(|e| Failure::new(Step::TailscaleUp, e))?;
            self.remote(
                Step::TailscaleUp,
                target,
                &fallback::up_script(plan),
                Some(key.expose().as_bytes()),
                long,
                log,
            )
            .await?;
            changed.push("tailscale up");
        }
        self.step(plan, Step::Agent, log);
        let unit =
            fallback::agent_unit(plan).map_err(|e| Failure::new(Step::Agent, e.to_string()))?;
        let out = self
            .remote(
                Step::Agent,
                target,
                &fallback::agent_script(),
                Some(unit.as_bytes()),
                quick,
                log,
            )
            .await?;
        if !out.stdout.trim_end().ends_with("unchanged") {
            changed.push("agent unit");
        }
        let password = self
            .authkeys
            .nats_password(&plan.name)
            .map_err(|e| Failure::new(Step::Agent, e))?;
        if let Some(password) = password {
            let out = self
                .remote(
                    Step::Agent,
                    target,
                    &fallback::nats_password_script(),
                    Some(password.expose().as_bytes()),
                    quick,
                    log,
                )
                .await?;
            if !out.stdout.trim_end().ends_with("unchanged") {
                changed.push("agent NATS password");
            }
        }
        self.step(plan, Step::Firewall, log);
        let out = self
            .remote(
                Step::Firewall,
                target,
                &fallback::firewall_script(),
                Some(fallback::firewall_unit(plan).as_bytes()),
                quick,
                log,
            )
            .await?;
        if !out.stdout.trim_end().ends_with("unchanged") {
            changed.push("firewall");
        }
        Ok(if changed.is_empty() {
            (
                Outcome::Unchanged,
                "already as planned; nothing changed".into(),
            )
        } else {
            (
                Outcome::Succeeded,
                format!("changed: {}", changed.join(", ")),
            )
        })
    }

    async fn node(&self, index: usize, plan: &NodePlan) -> NodeReport {
        let start = Instant::now();
        let action = match plan.access.os {
            Os::Nixos => self.opts.action.as_str().to_string(),
            Os::Linux => "install".to_string(),
            Os::Auto => "auto".to_string(),
        };
        self.emit(Event::Started {
            node: plan.name.to_string(),
        });
        let log = NodeLog::create(&self.opts.log_path(&plan.name)).unwrap_or_else(|e| {
            self.emit(Event::Warning(format!(
                "{}: cannot write its log: {e}",
                plan.name
            )));
            NodeLog::discard()
        });
        log.line(&format!("# fleetnix deploy {} ({action})", plan.name));
        let mut attempts = 1;
        let mut result = self.attempt(index, plan, &log).await;
        if let Err(f) = &result {
            if f.unreachable && self.opts.retry {
                log.line(&format!("# attempt 1 failed: {}; retrying once", f.reason));
                self.emit(Event::Retrying {
                    node: plan.name.to_string(),
                    reason: f.reason.clone(),
                });
                attempts = 2;
                result = self.attempt(index, plan, &log).await;
            }
        }
        // Whatever happened, the node's shared connection ends with it.
        self.transport.close(&self.target(index, plan), &log).await;
        let (outcome, step, detail) = match result {
            Ok((o, d)) => (o, None, d),
            Err(f) => (Outcome::Failed, Some(f.step), f.reason),
        };
        log.line(&format!("# result: {} {detail}", outcome.as_str()));
        NodeReport {
            node: plan.name.to_string(),
            action,
            outcome,
            step,
            detail,
            duration: start.elapsed(),
            attempts,
        }
    }
}

/// Asks `tailscale status --json` for the peers' SSH host keys. Any failure is a warning, not an error.
pub async fn tailnet_host_keys(
    opts: &DeployOptions,
) -> (BTreeMap<IpAddr, Vec<String>>, Option<String>) {
    let Some(program) = &opts.tailscale else {
        return (BTreeMap::new(), None);
    };
    let cmd = LocalCommand {
        program: program.clone(),
        args: vec!["status".into(), "--json".into()],
        env: Vec::new(),
    };
    match run_process(&cmd, None, opts.node_timeout, &NodeLog::discard()).await {
        Ok(out) if out.success() => match hostkeys::keys_from_status(&out.stdout) {
            Ok(k) => (k, None),
            Err(e) => (
                BTreeMap::new(),
                Some(format!("tailscale status --json: unexpected output: {e}")),
            ),
        },
        Ok(out) => (
            BTreeMap::new(),
            Some(format!(
                "tailscale status --json failed: {}",
                out.last_line()
            )),
        ),
        Err(e) => (BTreeMap::new(), Some(e.to_string())),
    }
}

/// Deploys `plans` (the selected nodes): at most `opts.parallel` at once, each node logged to
/// `.fleetnix/logs/<node>.log`. One node failing never stops the others unless `opts.fail_fast`;
/// `cancel` stops starting new nodes.
pub async fn deploy<T: Transport>(
    plans: Vec<NodePlan>,
    opts: DeployOptions,
    transport: T,
    authkeys: Arc<dyn AuthKeySource>,
    events: Option<mpsc::UnboundedSender<Event>>,
    cancel: Cancel,
) -> Summary {
    let (tailnet_keys, warning) = tailnet_host_keys(&opts).await;
    let sem = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let fail_fast = opts.fail_fast;
    let max_failures = opts.max_failures;
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (control, control_warning) = if opts.multiplex {
        match ControlDir::new() {
            Ok(d) => (Some(d), None),
            Err(e) => (
                None,
                Some(format!(
                    "cannot create a directory for shared SSH connections ({e}): one connection per command"
                )),
            ),
        }
    } else {
        (None, None)
    };
    let ctx = Arc::new(Ctx {
        opts,
        transport,
        authkeys,
        tailnet_keys,
        events,
        control,
    });
    if let Some(w) = warning {
        ctx.emit(Event::Warning(format!(
            "host keys from the tailnet unavailable: {w}"
        )));
    }
    if let Some(w) = control_warning {
        ctx.emit(Event::Warning(w));
    }
    let stop = Cancel::default();
    let mut set = tokio::task::JoinSet::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let (ctx, sem, cancel, stop) = (ctx.clone(), sem.clone(), cancel.clone(), stop.clone());
        let failures = failures.clone();
        set.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = sem.acquire_owned().await.ok();
            if cancel.is_cancelled() || stop.is_cancelled() {
                let (why, outcome) = if cancel.is_cancelled() {
                    (
                        "interrupted before it started".to_string(),
                        Outcome::Skipped,
                    )
                } else if fail_fast {
                    (
                        "not started: an earlier node failed (--fail-fast)".to_string(),
                        Outcome::Skipped,
                    )
                } else {
                    (
                        format!(
                            "not started: more than {} node(s) failed (--max-failures)",
                            max_failures.unwrap_or(0)
                        ),
                        Outcome::Halted,
                    )
                };
                let r = NodeReport {
                    node: plan.name.to_string(),
                    action: "-".into(),
                    outcome,
                    step: None,
                    detail: why,
                    duration: Duration::ZERO,
                    attempts: 0,
                };
                ctx.emit(Event::Finished(r.clone()));
                return r;
            }
            let r = ctx.node(index, &plan).await;
            if !r.outcome.is_success() {
                let failed = failures.fetch_add(1, Ordering::SeqCst) + 1;
                if fail_fast || max_failures.is_some_and(|k| failed > k) {
                    stop.cancel();
                }
            }
            ctx.emit(Event::Finished(r.clone()));
            r
        });
    }
    let mut nodes = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => nodes.push(r),
            Err(e) => ctx.emit(Event::Warning(format!("a node task panicked: {e}"))),
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Summary {
        nodes,
        interrupted: cancel.is_cancelled(),
    }
}

/// The summary as a table: node, action, result, duration, detail.
pub fn summary_table(s: &Summary) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "ACTION".to_string(),
        "RESULT".to_string(),
        "DURATION".to_string(),
        "DETAIL".to_string(),
    ]];
    for n in &s.nodes {
        let detail = match n.step {
            Some(step) => format!("[{}] {}", step.as_str(), n.detail),
            None => n.detail.clone(),
        };
        let detail = if n.attempts > 1 {
            format!("{detail} (after {} attempts)", n.attempts)
        } else {
            detail
        };
        rows.push([
            n.node.clone(),
            n.action.clone(),
            n.outcome.as_str().to_string(),
            format!("{:.1}s", n.duration.as_secs_f64()),
            detail,
        ]);
    }
    let mut w = [0usize; 4];
    for r in &rows {
        for i in 0..4 {
            w[i] = w[i].max(r[i].chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        ));
    }
    let ok = s.nodes.iter().filter(|n| n.outcome.is_success()).count();
    out.push_str(&format!("{ok}/{} node(s) succeeded", s.nodes.len()));
    if s.interrupted {
        out.push_str(" (interrupted)");
    }
    out.push('\n');
    out
}
