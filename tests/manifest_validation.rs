//! One test per validation rule: each asserts the problem names the file, line, field
//! and what was expected.

use fleetnix::manifest::{self, FleetTexts, ManifestError, Problem};
use fleetnix::model::SourceFiles;
use std::path::PathBuf;

const NODES: &str = include_str!("../fleet/nodes.yml");
const FLEET: &str = include_str!("../fleet/fleet.yml");
const SERVICES: &str = include_str!("../fleet/services.yml");

fn texts(nodes: &str, fleet: &str, services: &str) -> FleetTexts {
    FleetTexts {
        paths: SourceFiles {
            nodes: PathBuf::from("fleet/nodes.yml"),
            fleet: PathBuf::from("fleet/fleet.yml"),
            services: PathBuf::from("fleet/services.yml"),
        },
        nodes: nodes.to_string(),
        fleet: fleet.to_string(),
        services: services.to_string(),
    }
}

fn problems(nodes: &str, fleet: &str, services: &str) -> Vec<Problem> {
    match manifest::parse(&texts(nodes, fleet, services)) {
        Ok(_) => panic!("expected validation to fail"),
        Err(ManifestError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn only(nodes: &str, fleet: &str, services: &str) -> Problem {
    let p = problems(nodes, fleet, services);
    assert_eq!(p.len(), 1, "expected exactly one problem, got {p:#?}");
    p.into_iter().next().unwrap()
}

/// A nodes.yml with the worker-01 entry replaced by `entry` (indented list item).
fn with_worker(entry: &str) -> String {
    let start = NODES.find("  - name: worker-01\n").expect("worker-01");
    let end = NODES.find("  - name: worker-02\n").expect("worker-02");
    format!("{}{entry}{}", &NODES[..start], &NODES[end..])
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn example_fleet_is_valid() {
    let fleet = manifest::parse(&texts(NODES, FLEET, SERVICES)).expect("example fleet valid");
    let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["control-01", "worker-01", "worker-02"]);
    assert_eq!(fleet.settings.nats_url, "nats://100.64.0.1:4222");
    assert_eq!(fleet.tags_of(&fleet.nodes[0]), ["tag:control-plane"]);
    assert_eq!(fleet.tags_of(&fleet.nodes[1]), ["tag:worker"]);
}

#[test]
fn nats_url_defaults_to_the_control_plane_address() {
    let fleet_yml = FLEET.replace("nats_url: nats://100.64.0.1:4222\n", "");
    let fleet = manifest::parse(&texts(NODES, &fleet_yml, SERVICES)).unwrap();
    assert_eq!(fleet.settings.nats_url, "nats://100.64.0.1:4222");
}

#[test]
fn malformed_yaml() {
    let nodes = NODES.replace(
        "roles: [glm-worker, kg-writer]",
        "roles: [glm-worker, kg-writer",
    );
    let p = problems(&nodes, FLEET, SERVICES);
    assert!(p[0].message.contains("malformed YAML"), "{}", p[0]);
    assert_eq!(p[0].file, PathBuf::from("fleet/nodes.yml"));
    assert!(p[0].line >= line_of(&nodes, "kg-writer"), "{}", p[0]);
}

#[test]
fn unknown_field_suggests_the_closest() {
    let nodes = NODES.replace(
        "    roles: [glm-worker, kg-writer]",
        "    rols: [glm-worker, kg-writer]",
    );
    let p = problems(&nodes, FLEET, SERVICES);
    let p = p
        .iter()
        .find(|p| p.message.contains("unknown field"))
        .expect("unknown field reported");
    assert_eq!(p.field, "nodes[1].rols");
    assert_eq!(p.line, line_of(&nodes, "rols:"));
    assert!(
        p.expected
            .as_deref()
            .unwrap()
            .contains("did you mean `roles`"),
        "{p}"
    );
    assert_eq!(p.node.as_deref(), Some("worker-01"));
}

#[test]
fn missing_required_field() {
    let nodes = with_worker("  - name: worker-01\n    roles: [glm-worker, kg-writer]\n    resources:\n      cpu: 4\n      ram_gb: 8\n");
    let p = only(&nodes, FLEET, SERVICES);
    assert!(
        p.message.contains("missing required field `tailscale_ip`"),
        "{p}"
    );
    assert_eq!(p.field, "nodes[1].tailscale_ip");
    assert_eq!(p.line, line_of(&nodes, "name: worker-01"));
    assert!(p.expected.as_deref().unwrap().contains("100.64.0.0/10"));
}

#[test]
fn duplicate_node_name() {
    let nodes = NODES.replace("name: worker-02", "name: worker-01");
    let p = only(&nodes, FLEET, SERVICES);
    assert!(p.message.contains("duplicate node name `worker-01`"), "{p}");
    assert_eq!(
        p.line,
        nodes
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("name: worker-01"))
            .nth(1)
            .unwrap()
            .0
            + 1
    );
}

#[test]
fn duplicate_tailscale_ip() {
    let nodes = NODES.replace("100.64.0.3", "100.64.0.2");
    let p = only(&nodes, FLEET, SERVICES);
    assert!(
        p.message.contains("duplicate tailscale_ip 100.64.0.2"),
        "{p}"
    );
    assert!(p.message.contains("worker-01"), "names the other node: {p}");
    assert_eq!(p.node.as_deref(), Some("worker-02"));
    assert_eq!(p.field, "nodes[].tailscale_ip");
}

#[test]
fn tailscale_ip_outside_the_tailnet_ranges() {
    for bad in ["10.0.0.2", "100.128.0.2", "fd00::1", "not-an-ip"] {
        let nodes = NODES.replace("100.64.0.2", bad);
        let p = only(&nodes, FLEET, SERVICES);
        assert_eq!(p.field, "nodes[1].tailscale_ip", "{bad}");
        assert_eq!(p.line, line_of(&nodes, bad));
        assert_eq!(p.col, 19, "column of the value: {p}");
        assert!(p
            .expected
            .as_deref()
            .unwrap()
            .contains("fd7a:115c:a1e0::/48"));
    }
}

#[test]
fn tailscale_ipv6_ula_is_accepted() {
    let nodes = NODES.replace("100.64.0.3", "fd7a:115c:a1e0::3");
    let fleet = manifest::parse(&texts(&nodes, FLEET, SERVICES)).expect("ULA accepted");
    assert_eq!(
        fleet.node("worker-02").unwrap().tailscale_ip.to_string(),
        "fd7a:115c:a1e0::3"
    );
}

#[test]
fn node_name_must_be_a_hostname_label() {
    let long = "a".repeat(64);
    for bad in [
        "Worker-01",
        "worker_01",
        "-worker",
        "w\"; rm -rf /",
        "${builtins.exec}",
        long.as_str(),
    ] {
        let quoted = format!("\"{}\"", bad.replace('\\', "\\\\").replace('"', "\\\""));
        let nodes = NODES.replace("name: worker-02", &format!("name: {quoted}"));
        let p = only(&nodes, FLEET, SERVICES);
        assert_eq!(p.field, "nodes[2].name", "{bad}: {p}");
        assert!(p.expected.as_deref().unwrap().contains("RFC 1123"), "{p}");
        assert_eq!(p.line, line_of(&nodes, "name: \""));
    }
}

#[test]
fn role_not_in_catalog() {
    let nodes = NODES.replace("[glm-worker, kg-writer]", "[glm-worker, kg-writter]");
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.field, "nodes[1].roles[1]");
    assert!(
        p.message
            .contains("role `kg-writter` is not in the catalog"),
        "{p}"
    );
    assert!(
        p.expected
            .as_deref()
            .unwrap()
            .contains("did you mean `kg-writer`"),
        "{p}"
    );
    assert_eq!(p.line, line_of(&nodes, "kg-writter"));
}

#[test]
fn role_with_unsafe_characters_is_rejected() {
    let nodes = NODES.replace("[glm-worker, kg-writer]", "[glm-worker, \"kg;reboot\"]");
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.field, "nodes[1].roles[1]");
    assert!(p.message.contains("';'"), "{p}");
}

