//! SSH: how a node is reached ([`SshTarget`], [`SshConfig`]: pinned host keys, optional shared
//! connections), and the [`Transport`] trait ("run this script on the node, feed it stdin, give
//! me exit status and output") with its implementation over the `ssh` binary, [`SshTransport`].

use super::process::{run_process, LocalCommand, NodeLog, ProcError, ProcOutput};
use super::quote::sh_quote;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach one node over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// `user@address`.
    pub destination: String,
    /// The pinned known_hosts file for this node.
    pub known_hosts: PathBuf,
    /// Run remote scripts through `sudo -n` (the SSH user is not root).
    pub sudo: bool,
    /// The control socket of this node's shared (multiplexed) connection, or `None` for a
    /// fresh connection per command (`ControlMaster=no`, `ControlPath=none`).
    pub control: Option<PathBuf>,
}

impl SshTarget {
    /// The same target, but every command on a brand-new connection (never a shared master):
    /// what the rollback guard's confirmation uses.
    pub fn fresh(&self) -> SshTarget {
        SshTarget {
            control: None,
            ..self.clone()
        }
    }
}

/// How long an idle shared connection stays up (`ControlPersist`, seconds). fleetnix closes it
/// itself (`ssh -O exit`) when the node is done; this only bounds a master left by a crash.
pub const CONTROL_PERSIST_SECS: u32 = 60;

/// Longest control socket path accepted. The limit of a Unix socket path is 104 bytes (with
/// the NUL) on some systems and ssh first binds `<path>.<16 random chars>`; longer paths are
/// not multiplexed.
pub const MAX_CONTROL_PATH: usize = 104 - 1 - 17;

/// A private directory (mode 0700) for one run's control sockets, removed when dropped.
/// Sockets are named by the node's position in the run (`<dir>/0`, `<dir>/1`, …) to stay short.
#[derive(Debug)]
pub struct ControlDir {
    dir: tempfile::TempDir,
}

