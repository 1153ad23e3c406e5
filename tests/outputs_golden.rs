//! Golden files for every rendered output: the per-node NixOS modules and `nats.nix` (the
//! committed files under `nix/`), `secrets/secrets.nix`, the ACL policy (`fleet/acl-policy.hujson`), cloud-init user-data and
//! the agent's systemd unit. Byte comparison against committed files, so a refactor of the
//! renderers cannot change a byte unnoticed. `FLEETNIX_UPDATE_SNAPSHOTS=1` rewrites the fixtures
//! under `tests/fixtures/golden/` (never the committed fleet files).

mod common;

use common::{example_fleet, repo};
use fleetnix::outputs::{self, agent};
use fleetnix::spec;

const SOURCES: &str = "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml";
/// Stands for the auth key in the cloud-init golden files (the key is built at run time).
const KEY_PLACEHOLDER: &str = "@AUTHKEY@";

/// `text` must equal the file `rel` (relative to the repository root) byte for byte.
fn golden(rel: &str, text: &str, rewritable: bool) {
    let path = repo().join(rel);
    if rewritable && std::env::var_os("FLEETNIX_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (FLEETNIX_UPDATE_SNAPSHOTS=1 writes it)",
            path.display()
        )
    });
    assert!(
        text == want,
        "{} differs from the rendered output:\n{}",
        path.display(),
        similar::TextDiff::from_lines(want.as_str(), text).unified_diff()
    );
}

#[test]
fn node_modules_and_nats_module_equal_the_committed_files() {
    let fleet = example_fleet();
    let files = outputs::render_fleet(&fleet, &spec::node_specs(&fleet), SOURCES).unwrap();
    let names: Vec<String> = files.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(
        names,
        [
            "nix/nodes/control-01.nix",
            "nix/nodes/worker-01.nix",
            "nix/nodes/worker-02.nix",
            "nix/services/nats.nix",
        ]
    );
    for (rel, text) in &files {
        golden(&rel.display().to_string(), text, false);
    }
}

#[test]
fn secrets_nix_equals_the_committed_file() {
    let text = fleetnix::secrets::secrets_nix::render_secrets_nix(&example_fleet()).unwrap();
    golden("secrets/secrets.nix", &text, false);
}

#[test]
fn cloud_init_user_data_equals_its_golden_files() {
    let fleet = example_fleet();
    // Built at run time: no key-shaped literal in the repository.
    let key = format!("tskey-auth-{}-{}", "kGOLDEN1", "FAKEFAKEFAKE");
    let auth = fleetnix::outputs::cloudinit::AuthKey::parse(&key).unwrap();
    for (node, with_agent) in [("worker-01", false), ("control-01", true)] {
        let n = fleet.node(node).unwrap();
        let opts = outputs::cloudinit::Options {
            with_agent,
            ..Default::default()
        };
        let text =
            outputs::cloudinit::user_data(&spec::node_spec(&fleet, n), &auth, &opts).unwrap();
        assert_eq!(text.matches(&key).count(), 1);
        golden(
            &format!("tests/fixtures/golden/cloud-init-{node}.yaml"),
            &text.replace(&key, KEY_PLACEHOLDER),
            true,
        );
    }
}

#[test]
fn agent_unit_equals_its_golden_file() {
    let fleet = example_fleet();
    let n = fleet.node("worker-02").unwrap();
    let text = agent::unit(
        &spec::node_spec(&fleet, n),
        agent::DEFAULT_AGENT_BIN,
        "fleetnix deploy",
    )
    .unwrap();
    golden(
        "tests/fixtures/golden/omp-agent-worker-02.service",
        &text,
        true,
    );
}

#[test]
fn acl_policy_equals_the_committed_file() {
    // fleet/acl-policy.hujson is what `fleetnix acl render` writes for the example fleet.
    let text = fleetnix::acl::render::render(&example_fleet(), SOURCES).text;
    golden("fleet/acl-policy.hujson", &text, false);
}