#[test]
fn roles_listed_twice() {
    let nodes = NODES.replace(
        "[glm-worker, kg-writer]",
        "[glm-worker, kg-writer, glm-worker]",
    );
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.field, "nodes[1].roles[2]");
    assert!(p.message.contains("listed twice"), "{p}");
}

#[test]
fn zero_or_negative_resources() {
    let nodes = with_worker("  - name: worker-01\n    tailscale_ip: 100.64.0.2\n    roles: [glm-worker, kg-writer]\n    resources:\n      cpu: 0\n      ram_gb: -8\n");
    let p = problems(&nodes, FLEET, SERVICES);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(p[0].field, "nodes[1].resources.cpu");
    assert_eq!(p[0].line, line_of(&nodes, "cpu: 0"));
    assert_eq!(p[1].field, "nodes[1].resources.ram_gb");
    assert!(p[1].message.contains("-8 is not positive"), "{}", p[1]);
}

#[test]
fn no_node_with_the_control_plane_role() {
    let nodes = NODES.replace(
        "roles: [control-plane, litellm-proxy",
        "roles: [litellm-proxy",
    );
    let p = problems(&nodes, FLEET, SERVICES);
    assert!(
        p.iter()
            .any(|p| p.message.contains("no node has the `control-plane` role")),
        "{p:#?}"
    );
}

#[test]
fn control_plane_named_in_fleet_yml_must_be_a_node() {
    let fleet = FLEET.replace("control_plane: control-01", "control_plane: control-1");
    let p = only(NODES, &fleet, SERVICES);
    assert_eq!(p.file, PathBuf::from("fleet/fleet.yml"));
    assert_eq!(p.field, "control_plane");
    assert_eq!(p.line, line_of(&fleet, "control_plane: control-1"));
    assert!(
        p.expected
            .as_deref()
            .unwrap()
            .contains("did you mean `control-01`"),
        "{p}"
    );
}

