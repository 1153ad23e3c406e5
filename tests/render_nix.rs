//! Rendered node modules against real Nix: every `.nix` file parses with
//! `nix-instantiate --parse` (and rnix agrees), a snapshot of a rendered module for review, and
//! Nix string escaping round-trips through Nix. Whether NixOS accepts the modules is decided by
//! evaluating complete systems: `tests/nixos_eval.rs`.

mod common;

use common::{example_fleet, nix_instantiate, repo};
use fleetnix::{nix, outputs, spec};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Renders the example fleet into a temp root; returns the node modules' paths.
fn rendered_example() -> (tempfile::TempDir, Vec<PathBuf>) {
    let fleet = example_fleet();
    let files = outputs::render_fleet(
        &fleet,
        &spec::node_specs(&fleet),
        "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let changes = outputs::compare(dir.path(), &files).unwrap();
    outputs::apply(dir.path(), &files, &changes).unwrap();
    assert!(files.contains_key(Path::new("nix/services/nats.nix")));
    let paths = files
        .keys()
        .filter(|p| p.starts_with("nix/nodes"))
        .map(|p| dir.path().join(p))
        .collect();
    (dir, paths)
}

#[test]
fn every_nix_file_in_the_repo_parses_with_nix() {
    let Some(bin) = nix_instantiate() else { return };
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() && !name.starts_with('.') && name != "target" {
                walk(&p, out);
            } else if name.ends_with(".nix") {
                out.push(p);
            }
        }
    }
    walk(&repo(), &mut files);
    let (_dir, rendered) = rendered_example();
    files.extend(rendered);
    assert!(files.iter().any(|f| f.ends_with("flake.nix")));
    assert!(files.iter().any(|f| f.ends_with("omp-agent.nix")));
    for f in &files {
        let out = Command::new(&bin).arg("--parse").arg(f).output().unwrap();
        assert!(
            out.status.success(),
            "{} does not parse: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // rnix agrees with Nix.
        nix::check_syntax(&std::fs::read_to_string(f).unwrap()).unwrap();
    }
}

/// A node unlike the example's: IPv6 address, its own state version, a UDP service, two tags,
/// `os: auto`. Its rendered module is kept in `tests/fixtures/snapshots/` for review (set
/// `FLEETNIX_UPDATE_SNAPSHOTS=1` to rewrite it); whether NixOS accepts it is decided by
/// evaluation (`tests/nixos_eval.rs`).
#[test]
fn rendered_module_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let fleet_dir = dir.path().join("fleet");
    common::copy_example_fleet(&fleet_dir);
    let mut nodes = std::fs::read_to_string(fleet_dir.join("nodes.yml")).unwrap();
    nodes.push_str(
        "  - name: edge-7\n    tailscale_ip: \"fd7a:115c:a1e0::7\"\n    os: auto\n    roles: [glm-worker, dns, control-plane]\n    resources: { cpu: 2, ram_gb: 4 }\n    state_version: \"24.05\"\n",
    );
    std::fs::write(fleet_dir.join("nodes.yml"), nodes).unwrap();
    let services = std::fs::read_to_string(fleet_dir.join("services.yml"))
        .unwrap()
        .replace(
            "  glm-worker:\n",
            "  dns:\n    tag: tag:dns\n  glm-worker:\n",
        )
        + "  - { name: dns, port: 53, protocol: udp, role: dns, allow: [tag:worker] }\n";
    std::fs::write(fleet_dir.join("services.yml"), services).unwrap();
    let fleet = fleetnix::manifest::load(&fleet_dir).unwrap();
    let node = fleet.node("edge-7").unwrap();
    let text = outputs::render_node(
        &outputs::engine().unwrap(),
        &spec::node_spec(&fleet, node),
        "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml",
    )
    .unwrap();
    let snapshot = repo().join("tests/fixtures/snapshots/edge-7.nix");
    if std::env::var_os("FLEETNIX_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
        std::fs::write(&snapshot, &text).unwrap();
    }
    let want = std::fs::read_to_string(&snapshot).unwrap_or_default();
    assert!(
        text == want,
        "{} differs from the rendered module (FLEETNIX_UPDATE_SNAPSHOTS=1 rewrites it):\n{}",
        snapshot.display(),
        similar::TextDiff::from_lines(&want, &text).unified_diff()
    );
}

#[test]
fn nix_string_escaping_round_trips_through_real_nix() {
    let Some(bin) = nix_instantiate() else { return };
    let nasty = [
        "plain",
        "quote\" and backslash \\",
        "${builtins.currentTime}",
        "$${x}",
        "dollar at end $",
        "''${antiquote}''",
        "newline\nand\ttab\r",
        "unicode ✓ é",
        "\\${x}",
    ];
    let list =
        serde_json::Value::Array(nasty.iter().map(|s| Value::String(s.to_string())).collect());
    let expr = nix::literal(&list);
    let out = Command::new(&bin)
        .args(["--eval", "--strict", "--json", "-E"])
        .arg(&expr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back, nasty);
}

/// Issue 23: a fleet that enrols with OAuth client secrets (`tailscale_auth: oauth-client`)
/// renders each node exactly as the default does plus `authKeyParameters` (never ephemeral,
/// pre-authorised); kept in `tests/fixtures/snapshots/worker-01-oauth-client.nix`.
#[test]
fn oauth_client_fleet_module_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let fleet_dir = dir.path().join("fleet");
    common::copy_example_fleet(&fleet_dir);
    let default = fleetnix::manifest::load(&fleet_dir).unwrap();
    let yml = std::fs::read_to_string(fleet_dir.join("fleet.yml")).unwrap();
    std::fs::write(
        fleet_dir.join("fleet.yml"),
        format!("{yml}tailscale_auth: oauth-client\n"),
    )
    .unwrap();
    let fleet = fleetnix::manifest::load(&fleet_dir).unwrap();
    let render = |f: &fleetnix::model::Fleet| {
        outputs::render_node(
            &outputs::engine().unwrap(),
            &spec::node_spec(f, f.node("worker-01").unwrap()),
            "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml",
        )
        .unwrap()
    };
    let text = render(&fleet);
    let added: Vec<String> = similar::TextDiff::from_lines(&render(&default), &text)
        .iter_all_changes()
        .filter(|c| c.tag() != similar::ChangeTag::Equal)
        .map(|c| format!("{}{}", c.tag(), c.value()))
        .collect();
    assert_eq!(
        added,
        [
            "+    # The secret is an OAuth client secret (tailscale_auth: oauth-client): enrol as a permanent,\n",
            "+    # pre-authorised node (the default would be ephemeral), tagged by --advertise-tags.\n",
            "+    authKeyParameters = { ephemeral = false; preauthorized = true; };\n",
        ]
    );
    let snapshot = repo().join("tests/fixtures/snapshots/worker-01-oauth-client.nix");
    if std::env::var_os("FLEETNIX_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, &text).unwrap();
    }
    let want = std::fs::read_to_string(&snapshot).unwrap_or_default();
    assert!(
        text == want,
        "{} differs from the rendered module (FLEETNIX_UPDATE_SNAPSHOTS=1 rewrites it):\n{}",
        snapshot.display(),
        similar::TextDiff::from_lines(&want, &text).unified_diff()
    );
}
