//! Regression tests for what fuzzing found (docs/fuzzing.md), each named after what it was and
//! written before its fix. The inputs are the fuzzers' own, minimised by hand.

mod common;

use fleetnix::manifest::{self, FleetTexts, ManifestError};
use fleetnix::model::SourceFiles;
use std::path::PathBuf;

fn example(name: &str) -> String {
    std::fs::read_to_string(common::example_fleet_dir().join(name)).unwrap()
}

fn texts(nodes: &str) -> FleetTexts {
    FleetTexts {
        paths: SourceFiles {
            nodes: PathBuf::from("fleet/nodes.yml"),
            fleet: PathBuf::from("fleet/fleet.yml"),
            services: PathBuf::from("fleet/services.yml"),
        },
        nodes: nodes.to_string(),
        fleet: example("fleet.yml"),
        services: example("services.yml"),
    }
}

fn problems(nodes: &str) -> Vec<manifest::Problem> {
    match manifest::parse(&texts(nodes)) {
        Err(ManifestError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

/// fuzz/manifest: a nodes.yml holding only comments (or nothing) was reported at line 0,
/// column 0 (`fleet/nodes.yml:0:0: …`); lines and columns are 1-based.
#[test]
fn empty_or_comment_only_file_is_reported_at_line_1_column_1() {
    for text in ["", "# only a comment\n", "\n\n"] {
        for p in problems(text) {
            assert!(p.line >= 1 && p.col >= 1, "{text:?}: {p}");
            assert!(
                p.to_string().starts_with("fleet/nodes.yml:1:1: "),
                "{text:?}: {p}"
            );
        }
    }
}

/// fuzz/manifest: `nodes: []` was reported at line 0, column 0.
#[test]
fn an_empty_node_list_is_reported_at_a_real_line() {
    for p in problems("nodes: []\n") {
        assert!(p.line >= 1 && p.col >= 1, "{p}");
    }
}

/// fuzz/edit: a NUL byte in nodes.yml silently ended the file for the YAML reader: `validate`
/// said "ok: 1 nodes" for a file of three, with the rest hidden after the NUL (and the editor's
/// line numbers no longer matched the text). Characters YAML does not allow in a stream (C0
/// and C1 controls but tab, LF, CR and NEL; DEL; U+FFFE/U+FFFF) are refused, naming where.
#[test]
fn a_nul_byte_does_not_hide_the_rest_of_the_file() {
    let nodes = example("nodes.yml").replacen("ram_gb: 16", "ram_gb: 1\u{0}6", 1);
    let line = nodes[..nodes.find('\u{0}').unwrap()].matches('\n').count() + 1;
    let ps = problems(&nodes);
    assert!(
        ps.iter().any(|p| p.line == line
            && p.message.contains("U+0000")
            && p.to_string()
                .starts_with(&format!("fleet/nodes.yml:{line}:"))),
        "{ps:?}"
    );
    for bad in ['\u{1}', '\u{1b}', '\u{7f}', '\u{9b}', '\u{fffe}'] {
        let text = example("nodes.yml").replacen("worker-02", &format!("worker{bad}02"), 1);
        assert!(!problems(&text).is_empty(), "{bad:?}");
    }
    // What YAML allows stays allowed: tab, CRLF line ends, NEL and other text in comments.
    let fine = example("nodes.yml").replace('\n', "\r\n").replacen(
        "# fleet",
        "#\tfleet \u{85} é \u{feff}",
        1,
    );
    assert!(manifest::parse(&texts(&fine)).is_ok());
}

/// fuzz/edit: the editor, given such a file, must refuse rather than edit what it cannot see.
#[test]
fn the_editor_refuses_a_file_with_a_nul_byte() {
    let nodes = example("nodes.yml").replacen("ram_gb: 16", "ram_gb: 1\u{0}6", 1);
    let r = manifest::edit::set_node_field(
        &nodes,
        "control-01",
        "ssh_user",
        &manifest::edit::Scalar::Quoted("deploy".into()),
    );
    assert!(r.is_err(), "{r:?}");
}

/// AFL++ on fuzz/edit: a bare carriage return (a CR not followed by LF) is a line break to YAML
/// but not to the editor's line count, so `host_key` was inserted one line off (into the wrong
/// place; the validation after the edit refused it). The editor refuses such a file, naming the
/// line.
#[test]
fn the_editor_refuses_a_bare_carriage_return() {
    let nodes = example("nodes.yml").replacen("\nnodes:", "\rnodes:", 1);
    assert!(manifest::parse(&texts(&nodes)).is_ok(), "valid YAML");
    let r = manifest::edit::set_node_field(
        &nodes,
        "control-01",
        "host_key",
        &manifest::edit::Scalar::Quoted("ssh-ed25519 AAAA".into()),
    );
    let e = r.expect_err("a bare CR must be refused");
    assert!(e.0.contains("carriage return"), "{e}");
    // CRLF files stay editable.
    let crlf = example("nodes.yml").replace('\n', "\r\n");
    assert!(manifest::edit::set_node_field(
        &crlf,
        "control-01",
        "ssh_user",
        &manifest::edit::Scalar::Quoted("deploy".into()),
    )
    .is_ok());
}