#[test]
fn service_hosted_by_a_role_no_node_has() {
    let nodes = NODES.replace(
        "control-plane, litellm-proxy, temporal, langfuse",
        "control-plane, litellm-proxy, temporal",
    );
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.file, PathBuf::from("fleet/services.yml"));
    assert!(
        p.message
            .contains("service `langfuse` is hosted by role `langfuse`, which no node has"),
        "{p}"
    );
    assert_eq!(p.line, line_of(SERVICES, "- name: langfuse"));
}

#[test]
fn unknown_failover_strategy() {
    let fleet = FLEET.replace(
        "failover_strategy: round_robin",
        "failover_strategy: round-robin",
    );
    let p = only(NODES, &fleet, SERVICES);
    assert_eq!(p.field, "fleet.failover_strategy");
    assert!(p.message.contains("did you mean `round_robin`"), "{p}");
    assert!(p.expected.as_deref().unwrap().contains("least_loaded"));
    assert_eq!(p.line, line_of(&fleet, "failover_strategy"));
}

#[test]
fn wrong_types_say_what_was_found() {
    let fleet = FLEET.replace(
        "retry_on_node_failure: true",
        "retry_on_node_failure: yes please",
    );
    let p = only(NODES, &fleet, SERVICES);
    assert_eq!(p.field, "fleet.retry_on_node_failure");
    assert!(p.message.contains("`yes please`"), "{p}");
    assert_eq!(p.expected.as_deref(), Some("true or false"));
}

#[test]
fn several_errors_are_all_reported_in_one_run() {
    let nodes = NODES
        .replace("100.64.0.2", "192.168.1.2")
        .replace("name: worker-02", "name: Worker-02")
        .replace("cpu: 8", "cpu: 0");
    let fleet = FLEET.replace(
        "failover_strategy: round_robin",
        "failover_strategy: fastest",
    );
    let p = problems(&nodes, &fleet, SERVICES);
    let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    for f in [
        "nodes[0].resources.cpu",
        "nodes[1].tailscale_ip",
        "nodes[2].name",
        "fleet.failover_strategy",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    // Sorted by file then line.
    let keys: Vec<_> = p.iter().map(|p| (p.file.clone(), p.line)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[test]
fn catalog_allow_selectors_are_checked() {
    let services = SERVICES.replace("allow: [group:operators]", "allow: [tag:nobody]");
    let p = only(NODES, FLEET, &services);
    assert!(
        p.message.contains("no role carries tag `tag:nobody`"),
        "{p}"
    );
    assert_eq!(p.line, line_of(&services, "tag:nobody"));
}

#[test]
fn malformed_host_key_is_rejected() {
    // worker-02's demo host key replaced.
    let at = NODES.find("  - name: worker-02\n").expect("worker-02");
    let line = NODES[at..]
        .lines()
        .find(|l| l.trim_start().starts_with("host_key:"))
        .expect("worker-02 has a host key");
    let nodes = NODES.replace(line, "    host_key: ssh-dss AAAAB3NzaC1kc3MAAACBAP");
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.field, "nodes[2].host_key");
    assert!(p.message.contains("ssh-dss"), "{p}");
}

#[test]
fn display_names_file_line_column_node_and_expectation() {
    let nodes = NODES.replace("100.64.0.3", "8.8.8.8");
    let p = only(&nodes, FLEET, SERVICES);
    let text = p.to_string();
    assert!(
        text.starts_with(&format!(
            "fleet/nodes.yml:{}:19: nodes[2].tailscale_ip (node worker-02):",
            line_of(&nodes, "8.8.8.8")
        )),
        "{text}"
    );
    assert!(text.contains("expected a Tailscale address"), "{text}");
}

#[test]
fn models_are_optional_checked_and_listed_once() {
    let fleet = manifest::parse(&texts(NODES, FLEET, SERVICES)).unwrap();
    assert_eq!(fleet.node("worker-01").unwrap().models, ["glm-4.5-air"]);
    assert!(fleet.node("worker-02").unwrap().models.is_empty());

    let nodes = NODES.replace(
        "models: [glm-4.5-air]",
        "models: [glm-4.5-air, \"bad model\"]",
    );
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.field, "nodes[1].models[1]");
    assert_eq!(p.line, line_of(&nodes, "bad model"));
    assert!(p.message.contains("' '"), "{p}");
    assert!(
        p.expected.as_deref().unwrap().contains("glm-4.5-air"),
        "{p}"
    );

    let nodes = NODES.replace("models: [glm-4.5-air]", "models: [llama3:8b, llama3:8b]");
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.field, "nodes[1].models[1]");
    assert!(p.message.contains("listed twice"), "{p}");

    let nodes = NODES.replace("models: [glm-4.5-air]", "models: glm-4.5-air");
    let p = only(&nodes, FLEET, SERVICES);
    assert_eq!(p.field, "nodes[1].models");
}