impl ControlDir {
    /// Creates it under `$TMPDIR` if that is short, else under `/tmp`.
    pub fn new() -> std::io::Result<Self> {
        let tmp = std::env::temp_dir();
        let base = if tmp.as_os_str().len() <= 32 {
            tmp
        } else {
            PathBuf::from("/tmp")
        };
        let dir = tempfile::Builder::new().prefix("fnx").tempdir_in(base)?;
        Ok(ControlDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The socket path of the `index`-th node, if short enough for a Unix socket.
    pub fn socket(&self, index: usize) -> Option<PathBuf> {
        let p = self.dir.path().join(index.to_string());
        (p.as_os_str().len() <= MAX_CONTROL_PATH).then_some(p)
    }
}

/// SSH settings shared by fleetnix's own connections and `NIX_SSHOPTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    /// The `ssh` binary.
    pub program: PathBuf,
    /// An identity file to use instead of the agent's/default keys.
    pub identity: Option<PathBuf>,
    /// `ConnectTimeout`, seconds (the fleet's `node_timeout_seconds`).
    pub connect_timeout: u32,
}

impl SshConfig {
    /// The options that pin the host key and keep ssh non-interactive:
    /// `UserKnownHostsFile=<file>`, no global known hosts, `StrictHostKeyChecking=yes`,
    /// `BatchMode=yes`, `ConnectTimeout`, keep-alives, and the identity if set.
    pub fn pin_options(&self, known_hosts: &Path) -> Vec<String> {
        let mut o = vec![
            "-o".to_string(),
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
        ];
        if let Some(id) = &self.identity {
            o.extend([
                "-o".into(),
                format!("IdentityFile={}", id.display()),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        o
    }

    /// The connection-sharing options: with a control socket, `ControlMaster=auto`,
    /// `ControlPath=<socket>`, `ControlPersist=<secs>` (the first command opens the shared
    /// connection, later ones reuse it); without, `ControlMaster=no`, `ControlPath=none`
    /// (a fresh connection that also ignores any `ControlPath` in the user's ssh config).
    pub fn control_options(control: Option<&Path>) -> Vec<String> {
        match control {
            Some(p) => vec![
                "-o".into(),
                "ControlMaster=auto".into(),
                "-o".into(),
                format!("ControlPath={}", p.display()),
                "-o".into(),
                format!("ControlPersist={CONTROL_PERSIST_SECS}"),
            ],
            None => vec![
                "-o".into(),
                "ControlMaster=no".into(),
                "-o".into(),
                "ControlPath=none".into(),
            ],
        }
    }

    /// The pinning options followed by the target's connection-sharing options: what every
    /// ssh for this target gets, including `nixos-rebuild`'s through `NIX_SSHOPTS`.
    pub fn target_options(&self, target: &SshTarget) -> Vec<String> {
        let mut o = self.pin_options(&target.known_hosts);
        o.extend(Self::control_options(target.control.as_deref()));
        o
    }

    /// `ssh -o ControlPath=<socket> -O exit -- user@ip`: asks the target's shared connection
    /// to close. `None` without a control socket.
    pub fn close_command(&self, target: &SshTarget) -> Option<LocalCommand> {
        let p = target.control.as_ref()?;
        Some(LocalCommand {
            program: self.program.clone(),
            args: vec![
                "-o".into(),
                format!("ControlPath={}", p.display()),
                "-O".into(),
                "exit".into(),
                "--".into(),
                target.destination.clone(),
            ],
            env: Vec::new(),
        })
    }

    /// The full local command running `script` on `target`:
    /// `ssh <pin options> <control options> -T -- user@ip 'sh -c …'`. On the target's shared
    /// connection if it has a control socket, else on a fresh one (see [`SshTarget::fresh`]).
    pub fn command(&self, target: &SshTarget, script: &str) -> LocalCommand {
        let mut args = self.target_options(target);
        args.extend(["-T".into(), "--".into(), target.destination.clone()]);
        let remote = format!("sh -c {}", sh_quote(script));
        args.push(if target.sudo {
            format!("sudo -n {remote}")
        } else {
            remote
        });
        LocalCommand {
            program: self.program.clone(),
            args,
            env: Vec::new(),
        }
    }
}

/// What running a remote script gave back. Exit code 255 is ssh's own failure (connection, host key).
pub type RemoteOutput = ProcOutput;

/// Runs shell scripts on nodes. The deploy logic is written against this trait; the SSH
/// implementation is [`SshTransport`], tests may record instead.
pub trait Transport: Send + Sync + 'static {
    /// Runs `script` (POSIX sh) on `target`, feeding `stdin`, within `timeout`.
    fn run(
        &self,
        target: &SshTarget,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        log: &NodeLog,
    ) -> impl Future<Output = Result<RemoteOutput, ProcError>> + Send;

    /// Closes `target`'s shared connection, if any (the default does nothing).
    fn close(&self, target: &SshTarget, log: &NodeLog) -> impl Future<Output = ()> + Send {
        let _ = (target, log);
        async {}
    }
}

/// [`Transport`] over the `ssh` binary with pinned host keys.
#[derive(Debug, Clone)]
pub struct SshTransport {
    /// SSH settings.
    pub config: SshConfig,
}

impl Transport for SshTransport {
    async fn run(
        &self,
        target: &SshTarget,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        log: &NodeLog,
    ) -> Result<RemoteOutput, ProcError> {
        run_process(&self.config.command(target, script), stdin, timeout, log).await
    }

    /// `ssh -O exit` on the control socket (if it exists), then removes a socket left behind.
    async fn close(&self, target: &SshTarget, log: &NodeLog) {
        let (Some(cmd), Some(sock)) = (self.config.close_command(target), &target.control) else {
            return;
        };
        if !sock.exists() {
            return;
        }
        // A failure only means there was no master any more; the socket is removed below and
        // an orphaned master exits on its own after ControlPersist.
        let _ = run_process(&cmd, None, Duration::from_secs(10), log).await;
        let _ = std::fs::remove_file(sock);
    }
}
