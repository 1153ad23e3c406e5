//! What a bootstrap reports: its steps, what each did, progress events and why it stopped.

use serde::Serialize;
use std::net::IpAddr;

/// A step of the bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Pin the host key by its fingerprint.
    HostKey,
    /// Record it in nodes.yml.
    Record,
    /// Encrypt the auth key to it.
    Secret,
    /// Write the node's hardware configuration from the VM (when it runs NixOS).
    Hardware,
    /// Install Tailscale (non-NixOS) or the first `nixos-rebuild`, over the public address.
    Install,
    /// Wait for the node in `tailscale status`.
    Join,
    /// Reconcile its Tailscale address with the manifest.
    Address,
    /// Stop using the public address.
    Handover,
}

impl Step {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::HostKey => "host-key",
            Step::Record => "record",
            Step::Secret => "secret",
            Step::Hardware => "hardware",
            Step::Install => "install",
            Step::Join => "join",
            Step::Address => "address",
            Step::Handover => "handover",
        }
    }

    /// The step's number in `fleetnix bootstrap`'s description (1–5).
    pub fn number(self) -> u8 {
        match self {
            Step::HostKey => 1,
            Step::Record | Step::Secret | Step::Hardware => 2,
            Step::Install => 3,
            Step::Join | Step::Address => 4,
            Step::Handover => 5,
        }
    }
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It changed something.
    Done,
    /// Already as wanted; nothing changed.
    Unchanged,
    /// Not needed this time (e.g. the install when the node is already in the tailnet).
    Skipped,
}

impl Status {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Unchanged => "unchanged",
            Status::Skipped => "skipped",
        }
    }
}

/// One finished step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// What it did.
    pub status: Status,
    /// One line about it.
    pub detail: String,
}

/// The result of a successful bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The node.
    pub node: String,
    /// Its Tailscale address now.
    pub tailscale_ip: IpAddr,
    /// Every step, in order.
    pub steps: Vec<StepReport>,
}

impl Report {
    /// Did any step change anything?
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| s.status == Status::Done)
    }
}

/// Progress, as it happens. Printing is the caller's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step starts.
    Started(Step),
    /// A step finished.
    Finished(StepReport),
    /// Progress of deploy's runner during [`Step::Install`].
    Deploy(crate::deploy::report::Event),
    /// Something worth telling.
    Note(String),
}

/// Why a bootstrap stopped.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Before the first step: bad options, an unknown node, no `tailscale` here.
    #[error("{0}")]
    Setup(String),
    /// A step failed. Steps before it are done; re-running resumes here.
    #[error("step {} ({}) failed: {reason}\n  to resume: {resume}", step.number(), step.as_str())]
    Step {
        /// The failing step.
        step: Step,
        /// What went wrong.
        reason: String,
        /// What to do, then re-run.
        resume: String,
    },
}

pub(crate) fn fail(
    step: Step,
    reason: impl Into<String>,
    resume: impl Into<String>,
) -> BootstrapError {
    BootstrapError::Step {
        step,
        reason: reason.into(),
        resume: resume.into(),
    }
}
