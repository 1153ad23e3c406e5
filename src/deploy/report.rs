//! What a deploy reports: the [`Step`]s of a node, how it ended ([`Outcome`]), one
//! [`NodeReport`] per node, the [`Summary`], progress [`Event`]s and [`Cancel`].

use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// `tailscale set`: the prefs of a node already up.
    TailscaleSet,
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
    /// After activation: tailscaled, the agent and the hosted services up ([`super::gate`]).
    HealthGate,
    /// The post-activation confirmation over a new connection.
    Confirm,
    /// Making the confirmed generation the system profile and boot default.
    BootDefault,
    /// Room on `/boot` and in the Nix store, before anything is copied ([`super::preflight`]).
    Preflight,
    /// Rebooting into the new generation and waiting for the node ([`super::reboot`]).
    Reboot,
    /// Draining the node's tasks on the bus before activation ([`super::drain`]).
    Drain,
    /// Giving the node tasks again after the deploy ([`super::drain`]).
    Undrain,
}

impl Step {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::HostKey => "host-key",
            Step::Connect => "connect",
            Step::Install => "install",
            Step::TailscaleUp => "tailscale-up",
            Step::TailscaleSet => "tailscale-set",
            Step::Agent => "agent",
            Step::Firewall => "firewall",
            Step::Rebuild => "rebuild",
            Step::ArmGuard => "arm-guard",
            Step::Activate => "activate",
            Step::HealthGate => "health-gate",
            Step::Confirm => "confirm",
            Step::BootDefault => "boot-default",
            Step::Preflight => "preflight",
            Step::Reboot => "reboot",
            Step::Drain => "drain",
            Step::Undrain => "undrain",
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

/// The detail of a node left as it was because it already runs its target system.
pub fn unchanged_detail(target: &str) -> String {
    format!("already runs its target system {target}; nothing done (--force deploys it anyway)")
}
