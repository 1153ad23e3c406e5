//! One bootstrap in progress ([`Run`]): the options, the node, its log, the steps finished so far
//! and the progress events; how it starts ([`Run::begin`]) and the helpers the steps share.

use super::options::BootstrapOptions;
use super::report::{BootstrapError, Event, Report, Status, Step, StepReport};
use crate::exec::process::NodeLog;
use crate::manifest;
use crate::model::{Fleet, NodeName};
use crate::tailscale::{PeerStatus, TailscaleStatus};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc;

/// `user@address` for ssh's destination: an IPv6 address bare (`root@fd7a::1`), as OpenSSH
/// takes it (brackets are for scp and URLs).
pub(crate) fn ssh_target(user: &str, ip: &IpAddr) -> String {
    format!("{user}@{ip}")
}

/// The node's device, if it is in the tailnet and online (or is this machine): the device the
/// control server named `node` (its MagicDNS name), never one that only calls itself `node`.
/// Before it is given anything, [`check_device_key`] checks it is the VM whose key was pinned.
pub(crate) fn joined<'a>(status: &'a TailscaleStatus, node: &str) -> Option<&'a PeerStatus> {
    status
        .find_assigned(node)
        .filter(|d| d.is_self || d.peer.online)
        .map(|d| d.peer)
}

/// The device (found by its control-assigned name) must publish the pinned SSH host key: a
/// device the control server calls `node` that does not is not the VM whose key was pinned, and
/// gets no address, no secret, no install skipped on its account.
pub(crate) fn check_device_key(
    node: &str,
    device: &PeerStatus,
    pinned: &str,
    step: super::report::Step,
    resume: &str,
) -> Result<(), BootstrapError> {
    use crate::deploy::hostkeys::normalize_key;
    let want = normalize_key(pinned);
    if want.is_some()
        && device
            .ssh_host_keys
            .iter()
            .any(|k| normalize_key(k) == want)
    {
        return Ok(());
    }
    let fp = super::hostkey::Fingerprint::of_key(pinned)
        .map(|f| f.to_string())
        .unwrap_or_else(|| "?".into());
    Err(super::report::fail(
        step,
        format!(
            "the tailnet's device named {node} (node ID {}, {}, calls itself {:?}) does not publish the pinned host key ({fp}) in `tailscale status`: it is not the VM this bootstrap pinned, so it gets no address and no secret",
            if device.id.is_empty() { "unknown" } else { &device.id },
            ips(&device.tailscale_ips),
            device.host_name,
        ),
        format!(
            "check the device in the admin console (remove it if it is not {node}), then {resume}"
        ),
    ))
}

/// Addresses as `a, b`.
pub(crate) fn ips(list: &[IpAddr]) -> String {
    list.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bootstrap in progress.
pub(crate) struct Run<'a> {
    /// The options.
    pub opts: &'a BootstrapOptions,
    /// Where progress goes.
    pub events: Option<mpsc::UnboundedSender<Event>>,
    /// The steps finished so far.
    pub steps: Vec<StepReport>,
    /// The node's bootstrap log.
    pub log: NodeLog,
    /// The node.
    pub name: NodeName,
    /// nodes.yml.
    pub nodes_yml: PathBuf,
    /// How to resume after a failure.
    pub resume: String,
    /// How to resume after a failure, giving the host key's fingerprint.
    pub resume_fp: String,
}

/// What [`Run::begin`] found.
pub(crate) struct Begun<'a> {
    /// The run.
    pub run: Run<'a>,
    /// The fleet as read before the first step.
    pub fleet: Fleet,
    /// The node's device, when it is already in the tailnet and online.
    pub already: Option<PeerStatus>,
}

