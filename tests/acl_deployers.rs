//! Issue 21: deployers (fleet.yml `deployers`), not the control plane, hold SSH as root. The
//! rendered policy gives root only to them, `acl check` reports any other principal with root
//! (`ssh-root`, at the rule's line, naming the principal), the policy's own `sshTests` refuse a
//! hand edit that gives the control plane root, and a `tag:deployer` can be listed.

mod common;

use assert_cmd::Command;
use common::{example_fleet, example_fleet_dir, repo};
use fleetnix::acl::apply;
use fleetnix::acl::check::{self, principals::node_principals, Finding, FindingKind};
use fleetnix::acl::eval::{Evaluator, Principal, SshDecision};
use fleetnix::acl::policy::{self, TCP};
use fleetnix::manifest;
use fleetnix::model::Fleet;

fn rendered(fleet: &Fleet) -> String {
    fleetnix::acl::render::render(fleet, "fleet/").text
}

/// The example fleet with fleet.yml edited by `edit`.
fn with_fleet_yml(edit: impl Fn(String) -> String) -> (tempfile::TempDir, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["nodes.yml", "fleet.yml", "services.yml"] {
        let text = std::fs::read_to_string(example_fleet_dir().join(f)).unwrap();
        let text = if f == "fleet.yml" { edit(text) } else { text };
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let fleet = manifest::load(dir.path()).expect("variant is valid");
    (dir, fleet)
}

/// `text` with `rule` added at the top of the `ssh` section; the rule's line.
fn with_ssh_rule(text: &str, rule: &str) -> (String, usize) {
    let out = text.replacen("  \"ssh\": [\n", &format!("  \"ssh\": [\n    {rule},\n"), 1);
    assert_ne!(out, text);
    let line = out.lines().position(|l| l.contains(rule)).unwrap() + 1;
    (out, line)
}

fn ssh_root<'f>(f: &'f [Finding], line: usize, source: &str) -> &'f Finding {
    f.iter()
        .find(|x| {
            x.kind == FindingKind::SshRoot && x.line == line && x.source.as_deref() == Some(source)
        })
        .unwrap_or_else(|| panic!("no ssh-root for {source} at line {line}: {f:#?}"))
}

#[test]
fn the_control_plane_has_no_ssh_in_the_rendered_policy() {
    let fleet = example_fleet();
    let text = rendered(&fleet);
    let p = policy::parse(&text).unwrap().policy;
    let nodes = node_principals(&fleet);
    let ev = Evaluator::new(&p).with_nodes(nodes.clone());
    let cp = nodes.iter().find(|n| n.name == "control-01").unwrap();
    let ops = Principal::group("group:operators");
    for d in &nodes {
        assert_eq!(ev.ssh(cp, d, "root"), SshDecision::Deny, "{}", d.name);
        assert_eq!(ev.ssh(cp, d, "nonroot"), SshDecision::Deny, "{}", d.name);
        assert!(ev.ssh_works(&ops, d, "root"), "{}", d.name);
    }
    // its network reach is the catalog's: the services it uses and health checks, no port 22
    let w = nodes.iter().find(|n| n.name == "worker-01").unwrap();
    assert!(ev.reach(cp, cp, 4222, TCP).is_some());
    assert!(ev.reach(cp, w, 22, TCP).is_none());
    // clean under check, and its own tests pass (sshTests deny the control plane root)
    assert!(check::check(&fleet, &text).unwrap().is_empty());
    assert!(ev.run_tests().is_empty());
    assert!(text.contains(
        r#"{"src": "tag:control-plane", "dst": ["tag:control-plane", "tag:worker"], "accept": [], "deny": ["root"]}"#
    ));
}

#[test]
fn check_flags_every_non_deployer_with_root_at_the_rule_line() {
    let fleet = example_fleet();
    let base = rendered(&fleet);
    for (rule, source, nodes) in [
        // the old deploy rule: the control plane as root everywhere
        (
            r#"{"action": "accept", "src": ["tag:control-plane"], "dst": ["tag:control-plane", "tag:worker"], "users": ["root"]}"#,
            "tag:control-plane",
            vec!["control-01", "worker-01", "worker-02"],
        ),
        // a check rule is root too
        (
            r#"{"action": "check", "src": ["alice@example.com"], "dst": ["tag:worker"], "users": ["root"]}"#,
            "alice@example.com",
            vec!["worker-01", "worker-02"],
        ),
        (
            r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:worker"], "users": ["root"]}"#,
            "autogroup:member",
            vec!["worker-01", "worker-02"],
        ),
    ] {
        let (text, line) = with_ssh_rule(&base, rule);
        let f = check::check(&fleet, &text).unwrap();
        let o = ssh_root(&f, line, source);
        assert_eq!(o.nodes, nodes, "{o:#?}");
        assert!(
            o.message.contains(&format!("(line {line})")),
            "{}",
            o.message
        );
        assert!(o.message.contains("as root"), "{}", o.message);
        // the operators (the deployers) in the same rule are not reported
        assert!(
            !f.iter().any(|x| x.kind == FindingKind::SshRoot
                && x.source.as_deref() == Some("group:operators")),
            "{f:#?}"
        );
    }
    // an operator login is a deployer through fleet.yml's group: not reported
    let (text, line) = with_ssh_rule(
        &base,
        r#"{"action": "accept", "src": ["ops@example.com"], "dst": ["tag:worker"], "users": ["root"]}"#,
    );
    let f = check::check(&fleet, &text).unwrap();
    assert!(
        !f.iter()
            .any(|x| x.kind == FindingKind::SshRoot && x.line == line),
        "{f:#?}"
    );
    // the control plane's old rule also fails the policy's own sshTests
    let (text, _) = with_ssh_rule(
        &base,
        r#"{"action": "accept", "src": ["tag:control-plane"], "dst": ["tag:worker"], "users": ["root"]}"#,
    );
    let f = check::check(&fleet, &text).unwrap();
    assert!(
        f.iter()
            .any(|x| x.kind == FindingKind::TestFails && x.message.contains("tag:control-plane")),
        "{f:#?}"
    );
}

