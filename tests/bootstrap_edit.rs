//! The nodes.yml editor bootstrap uses (`fleetnix::manifest::edit`) on the example fleet, and
//! host key fingerprints against the real `ssh-keygen -l`.

mod common;

use fleetnix::bootstrap::hostkey::{parse_keyscan, Fingerprint};
use fleetnix::manifest::edit::{self, EditError, Edited};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn example_fleet() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    common::copy_example_fleet(dir.path());
    dir
}

fn keygen(dir: &Path, kind: &str) -> (String, String) {
    let path = dir.join(format!("key-{kind}"));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "test@host", "-t", kind, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("pub");
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub"))
        .output()
        .expect("ssh-keygen -l");
    let fp = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
    (public.trim().to_string(), fp)
}

#[test]
fn host_key_is_added_with_comments_kept_then_unchanged() {
    let dir = example_fleet();
    let nodes = dir.path().join("nodes.yml");
    std::fs::set_permissions(&nodes, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let before = std::fs::read_to_string(&nodes).expect("read");
    let (key, _) = keygen(dir.path(), "ed25519");

    let (e, fleet) = edit::set_host_key(dir.path(), "worker-01", &key).expect("edit");
    assert_eq!(e, Edited::Changed);
    assert_eq!(
        fleet
            .node("worker-01")
            .and_then(|n| n.host_key.as_ref().map(|k| k.to_string())),
        Some(key.clone())
    );
    let after = std::fs::read_to_string(&nodes).expect("read");
    let expected = before.replacen(
        "      ram_gb: 8\n  - name: worker-02",
        &format!("      ram_gb: 8\n    host_key: \"{key}\"\n  - name: worker-02"),
        1,
    );
    assert_ne!(expected, before);
    assert_eq!(after, expected);
    assert_eq!(
        std::fs::metadata(&nodes)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o640
    );

    let (e, _) = edit::set_host_key(dir.path(), "worker-01", &key).expect("edit");
    assert_eq!(e, Edited::Unchanged);
    assert_eq!(std::fs::read_to_string(&nodes).expect("read"), expected);
}

#[test]
fn an_edit_the_manifest_rejects_writes_nothing() {
    let dir = example_fleet();
    let nodes = dir.path().join("nodes.yml");
    let before = std::fs::read(&nodes).expect("read");
    // worker-02's address: duplicate addresses are invalid.
    let err = edit::set_tailscale_ip(dir.path(), "worker-01", "100.64.0.3".parse().unwrap())
        .expect_err("duplicate address");
    assert!(matches!(err, EditError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    // A key the manifest does not accept (ECDSA).
    let (ecdsa, _) = keygen(dir.path(), "ecdsa");
    let err = edit::set_host_key(dir.path(), "worker-01", &ecdsa).expect_err("ecdsa refused");
    assert!(matches!(err, EditError::Invalid { .. }), "{err}");
    let err = edit::set_host_key(dir.path(), "nope", "ssh-ed25519 AAAA").expect_err("no node");
    assert!(err.to_string().contains("no node named `nope`"), "{err}");
    assert_eq!(std::fs::read(&nodes).expect("read"), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".fleetnix-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn fingerprints_match_ssh_keygen() {
    let dir = tempfile::tempdir().expect("dir");
    for kind in ["ed25519", "rsa", "ecdsa"] {
        let (public, fp) = keygen(dir.path(), kind);
        assert_eq!(
            Fingerprint::of_key(&public).map(|f| f.to_string()),
            Some(fp.clone()),
            "{kind}"
        );
        assert_eq!(fp.parse::<Fingerprint>().expect("parses").to_string(), fp);
        let scanned = parse_keyscan(&format!("203.0.113.7 {public}\n"));
        assert_eq!(scanned.len(), 1);
        assert_eq!(scanned[0].fingerprint.to_string(), fp);
        assert_eq!(scanned[0].recordable(), kind != "ecdsa");
    }
}