impl<'a> Run<'a> {
    /// Before the first step: checks the options, reads the fleet, finds the node, opens its log
    /// and reads this machine's `tailscale status`.
    pub async fn begin(
        node: &str,
        opts: &'a BootstrapOptions,
        events: Option<mpsc::UnboundedSender<Event>>,
    ) -> Result<Begun<'a>, BootstrapError> {
        let setup = BootstrapError::Setup;
        opts.deploy.check().map_err(|e| setup(e.to_string()))?;
        let fleet = manifest::load(&opts.fleet_dir).map_err(|e| setup(e.to_string()))?;
        let nodes_yml = fleet.sources.nodes.clone();
        let Some(n) = fleet.node(node) else {
            let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(setup(format!(
                "no node `{node}` in {} (nodes: {}): declare it there first",
                nodes_yml.display(),
                names.join(", ")
            )));
        };
        let name = n.name.clone();
        let log_path = opts.state_dir().join(format!("{name}.log"));
        let log = NodeLog::create(&log_path)
            .map_err(|e| setup(format!("cannot write {}: {e}", log_path.display())))?;
        let dest = ssh_target(&opts.ssh_user, &opts.address);
        log.line(&format!("# fleetnix bootstrap {name} --ssh {dest}"));
        let run = Run {
            opts,
            events,
            steps: Vec::new(),
            log,
            resume: format!(
                "re-run `fleetnix bootstrap {name} --ssh {dest}` (finished steps are skipped)"
            ),
            resume_fp: format!(
                "re-run `fleetnix bootstrap {name} --ssh {dest} --host-key-fingerprint SHA256:…`"
            ),
            name,
            nodes_yml,
        };
        let status = run.status().await.map_err(|e| {
            setup(format!(
                "cannot read this machine's `tailscale status` ({e}): bootstrap waits for the node to appear there, so run it from a machine on the tailnet (or set {})",
                crate::tailscale::TAILSCALE_ENV
            ))
        })?;
        let already = joined(&status, run.name.as_str()).cloned();
        Ok(Begun {
            run,
            fleet,
            already,
        })
    }

    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// A step starts.
    pub fn start(&self, step: Step) {
        self.log.line(&format!("## {}", step.as_str()));
        self.emit(Event::Started(step));
    }

    /// A step finished.
    pub fn finish(&mut self, step: Step, status: Status, detail: impl Into<String>) {
        let r = StepReport {
            step,
            status,
            detail: detail.into(),
        };
        self.log
            .line(&format!("= {} {}", r.status.as_str(), r.detail));
        self.emit(Event::Finished(r.clone()));
        self.steps.push(r);
    }

    /// Something worth telling.
    pub fn note(&self, text: String) {
        self.log.line(&format!("note: {text}"));
        self.emit(Event::Note(text));
    }

    /// The report of the finished bootstrap.
    pub fn report(self, tailscale_ip: IpAddr) -> Report {
        Report {
            node: self.name.to_string(),
            tailscale_ip,
            steps: self.steps,
        }
    }

    /// This machine's `tailscale status`.
    pub async fn status(&self) -> Result<TailscaleStatus, crate::tailscale::TailscaleError> {
        self.opts.tailscale.status().await
    }

    /// Polls `tailscale status` until `done` holds, at most `wait_timeout`. On timeout, the last
    /// error (` (last error: …)`, or empty).
    pub async fn wait_for<T>(
        &self,
        mut done: impl FnMut(&TailscaleStatus) -> Option<T>,
    ) -> Result<T, WaitTimeout> {
        let deadline = Instant::now() + self.opts.wait_timeout;
        let mut last = String::new();
        loop {
            match self.status().await {
                Ok(s) => {
                    if let Some(t) = done(&s) {
                        return Ok(t);
                    }
                }
                Err(e) => last = format!(" (last error: {e})"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WaitTimeout(last));
            }
            tokio::time::sleep(self.opts.poll_interval.min(left)).await;
        }
    }
}

/// [`Run::wait_for`] gave up; shows the last error as ` (last error: …)`, or nothing.
#[derive(Debug)]
pub(crate) struct WaitTimeout(String);

impl std::fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_targets_are_bare_as_openssh_takes_them() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ssh_target("root", &v6), "root@2001:db8::1");
    }
}
