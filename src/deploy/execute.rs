//! Running a node's [`Program`]: pin its host keys, execute the ops in order (skipping those
//! whose condition the probe rules out), classify failures, retry an unreachable node once.
//! Every op that runs is written to the node's log as `#> ` lines holding exactly its
//! `--dry-run` listing (with the run's values filled in); an op skipped is written as `#- `.
//! The reboot path's steps are in `reboot_run.rs`, the drain steps in `drain_run.rs`.

use super::failure::{proc_failure, ssh_failure, Failure};
use super::guard;
use super::hostkeys;
use super::probe::{self, Probe};
use super::program::{self, Effect, Input, Limit, LocalEffect, Op, OpKind, Program, Vars, When};
use super::report::{unchanged_detail, Event, NodeReport, Outcome, Step};
use super::{AuthKeySource, DeployOptions};
use crate::exec::process::{run_process_in, LocalCommand, NodeLog, ProcOutput};
use crate::exec::ssh::{ControlDir, SshTarget, Transport};
use crate::fsutil::write_atomic_in_repo;
use crate::model::Os;
use crate::secret::Secret;
use crate::spec::NodeSpec;
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Shared state of one deploy run.
pub(crate) struct Ctx<T> {
    pub(crate) opts: DeployOptions,
    pub(crate) transport: T,
    pub(crate) authkeys: Arc<dyn AuthKeySource>,
    pub(crate) tailnet_keys: BTreeMap<IpAddr, Vec<String>>,
    pub(crate) events: Option<mpsc::UnboundedSender<Event>>,
    /// The run's control sockets (shared SSH connections), if multiplexing.
    pub(crate) control: Option<ControlDir>,
}

/// What one attempt at a program has learnt so far.
pub(crate) struct Run<'a> {
    pub(crate) plan: &'a NodeSpec,
    pub(crate) program: &'a Program,
    pub(crate) log: &'a NodeLog,
    pub(crate) vars: Vars,
    /// What the connect step read (`readlink /run/current-system`).
    pub(crate) generation: Option<String>,
    /// What the plain Linux probe found.
    pub(crate) probe: Option<Probe>,
    /// Changes made on a plain Linux node.
    pub(crate) changed: Vec<&'static str>,
    /// When the guard was armed.
    pub(crate) armed_at: Option<Instant>,
    /// The gate's units and ports as they were before the switch.
    pub(crate) baseline: Option<super::gate::Baseline>,
    /// What the health gate checked, once it passed.
    pub(crate) gate: Option<String>,
    /// Does the built system need a reboot, and why (read on the node).
    pub(crate) reboot_need: Option<super::reboot::RebootNeed>,
    /// Does this deploy reboot the node (decided by `--reboot` and the check)?
    pub(crate) rebooting: bool,
    /// The step last announced.
    pub(crate) step: Step,
    /// Where the node's drain stands (carried over from an earlier attempt).
    pub(crate) drain: super::drain::NodeDrain,
}

/// The pause between two tries of a step that polls the node: half a second, never past
/// `deadline`.
pub(crate) async fn pause_before_retry(deadline: Instant) {
    tokio::time::sleep(
        Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now())),
    )
    .await;
}

/// Go on, or the node's result is known.
pub(crate) enum Flow {
    /// The next operation.
    Next,
    /// The node's result.
    Done((Outcome, String)),
}

impl<T: Transport> Ctx<T> {
    pub(crate) fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn step(&self, plan: &NodeSpec, step: Step, log: &NodeLog) {
        log.line(&format!("## {}", step.as_str()));
        self.emit(Event::Step {
            node: plan.name.to_string(),
            step,
        });
    }

