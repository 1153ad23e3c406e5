//! The rendered policy for the example fleet: well-formed, deterministic, commented, passing its
//! own tests under the evaluator, clean under `acl check`, and catching drift.

mod common;

use fleetnix::acl::check::{self, FindingKind};
use fleetnix::acl::eval::{Evaluator, Principal};
use fleetnix::acl::policy::{self, Selector, TCP};
use fleetnix::manifest;
use fleetnix::model::Fleet;

use common::{example_fleet, example_fleet_dir};

/// The example fleet with services.yml edited by `edit`.
fn variant(edit: impl Fn(String) -> String) -> (tempfile::TempDir, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["nodes.yml", "fleet.yml", "services.yml"] {
        let text = std::fs::read_to_string(example_fleet_dir().join(f)).unwrap();
        let text = if f == "services.yml" {
            edit(text)
        } else {
            text
        };
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let fleet = manifest::load(dir.path()).expect("variant is valid");
    (dir, fleet)
}

#[test]
fn rendered_policy_passes_its_own_tests() {
    let fleet = example_fleet();
    let r = fleetnix::acl::render::render(&fleet, "fleet/");
    let parsed = policy::parse(&r.text).unwrap();
    assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
    let p = &parsed.policy;
    assert!(!p.tests.is_empty() && !p.ssh_tests.is_empty());
    let failures = Evaluator::new(p)
        .with_nodes(check::principals::node_principals(&fleet))
        .run_tests();
    assert!(failures.is_empty(), "{failures:#?}");
    // every tag and group is a test source, each with both accepts and denies
    let srcs: Vec<&str> = p.tests.iter().map(|t| t.src.value.as_str()).collect();
    assert_eq!(srcs, ["tag:control-plane", "tag:worker", "group:operators"]);
    for t in &p.tests {
        assert!(!t.accept.is_empty() && !t.deny.is_empty(), "{t:?}");
    }
    // workers are denied Temporal, Postgres and Redis, accepted on NATS
    let worker = &p.tests[1];
    let deny: Vec<&str> = worker.deny.iter().map(|d| d.value.as_str()).collect();
    for port in ["7233", "5432", "6379"] {
        assert!(
            deny.contains(&format!("tag:control-plane:{port}").as_str()),
            "{deny:?}"
        );
    }
    assert!(worker
        .accept
        .iter()
        .any(|a| a.value == "tag:control-plane:4222"));
}

#[test]
fn rendered_policy_is_clean_and_minimal() {
    let fleet = example_fleet();
    let r = fleetnix::acl::render::render(&fleet, "fleet/");
    let findings = check::check(&fleet, &r.text).unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
    let p = policy::parse(&r.text).unwrap().policy;
    // no `*` destinations or ports; every tag used is owned by the operators
    for rule in &p.rules {
        for d in &rule.dst {
            assert_ne!(d.value.host, Selector::Any);
            assert!(!d.value.ports.is_all());
        }
    }
    for (tag, owners) in &p.tag_owners {
        let o: Vec<&str> = owners.value.iter().map(|o| o.value.as_str()).collect();
        assert_eq!(o, ["group:operators"], "{tag}");
    }
    // a comment naming the catalog row precedes each service rule
    let lines: Vec<&str> = r.text.lines().collect();
    for s in &fleet.catalog.services {
        let dst = format!("\"tag:control-plane:{}\"", s.port);
        let i = lines
            .iter()
            .position(|l| l.contains("\"action\"") && l.contains(&dst) && !l.contains(":22"))
            .unwrap_or_else(|| panic!("no rule for {}", s.name));
        assert!(
            lines[i - 1]
                .trim_start()
                .starts_with(&format!("// services.yml {}", s.name)),
            "{}",
            lines[i - 1]
        );
    }
    // SSH: only the operators, as root (they are the deployers) and non-root; none from the
    // control plane (issue 21)
    let ssh = p.ssh.as_ref().unwrap();
    assert_eq!(ssh.len(), 1);
    // agents' needs are covered by the catalog rows, and the deployers are the operators, so no
    // extra rule: 8 rows + operators
    assert_eq!(p.rules.len(), 9);
}

#[test]
fn rendering_is_deterministic() {
    let a = fleetnix::acl::render::render(&example_fleet(), "x").text;
    let b = fleetnix::acl::render::render(&example_fleet(), "x").text;
    assert_eq!(a, b);
}

#[test]
fn drift_is_caught_by_tests_and_check() {
    let fleet = example_fleet();
    let r = fleetnix::acl::render::render(&fleet, "fleet/");
    // someone adds workers to the Postgres rule
    let drifted = r.text.replace(
        "{\"action\": \"accept\", \"src\": [\"tag:control-plane\"], \"proto\": \"tcp\", \"dst\": [\"tag:control-plane:5432\"]}",
        "{\"action\": \"accept\", \"src\": [\"tag:control-plane\", \"tag:worker\"], \"proto\": \"tcp\", \"dst\": [\"tag:control-plane:5432\"]}",
    );
    assert_ne!(drifted, r.text);
    let p = policy::parse(&drifted).unwrap().policy;
    let failures = Evaluator::new(&p).run_tests();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(failures[0].message.contains("tag:control-plane:5432"));
    let findings = check::check(&fleet, &drifted).unwrap();
    let over: Vec<_> = findings
        .iter()
        .filter(|f| f.kind == FindingKind::OverGrant)
        .collect();
    assert_eq!(over.len(), 1, "{findings:#?}");
    assert_eq!(over[0].source.as_deref(), Some("tag:worker"));
    assert_eq!(over[0].ports.as_deref(), Some("5432"));
    assert!(findings.iter().any(|f| f.kind == FindingKind::TestFails));
}

#[test]
fn agent_needs_get_rules_when_the_catalog_lacks_them() {
    // drop NATS from the catalog: the agents still need it, so a rule of its own appears
    let (_d, fleet) = variant(|s| {
        let i = s.find("  # Not in the seed's table").unwrap();
        s[..i].to_string()
    });
    let r = fleetnix::acl::render::render(&fleet, "fleet/");
    assert!(r.text.contains("// agents' NATS connection"), "{}", r.text);
    let p = policy::parse(&r.text).unwrap().policy;
    let nodes = check::principals::node_principals(&fleet);
    let ev = Evaluator::new(&p).with_nodes(nodes.clone());
    let cp = nodes.iter().find(|n| n.name == "control-01").unwrap();
    let w = nodes.iter().find(|n| n.name == "worker-01").unwrap();
    assert!(ev.reach(w, cp, 4222, TCP).is_some());
    assert!(ev.run_tests().is_empty());
    assert!(check::check(&fleet, &r.text).unwrap().is_empty());
}

#[test]
fn services_on_workers_get_health_checks() {
    // a service hosted by glm-worker, reachable only by the operators
    let (_d, fleet) = variant(|s| {
        s + "  - name: glm-metrics\n    port: 9100\n    role: glm-worker\n    allow: [group:operators]\n"
    });
    let r = fleetnix::acl::render::render(&fleet, "fleet/");
    let p = policy::parse(&r.text).unwrap().policy;
    let ev = Evaluator::new(&p);
    let (cp, w) = (
        Principal::tag("tag:control-plane"),
        Principal::tag("tag:worker"),
    );
    assert!(
        ev.reach(&cp, &w, 9100, TCP).is_some(),
        "health checks reach it"
    );
    assert!(ev
        .reach(&Principal::group("group:operators"), &w, 9100, TCP)
        .is_some());
    assert!(ev.reach(&w, &w, 9100, TCP).is_none());
    assert!(ev.run_tests().is_empty(), "{:#?}", ev.run_tests());
    assert!(check::check(&fleet, &r.text).unwrap().is_empty());
}
