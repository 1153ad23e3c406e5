//! Atomic file writes: a temp file in the target directory, then a rename.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Test hook for crash-safety tests: with `FLEETNIX_TEST_CRASH_AT=N` the process aborts (no
/// destructors, no clean-up, like SIGKILL) at the N-th crash point of [`write_atomic`], counting
/// from 1. Each atomic write has two: after the temp file is written and synced (before the
/// rename), and after the rename.
pub const CRASH_AT_ENV: &str = "FLEETNIX_TEST_CRASH_AT";

static CRASH_POINTS: AtomicU64 = AtomicU64::new(0);

fn crash_point() {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var(CRASH_AT_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    if let Some(at) = *at {
        if CRASH_POINTS.fetch_add(1, Ordering::SeqCst) + 1 == at {
            std::process::abort();
        }
    }
}

/// Writes `contents` to `path` atomically with the given Unix mode; creates parent directories.
/// A reader (or a crash at any moment) sees either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".fleetnix-")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    set_mode(tmp.path(), mode)?;
    crash_point();
    tmp.persist(path).map_err(|e| e.error)?;
    crash_point();
    // The rename itself survives a power loss only once the directory is synced too.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
