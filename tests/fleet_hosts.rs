//! What a NixOS node needs beyond the manifest, on the example and on broken copies of it: the
//! committed demo host keys open the committed secrets (kept current), every NixOS node has a
//! hardware configuration and a state version, and `validate` names what is missing (file, line,
//! node, field, the fix) without writing anything.

mod common;

use common::{copy_example_fleet, fleetnix_bin, repo, snapshot, Ran};
use fleetnix::model::NodeName;
use fleetnix::secrets::{SecretId, SecretKind};
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::process::Command;

const NODES: [&str; 3] = ["control-01", "worker-01", "worker-02"];

fn fleetnix(root: &Path, args: &[&str]) -> Ran {
    Ran::of(
        Command::new(fleetnix_bin())
            .arg("--root")
            .arg(root)
            .args(args)
            .env_remove("FLEETNIX_FLEET_DIR")
            .env_remove("FLEETNIX_ROOT"),
    )
}

fn demo_key(node: &str) -> PathBuf {
    repo().join("tests/fixtures/demo-host-keys").join(node)
}

#[test]
fn the_example_secrets_are_current_and_open_with_the_demo_host_keys() {
    let ran = fleetnix(&repo(), &["secrets", "list", "--json"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&ran.stdout).unwrap();
    // Every secret the manifest wants (each node's auth key and NATS password, the control
    // plane's server environment, …), and nothing else.
    let wanted = fleetnix::secrets::wanted(&common::example_fleet());
    assert!(wanted.len() >= 7, "{wanted:?}");
    assert_eq!(list.len(), wanted.len(), "{ran}");
    for s in &list {
        assert_eq!(
            s["state"], "up-to-date",
            "{s}: regenerate secrets/ as the README says (secrets set-authkey --all, set-nats)"
        );
    }
    for node in NODES {
        // The demo key's comment says what it is.
        let public = std::fs::read_to_string(demo_key(node).with_extension("pub")).unwrap();
        assert!(public
            .trim()
            .ends_with(&format!("demo-only-do-not-use-{node}")));
        let name = NodeName::parse(node).unwrap();
        let key = fleetnix::secrets::decrypt_authkey(&repo(), &name, &demo_key(node)).unwrap();
        assert_eq!(key.expose_secret(), common::demo_authkey());
        let id = SecretId::new(name.clone(), SecretKind::NatsPassword);
        let password = fleetnix::secrets::decrypt_secret(&repo(), &id, &demo_key(node)).unwrap();
        assert!(password.len() >= 16, "{node}'s NATS password is too short");
        // A node's key opens only its own secrets.
        let other = NodeName::parse(if node == "worker-01" {
            "worker-02"
        } else {
            "worker-01"
        })
        .unwrap();
        assert!(fleetnix::secrets::decrypt_authkey(&repo(), &other, &demo_key(node)).is_err());
    }
    let env = SecretId::new(
        NodeName::parse("control-01").unwrap(),
        SecretKind::NatsServerEnv,
    );
    let text = fleetnix::secrets::decrypt_secret(&repo(), &env, &demo_key("control-01")).unwrap();
    let text = String::from_utf8_lossy(&text);
    for var in [
        "NATS_PASSWORD_CONTROL_01=",
        "NATS_PASSWORD_WORKER_01=",
        "NATS_PASSWORD_WORKER_02=",
    ] {
        assert!(text.contains(var), "server environment lacks {var}");
    }
}

#[test]
fn every_example_nixos_node_has_a_hardware_configuration_and_a_state_version() {
    let fleet = common::example_fleet();
    assert!(fleetnix::manifest::hosts::check(&repo(), &fleet).is_empty());
    for n in &fleet.nodes {
        assert!(repo()
            .join(fleetnix::manifest::hosts::hardware_path(&n.name))
            .is_file());
        assert_eq!(fleet.state_version_of(n).unwrap().as_str(), "25.11");
    }
}

/// A temp root with a copy of the example fleet and, for `with_hosts`, its hosts/ files.
fn root_copy(with_hosts: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_example_fleet(&dir.path().join("fleet"));
    for node in with_hosts {
        let rel = Path::new("hosts")
            .join(node)
            .join("hardware-configuration.nix");
        std::fs::create_dir_all(dir.path().join(&rel).parent().unwrap()).unwrap();
        std::fs::copy(repo().join(&rel), dir.path().join(&rel)).unwrap();
    }
    dir
}

/// How many `error:` lines (one per problem; the snippets below repeat the message) contain `what`.
fn error_lines(ran: &Ran, what: &str) -> usize {
    ran.stderr
        .lines()
        .filter(|l| l.starts_with("error: ") && l.contains(what))
        .count()
}

/// The line (1-based) of `needle` in the file.
fn line_of(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {}", path.display()))
        + 1
}

#[test]
fn a_nixos_node_without_hardware_configuration_fails_validate_with_the_command_that_fixes_it() {
    let root = root_copy(&["control-01", "worker-02"]);
    let before = snapshot(root.path());
    let ran = fleetnix(root.path(), &["validate"]);
    assert_eq!(ran.code, Some(1), "{ran}");
    let nodes_yml = root.path().join("fleet/nodes.yml");
    let line = line_of(&nodes_yml, "- name: worker-01");
    let head = format!(
        "error: {}:{line}:11: nodes[1].os (node worker-01): hosts/worker-01/hardware-configuration.nix does not exist",
        nodes_yml.display()
    );
    assert!(ran.stderr.contains(&head), "{ran}");
    assert!(
        ran.stderr.contains(
            "run `ssh root@worker-01 nixos-generate-config --show-hardware-config > hosts/worker-01/hardware-configuration.nix`"
        ),
        "{ran}"
    );
    assert!(ran.stderr.contains("fleetnix bootstrap worker-01"), "{ran}");
    // Only worker-01 lacks one.
    assert_eq!(error_lines(&ran, "does not exist"), 1, "{ran}");
    assert!(ran.stderr.contains("1 problem(s)"), "{ran}");
    assert_eq!(before, snapshot(root.path()), "validate wrote something");

    // A node that is not NixOS needs none.
    let text = std::fs::read_to_string(&nodes_yml).unwrap().replace(
        "    tailscale_ip: 100.64.0.2\n",
        "    tailscale_ip: 100.64.0.2\n    os: linux\n",
    );
    std::fs::write(&nodes_yml, text).unwrap();
    let ran = fleetnix(root.path(), &["validate"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    // And gets no NixOS module (so the flake has no system for it).
    let ran = fleetnix(root.path(), &["render"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(!root.path().join("nix/nodes/worker-01.nix").exists());
    assert!(root.path().join("nix/nodes/worker-02.nix").is_file());
}

#[test]
fn an_invalid_state_version_is_a_clear_error_and_nothing_is_written() {
    for (file, from, to, field, node) in [
        (
            "fleet.yml",
            "state_version: \"25.11\"",
            "state_version: \"25.13\"",
            "state_version",
            None,
        ),
        (
            "fleet.yml",
            "state_version: \"25.11\"",
            "state_version: \"2511\"",
            "state_version",
            None,
        ),
        (
            "fleet.yml",
            "state_version: \"25.11\"",
            "state_version: unstable",
            "state_version",
            None,
        ),
        (
            "nodes.yml",
            "    tailscale_ip: 100.64.0.3\n",
            "    tailscale_ip: 100.64.0.3\n    state_version: \"24.5\"\n",
            "nodes[2].state_version",
            Some("worker-02"),
        ),
    ] {
        let root = root_copy(&NODES);
        let path = root.path().join("fleet").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from));
        std::fs::write(&path, text.replace(from, to)).unwrap();
        let line = line_of(&path, "state_version:");
        let before = snapshot(root.path());
        for cmd in [&["validate"][..], &["render"]] {
            let ran = fleetnix(root.path(), cmd);
            assert_eq!(ran.code, Some(1), "{to}: {ran}");
            let node = node.map(|n| format!(" (node {n})")).unwrap_or_default();
            let head = format!("error: {}:{line}:", path.display());
            let at = ran
                .stderr
                .find(&head)
                .unwrap_or_else(|| panic!("{to}: no `{head}`: {ran}"));
            let rest = &ran.stderr[at..];
            assert!(rest.contains(&format!(": {field}{node}: ")), "{to}: {ran}");
            assert!(rest.contains("is invalid"), "{to}: {ran}");
            assert!(rest.contains("\"YY.MM\" like \"25.11\""), "{to}: {ran}");
            assert!(ran.stderr.contains("nothing was written"), "{ran}");
            assert_eq!(before, snapshot(root.path()), "{cmd:?} wrote something");
        }
    }
}

#[test]
fn a_nixos_node_without_a_state_version_fails_validate() {
    let root = root_copy(&NODES);
    let path = root.path().join("fleet/fleet.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("state_version: \"25.11\"\n", "")).unwrap();
    // worker-01 has its own.
    let nodes = root.path().join("fleet/nodes.yml");
    let text = std::fs::read_to_string(&nodes).unwrap().replace(
        "    tailscale_ip: 100.64.0.2\n",
        "    tailscale_ip: 100.64.0.2\n    state_version: \"24.11\"\n",
    );
    std::fs::write(&nodes, text).unwrap();
    let ran = fleetnix(root.path(), &["validate"]);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert_eq!(error_lines(&ran, "no state_version"), 2, "{ran}");
    for (i, n) in [(0, "control-01"), (2, "worker-02")] {
        let line = line_of(&nodes, &format!("- name: {n}"));
        assert!(
            ran.stderr.contains(&format!(
                "{}:{line}:11: nodes[{i}].state_version (node {n}): no state_version",
                nodes.display()
            )),
            "{ran}"
        );
    }
    assert!(
        ran.stderr
            .contains("expected `state_version: \"YY.MM\"` in"),
        "{ran}"
    );
}