    /// Runs a remote script; ssh failures (exit 255) become classified failures,
    /// a failing script becomes `step` failing with its last output line.
    pub(crate) async fn remote(
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
    fn target(&self, index: usize, plan: &NodeSpec) -> SshTarget {
        program::node_target(
            &self.opts,
            plan,
            self.control.as_ref().and_then(|c| c.socket(index)),
        )
    }

    /// Writes the node's known_hosts file from the manifest key and the tailnet's keys.
    fn pin(&self, plan: &NodeSpec, target: &SshTarget) -> Result<(), Failure> {
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
        let path = &target.known_hosts;
        write_atomic_in_repo(&self.opts.root, path, text.as_bytes(), 0o644)
            .map_err(|e| Failure::new(Step::HostKey, format!("{}: {e}", path.display())))
    }

    pub(crate) fn quick(&self) -> Duration {
        self.opts.node_timeout + Duration::from_secs(5)
    }

    /// Announces `step` unless it is the one running already.
    fn enter(&self, run: &mut Run<'_>, step: Step) {
        if run.step != step {
            run.step = step;
            self.step(run.plan, step, run.log);
        }
    }

    /// Writes op `id`'s listing into the log: `#> ` when it runs, `#- ` when it is skipped.
    fn trace(&self, run: &Run<'_>, id: usize, ran: bool) {
        if let Some(text) = run.program.entry(&self.opts.ssh, &run.vars, id) {
            let mark = if ran { "#> " } else { "#- " };
            for line in text.lines() {
                run.log.line(&format!("{mark}{line}"));
            }
        }
    }

    async fn attempt(
        &self,
        plan: &NodeSpec,
        program: &Program,
        log: &NodeLog,
        drain: &mut super::drain::NodeDrain,
    ) -> Result<(Outcome, String), Failure> {
        self.step(plan, Step::HostKey, log);
        self.pin(plan, &program.target)?;
        let mut run = Run {
            plan,
            program,
            log,
            vars: Vars::fresh(),
            generation: None,
            probe: None,
            changed: Vec::new(),
            armed_at: None,
            baseline: None,
            gate: None,
            reboot_need: None,
            rebooting: false,
            step: Step::HostKey,
            drain: drain.clone(),
        };
        let result = self.run_ops(&mut run).await;
        *drain = run.drain;
        result
    }

    /// Runs the program's ops in order until one says how the node ended.
    async fn run_ops(&self, run: &mut Run<'_>) -> Result<(Outcome, String), Failure> {
        let program = run.program;
        let mut queue: VecDeque<&Op> = program.ops.iter().collect();
        while let Some(op) = queue.pop_front() {
            if let OpKind::IfNixos { nixos, otherwise } = &op.kind {
                let is_nixos = run.probe.as_ref().is_some_and(|p| p.os_id == "nixos");
                let branch = if is_nixos { nixos } else { otherwise };
                for o in branch.iter().rev() {
                    queue.push_front(o);
                }
                continue;
            }
            if let Flow::Done(done) = self.op(run, op).await? {
                return Ok(done);
            }
        }
        Ok(if run.changed.is_empty() {
            (
                Outcome::Unchanged,
                "already as planned; nothing changed".into(),
            )
        } else {
            (
                Outcome::Succeeded,
                format!("changed: {}", run.changed.join(", ")),
            )
        })
    }

    /// The ops that run whatever happened (closing the shared connection).
    async fn finally(&self, program: &Program, log: &NodeLog) {
        let vars = Vars::placeholders();
        for op in &program.finally {
            if let OpKind::Close { .. } = op.kind {
                if let Some(text) = program.entry(&self.opts.ssh, &vars, op.id) {
                    for line in text.lines() {
                        log.line(&format!("#> {line}"));
                    }
                }
                self.transport.close(&program.target, log).await;
            }
        }
    }

    /// Runs one op (not a branch).
    async fn op(&self, run: &mut Run<'_>, op: &Op) -> Result<Flow, Failure> {
        let target = &run.program.target;
        match &op.kind {
            OpKind::IfNixos { .. } => Ok(Flow::Next),
            OpKind::Drain { .. } => {
                self.enter(run, Step::Drain);
                self.trace(run, op.id, true);
                self.drain_step(run.plan, &mut run.drain, run.log).await;
                Ok(Flow::Next)
            }
            // Run once the node's result is known ([`super::drain`]), by [`Ctx::node`].
            OpKind::Undrain { .. } => Ok(Flow::Next),
            OpKind::Close { step, .. } => {
                if let Some(s) = step {
                    self.enter(run, *s);
                }
                self.trace(run, op.id, true);
                self.transport.close(target, run.log).await;
                Ok(Flow::Next)
            }
            OpKind::Local(l) => {
                if let Some(m) = &l.missing {
                    return Err(Failure::new(l.step, m.clone()));
                }
                super::nixos::check_sshopts(&self.opts.ssh, target)
                    .map_err(|e| Failure::new(Step::Rebuild, e))?;
                self.enter(run, l.step);
                match &l.effect {
                    LocalEffect::Rebuilt { verb } => {
                        self.trace(run, op.id, true);
                        self.rebuild(&l.cmd, None, verb, run.log).await?;
                        Ok(Flow::Done((Outcome::Succeeded, format!("{verb} done"))))
                    }
                    LocalEffect::Built { dir } => {
                        // Guarded switch: build and copy (nothing changes on the node), so the
                        // guard's clock does not run during a long build.
                        let prev = guard::parse_generation(run.generation.as_deref().unwrap_or(""))
                            .map_err(|e| Failure::new(Step::Connect, e.to_string()))?;
                        run.vars.running = prev;
                        self.trace(run, op.id, true);
                        crate::fsutil::create_dir_in_repo(&self.opts.root, dir).map_err(|e| {
                            Failure::new(Step::Rebuild, format!("{}: {e}", dir.display()))
                        })?;
                        let out = self.rebuild(&l.cmd, Some(dir), "build", run.log).await?;
                        run.vars.built = guard::parse_built(&out.stdout)
                            .map_err(|e| Failure::new(Step::Rebuild, e.to_string()))?;
                        Ok(Flow::Next)
                    }
                }
            }
            OpKind::Remote(r) => {
                let runs = match r.when {
                    When::Always => true,
                    When::TailscaleMissing => run.probe.as_ref().is_none_or(|p| !p.has_tailscale),
                    When::NotUpAsPlanned => run.probe.as_ref().is_none_or(|p| !p.up_as_planned),
                    When::UpAsPlanned => run.probe.as_ref().is_some_and(|p| p.up_as_planned),
                    When::Rebooting => run.rebooting,
                    When::NotRebooting => !run.rebooting,
                };
                if !runs {
                    self.trace(run, op.id, false);
                    return Ok(Flow::Next);
                }
                if r.effect == Effect::Arm {
                    run.log.line(&format!(
                        "# guard {}: running {}, activating {}",
                        run.vars.guard.unit(),
                        run.vars.running,
                        run.vars.built
                    ));
                }
                self.enter(run, r.step);
                let mut secret: Option<Secret> = None;
                let mut text: Option<String> = None;
                match &r.input {
                    Input::Nothing => {}
                    Input::AuthKey { .. } => {
                        let stored = self
                            .authkeys
                            .authkey(&run.plan.name)
                            .map_err(|e| Failure::new(r.step, e.to_string()))?;
                        // The fleet's enrolment kind (`tailscale_auth`): an OAuth client
                        // secret gets ?ephemeral=false&preauthorized=true.
                        secret = Some(run.plan.enrolment_key(&stored).map_err(|e| {
                            Failure::new(
                                r.step,
                                format!("the Tailscale credential for {} {e}", run.plan.name),
                            )
                        })?);
                    }
                    Input::NatsPassword => {
                        match self
                            .authkeys
                            .nats_password(&run.plan.name)
                            .map_err(|e| Failure::new(r.step, e.to_string()))?
                        {
                            Some(p) => secret = Some(p),
                            None => {
                                self.trace(run, op.id, false);
                                return Ok(Flow::Next);
                            }
                        }
                    }
                    Input::Unit(Ok(u)) => text = Some(u.clone()),
                    Input::Unit(Err(e)) => return Err(Failure::new(r.step, e.to_string())),
                }
                let stdin: Option<&[u8]> = match (&secret, &text) {
                    (Some(s), _) => Some(s.expose().as_bytes()),
                    (None, Some(t)) => Some(t.as_bytes()),
                    (None, None) => None,
                };
                self.trace(run, op.id, true);
                let script = r.script.render(&run.vars);
                let timeout = match r.limit {
                    Limit::Short => self.quick(),
                    Limit::Long => self.opts.step_timeout,
                };
                match r.effect {
                    Effect::ArmBoot => {
                        return self.arm_boot(run, r.step, &script, stdin, timeout).await
                    }
                    Effect::Reboot => return self.reboot(run, &script).await,
                    Effect::ConfirmBoot => {
                        return self.confirm_boot(run, &script).await.map(Flow::Done)
                    }
                    Effect::Activate => return self.activate(run, &script).await,
                    Effect::Confirm => return self.confirm(run, &script).await.map(Flow::Done),
                    Effect::HealthGate => return self.health_gate(run, &script).await,
                    Effect::Arm => {
                        run.armed_at = Some(Instant::now());
                        // A failure here leaves the node as it was: nothing activated, profile
                        // and boot default untouched, the lock released. The services' ports
                        // are probed meanwhile: with the units it reports, how the node was
                        // before the switch.
                        let (out, ports) = tokio::join!(
                            self.remote(r.step, target, &script, stdin, timeout, run.log),
                            super::gate::probe_ports(run.plan, self.quick())
                        );
                        let out = out.map_err(|mut f| {
                            f.reason = format!("{}; nothing was activated", f.reason);
                            f
                        })?;
                        let before = super::gate::Baseline {
                            units: super::gate::parse_gate(&out.stdout),
                            ports: ports
                                .into_iter()
                                .map(|(p, o)| (p, o == crate::health::PortOutcome::Open))
                                .collect(),
                        };
                        run.log.line(&format!("before the switch: {before:?}"));
                        run.baseline = Some(before);
                        // Without --reboot, the arm step also says whether a reboot is needed.
                        if self.opts.reboot == super::reboot::RebootMode::Never {
                            run.reboot_need = Some(super::reboot::parse_check(&out.stdout));
                        }
                        return Ok(Flow::Next);
                    }
                    _ => {}
                }
                let out = self
                    .remote(r.step, target, &script, stdin, timeout, run.log)
                    .await
                    .map_err(|mut f| {
                        // A host without /run/current-system: say it is not NixOS, and what to set.
                        if r.effect == Effect::Generation
                            && f.reason.starts_with(super::preflight::NOT_NIXOS_PREFIX)
                        {
                            f.reason =
                                super::preflight::not_nixos_help(run.plan.name.as_str(), &f.reason);
                        }
                        f
                    })?;
                match r.effect {
                    Effect::Generation => {
                        // The running generation on the first line, then the space lines.
                        let running = out.stdout.lines().next().unwrap_or("").trim();
                        // With --reboot, a node that runs its target but has a reboot pending
                        // from an earlier switch is not skipped: the check reboots it.
                        let pending = self.opts.reboot != super::reboot::RebootMode::Never
                            && super::reboot::pending(&out.stdout);
                        if let Some(target) = self.opts.skip_if_running.get(&run.plan.name) {
                            if running == target.as_str() && !pending {
                                return Ok(Flow::Done((
                                    Outcome::Unchanged,
                                    unchanged_detail(target),
                                )));
                            }
                        }
                        // Room for what the deploy puts there, before anything is copied.
                        let space = super::preflight::parse_space(&out.stdout);
                        run.log.line(&format!("preflight: {space:?}"));
                        let boot = self.opts.action != super::Action::Test;
                        super::preflight::check(run.plan.name.as_str(), &space, boot, None)
                            .map_err(|e| Failure::new(Step::Preflight, e))?;
                        run.generation = Some(running.to_string())
                    }
                    Effect::Probe => run.probe = Some(probe::parse_probe(&out.stdout, run.plan)),
                    Effect::RebootCheck => {
                        let need = super::reboot::parse_check(&out.stdout);
                        run.rebooting = match self.opts.reboot {
                            super::reboot::RebootMode::Never => false,
                            super::reboot::RebootMode::Auto => need.needed,
                            super::reboot::RebootMode::Always => true,
                        };
                        run.log.line(&format!(
                            "reboot check: {need:?}; --reboot {}: {}",
                            self.opts.reboot.as_str(),
                            if run.rebooting {
                                "rebooting"
                            } else {
                                "no reboot"
                            }
                        ));
                        run.reboot_need = Some(need);
                    }
                    Effect::Changed(what) => run.changed.push(what),
                    Effect::ChangedUnlessSaid(what)
                        if !out.stdout.trim_end().ends_with("unchanged") =>
                    {
                        run.changed.push(what)
                    }
                    _ => {}
                }
                Ok(Flow::Next)
            }
        }
    }

    /// Activation with `test`: a lost connection (e.g. tailscaled restarting) is left to the
    /// confirmation; a failing activation rolls back at once.
    async fn activate(&self, run: &mut Run<'_>, script: &str) -> Result<Flow, Failure> {
        let target = &run.program.target;
        match self
            .transport
            .run(target, script, None, self.opts.step_timeout, run.log)
            .await
        {
            Ok(out) if out.code == Some(255) => run.log.line(&format!(
                "connection lost during activation ({}); confirming",
                out.last_line()
            )),
            Ok(out) if !out.success() => {
                let why = format!("activation failed: {}", out.last_line());
                return self
                    .roll_back_now(
                        Step::Activate,
                        target,
                        &run.vars.guard,
                        &run.vars.running,
                        &why,
                        run.log,
                    )
                    .await
                    .map(Flow::Done);
            }
            Ok(_) => {}
            Err(e) => run.log.line(&format!("activation: {e}; confirming")),
        }
        Ok(Flow::Next)
    }

    /// Until when the confirmation is asked (the guard's arming + grace + time to see the
    /// rollback done), and that time to see it done.
    pub(crate) fn confirm_deadline(&self, run: &Run<'_>) -> (Instant, Duration) {
        let verify = Duration::from_secs(60).max(self.quick() * 2);
        let armed_at = run.armed_at.unwrap_or_else(Instant::now);
        (armed_at + self.opts.rollback_grace + verify, verify)
    }

    /// The health gate over a new connection ([`super::gate`]), asked every 0.5 s: passed, go
    /// on to the confirmation; failed, roll back at once; no verdict by the confirmation's
    /// deadline, go on to the confirmation, which sees what the guard did.
    async fn health_gate(&self, run: &mut Run<'_>, script: &str) -> Result<Flow, Failure> {
        let quick = self.quick();
        let fresh = run.program.target.fresh();
        let (deadline, _) = self.confirm_deadline(run);
        let mut gate = super::gate::Gate::new(self.opts.node_timeout, run.baseline.clone());
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let t = quick.min(left).max(Duration::from_secs(1));
            match gate
                .check(&self.transport, &fresh, run.plan, script, t, run.log)
                .await
            {
                super::gate::Check::Passed(passed) => {
                    run.log
                        .line(&format!("health gate passed: {}", passed.summary()));
                    run.gate = Some(passed.summary());
                    return Ok(Flow::Next);
                }
                super::gate::Check::Wait(why) => run.log.line(&format!("{why}; retrying")),
                super::gate::Check::Failed(why) if run.rebooting => {
                    return Err(self.roll_back_boot_now(run, &why).await);
                }
                super::gate::Check::Failed(why) => {
                    return self
                        .roll_back_now(
                            Step::HealthGate,
                            &fresh,
                            &run.vars.guard,
                            &run.vars.running,
                            &why,
                            run.log,
                        )
                        .await
                        .map(Flow::Done);
                }
            }
            pause_before_retry(deadline).await;
        }
        run.log
            .line("health gate: no verdict by the confirmation's deadline; confirming");
        Ok(Flow::Next)
    }

