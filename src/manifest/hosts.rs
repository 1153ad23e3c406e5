//! A node's hand-written NixOS files, `hosts/<node>/*.nix`, and the repository-level checks of
//! `fleetnix validate` that need them: every node that may run NixOS has a hardware configuration
//! (`hosts/<node>/hardware-configuration.nix`, what `nixos-generate-config` writes: its root file
//! system and boot loader) and a `state_version`.

use crate::manifest::yaml::{self, Node as Y, Value};
use crate::manifest::{ManifestError, Problem};
use crate::model::{Fleet, Node, NodeName, Os};
use std::path::{Path, PathBuf};

/// Folder of the nodes' hand-written modules, relative to the repository root.
pub const HOSTS_DIR: &str = "hosts";

/// The hardware configuration's file name, as `nixos-generate-config` writes it.
pub const HARDWARE_FILE: &str = "hardware-configuration.nix";

/// `hosts/<node>/hardware-configuration.nix`, relative to the repository root.
pub fn hardware_path(node: &NodeName) -> PathBuf {
    Path::new(HOSTS_DIR).join(node.as_str()).join(HARDWARE_FILE)
}

/// The shell command an operator runs to write a node's hardware configuration.
pub fn generate_command(node: &Node) -> String {
    format!(
        "ssh {}@{} nixos-generate-config --show-hardware-config > {}",
        node.ssh_user,
        node.name,
        hardware_path(&node.name).display()
    )
}

/// Does the node get a NixOS configuration (`os: nixos`, or `os: auto`, which is deployed as
/// NixOS when it runs NixOS)?
pub fn may_run_nixos(node: &Node) -> bool {
    node.os != Os::Linux
}

/// Problems of the repository at `root` with a valid fleet: a node that may run NixOS without a
/// hardware configuration or without a state version. Each names nodes.yml's line of the node.
pub fn check(root: &Path, fleet: &Fleet) -> Vec<Problem> {
    let nodes_yml = &fleet.sources.nodes;
    let text = std::fs::read_to_string(nodes_yml).unwrap_or_default();
    let items = node_items(&text);
    let mut problems = Vec::new();
    for node in fleet.nodes.iter().filter(|n| may_run_nixos(n)) {
        let (index, at) = items
            .iter()
            .find(|(_, name, _)| name == node.name.as_str())
            .map(|(i, _, y)| (*i, Some(y)))
            .unwrap_or((0, None));
        let problem = |field: &str, message: String, expected: String| {
            let (pos, len) = at.map(|y| (y.pos, y.len)).unwrap_or_default();
            Problem::at(nodes_yml, pos, len.max(1), field, message)
                .node(Some(node.name.as_str()))
                .expected(expected)
        };
        let hw = hardware_path(&node.name);
        if !root.join(&hw).is_file() {
            problems.push(problem(
                &format!("nodes[{index}].os"),
                format!(
                    "{} does not exist: a NixOS node needs its hardware configuration (root file system, boot loader){}",
                    hw.display(),
                    if node.os == Os::Auto { " (os: auto is deployed as NixOS when it runs NixOS)" } else { "" }
                ),
                format!(
                    "that file: run `{}` (or `fleetnix bootstrap {}`, which writes it when the VM runs NixOS), or set `os: linux`",
                    generate_command(node),
                    node.name
                ),
            ));
        }
        if fleet.state_version_of(node).is_none() {
            problems.push(problem(
                &format!("nodes[{index}].state_version"),
                "no state_version: NixOS needs system.stateVersion".into(),
                format!(
                    "`state_version: \"YY.MM\"` in {} (the fleet's default) or on the node: the NixOS release it was first installed with, e.g. \"25.11\"; never change it after installation",
                    fleet.sources.fleet.display()
                ),
            ));
        }
    }
    problems
}

/// [`check`] as a manifest error (with the files' texts, for diagnostics with source snippets).
pub fn validate(root: &Path, fleet: &Fleet) -> Result<(), ManifestError> {
    let problems = check(root, fleet);
    if problems.is_empty() {
        return Ok(());
    }
    let sources = [&fleet.sources.nodes, &fleet.sources.fleet]
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap_or_default()))
        .collect();
    Err(ManifestError::Invalid { problems, sources })
}

/// The node entries of a nodes.yml text: (index, name, the YAML node of the name's value).
fn node_items(text: &str) -> Vec<(usize, String, Y)> {
    let Ok(Some(root)) = yaml::parse(text) else {
        return Vec::new();
    };
    let Value::Map(entries) = root.value else {
        return Vec::new();
    };
    let Some(Value::Seq(items)) = entries
        .into_iter()
        .find(|(k, _)| k.as_str() == Some("nodes"))
        .map(|(_, v)| v.value)
    else {
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let Value::Map(entries) = item.value else {
                return None;
            };
            let (_, value) = entries
                .into_iter()
                .find(|(k, _)| k.as_str() == Some("name"))?;
            Some((i, value.as_str()?.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn state_versions_are_yy_mm() {
        use crate::model::StateVersion;
        for ok in ["25.11", "24.05", "00.01"] {
            assert_eq!(StateVersion::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "25.13",
            "25.00",
            "2511",
            "25.1",
            "25.110",
            "unstable",
            "",
            "２５.11",
        ] {
            assert!(StateVersion::parse(bad).is_err(), "{bad}");
        }
    }
}
