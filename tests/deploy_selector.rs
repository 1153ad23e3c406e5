//! Target selection on the example fleet: names, @role, --all; matching nothing is an error.

mod common;

use common::example_fleet;
use fleetnix::deploy::selector::{Selector, SelectorError, Target};

fn names(targets: &[&str], all: bool) -> Result<Vec<String>, SelectorError> {
    let f = example_fleet();
    let s = Selector::parse(targets, all)?;
    Ok(s.select(&f)?.iter().map(|n| n.name.to_string()).collect())
}

#[test]
fn targets_parse_into_their_kinds() {
    assert_eq!("worker-01".parse(), Ok(Target::Node("worker-01".into())));
    assert_eq!("@glm-worker".parse(), Ok(Target::Role("glm-worker".into())));
    assert_eq!("--all".parse(), Ok(Target::All));
    for bad in ["@", "Worker", "a b", "@x;y", "-x", ""] {
        assert!(
            matches!(bad.parse::<Target>(), Err(SelectorError::Invalid { .. })),
            "{bad:?} should be invalid"
        );
    }
}

#[test]
fn selection_is_ored_deduplicated_and_in_name_order() {
    assert_eq!(names(&["worker-01"], false).unwrap(), ["worker-01"]);
    assert_eq!(
        names(&["@glm-worker"], false).unwrap(),
        ["worker-01", "worker-02"]
    );
    assert_eq!(
        names(&["@mnemopi-replica", "worker-01"], false).unwrap(),
        ["worker-01", "worker-02"]
    );
    assert_eq!(
        names(&["worker-02", "@glm-worker"], false).unwrap(),
        ["worker-01", "worker-02"]
    );
    assert_eq!(
        names(&[], true).unwrap(),
        ["control-01", "worker-01", "worker-02"]
    );
    assert_eq!(names(&["@control-plane"], false).unwrap(), ["control-01"]);
}

#[test]
fn matching_nothing_is_an_error() {
    assert_eq!(names(&[], false), Err(SelectorError::Empty));
    match names(&["worker-1"], false) {
        Err(SelectorError::UnknownNode {
            name, suggestion, ..
        }) => {
            assert_eq!(name, "worker-1");
            assert_eq!(suggestion.as_deref(), Some("worker-01"));
        }
        other => panic!("expected an unknown node, got {other:?}"),
    }
    // One bad target spoils the selection even when others match.
    assert!(matches!(
        names(&["worker-01", "@gpu"], false),
        Err(SelectorError::NoNodeWithRole { role, .. }) if role == "gpu"
    ));
    // A role in the catalog that no node has is still "matches nothing".
    let e = names(&["@nonexistent-role"], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matches no node") && e.contains("glm-worker"),
        "{e}"
    );
}