    /// The confirmation over a new connection (which also makes the new system the boot
    /// default), retried through the grace period and, once the guard has fired, long enough
    /// to see how its rollback ended. Which of confirmation and rollback wins is decided on
    /// the node, so a late confirmation cannot undo a rollback.
    async fn confirm(&self, run: &mut Run<'_>, script: &str) -> Result<(Outcome, String), Failure> {
        let quick = self.quick();
        let grace = self.opts.rollback_grace;
        let (id, prev, new) = (&run.vars.guard, &run.vars.running, &run.vars.built);
        let left = format!(
            "the rollback guard returns the node to {prev} within {}s",
            grace.as_secs()
        );
        let fresh = run.program.target.fresh();
        let (deadline, verify) = self.confirm_deadline(run);
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            let left_t = deadline.saturating_duration_since(Instant::now());
            let t = quick.min(left_t).max(Duration::from_secs(1));
            match self.transport.run(&fresh, script, None, t, run.log).await {
                Ok(out) if out.success() => match guard::parse_confirm(&out.stdout) {
                    Some(answer) => {
                        if let Some(mut done) = self.confirmed(answer, id, prev, new, out)? {
                            if let (Outcome::Succeeded, Some(g)) = (&done.0, &run.gate) {
                                done.1 = format!("{}; health gate {g}", done.1);
                            }
                            if let (Outcome::Succeeded, Some(r)) =
                                (&done.0, run.reboot_need.as_ref().and_then(|n| n.summary()))
                            {
                                done.1 = format!(
                                    "{}; {r}: the new kernel, modules or systemd run after a reboot (--reboot auto)",
                                    done.1
                                );
                            }
                            return Ok(done);
                        }
                        last = "the rollback is still running".into();
                    }
                    None => last = format!("unexpected answer {:?}", out.stdout.trim()),
                },
                Ok(out) => last = out.last_line(),
                Err(e) => last = e.to_string(),
            }
            run.log.line(&format!("confirmation: {last}; retrying"));
            pause_before_retry(deadline).await;
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

    /// After a failed activation or health gate (`step`, named in the failure; the connection
    /// works): roll back at once instead of waiting for the timer, and report what the node
    /// says, retrying while a rollback runs.
    async fn roll_back_now(
        &self,
        step: Step,
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
                            step,
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
            pause_before_retry(deadline).await;
        }
        Err(Failure::new(
            step,
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

    pub(crate) async fn node(&self, index: usize, plan: &NodeSpec) -> NodeReport {
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
        let program = super::build::build(
            plan,
            &self.opts,
            self.target(index, plan),
            self.authkeys.as_ref(),
        );
        let mut attempts = 1;
        let mut drain = super::drain::NodeDrain::default();
        let mut result = self.attempt(plan, &program, &log, &mut drain).await;
        if let Err(f) = &result {
            if f.unreachable && self.opts.retry {
                log.line(&format!("# attempt 1 failed: {}; retrying once", f.reason));
                self.emit(Event::Retrying {
                    node: plan.name.to_string(),
                    reason: f.reason.clone(),
                });
                attempts = 2;
                result = self.attempt(plan, &program, &log, &mut drain).await;
            }
        }
        // Whatever happened, the node's shared connection ends with it.
        self.finally(&program, &log).await;
        let (outcome, step, detail) = match result {
            Ok((o, d)) => (o, None, d),
            Err(f) => (Outcome::Failed, Some(f.step), f.reason),
        };
        let detail = self
            .finish_drain(plan, &program, &drain, &log, outcome, detail)
            .await;
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
