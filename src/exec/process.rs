//! Local processes: run with a timeout in their own process group (killed with everything they
//! started when it passes), stdin fed, output streamed into a [`NodeLog`], secret variables
//! removed from their environment; and [`locate`], how tools are found.

use super::quote::sh_quote;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

/// A tool from its override variable, else `which`. `None`: not found (or disabled with an empty override).
pub fn locate(var: &str, name: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => which::which(name).ok(),
    }
}

/// A node's log file (`.fleetnix/logs/<node>.log`), shared by the steps of that node.
/// Only command lines and child output are written; secrets only ever travel on stdin.
#[derive(Clone)]
pub struct NodeLog {
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl NodeLog {
    /// Opens (truncates) the log at `path`, creating its directory; a symlink at `path` or at its
    /// directory is refused, not followed (the log lives in the repository's `.fleetnix`).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            if std::fs::symlink_metadata(dir)?.file_type().is_symlink() {
                return Err(crate::fsutil::explain_no_follow(
                    dir,
                    rustix::io::Errno::LOOP.into(),
                ));
            }
        }
        let file = crate::fsutil::no_follow(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )
        .open(path)
        .map_err(|e| crate::fsutil::explain_no_follow(path, e))?;
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
            // The group is the child's own (process_group(0)), so its id is the child's pid.
            if let Some(group) = pid
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                // Already gone is fine: the timeout is reported either way.
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            log.line(&format!("= timed out after {}s", timeout.as_secs()));
            Err(ProcError::Timeout {
                program,
                after: timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that outlives its limit is stopped with everything it started: its process
    /// group gets SIGKILL (through rustix, no `unsafe`).
    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tmp");
        let pidfile = dir.path().join("pid");
        let cmd = LocalCommand {
            program: PathBuf::from("sh"),
            args: vec![
                "-c".into(),
                format!(
                    "sleep 300 & echo $! > {}; wait",
                    crate::exec::quote::sh_quote(&pidfile.to_string_lossy())
                ),
            ],
            env: Vec::new(),
        };
        let r = run_process(&cmd, None, Duration::from_secs(2), &NodeLog::discard()).await;
        assert!(matches!(r, Err(ProcError::Timeout { .. })), "{r:?}");
        let pid = std::fs::read_to_string(&pidfile).expect("the grandchild started");
        let stat = format!("/proc/{}/stat", pid.trim());
        // SIGKILL is delivered asynchronously: the grandchild is gone or a zombie soon after.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()))
                .flatten();
            if matches!(state, None | Some('Z') | Some('X')) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild {pid} still runs ({state:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
