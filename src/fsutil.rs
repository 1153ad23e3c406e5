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

/// [`write_atomic`] for a file under the repository `root`: its directory and every directory
/// between it and `root` must not be a symlink ([`create_dir_in_repo`]). The file itself is
/// replaced by a rename, which never follows a symlink at `path`.
pub fn write_atomic_in_repo(
    root: &Path,
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_in_repo(root, dir)?;
    }
    write_atomic(path, contents, mode)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The UTF-8 byte order mark some editors write at the start of a text file.
pub const BOM: char = '\u{feff}';

/// `text` without a leading UTF-8 byte order mark, and how many bytes were dropped (0 or 3).
/// YAML allows a BOM at the start of a stream and HuJSON files written by some editors carry
/// one; parsers get the text after it, so line 1's columns are those an editor shows.
pub fn strip_bom(text: &str) -> (&str, usize) {
    match text.strip_prefix(BOM) {
        Some(rest) => (rest, BOM.len_utf8()),
        None => (text, 0),
    }
}

/// Why [`create_dir_in_repo`] refused a directory: it (or a directory between it and the
/// repository root) is a symlink, which could send fleetnix's writes outside the repository.
fn symlinked(p: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "{} is a symlink: fleetnix does not write through symlinks in the repository (a checkout could point it anywhere); replace it with a directory",
        p.display()
    ))
}

/// Creates `dir` (under the repository `root`) and its missing parents, refusing a symlink at
/// `dir` or at any directory between `root` and it. `root` itself may be a symlink; a `dir`
/// outside `root` (e.g. the XDG state directory) is only created.
pub fn create_dir_in_repo(root: &Path, dir: &Path) -> std::io::Result<()> {
    let Ok(rel) = dir.strip_prefix(root) else {
        return std::fs::create_dir_all(dir);
    };
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        if !matches!(c, std::path::Component::Normal(_)) {
            continue;
        }
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(symlinked(&at)),
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    at.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if std::fs::symlink_metadata(&at)?.file_type().is_symlink() {
                        return Err(symlinked(&at));
                    }
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `opts` opening with `O_NOFOLLOW`: a symlink as the last component fails (`ELOOP`) instead of
/// being followed, so a repository cannot point a file fleetnix writes at one outside it.
pub fn no_follow(opts: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
}

/// Explains an error of opening `path` with [`no_follow`]: `ELOOP` means it is a symlink.
pub fn explain_no_follow(path: &Path, e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        symlinked(path)
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_is_stripped_once() {
        assert_eq!(strip_bom("\u{feff}a: 1"), ("a: 1", 3));
        assert_eq!(strip_bom("a: 1"), ("a: 1", 0));
    }

    #[test]
    fn symlinked_repo_dirs_and_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repo");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        create_dir_in_repo(&root, &root.join("a/b")).unwrap();
        assert!(root.join("a/b").is_dir());
        std::os::unix::fs::symlink(&outside, root.join(".fleetnix")).unwrap();
        let e = create_dir_in_repo(&root, &root.join(".fleetnix/logs")).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert!(!outside.join("logs").exists());
        let target = outside.join("f");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, root.join("a/f")).unwrap();
        let e = no_follow(std::fs::OpenOptions::new().write(true).truncate(true))
            .open(root.join("a/f"))
            .map_err(|e| explain_no_follow(&root.join("a/f"), e))
            .unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
