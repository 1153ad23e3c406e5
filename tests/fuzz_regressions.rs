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
