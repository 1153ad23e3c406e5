//! Input a new user might write: files starting with a UTF-8 byte order mark (what several
//! editors write) are read, and a huge line with several errors reports briefly, each problem
//! with its file, line and column (issue 21 finding 10).

mod common;

use common::{copy_example_fleet, example_fleet_dir, fleetnix_bin, repo, Ran};
use std::path::Path;
use std::process::Command;

/// `fleetnix ARGS` on the repository with the fleet files of `d/fleet` (read-only commands).
fn fleetnix(d: &Path, args: &[&str]) -> Ran {
    Ran::of(
        Command::new(fleetnix_bin())
            .arg("--root")
            .arg(repo())
            .arg("--fleet-dir")
            .arg(d.join("fleet"))
            .args(args),
    )
}

fn prepend_bom(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read");
    std::fs::write(path, format!("\u{feff}{text}")).expect("write");
}

#[test]
fn a_byte_order_mark_is_accepted_in_every_yaml_and_hujson_input() {
    let d = tempfile::tempdir().expect("tmp");
    let fleet = d.path().join("fleet");
    copy_example_fleet(&fleet);
    std::fs::copy(
        example_fleet_dir().join("acl-policy.hujson"),
        fleet.join("acl-policy.hujson"),
    )
    .expect("policy");
    let plain = fleetnix(d.path(), &["acl", "check"]);
    for f in [
        "nodes.yml",
        "fleet.yml",
        "services.yml",
        "acl-policy.hujson",
    ] {
        prepend_bom(&fleet.join(f));
    }
    let r = fleetnix(d.path(), &["validate"]);
    assert_eq!(r.code, Some(0), "{r}");
    let r = fleetnix(d.path(), &["acl", "check"]);
    assert_eq!(
        (r.code, &r.stdout),
        (plain.code, &plain.stdout),
        "the policy with a BOM checks as without: {r}"
    );
    assert!(!r.stdout.is_empty() || !r.stderr.contains("error"), "{r}");
}

#[test]
fn a_problem_after_a_byte_order_mark_keeps_its_line_and_column() {
    let d = tempfile::tempdir().expect("tmp");
    let fleet = d.path().join("fleet");
    copy_example_fleet(&fleet);
    let nodes = fleet.join("nodes.yml");
    let text = std::fs::read_to_string(&nodes).expect("nodes");
    let text = text.replacen("tailscale_ip: 100.64.0.2", "tailscale_ip: 100.64.0.x2", 1);
    let line = text
        .lines()
        .position(|l| l.contains("100.64.0.x2"))
        .expect("line")
        + 1;
    std::fs::write(&nodes, format!("\u{feff}{text}")).expect("write");
    let r = fleetnix(d.path(), &["validate"]);
    assert_ne!(r.code, Some(0), "{r}");
    let want = format!("nodes.yml:{line}:19: nodes[1].tailscale_ip");
    assert!(r.stderr.contains(&want), "want {want}: {r}");
    // The snippet's header agrees.
    assert!(r.stderr.contains(&format!("nodes.yml:{line}:19]")), "{r}");
}

#[test]
fn a_megabyte_line_with_four_errors_reports_briefly() {
    let d = tempfile::tempdir().expect("tmp");
    let fleet = d.path().join("fleet");
    copy_example_fleet(&fleet);
    let nodes = fleet.join("nodes.yml");
    let mut text = std::fs::read_to_string(&nodes).expect("nodes");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let line_no = text.lines().count() + 1;
    let pad = "x".repeat(1 << 20);
    let prefix = "  - {name: w3, tailscale_ip: 100.64.0.99, roles: [glm-worker], resources: {cpu: 2, ram_gb: 4}, ";
    let long = format!("{prefix}bogus1: \"{pad}\", bogus2: 2, os: windows, ssh_user: \"a b\"}}");
    text.push_str(&long);
    text.push('\n');
    std::fs::write(&nodes, &text).expect("write");
    let r = fleetnix(d.path(), &["validate"]);
    assert_ne!(r.code, Some(0), "{r}");
    let out = format!("{}{}", r.stdout, r.stderr);
    // Before: each diagnostic printed the whole line (4 MB here; with a line this long miette
    // even panicked). Now a few hundred characters each.
    assert!(
        out.len() < 16 * 1024,
        "{} bytes of output for 4 problems",
        out.len()
    );
    let col = |needle: &str| long.find(needle).expect("needle") + 1;
    for (field, c) in [
        ("bogus1", col("bogus1")),
        ("bogus2", col("bogus2")),
        ("os", col("windows")),
        ("ssh_user", col("\"a b\"")),
    ] {
        let want = format!("nodes.yml:{line_no}:{c}: nodes[3].{field}");
        assert!(out.contains(&want), "want {want}:\n{out}");
    }
    assert!(out.contains("4 problem(s)"), "{out}");
    assert!(
        out.contains("os: windows"),
        "the span's context is shown: {out}"
    );
}
