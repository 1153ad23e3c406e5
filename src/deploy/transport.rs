//! Running things: local processes with timeouts and logs, and the [`Transport`] trait
//! ("run this script on the node, feed it stdin, give me exit status and output") with its
//! SSH implementation, [`SshTransport`], which drives the `ssh` binary.

use super::shell::sh_quote;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

pub use crate::secret::Secret;

/// A node's log file (`.fleetnix/logs/<node>.log`), shared by the steps of that node.
/// Only command lines and child output are written; secrets only ever travel on stdin.
#[derive(Clone)]
pub struct NodeLog {
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl NodeLog {
    /// Opens (truncates) the log at `path`, creating its directory.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)?;
        Ok(NodeLog {
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// A log that drops everything (tests, dry runs).
    pub fn discard() -> Self {
        NodeLog { file: None }
    }

    /// Appends one line.
    pub fn line(&self, text: &str) {
        if let Some(f) = &self.file {
            // A poisoned lock only means another writer panicked; the file is still usable.
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{text}");
        }
    }
}

/// What a finished process gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl ProcOutput {
    /// Did it exit 0?
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last non-empty line of stderr (else stdout), for one-line failure reasons.
    pub fn last_line(&self) -> String {
        self.stderr
            .lines()
            .chain(self.stdout.lines())
            .rfind(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| match self.code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".into(),
            })
    }
}

/// Why a process could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than allowed and was killed.
    #[error("{program} did not finish within {}s and was stopped", after.as_secs())]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        after: Duration,
    },
    /// Reading its output failed.
    #[error("reading the output of {program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A local command: program, arguments and extra environment. Printed by `--dry-run` exactly as run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCommand {
    /// The program (absolute path or name).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables, sorted by name.
    pub env: Vec<(String, String)>,
}

impl LocalCommand {
    /// A shell-style rendering: `VAR='…' program 'arg' …`.
    pub fn display(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", sh_quote(v)))
            .collect();
        words.push(sh_quote(&self.program.to_string_lossy()));
        words.extend(self.args.iter().map(|a| sh_quote(a)));
        words.join(" ")
    }
}

async fn pump<R: AsyncRead + Unpin>(
    r: Option<R>,
    log: &NodeLog,
    prefix: &str,
) -> std::io::Result<String> {
    let Some(r) = r else { return Ok(String::new()) };
    let mut reader = BufReader::new(r);
    let mut all = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        log.line(&format!("{prefix}{}", text.trim_end_matches('\n')));
        all.extend_from_slice(&line);
    }
    Ok(String::from_utf8_lossy(&all).into_owned())
}

/// Runs `cmd` in its own process group with `stdin` fed in, streaming its output into `log`,
/// and kills the whole group if it runs longer than `timeout`. The child gets this process's
/// environment plus `cmd.env`, minus every secret variable ([`crate::secret::child_env_removals`]).
pub async fn run_process(
    cmd: &LocalCommand,
    stdin: Option<&[u8]>,
    timeout: Duration,
    log: &NodeLog,
) -> Result<ProcOutput, ProcError> {
    run_process_in(cmd, None, stdin, timeout, log).await
}

/// [`run_process`] in the working directory `dir` (this process's if `None`).
pub async fn run_process_in(
    cmd: &LocalCommand,
    dir: Option<&Path>,
    stdin: Option<&[u8]>,
    timeout: Duration,
    log: &NodeLog,
) -> Result<ProcOutput, ProcError> {
    let program = cmd.program.to_string_lossy().into_owned();
    log.line(&format!("$ {}", cmd.display()));
    let mut c = tokio::process::Command::new(&cmd.program);
    if let Some(dir) = dir {
        c.current_dir(dir);
    }
    c.args(&cmd.args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a terminal's Ctrl-C does not reach it (running nodes finish), and a
        // timeout can stop it with everything it started.
        .process_group(0)
        .kill_on_drop(true);
    for var in crate::secret::child_env_removals() {
        c.env_remove(var);
    }
    let mut child = c.spawn().map_err(|source| ProcError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    let io_err = |source| ProcError::Io {
        program: program.clone(),
        source,
    };
    let work = async {
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            // A child that exits without reading its stdin is reported by its exit status.
            let _ = w.write_all(data).await;
            let _ = w.shutdown().await;
        }
        let out = child.stdout.take();
        let err = child.stderr.take();
        let (o, e) = tokio::join!(pump(out, log, ""), pump(err, log, "! "));
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, o?, e?))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((status, stdout, stderr))) => {
            log.line(&format!("= exit {:?}", status.code()));
            Ok(ProcOutput {
                code: status.code(),
                stdout,
                stderr,
            })
        }
        Ok(Err(e)) => Err(io_err(e)),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: killpg only sends a signal; the group is the child's own (process_group(0)).
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
            log.line(&format!("= timed out after {}s", timeout.as_secs()));
            Err(ProcError::Timeout {
                program,
                after: timeout,
            })
        }
    }
}

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
