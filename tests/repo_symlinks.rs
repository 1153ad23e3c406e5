//! A repository cannot point the files fleetnix writes outside itself with symlinks: a tracked
//! `.fleetnix/lock`, `.fleetnix` or output directory that is a symlink is refused with an error
//! naming it, and the file it points at is left alone (issue 21 finding 5).

mod common;

use common::{copy_example_fleet, fleetnix_bin, Ran};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// A temp directory holding `repo/` (a copy of the example fleet) and `outside` (a file of the
/// user's that must survive).
fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    copy_example_fleet(&d.path().join("repo/fleet"));
    std::fs::write(d.path().join("outside"), "the user's file\n").expect("outside");
    std::fs::create_dir(d.path().join("outside-dir")).expect("outside-dir");
    d
}

fn render(root: &Path) -> Ran {
    Ran::of(
        Command::new(fleetnix_bin())
            .arg("--root")
            .arg(root)
            .arg("render")
            .env_remove("FLEETNIX_FLEET_DIR"),
    )
}

#[test]
fn a_symlinked_lock_file_is_not_followed() {
    let d = setup();
    let repo = d.path().join("repo");
    std::fs::create_dir(repo.join(".fleetnix")).expect(".fleetnix");
    symlink("../../outside", repo.join(".fleetnix/lock")).expect("symlink");
    let r = render(&repo);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(
        r.stderr.contains(".fleetnix/lock is a symlink"),
        "the error names the symlink: {r}"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("outside")).expect("outside"),
        "the user's file\n",
        "the file the symlink points at was not truncated"
    );
    assert!(!repo.join("nix").exists(), "nothing was rendered");
}

#[test]
fn a_symlinked_state_dir_is_refused() {
    let d = setup();
    let repo = d.path().join("repo");
    symlink("../outside-dir", repo.join(".fleetnix")).expect("symlink");
    let r = render(&repo);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains(".fleetnix is a symlink"), "{r}");
    let inside: Vec<_> = std::fs::read_dir(d.path().join("outside-dir"))
        .expect("outside-dir")
        .collect();
    assert!(inside.is_empty(), "nothing was written through it");
}

#[test]
fn a_symlinked_output_dir_is_refused() {
    let d = setup();
    let repo = d.path().join("repo");
    std::fs::create_dir(repo.join("nix")).expect("nix");
    symlink("../../outside-dir", repo.join("nix/nodes")).expect("symlink");
    let r = render(&repo);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains("nix/nodes is a symlink"), "{r}");
    let inside: Vec<_> = std::fs::read_dir(d.path().join("outside-dir"))
        .expect("outside-dir")
        .collect();
    assert!(inside.is_empty(), "nothing was written through it");
}

#[test]
fn an_ordinary_repository_still_renders() {
    let d = setup();
    let repo = d.path().join("repo");
    let r = render(&repo);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(repo.join("nix/nodes").is_dir());
}

#[test]
fn a_symlinked_acl_backup_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let fleet_dir = dir.path().join("fleet");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&fleet_dir).expect("fleet dir");
    std::fs::create_dir_all(&outside).expect("outside");
    let backups = fleet_dir.join("acl-backups");
    symlink(&outside, &backups).expect("symlink");
    let err = fleetnix::acl::apply::write_backup(&backups, "2026-12-04", "{}")
        .expect_err("a symlinked backup directory is refused");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).expect("outside").count(),
        0,
        "nothing written where the symlink points"
    );
    // An ordinary directory takes the backup.
    std::fs::remove_file(&backups).expect("rm symlink");
    let path = fleetnix::acl::apply::write_backup(&backups, "2026-12-04", "{}").expect("backup");
    assert!(path.starts_with(&backups));
}
