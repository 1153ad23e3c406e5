//! The crate's layout (issue 20): no import circle between files or top-level modules, checked by
//! `.ci/import-circles.py` — on src/ itself, and on a made-up tree with a circle, so the check is
//! known to fail when it should.

use std::path::Path;
use std::process::Command;

fn check(dir: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/import-circles.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("python3 runs .ci/import-circles.py");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn src_has_no_import_circles() {
    let (ok, out) = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(ok, "import circles in src/:\n{out}");
    assert!(
        out.contains("file circles: 0; top-level circles: 0"),
        "{out}"
    );
}

#[test]
fn a_circle_between_stages_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("spec")).unwrap();
    std::fs::create_dir_all(src.join("outputs")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod outputs;\npub mod spec;\n").unwrap();
    std::fs::write(src.join("spec/mod.rs"), "use crate::outputs::render;\n").unwrap();
    std::fs::write(src.join("outputs/mod.rs"), "use crate::spec::NodeSpec;\n").unwrap();
    let (ok, out) = check(src);
    assert!(!ok, "{out}");
    assert!(
        out.contains("file circle: outputs/mod.rs spec/mod.rs"),
        "{out}"
    );
    assert!(out.contains("top-level circle: outputs spec"), "{out}");
    // The same tree without the upward import passes.
    std::fs::write(src.join("spec/mod.rs"), "pub struct NodeSpec;\n").unwrap();
    let (ok, out) = check(src);
    assert!(ok, "{out}");
}

#[test]
fn a_circle_inside_one_folder_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("deploy")).unwrap();
    std::fs::write(src.join("deploy/mod.rs"), "mod linux;\nmod nixos;\n").unwrap();
    std::fs::write(src.join("deploy/linux.rs"), "use super::nixos::ops;\n").unwrap();
    std::fs::write(src.join("deploy/nixos.rs"), "use super::linux::probe;\n").unwrap();
    let (ok, out) = check(src);
    assert!(!ok, "{out}");
    assert!(
        out.contains("file circle: deploy/linux.rs deploy/nixos.rs"),
        "{out}"
    );
}