#[test]
fn cli_check_names_the_principal_and_line() {
    let fleet = example_fleet();
    let (text, line) = with_ssh_rule(
        &rendered(&fleet),
        r#"{"action": "accept", "src": ["tag:control-plane"], "dst": ["tag:worker"], "users": ["root"]}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.hujson");
    std::fs::write(&file, &text).unwrap();
    let out = Command::cargo_bin("fleetnix")
        .unwrap()
        .arg("--root")
        .arg(repo())
        .args(["acl", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.contains(&format!(":{line}:"))
            && l.contains("ssh-root")
            && l.contains("tag:control-plane")),
        "{stdout}"
    );
}

#[test]
fn a_deployer_tag_gets_root_and_the_operators_keep_a_non_root_login() {
    let (_d, fleet) = with_fleet_yml(|s| s + "deployers: [tag:deployer]\n");
    assert_eq!(fleet.settings.deployers, ["tag:deployer"]);
    let text = rendered(&fleet);
    let p = policy::parse(&text).unwrap().policy;
    let nodes = node_principals(&fleet);
    let ev = Evaluator::new(&p).with_nodes(nodes.clone());
    let dep = Principal::tag("tag:deployer");
    let ops = Principal::group("group:operators");
    for d in &nodes {
        assert!(ev.ssh_works(&dep, d, "root"), "{}", d.name);
        assert_eq!(ev.ssh(&ops, d, "root"), SshDecision::Deny, "{}", d.name);
        assert!(ev.ssh_works(&ops, d, "alice"), "{}", d.name);
    }
    assert!(
        text.contains("\"tag:deployer\": [\"group:operators\"]"),
        "{text}"
    );
    assert!(ev.run_tests().is_empty(), "{:#?}", ev.run_tests());
    assert!(check::check(&fleet, &text).unwrap().is_empty());
    // the example policy (operators as root) is now an ssh-root finding for them
    let f = check::check(&fleet, &rendered(&example_fleet())).unwrap();
    assert!(
        f.iter()
            .any(|x| x.kind == FindingKind::SshRoot
                && x.source.as_deref() == Some("group:operators")),
        "{f:#?}"
    );
    // and the lock-out guard wants the deployer tag's SSH
    let cut = apply::lock_out(&fleet, &rendered(&example_fleet())).unwrap();
    assert!(
        cut.contains(&"deploys from tag:deployer to worker-01 as root".to_string()),
        "{cut:?}"
    );
    assert!(apply::lock_out(&fleet, &text).unwrap().is_empty());
}

#[test]
fn deployers_are_validated() {
    for (value, why) in [
        ("[autogroup:member]", "not a group, tag or login"),
        ("[\"*\"]", "not a group, tag or login"),
        ("[tag:Deployer]", "deployers[0]"),
        ("[]", "nobody could deploy"),
        ("tag:deployer", "a list"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["nodes.yml", "fleet.yml", "services.yml"] {
            let mut text = std::fs::read_to_string(example_fleet_dir().join(f)).unwrap();
            if f == "fleet.yml" {
                text.push_str(&format!("deployers: {value}\n"));
            }
            std::fs::write(dir.path().join(f), text).unwrap();
        }
        let err = manifest::load(dir.path()).unwrap_err().to_string();
        let all = format!("{err:?} {err}");
        assert!(all.contains("deployers"), "{value}: {all}");
        assert!(all.contains(why), "{value}: {all}");
    }
}

#[test]
fn every_kind_of_deployer_is_rendered_tested_and_clean() {
    let (_d, fleet) =
        with_fleet_yml(|s| s + "deployers: [group:operators, tag:deployer, alice@example.com]\n");
    let text = rendered(&fleet);
    let p = policy::parse(&text).unwrap().policy;
    let nodes = node_principals(&fleet);
    let ev = Evaluator::new(&p).with_nodes(nodes.clone());
    for who in [
        Principal::group("group:operators"),
        Principal::tag("tag:deployer"),
        Principal::user("alice@example.com", &p),
    ] {
        for d in &nodes {
            assert!(ev.ssh_works(&who, d, "root"), "{} -> {}", who.name, d.name);
        }
    }
    // the policy's own tests say so, for each deployer, and deny the control plane root
    for line in [
        r#"{"src": "alice@example.com", "dst": ["tag:control-plane", "tag:worker"], "accept": ["root"], "deny": []}"#,
        r#"{"src": "tag:deployer", "dst": ["tag:control-plane", "tag:worker"], "accept": ["root"], "deny": []}"#,
        r#"{"src": "tag:control-plane", "dst": ["tag:control-plane", "tag:worker"], "accept": [], "deny": ["root"]}"#,
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    assert!(ev.run_tests().is_empty(), "{:#?}", ev.run_tests());
    assert!(check::check(&fleet, &text).unwrap().is_empty());
    assert!(apply::lock_out(&fleet, &text).unwrap().is_empty());
}
