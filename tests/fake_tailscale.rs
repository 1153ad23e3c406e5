//! The shared fake `tailscale` (tests/fakes/tailscale) and fixture copy against the reference
//! (`shared/reference/tailscale-cli.md`): the other tests are only as good as these.

mod common;

use common::{fake_tailscale, status_fixture, status_fixture_text};
use std::path::Path;
use std::process::{Command, Output};

/// SHA-256 of `shared/reference/fixtures/tailscale-status.json`, recorded when it was copied
/// into `tests/fixtures/` (tests read nothing outside the repository).
const REFERENCE_SHA256: &str = "954cb85c99d6c8389692fbed75b8a4afd122c2c656c0efeedc95d66d0069f1d4";

#[test]
fn the_fixture_copy_is_the_reference_one() {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(std::fs::read(status_fixture()).unwrap());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex, REFERENCE_SHA256,
        "tests/fixtures/tailscale-status.json is no longer the reference's verbatim copy"
    );
    // And it is what the status parser reads.
    fleetnix::tailscale::TailscaleStatus::parse(&status_fixture_text()).unwrap();
}

/// The fake with only `env` (no variable of the test process leaks in).
fn fake(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(fake_tailscale());
    c.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("fake tailscale runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_prints_the_file_byte_for_byte_or_fails_like_without_tailscaled() {
    let fixture = status_fixture();
    let out = fake(
        &["status", "--json"],
        &[("FAKE_TAILSCALE_STATUS", &fixture)],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, std::fs::read(&fixture).unwrap());

    // The table: not faked for a running backend, but never a success.
    let out = fake(&["status"], &[("FAKE_TAILSCALE_STATUS", &fixture)]);
    assert_eq!(out.status.code(), Some(1));

    for env in [
        vec![],
        vec![(
            "FAKE_TAILSCALE_STATUS",
            Path::new("/nonexistent/status.json"),
        )],
    ] {
        for args in [&["status", "--json"][..], &["status"]] {
            let out = fake(args, &env);
            assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}");
            assert!(
                text(&out.stderr).contains("doesn't appear to be running"),
                "{}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn up_records_its_flags_and_status_then_reports_the_node() {
    let d = tempfile::tempdir().unwrap();
    let host = [("FAKE_HOST_DIR", d.path())];
    let json = |out: Output| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(!out.stdout.ends_with(b"\n"), "no trailing newline");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Before `up`: logged out; `status --json` still exits 0, the table exits 1.
    let before = json(fake(&["status", "--json"], &host));
    assert_eq!(before["BackendState"], "NeedsLogin");
    let out = fake(&["status"], &host);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(1), "Logged out.\n".into())
    );

    // A missing auth key file is an error (no "if it exists" fallback).
    let missing = d.path().join("missing");
    let arg = format!("--auth-key=file:{}", missing.display());
    let out = fake(&["up", &arg, "--hostname=n1"], &host);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        json(fake(&["status", "--json"], &host))["BackendState"],
        "NeedsLogin"
    );

    let key = d.path().join("key");
    std::fs::write(&key, common::fake_authkey()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let arg = format!("--auth-key=file:{}", key.display());
    let flags = [
        "up",
        &arg,
        "--ssh",
        "--hostname=n1",
        "--advertise-tags=tag:worker,gpu",
    ];
    let out = fake(&flags, &host);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(common::lines(&d.path().join("ts-up.argv")), flags[1..]);
    // Every call is counted, the failed one too.
    assert_eq!(common::lines(&d.path().join("ts-up.calls")).len(), 2);
    let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap();
    assert_eq!(read("ts-key.content"), common::fake_authkey());
    assert_eq!(read("ts-key.mode").trim(), "600");
    assert_eq!(read("ts-key.path").trim(), key.display().to_string());

    let after = json(fake(&["status", "--json"], &host));
    assert_eq!(after["BackendState"], "Running");
    assert_eq!(after["Self"]["HostName"], "n1");
    assert_eq!(
        after["Self"]["Tags"],
        serde_json::json!(["tag:worker", "tag:gpu"])
    );
}

#[test]
fn the_operator_sees_the_node_once_it_joined() {
    let d = tempfile::tempdir().unwrap();
    let (state, ip) = (d.path().join("joined"), d.path().join("ip"));
    std::fs::write(&ip, "100.90.0.42").unwrap();
    let env = [
        ("FAKE_NODE_STATE", state.as_path()),
        ("FAKE_NODE_IP_FILE", &ip),
    ];
    let status = || {
        let out = fake(&["status", "--json"], &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let before = status();
    assert_eq!(before["Self"]["HostName"], "operator");
    assert_eq!(before["Peer"], serde_json::json!({}));
    std::fs::write(
        &state,
        r#"{"BackendState":"Running","Self":{"HostName":"vm-01"}}"#,
    )
    .unwrap();
    let after = status();
    let peer = &after["Peer"]["nodekey:0001"];
    assert_eq!(peer["HostName"], "vm-01");
    assert_eq!(peer["Online"], true);
    assert_eq!(peer["TailscaleIPs"], serde_json::json!(["100.90.0.42"]));
}

#[test]
fn set_records_prefs_and_refuses_up_only_flags() {
    let d = tempfile::tempdir().unwrap();
    let host = [("FAKE_HOST_DIR", d.path())];
    let flags = ["set", "--ssh", "--accept-routes", "--hostname=n1"];
    let out = fake(&flags, &host);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(common::lines(&d.path().join("ts-set.argv")), flags[1..]);
    assert_eq!(common::lines(&d.path().join("ts-set.calls")).len(), 1);
    // `--advertise-tags` and `up`'s login flags are not `set` flags: refused, nothing recorded.
    for bad in [
        "--advertise-tags=tag:worker",
        "--auth-key=file:/nonexistent",
        "--reset",
        "--timeout=5s",
    ] {
        let out = fake(&["set", "--ssh", bad], &host);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(
            text(&out.stderr).contains("flag provided but not defined"),
            "{bad}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(common::lines(&d.path().join("ts-set.calls")).len(), 1);
    assert_eq!(common::lines(&d.path().join("ts-set.argv")), flags[1..]);
    // Without tailscaled (no FAKE_HOST_DIR) it fails.
    let out = fake(&flags, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("doesn't appear to be running"));
}
