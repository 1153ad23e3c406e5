//! `acl check`: the seed's hand-written policy fails with the documented findings; other
//! problems are found with their locations; the CLI exits 1 and speaks JSON.

mod common;

use assert_cmd::Command;
use fleetnix::acl::check::{self, Finding, FindingKind};
use std::path::Path;

use common::{example_fleet, repo};

fn seed() -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/seed-acl-policy.hujson")).unwrap()
}

fn of(findings: &[Finding], kind: FindingKind) -> Vec<&Finding> {
    findings.iter().filter(|f| f.kind == kind).collect()
}

fn ports(f: &Finding) -> Vec<u16> {
    // "5432,6379,7233" or ranges; expand small ranges only
    f.ports
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn seed_policy_findings() {
    let findings = check::check(&example_fleet(), &seed()).unwrap();

    // 1. workers may reach Temporal, Postgres, Redis over TCP: an over-grant at the workers' rule
    //    (line 9); the rule has no "proto", so it opens UDP too, which the catalog never allows
    let over = of(&findings, FindingKind::OverGrant);
    let by = |source: &str, proto: &str| {
        over.iter()
            .find(|f| f.source.as_deref() == Some(source) && f.proto.as_deref() == Some(proto))
            .unwrap_or_else(|| panic!("no {proto} over-grant for {source}: {over:#?}"))
    };
    let workers = by("tag:worker", "tcp");
    assert_eq!(ports(workers), [5432, 6379, 7233]);
    assert_eq!(workers.nodes, ["control-01"]);
    assert_eq!((workers.line, workers.column), (9, 1));
    assert!(
        workers
            .message
            .contains("temporal 7233 is for tag:control-plane only"),
        "{}",
        workers.message
    );
    let udp = by("tag:worker", "udp");
    assert_eq!(ports(udp), [4000, 5432, 6379, 7233]);
    assert_eq!(udp.line, 9);
    // the control plane's `tag:worker:*` is an over-grant too, SSH included: deployers, not the
    // control plane, reach the nodes' SSH (issue 21)
    let cp = by("tag:control-plane", "tcp");
    assert_eq!(cp.ports.as_deref(), Some("*"));
    assert_eq!(cp.nodes, ["worker-01", "worker-02"]);
    assert!(cp.message.contains("every tcp port"), "{}", cp.message);
    assert_eq!(by("tag:control-plane", "udp").ports.as_deref(), Some("*"));
    // the operators' `*:22` opens UDP 22 as well
    let ops = by("group:operators", "udp");
    assert_eq!(ops.ports.as_deref(), Some("22"));
    assert_eq!(ops.nodes, ["control-01", "worker-01", "worker-02"]);
    assert_eq!(over.len(), 5, "{over:#?}");

    // 2. workers may not reach NATS 4222 though their agents must
    let missing = of(&findings, FindingKind::MissingGrant);
    let w = missing
        .iter()
        .find(|f| f.source.as_deref() == Some("tag:worker"))
        .expect("missing grant for tag:worker");
    assert!(ports(w).contains(&4222), "{w:?}");
    assert!(w.message.contains("agents' NATS"), "{}", w.message);
    assert_eq!(w.nodes, ["control-01"]);

    // 3. defaultAllow is not a policy field (line 26)
    let unknown = of(&findings, FindingKind::UnknownField);
    let d = unknown
        .iter()
        .find(|f| f.message.contains("\"defaultAllow\""))
        .expect("defaultAllow finding");
    assert_eq!((d.line, d.column), (26, 1));
    // ("comment" inside acls entries is not a field either)
    assert_eq!(
        unknown
            .iter()
            .filter(|f| f.message.contains("\"comment\""))
            .count(),
        3
    );

    // 4. no ssh section: Tailscale SSH deploys fail
    let no_ssh = of(&findings, FindingKind::NoSsh);
    assert_eq!(no_ssh.len(), 1);
    assert!(
        no_ssh[0].message.contains("deploys from group:operators"),
        "{}",
        no_ssh[0].message
    );

    // group:operators is used but never defined
    assert!(!of(&findings, FindingKind::UnknownGroup).is_empty());
}

#[test]
fn format_and_reference_problems_have_locations() {
    let fleet = example_fleet();
    let text = r#"{
  "groups": {"group:operators": ["ops@example.com"]},
  "tagOwners": {"tag:control-plane": ["group:operators"]},
  "acls": [
    {"action": "accept", "src": ["tag:control-plane"], "dst": ["tag:worker"]},
    {"action": "accept", "src": ["tag:ci"], "dst": ["tag:control-plane:0"]},
    {"action": "accept", "src": ["group:operatorz"], "dst": ["100.64.0.1"]},
    {"action": "deny", "src": ["*"], "dst": ["*:22"], "ports": ["x"]},
  ],
  "ssh": [
    {"action": "accept", "src": ["tag:worker"], "dst": ["tag:worker"], "users": ["root"]},
  ],
}"#;
    let f = check::check(&fleet, text).unwrap();
    let at = |kind: FindingKind, line: usize| {
        f.iter()
            .find(|x| x.kind == kind && x.line == line)
            .unwrap_or_else(|| panic!("no {kind:?} at line {line}: {f:#?}"))
    };
    assert!(at(FindingKind::MalformedHostPort, 5)
        .message
        .contains("missing ports"));
    assert!(at(FindingKind::MalformedHostPort, 6)
        .message
        .contains("first port must be >0"));
    assert!(at(FindingKind::MalformedHostPort, 7)
        .message
        .contains("must contain a colon"));
    assert_eq!(at(FindingKind::UnknownTag, 6).column, 34);
    let g = at(FindingKind::UnknownGroup, 7);
    assert!(g
        .hint
        .as_deref()
        .unwrap()
        .contains("did you mean \"group:operators\""));
    assert!(at(FindingKind::InvalidValue, 8)
        .message
        .contains("the only action is \"accept\""));
    // tag:worker is carried by two nodes and owned by nobody
    let t = of(&f, FindingKind::TagWithoutOwner);
    assert_eq!(t.len(), 1);
    assert!(t[0]
        .message
        .contains("tag:worker (carried by worker-01, worker-02)"));
    assert_eq!(t[0].line, 3);
    // an ssh section without the deploy rule
    assert!(at(FindingKind::SshDeploy, 10)
        .message
        .contains("control-01"));
    assert!(!of(&f, FindingKind::SshOperators).is_empty());
}

