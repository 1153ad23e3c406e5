//! `fleetnix::acl::files`, the library behind `fleetnix acl check|matrix|render|diff|set`'s
//! handling of policy files, called directly: which file, which policy, `acl check`'s report
//! (text and JSON) on the example fleet's policy and on the seed's hand-written one.

mod common;

use common::{example_fleet, example_fleet_dir, repo};
use fleetnix::acl::files::{self, FilesError, PolicyText};
use fleetnix::acl::render::render;
use std::path::Path;

const SOURCES: &str = "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml";

#[test]
fn the_committed_policy_agrees_with_the_fleet() {
    let fleet = example_fleet();
    let path = files::policy_path(&example_fleet_dir(), None);
    assert!(
        path.ends_with("fleet/acl-policy.hujson"),
        "{}",
        path.display()
    );
    let report = files::check_file(&fleet, &path).expect("checked");
    assert!(report.ok());
    assert_eq!(
        report.lines(),
        [format!("ok: {} agrees with the fleet", path.display())]
    );
    assert_eq!(report.summary(), None);
    let json = report.json();
    assert_eq!(json["ok"], true);
    assert_eq!(json["policy"], path.display().to_string());
    assert_eq!(json["findings"], serde_json::json!([]));
}

#[test]
fn the_seed_policy_is_reported_line_by_line() {
    let fleet = example_fleet();
    let seed = repo().join("tests/fixtures/seed-acl-policy.hujson");
    let report = files::check_file(&fleet, &seed).expect("checked");
    assert!(!report.ok());
    let n = report.findings.len();
    assert_eq!(
        report.summary(),
        Some(format!("{n} finding(s) in {}", seed.display()))
    );
    let lines = report.lines();
    let hints = report.findings.iter().filter(|f| f.hint.is_some()).count();
    assert_eq!(lines.len(), n + hints);
    let first = &report.findings[0];
    let kind = serde_json::to_value(first.kind).unwrap();
    assert_eq!(
        lines[0],
        format!(
            "{}:{}:{}: {}: {}",
            seed.display(),
            first.line,
            first.column,
            kind.as_str().unwrap(),
            first.message
        )
    );
    assert!(!lines.iter().any(|l| l.starts_with("ok: ")));
    assert!(lines
        .iter()
        .filter(|l| l.starts_with("    hint: "))
        .all(|l| l.len() > "    hint: ".len()));
    let json = report.json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["findings"].as_array().unwrap().len(), n);
}

#[test]
fn a_missing_or_broken_policy_file_is_named() {
    let fleet = example_fleet();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.hujson");
    let e = files::check_file(&fleet, &missing).unwrap_err();
    assert!(matches!(e, FilesError::Missing { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "no policy file {0}: pass one (`fleetnix acl check FILE`) or write the rendered one with `fleetnix acl render -o {0}`",
            missing.display()
        )
    );
    let broken = dir.path().join("broken.hujson");
    std::fs::write(&broken, "{\n  \"acls\": [,\n}").unwrap();
    let e = files::check_file(&fleet, &broken).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: line 2, column ", broken.display())),
        "{e}"
    );
    // matrix names the policy the same way.
    let text = files::policy_text(&fleet, SOURCES, Some(&broken)).unwrap();
    assert_eq!(text.name, broken.display().to_string());
    let e = files::matrix_of(&fleet, &text).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: line 2", broken.display())),
        "{e}"
    );
    let e = files::policy_text(&fleet, SOURCES, Some(&missing)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );
}

#[test]
fn without_a_file_the_rendered_policy_is_used_and_written_as_rendered() {
    let fleet = example_fleet();
    let rendered = render(&fleet, SOURCES).text;
    let PolicyText { text, name } = files::policy_text(&fleet, SOURCES, None).unwrap();
    assert_eq!(name, "rendered from the fleet");
    assert_eq!(text, rendered);
    let m = files::matrix_of(&fleet, &PolicyText { text, name }).unwrap();
    assert!(!m.table().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub/acl-policy.hujson");
    files::write_rendered(&fleet, SOURCES, &out).unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), rendered);
    // A path that cannot be written: the error names it, nothing is left.
    let blocked = Path::new("/proc/fleetnix-no-such-dir/acl-policy.hujson");
    let e = files::write_rendered(&fleet, SOURCES, blocked).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot write /proc/fleetnix-no-such-dir/acl-policy.hujson: "),
        "{e}"
    );
    assert!(!blocked.exists());
}

#[test]
fn the_api_client_needs_a_token() {
    let fleet = example_fleet();
    let dir = tempfile::tempdir().unwrap();
    let e = fleetnix::acl::apply::api_client(&fleet, Some(&dir.path().join("no-token")))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot read the token file "), "{e}");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("tskey-api-{}\n", "FAKE-files-test")).unwrap();
    assert!(fleetnix::acl::apply::api_client(&fleet, Some(&token)).is_ok());
}
