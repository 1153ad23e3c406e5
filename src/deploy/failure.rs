//! Failure classification: which step failed, why in one line, and whether the node was
//! unreachable (worth one retry).

use super::report::Step;
use crate::exec::process::{ProcError, ProcOutput};

/// A failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) step: Step,
    pub(crate) reason: String,
    /// The node could not be reached: worth one retry.
    pub(crate) unreachable: bool,
}

impl Failure {
    pub(crate) fn new(step: Step, reason: impl Into<String>) -> Self {
        Failure {
            step,
            reason: reason.into(),
            unreachable: false,
        }
    }
}

/// Classifies an SSH-level failure from ssh's stderr.
pub(crate) fn ssh_failure(step: Step, out: &ProcOutput) -> Failure {
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

pub(crate) fn proc_failure(step: Step, e: ProcError) -> Failure {
    let unreachable = matches!(e, ProcError::Timeout { .. });
    Failure {
        step,
        reason: e.to_string(),
        unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, stderr: &str) -> ProcOutput {
        ProcOutput {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn ssh_failures_are_classified() {
        let f = ssh_failure(Step::Connect, &out(255, "Host key verification failed.\n"));
        assert!(!f.unreachable && f.reason.starts_with("host key verification failed"));
        let f = ssh_failure(
            Step::Connect,
            &out(255, "root@x: Permission denied (publickey).\n"),
        );
        assert!(
            !f.unreachable && f.reason.starts_with("SSH login refused"),
            "{f:?}"
        );
        let f = ssh_failure(
            Step::Rebuild,
            &out(
                1,
                "ssh: connect to host 100.64.0.2 port 22: Connection refused\n",
            ),
        );
        assert!(
            f.unreachable && f.reason.starts_with("unreachable: "),
            "{f:?}"
        );
        assert_eq!(f.step, Step::Rebuild);
        let f = ssh_failure(Step::Connect, &out(1, "something else\n"));
        assert!(!f.unreachable, "{f:?}");
    }

    #[test]
    fn only_timeouts_of_processes_are_worth_a_retry() {
        let t = proc_failure(
            Step::Install,
            ProcError::Timeout {
                program: "ssh".into(),
                after: std::time::Duration::from_secs(3),
            },
        );
        assert!(t.unreachable && t.reason.contains("did not finish within 3s"));
        let s = proc_failure(
            Step::Install,
            ProcError::Spawn {
                program: "ssh".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        );
        assert!(!s.unreachable && s.reason.starts_with("cannot run ssh"));
    }
}
