//! One fleetnix at a time per repository: commands that write (render, secrets, acl get/set,
//! bootstrap, deploy, node sync) hold an advisory lock on `<root>/.fleetnix/lock` while they run.
//!
//! The lock is `flock(2)` on the file, so it is released by the kernel when its holder exits,
//! however it exits (SIGKILL included): there is never a stale lock to delete by hand. The
//! holder writes its pid and command into the file so that a second fleetnix can say who is in
//! the way. A second writer waits a little ([`DEFAULT_WAIT`], or `$FLEETNIX_LOCK_WAIT`), then
//! fails with [`LockError::Held`]. Read-only commands never take it.

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file, relative to the repository root.
pub const LOCK_FILE: &str = ".fleetnix/lock";
/// How long a writer waits for the lock unless `$FLEETNIX_LOCK_WAIT` says otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// Environment variable: how long to wait for the lock (`0s`, `500ms`, `2m`).
pub const WAIT_ENV: &str = "FLEETNIX_LOCK_WAIT";
/// How often a waiting writer tries again.
const RETRY: Duration = Duration::from_millis(50);

/// Errors of [`RepoLock::acquire`].
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock and did not let go in time.
    #[error("another fleetnix ({holder}) holds the lock {}; waited {} for it; run this again when it has finished (${WAIT_ENV} sets how long to wait)", path.display(), humantime::format_duration(*waited))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as it wrote itself into the file.
        holder: Holder,
        /// How long this process waited.
        waited: Duration,
    },
    /// `$FLEETNIX_LOCK_WAIT` is not a duration.
    #[error("${WAIT_ENV} is `{value}`, not a duration; expected e.g. `0s`, `500ms` or `2m`")]
    BadWait {
        /// The value given.
        value: String,
    },
    /// The lock file cannot be created or locked.
    #[error("cannot take the lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Who holds the lock, as read from the lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, if it wrote one yet.
    pub pid: Option<u32>,
    /// Its command (`fleetnix render`), if it wrote one yet.
    pub command: Option<String>,
}

impl Holder {
    /// Parses the lock file's text (`pid N` and `command …` lines); unknown lines are ignored.
    pub fn parse(text: &str) -> Self {
        let mut h = Holder::default();
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("pid ") {
                h.pid = p.trim().parse().ok();
            } else if let Some(c) = line.strip_prefix("command ") {
                // One printable line, whatever the file holds.
                let c: String = c.chars().filter(|c| !c.is_control()).take(200).collect();
                h.command = Some(c);
            }
        }
        h
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(p) => write!(f, "pid {p}")?,
            None => write!(f, "pid unknown")?,
        }
        match &self.command {
            Some(c) => write!(f, ", command {c}"),
            None => write!(f, ", command unknown"),
        }
    }
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RepoLock {
    file: File,
    path: PathBuf,
}

/// How long to wait: `$FLEETNIX_LOCK_WAIT` if set, else [`DEFAULT_WAIT`].
pub fn wait_from_env() -> Result<Duration, LockError> {
    match std::env::var(WAIT_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            humantime::parse_duration(v.trim()).map_err(|_| LockError::BadWait { value: v.clone() })
        }
        _ => Ok(DEFAULT_WAIT),
    }
}

impl RepoLock {
    /// Takes the lock of the repository at `root` for `command` (e.g. `fleetnix render`; shown
    /// to a second fleetnix, so never put arguments that could be secrets in it), waiting as
    /// long as `$FLEETNIX_LOCK_WAIT` says (default [`DEFAULT_WAIT`]).
    pub fn acquire(root: &Path, command: &str) -> Result<RepoLock, LockError> {
        Self::acquire_for(root, command, wait_from_env()?)
    }

    /// [`RepoLock::acquire`] with an explicit wait.
    pub fn acquire_for(root: &Path, command: &str, wait: Duration) -> Result<RepoLock, LockError> {
        Self::acquire_with(root, command, wait, |_| {})
    }

    /// [`RepoLock::acquire_for`] that calls `on_wait` once with the holder when it has to wait
    /// (e.g. to tell the user why nothing happens).
    pub fn acquire_with(
        root: &Path,
        command: &str,
        wait: Duration,
        on_wait: impl FnOnce(&Holder),
    ) -> Result<RepoLock, LockError> {
        let mut on_wait = Some(on_wait);
        let path = root.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Neither `.fleetnix` nor the lock file may be a symlink: a checkout could point them
        // at any file of the user's, which the holder's line would then overwrite.
        if let Some(dir) = path.parent() {
            crate::fsutil::create_dir_in_repo(root, dir).map_err(io)?;
        }
        let file = crate::fsutil::no_follow(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644),
        )
        .open(&path)
        .map_err(|e| io(crate::fsutil::explain_no_follow(&path, e)))?;
        let start = Instant::now();
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(Errno::INTR) => continue,
                Err(Errno::WOULDBLOCK) => {
                    let waited = start.elapsed();
                    let holder =
                        || Holder::parse(&std::fs::read_to_string(&path).unwrap_or_default());
                    if waited >= wait {
                        return Err(LockError::Held {
                            holder: holder(),
                            path,
                            waited,
                        });
                    }
                    if let Some(f) = on_wait.take() {
                        f(&holder());
                    }
                    std::thread::sleep(RETRY.min(wait - waited));
                }
                Err(e) => return Err(io(e.into())),
            }
        }
        let info = format!(
            "pid {}\ncommand {}\n",
            std::process::id(),
            command.replace(['\n', '\r'], " ")
        );
        file.set_len(0).map_err(io)?;
        file.write_all_at(info.as_bytes(), 0).map_err(io)?;
        Ok(RepoLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        // Still holding the lock: nobody else can be writing the file. The kernel releases the
        // lock when the descriptor closes.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let first = RepoLock::acquire_for(dir.path(), "fleetnix render", Duration::ZERO).unwrap();
        let err = RepoLock::acquire_for(dir.path(), "fleetnix secrets rekey", Duration::ZERO)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "another fleetnix (pid {}, command fleetnix render) holds the lock",
                std::process::id()
            )),
            "{msg}"
        );
        drop(first);
        // A little wait: a process forked by a concurrent test holds a copy of the descriptor
        // (and so the lock) until it execs (descriptors are close-on-exec).
        let again =
            RepoLock::acquire_for(dir.path(), "fleetnix secrets rekey", Duration::from_secs(5));
        assert!(again.is_ok(), "released on drop");
    }

    #[test]
    fn holder_text_is_one_line_and_bounded() {
        let h = Holder::parse("pid 12\ncommand a\u{1b}[31mb\n");
        assert_eq!(h.pid, Some(12));
        assert_eq!(h.command.as_deref(), Some("a[31mb"));
        assert_eq!(
            Holder::parse("").to_string(),
            "pid unknown, command unknown"
        );
    }
}