#[test]
fn syntax_errors_are_errors() {
    let e = check::check(&example_fleet(), "{\n \"acls\": [\n  {\"src\": }\n]}").unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
}

fn cli(root: &Path) -> Command {
    let mut c = Command::cargo_bin("fleetnix").unwrap();
    c.arg("--root").arg(root).env_remove("FLEETNIX_FLEET_DIR");
    c
}

#[test]
fn cli_check_exit_codes_and_json() {
    let out = cli(&repo())
        .args([
            "acl",
            "check",
            "--json",
            "tests/fixtures/seed-acl-policy.hujson",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    let kinds: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for k in ["over-grant", "missing-grant", "unknown-field", "no-ssh"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }

    // the rendered policy passes
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acl-policy.hujson");
    cli(&repo())
        .args(["acl", "render", "-o"])
        .arg(&file)
        .assert()
        .success();
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text,
        fleetnix::acl::render::render(
            &example_fleet(),
            "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml"
        )
        .text
    );
    let out = cli(&repo())
        .args(["acl", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn cli_matrix_table_and_dot() {
    let out = cli(&repo()).args(["acl", "matrix"]).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let worker_row = table.lines().find(|l| l.starts_with("tag:worker")).unwrap();
    assert!(worker_row.contains("4000,4222,8080"), "{table}");
    let out = cli(&repo())
        .args(["acl", "matrix", "--dot"])
        .output()
        .unwrap();
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("digraph acl {"));
    assert!(
        dot.contains("\"tag:worker\" -> \"control-01\" [label=\"4000,4222,8080\"];"),
        "{dot}"
    );
    assert!(!dot.contains("\"tag:worker\" -> \"worker-01\""));
}
