//! The reboot path of a guarded switch (`--reboot`): arm the boot guard and make the new system
//! the boot default, reboot, wait for the node to answer from its new boot, confirm it (or roll
//! the boot default back). The switch path and the steps both share are in `execute.rs`.

use super::execute::{pause_before_retry, Ctx, Flow, Run};
use super::failure::Failure;
use super::report::{Outcome, Step};
use crate::exec::ssh::Transport;
use std::time::{Duration, Instant};

impl<T: Transport> Ctx<T> {
    /// What the boot guard does, for reports.
    pub(crate) fn boot_guard_will(&self, run: &Run<'_>) -> String {
        format!(
            "its boot guard ({unit}.timer, armed on the node) makes {prev} the boot default again and reboots into it {secs}s after a boot of {new} without a confirmation",
            unit = super::guard::BOOT_GUARD_UNIT,
            prev = run.vars.running,
            new = run.vars.built,
            secs = self.opts.rollback_grace.as_secs()
        )
    }

    /// Arms the boot guard and makes the new system the
    /// boot default; records how the node's units and ports were before the reboot.
    pub(crate) async fn arm_boot(
        &self,
        run: &mut Run<'_>,
        step: Step,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Flow, Failure> {
        let target = &run.program.target;
        let (out, ports) = tokio::join!(
            self.remote(step, target, script, stdin, timeout, run.log),
            super::gate::probe_ports(run.plan, self.quick())
        );
        let out = out.map_err(|mut f| {
            f.reason = format!("{}; nothing changed", f.reason);
            f
        })?;
        run.baseline = Some(super::gate::Baseline {
            units: super::gate::parse_gate(&out.stdout),
            ports: ports
                .into_iter()
                .map(|(p, o)| (p, o == crate::health::PortOutcome::Open))
                .collect(),
        });
        run.log.line(&format!(
            "boot guard armed; {} is the boot default",
            run.vars.built
        ));
        Ok(Flow::Next)
    }

    /// Reboots the node, then asks it over new connections (every half second, within
    /// `--reboot-timeout`) until it answers from its new boot.
    pub(crate) async fn reboot(&self, run: &mut Run<'_>, script: &str) -> Result<Flow, Failure> {
        let target = &run.program.target;
        let out = self
            .transport
            .run(target, script, None, self.quick(), run.log)
            .await;
        match out {
            Ok(o) if o.success() || o.code == Some(255) => {}
            Ok(o) => {
                // Not rebooting: the guard at once makes the running generation the boot
                // default again (it runs it, so the guard does not reboot).
                let undo = self
                    .transport
                    .run(
                        target,
                        &super::reboot::roll_back_boot_now_script(),
                        None,
                        self.quick(),
                        run.log,
                    )
                    .await;
                let undone = match undo {
                    Ok(u) if u.success() => format!(
                        "its boot guard was started at once to make {} the boot default again",
                        run.vars.running
                    ),
                    _ => self.boot_guard_will(run),
                };
                return Err(Failure::new(
                    Step::Reboot,
                    format!(
                        "asking the node to reboot failed ({}); {undone}",
                        o.last_line()
                    ),
                ));
            }
            Err(e) => run.log.line(&format!("reboot: {e}; waiting for the node")),
        }
        self.transport.close(target, run.log).await;
        let fresh = target.fresh();
        let started = Instant::now();
        let deadline = started + self.opts.reboot_timeout;
        let back = super::reboot::back_script(&run.vars.guard);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            let t = self
                .quick()
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_secs(1));
            match self.transport.run(&fresh, &back, None, t, run.log).await {
                Ok(o) if o.success() => {
                    let answer = o.stdout.trim().to_string();
                    if let Some(booted) = answer.strip_prefix("booted") {
                        run.log.line(&format!(
                            "back after {:.1}s, booted {}",
                            started.elapsed().as_secs_f64(),
                            booted.trim()
                        ));
                        // The guard's bound runs from the boot: so do the gate's and the
                        // confirmation's deadlines.
                        run.armed_at = Some(Instant::now());
                        return Ok(Flow::Next);
                    }
                    last = "not rebooted yet".into();
                }
                Ok(o) => last = o.last_line(),
                Err(e) => last = e.to_string(),
            }
            pause_before_retry(deadline).await;
        }
        Err(Failure::new(
            Step::Reboot,
            format!(
                "the node did not answer over SSH within {}s of the reboot ({last}); {}",
                self.opts.reboot_timeout.as_secs(),
                self.boot_guard_will(run)
            ),
        ))
    }

    /// After a failed gate on a rebooted node: starts its boot guard at once (the previous
    /// generation becomes the boot default again and the node reboots into it).
    pub(crate) async fn roll_back_boot_now(&self, run: &Run<'_>, why: &str) -> Failure {
        let fresh = run.program.target.fresh();
        let r = self
            .transport
            .run(
                &fresh,
                &super::reboot::roll_back_boot_now_script(),
                None,
                self.quick(),
                run.log,
            )
            .await;
        let what = match r {
            Ok(o) if o.success() => format!(
                "its boot guard was started at once: {} is the boot default again and the node reboots into it",
                run.vars.running
            ),
            Ok(o) => format!(
                "starting its boot guard at once failed ({}); {}",
                o.last_line(),
                self.boot_guard_will(run)
            ),
            Err(e) => format!(
                "starting its boot guard at once failed ({e}); {}",
                self.boot_guard_will(run)
            ),
        };
        Failure::new(Step::HealthGate, format!("{why}; {what}"))
    }

    /// The confirmation of a reboot over a new connection, retried until the guard's bound
    /// (and a little longer, to see what the guard did).
    pub(crate) async fn confirm_boot(
        &self,
        run: &mut Run<'_>,
        script: &str,
    ) -> Result<(Outcome, String), Failure> {
        use super::reboot::BootConfirm;
        let fresh = run.program.target.fresh();
        let (deadline, _) = self.confirm_deadline(run);
        let (prev, new) = (run.vars.running.clone(), run.vars.built.clone());
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            let t = self
                .quick()
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_secs(1));
            match self.transport.run(&fresh, script, None, t, run.log).await {
                Ok(o) if o.success() => match super::reboot::parse_boot_confirm(&o.stdout) {
                    Some(BootConfirm::Confirmed) => {
                        let why = run
                            .reboot_need
                            .as_ref()
                            .filter(|n| n.needed)
                            .map(|n| format!(" ({})", n.reasons.join(", ")))
                            .unwrap_or_default();
                        let mut d = format!(
                            "rebooted into the new generation{why}; confirmed over a new connection, boot guard removed"
                        );
                        if let Some(g) = &run.gate {
                            d = format!("{d}; health gate {g}");
                        }
                        return Ok((Outcome::Succeeded, d));
                    }
                    Some(BootConfirm::Booted(b)) => {
                        return Err(Failure::new(
                            Step::Confirm,
                            format!(
                                "the node booted {b}, not {new}: not confirmed; {}",
                                self.boot_guard_will(run)
                            ),
                        ))
                    }
                    Some(BootConfirm::Fired) => {
                        return Ok((
                            Outcome::RolledBack,
                            format!("the boot guard fired before the confirmation: {prev} is the boot default again and the node reboots into it"),
                        ))
                    }
                    Some(BootConfirm::Failed) => {
                        return Ok((
                            Outcome::RollbackFailed,
                            format!("the boot guard fired and failed to make {prev} the boot default again: on the node's console run `{prev}/bin/switch-to-configuration boot` and reboot (see `journalctl -u {}.service`)", super::guard::BOOT_GUARD_UNIT),
                        ))
                    }
                    Some(BootConfirm::Gone) => {
                        return Err(Failure::new(
                            Step::Confirm,
                            format!("the node has no boot guard of this deploy: check what it runs (expected {new})"),
                        ))
                    }
                    None => last = format!("unexpected answer {:?}", o.stdout.trim()),
                },
                Ok(o) => last = o.last_line(),
                Err(e) => last = e.to_string(),
            }
            run.log.line(&format!("confirmation: {last}; retrying"));
            pause_before_retry(deadline).await;
        }
        Err(Failure::new(
            Step::Confirm,
            format!(
                "not confirmed: no answer over a new connection ({last}); {}",
                self.boot_guard_will(run)
            ),
        ))
    }
}
