//! `acl check` sees every principal (issue 15): each policy case below, added to the rendered
//! `fleet/acl-policy.hujson`, is reported with a finding that names the rule's line and the
//! principal, and the CLI exits 1 — logins, operators' logins, `user:*@domain`, role autogroups,
//! `autogroup:shared`, ipsets and addresses as sources; address ranges reaching nodes over IPv6;
//! tag owners; and protocols compared per rule.

mod common;

use assert_cmd::Command;
use fleetnix::acl::check::{self, Finding, FindingKind};
use fleetnix::acl::{matrix, policy};
use fleetnix::manifest;
use fleetnix::model::Fleet;

use common::{example_fleet, example_fleet_dir, repo};

/// The rendered example policy, as committed.
fn rendered() -> String {
    let text = std::fs::read_to_string(example_fleet_dir().join("acl-policy.hujson")).unwrap();
    // the committed file is the current rendering (byte for byte)
    assert_eq!(
        text,
        fleetnix::acl::render::render(
            &example_fleet(),
            "fleet/nodes.yml, fleet/fleet.yml, fleet/services.yml"
        )
        .text
    );
    text
}

/// `base` with `rule` as the first entry of "acls" (and `top` as a first top-level field);
/// returns the text and the rule's line.
fn with_rule(base: &str, top: &str, rule: &str) -> (String, usize) {
    let mut text = base.replacen(
        "  \"acls\": [\n",
        &format!("  \"acls\": [\n    {rule},\n"),
        1,
    );
    if !top.is_empty() {
        text = text.replacen("{\n", &format!("{{\n  {top},\n"), 1);
    }
    let line = text
        .lines()
        .position(|l| {
            l.trim_start()
                .starts_with(rule.lines().next().unwrap_or(rule))
        })
        .expect("inserted rule")
        + 1;
    (text, line)
}

fn findings(fleet: &Fleet, text: &str) -> Vec<Finding> {
    check::check(fleet, text).expect("policy parses")
}

/// The finding of `kind` for `source` at `line`, or a panic listing them all.
fn find<'f>(f: &'f [Finding], kind: FindingKind, line: usize, source: &str) -> &'f Finding {
    f.iter()
        .find(|x| x.kind == kind && x.line == line && x.source.as_deref() == Some(source))
        .unwrap_or_else(|| panic!("no {kind:?} for {source} at line {line}: {f:#?}"))
}

fn cli_check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.hujson");
    std::fs::write(&file, text).unwrap();
    let out = Command::cargo_bin("fleetnix")
        .unwrap()
        .arg("--root")
        .arg(repo())
        .env_remove("FLEETNIX_FLEET_DIR")
        .args(["acl", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout)
        .unwrap()
        .replace(&file.display().to_string(), "POLICY");
    (out.status.code().unwrap_or(-1), stdout)
}

/// The CLI reports `source` at `line` and exits 1.
fn cli_reports(text: &str, line: usize, source: &str) {
    let (code, out) = cli_check(text);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("POLICY:{line}:")) && l.contains(source)),
        "no line {line} naming {source}:\n{out}"
    );
}

#[test]
fn the_rendered_policy_is_still_clean() {
    let text = rendered();
    assert!(findings(&example_fleet(), &text).is_empty());
    let (code, out) = cli_check(&text);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: POLICY agrees with the fleet"), "{out}");
}

#[test]
fn every_source_principal_is_seen() {
    let fleet = example_fleet();
    let base = rendered();
    // (ipsets field, source selector, principal reported)
    let cases: &[(&str, &str, &str)] = &[
        ("", "alice@example.com", "alice@example.com"),
        // an operator: allowed 22 and 3000 by the catalog, not every port
        ("", "ops@example.com", "ops@example.com"),
        ("", "user:*@example.com", "user:*@example.com"),
        ("", "autogroup:admin", "autogroup:admin"),
        ("", "autogroup:network-admin", "autogroup:network-admin"),
        ("", "autogroup:shared", "autogroup:shared"),
        (
            r#""ipsets": {"ipset:all": ["add 0.0.0.0/0"]}"#,
            "ipset:all",
            "ipset:all",
        ),
        (
            r#""ipsets": {"ipset:one": ["100.64.9.9"]}"#,
            "ipset:one",
            "ipset:one",
        ),
        (
            r#""ipsets": {"ipset:quad": ["add 100.100.0.0/16", "remove 100.100.100.100"]}"#,
            "ipset:quad",
            "ipset:quad",
        ),
        ("", "100.64.9.9", "100.64.9.9"),
        ("", "100.100.0.0/16", "100.100.0.0/16"),
        ("", "0.0.0.0/0", "0.0.0.0/0"),
    ];
    for (top, src, principal) in cases {
        let rule =
            format!(r#"{{"action": "accept", "src": ["{src}"], "dst": ["tag:control-plane:*"]}}"#);
        let (text, line) = with_rule(&base, top, &rule);
        let f = findings(&fleet, &text);
        let over = find(&f, FindingKind::OverGrant, line, principal);
        assert_eq!(over.nodes, ["control-01"], "{over:#?}");
        assert_eq!(over.proto.as_deref(), Some("tcp"), "{over:#?}");
        assert!(
            over.message.contains(&format!(
                "acls[0]: {principal} may reach control-01 on every tcp port"
            )),
            "{}",
            over.message
        );
        // UDP is opened too (no "proto"), and the catalog allows no UDP at all
        let udp = f
            .iter()
            .find(|x| {
                x.line == line
                    && x.source.as_deref() == Some(principal)
                    && x.proto.as_deref() == Some("udp")
            })
            .unwrap_or_else(|| panic!("no udp over-grant: {f:#?}"));
        assert_eq!(udp.ports.as_deref(), Some("*"));
        cli_reports(&text, line, principal);
    }
}

#[test]
fn an_operator_login_keeps_what_the_catalog_gives_it() {
    let (text, line) = with_rule(
        &rendered(),
        "",
        r#"{"action": "accept", "src": ["ops@example.com"], "proto": "tcp", "dst": ["tag:control-plane:*"]}"#,
    );
    let f = findings(&example_fleet(), &text);
    let over = find(&f, FindingKind::OverGrant, line, "ops@example.com");
    // 22 (operators' SSH) and 3000 (langfuse) are the operators' already
    assert_eq!(over.ports.as_deref(), Some("1-21,23-2999,3001-65535"));
    // the group itself is not concerned by a rule naming one member
    assert!(!f
        .iter()
        .any(|x| x.source.as_deref() == Some("group:operators")));
}

#[test]
fn addresses_also_reach_the_nodes_they_cover() {
    let fleet = example_fleet();
    // worker-01's address as a source is worker-01 (tag:worker): only what workers may not reach
    let (text, line) = with_rule(
        &rendered(),
        "",
        r#"{"action": "accept", "src": ["100.64.0.2"], "proto": "tcp", "dst": ["tag:control-plane:4000,5432"]}"#,
    );
    let f = findings(&fleet, &text);
    let w = find(&f, FindingKind::OverGrant, line, "worker-01");
    assert_eq!(w.ports.as_deref(), Some("5432"));
    // a range holding every node: each node is a source, and so is any other device in it
    let (text, line) = with_rule(
        &rendered(),
        r#""ipsets": {"ipset:all": ["add 0.0.0.0/0"]}"#,
        r#"{"action": "accept", "src": ["ipset:all"], "proto": "tcp", "dst": ["tag:control-plane:5432"]}"#,
    );
    let f = findings(&fleet, &text);
    for node in ["worker-01", "worker-02"] {
        assert_eq!(
            find(&f, FindingKind::OverGrant, line, node)
                .ports
                .as_deref(),
            Some("5432")
        );
    }
    // the control plane may reach its own Postgres
    assert!(!f.iter().any(|x| x.source.as_deref() == Some("control-01")));
    find(&f, FindingKind::OverGrant, line, "ipset:all");
}

#[test]
fn ipsets_that_cannot_be_read_are_reported_not_ignored() {
    let fleet = example_fleet();
    for (ipsets, why) in [
        (
            r#""ipsets": {"ipset:x": ["add frobnicate"]}"#,
            "is not \"add\"/\"remove\"",
        ),
        (
            r#""ipsets": {"ipset:x": ["add ipset:y"], "ipset:y": ["ipset:x"]}"#,
            "circular reference",
        ),
    ] {
        let (text, line) = with_rule(
            &rendered(),
            ipsets,
            r#"{"action": "accept", "src": ["ipset:x"], "dst": ["tag:control-plane:*"]}"#,
        );
        let f = findings(&fleet, &text);
        let u = find(&f, FindingKind::Unverifiable, line, "ipset:x");
        assert!(u.message.contains("cannot be verified"), "{}", u.message);
        assert!(u.message.contains(why), "{}", u.message);
        cli_reports(&text, line, "ipset:x");
    }
    // an ipset that is not defined at all
    let (text, line) = with_rule(
        &rendered(),
        "",
        r#"{"action": "accept", "src": ["ipset:nope"], "dst": ["tag:control-plane:*"]}"#,
    );
    let f = findings(&fleet, &text);
    assert!(
        f.iter()
            .any(|x| x.kind == FindingKind::UnknownIpset && x.line == line),
        "{f:#?}"
    );
}

#[test]
fn an_ipv6_range_reaches_every_node() {
    let fleet = example_fleet();
    for (field, rule) in [
        (
            "acls",
            r#"{"action": "accept", "src": ["tag:worker"], "dst": ["fd7a:115c:a1e0::/48:*"]}"#,
        ),
        (
            "grants",
            r#"{"src": ["tag:worker"], "dst": ["fd7a:115c:a1e0::/48"], "ip": ["*"]}"#,
        ),
    ] {
        let base = rendered();
        let (text, line) = if field == "acls" {
            with_rule(&base, "", rule)
        } else {
            let text = base.replacen(
                "  \"ssh\": [\n",
                &format!("  \"grants\": [\n    {rule},\n  ],\n\n  \"ssh\": [\n"),
                1,
            );
            let line = text.lines().position(|l| l.contains(rule)).unwrap() + 1;
            (text, line)
        };
        let f = findings(&fleet, &text);
        let over = f
            .iter()
            .find(|x| {
                x.kind == FindingKind::OverGrant
                    && x.line == line
                    && x.source.as_deref() == Some("tag:worker")
                    && x.proto.as_deref() == Some("tcp")
                    && x.nodes == ["worker-01", "worker-02"]
            })
            .unwrap_or_else(|| panic!("{f:#?}"));
        assert!(over.message.contains("every tcp port"), "{}", over.message);
        cli_reports(&text, line, "tag:worker");
        // `acl matrix` shows it: workers reach every port of every worker
        let p = policy::parse(&text).unwrap().policy;
        let m = matrix::matrix(&fleet, &p);
        let row = m.sources.iter().position(|s| s == "tag:worker").unwrap();
        let col = m.nodes.iter().position(|n| n == "worker-01").unwrap();
        assert!(m.cells[row][col].ports.is_all(), "{:?}", m.cells[row][col]);
        assert!(
            m.table()
                .lines()
                .any(|l| l.starts_with("tag:worker") && l.contains("*/tcp")),
            "{}",
            m.table()
        );
    }
}

#[test]
fn an_ipv6_address_of_unknown_owner_is_unverifiable() {
    let fleet = example_fleet();
    let (text, line) = with_rule(
        &rendered(),
        "",
        r#"{"action": "accept", "src": ["tag:worker"], "dst": ["[fd7a:115c:a1e0::2]:22"]}"#,
    );
    let f = findings(&fleet, &text);
    let u = f
        .iter()
        .find(|x| x.kind == FindingKind::Unverifiable && x.line == line)
        .unwrap_or_else(|| panic!("{f:#?}"));
    assert_eq!(u.nodes, ["control-01", "worker-01", "worker-02"]);
    assert!(
        u.message.contains("IPv6 address is unknown"),
        "{}",
        u.message
    );
    let (code, _) = cli_check(&text);
    assert_eq!(code, 1);
}

/// The example fleet with worker-01 on an IPv6 tailnet address.
fn v6_fleet() -> (tempfile::TempDir, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["nodes.yml", "fleet.yml", "services.yml"] {
        let text = std::fs::read_to_string(example_fleet_dir().join(f)).unwrap();
        let text = text.replace(
            "tailscale_ip: 100.64.0.2",
            "tailscale_ip: fd7a:115c:a1e0::2",
        );
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let fleet = manifest::load(dir.path()).expect("variant is valid");
    (dir, fleet)
}

#[test]
fn a_node_on_ipv6_is_matched_by_its_address() {
    let (_d, fleet) = v6_fleet();
    let base = fleetnix::acl::render::render(&fleet, "x").text;
    assert!(findings(&fleet, &base).is_empty());
    let (text, line) = with_rule(
        &base,
        "",
        r#"{"action": "accept", "src": ["tag:worker"], "proto": "tcp", "dst": ["[fd7a:115c:a1e0::2]:5432"]}"#,
    );
    let f = findings(&fleet, &text);
    let over = find(&f, FindingKind::OverGrant, line, "tag:worker");
    assert_eq!(over.nodes, ["worker-01"]);
    assert_eq!(over.ports.as_deref(), Some("5432"));
    // the others' IPv6 addresses are unknown: it might be one of theirs
    let u = f
        .iter()
        .find(|x| x.kind == FindingKind::Unverifiable && x.line == line)
        .unwrap_or_else(|| panic!("{f:#?}"));
    assert_eq!(u.nodes, ["control-01", "worker-02"]);
    // an IPv4 range covering part of 100.64.0.0/10 cannot say whether it holds worker-01's IPv4
    let (text, line) = with_rule(
        &base,
        "",
        r#"{"action": "accept", "src": ["tag:worker"], "proto": "tcp", "dst": ["100.64.0.0/24:5432"]}"#,
    );
    let f = findings(&fleet, &text);
    let u = f
        .iter()
        .find(|x| x.kind == FindingKind::Unverifiable && x.line == line)
        .unwrap_or_else(|| panic!("{f:#?}"));
    assert_eq!(u.nodes, ["worker-01"]);
    assert!(
        u.message.contains("IPv4 address is unknown"),
        "{}",
        u.message
    );
}

#[test]
fn tag_owners_other_than_the_operators_are_reported() {
    let fleet = example_fleet();
    let base = rendered();
    let old = "    \"tag:control-plane\": [\"group:operators\"],\n";
    assert!(base.contains(old));
    let text = base.replacen(
        old,
        "    \"tag:control-plane\": [\"group:operators\", \"tag:worker\", \"autogroup:member\"],\n",
        1,
    );
    let line = text
        .lines()
        .position(|l| l.contains("\"tag:control-plane\": [\"group:operators\", \"tag:worker\""))
        .unwrap()
        + 1;
    let f = findings(&fleet, &text);
    let esc = find(&f, FindingKind::TagEscalation, line, "tag:worker");
    // the control plane's Postgres, Redis, Temporal and ntfy; no SSH, since the control plane
    // has none (issue 21: deployers hold root)
    for what in ["5432", "6379", "7233", "8090"] {
        assert!(esc.message.contains(what), "{what}: {}", esc.message);
    }
    assert!(!esc.message.contains("SSH"), "{}", esc.message);
    assert_eq!(esc.nodes, ["control-01"]);
    let member = find(&f, FindingKind::TagOwner, line, "autogroup:member");
    assert!(
        member.message.contains("may give tag:control-plane"),
        "{}",
        member.message
    );
    assert!(!f
        .iter()
        .any(|x| x.source.as_deref() == Some("group:operators")));
    cli_reports(&text, line, "tag:worker");
    cli_reports(&text, line, "autogroup:member");

    // a tag owning a tag with less access is still not allowed, but no escalation
    let text = base.replacen(
        "    \"tag:worker\": [\"group:operators\"],\n",
        "    \"tag:worker\": [\"tag:control-plane\", \"autogroup:admin\"],\n",
        1,
    );
    let line = text
        .lines()
        .position(|l| l.contains("\"tag:worker\": [\"tag:control-plane\""))
        .unwrap()
        + 1;
    let f = findings(&fleet, &text);
    find(&f, FindingKind::TagOwner, line, "tag:control-plane");
    assert!(
        !f.iter().any(|x| x.kind == FindingKind::TagEscalation),
        "{f:#?}"
    );
    assert!(!f
        .iter()
        .any(|x| x.source.as_deref() == Some("autogroup:admin")));
    // no owner at all ([] = admins) is fine
    let text = base.replacen(
        "    \"tag:worker\": [\"group:operators\"],\n",
        "    \"tag:worker\": [],\n",
        1,
    );
    assert!(findings(&fleet, &text).is_empty());
}

const NATS_RULE: &str = r#"{"action": "accept", "src": ["tag:control-plane", "tag:worker"], "proto": "tcp", "dst": ["tag:control-plane:4222"]}"#;

#[test]
fn nats_over_udp_is_a_missing_grant() {
    let fleet = example_fleet();
    let base = rendered();
    assert!(base.contains(NATS_RULE));
    for proto in ["udp", "17"] {
        let text = base.replacen(
            NATS_RULE,
            &NATS_RULE.replace(r#""proto": "tcp""#, &format!(r#""proto": "{proto}""#)),
            1,
        );
        let line = text
            .lines()
            .position(|l| l.contains("\"dst\": [\"tag:control-plane:4222\"]"))
            .unwrap()
            + 1;
        let f = findings(&fleet, &text);
        let m = find(&f, FindingKind::MissingGrant, line, "tag:worker");
        assert_eq!(m.proto.as_deref(), Some("tcp"));
        assert_eq!(m.ports.as_deref(), Some("4222"));
        assert!(m.message.contains("agents' NATS"), "{}", m.message);
        assert!(m.message.contains("over udp only"), "{}", m.message);
        assert_eq!(m.nodes, ["control-01"]);
        let o = find(&f, FindingKind::OverGrant, line, "tag:worker");
        assert_eq!(
            (o.proto.as_deref(), o.ports.as_deref()),
            (Some("udp"), Some("4222"))
        );
        cli_reports(&text, line, "tag:worker");
    }
}

#[test]
fn protocols_are_compared_by_number_and_icmp_has_no_ports() {
    let fleet = example_fleet();
    let base = rendered();
    // IANA numbers are the same protocols as their names
    let numbered = base.replace(r#""proto": "tcp", "dst""#, r#""proto": "6", "dst""#);
    assert_ne!(numbered, base);
    assert!(findings(&fleet, &numbered).is_empty());

    // ICMP between workers: an over-grant of ICMP, not of "every port"
    let (text, line) = with_rule(
        &base,
        "",
        r#"{"action": "accept", "src": ["tag:worker"], "proto": "icmp", "dst": ["tag:worker:*"]}"#,
    );
    let f = findings(&fleet, &text);
    let o = find(&f, FindingKind::OverGrant, line, "tag:worker");
    assert_eq!(o.proto.as_deref(), Some("icmp"));
    assert_eq!(o.ports, None);
    assert!(!o.message.contains("every"), "{}", o.message);
    assert!(o.message.contains("on icmp"), "{}", o.message);
    assert_eq!(f.iter().filter(|x| x.line == line).count(), 1, "{f:#?}");
    // ICMP to the control plane: allowed anyway, since workers reach it (ICMP follows any traffic)
    let (text, _) = with_rule(
        &base,
        "",
        r#"{"action": "accept", "src": ["tag:worker"], "proto": "1", "dst": ["tag:control-plane:*"]}"#,
    );
    assert!(findings(&fleet, &text).is_empty());

    // a grant of every protocol: TCP, UDP, SCTP and the rest, each reported
    let text = base.replacen(
        "  \"ssh\": [\n",
        "  \"grants\": [\n    {\"src\": [\"tag:worker\"], \"dst\": [\"tag:worker\"], \"ip\": [\"*\"]},\n  ],\n\n  \"ssh\": [\n",
        1,
    );
    let line = text
        .lines()
        .position(|l| l.contains("\"ip\": [\"*\"]"))
        .unwrap()
        + 1;
    let f = findings(&fleet, &text);
    let mut protos: Vec<&str> = f
        .iter()
        .filter(|x| x.line == line && x.kind == FindingKind::OverGrant)
        .filter_map(|x| x.proto.as_deref())
        .collect();
    protos.sort();
    assert_eq!(
        protos,
        [
            "every other IP protocol",
            "icmp",
            "ipv6-icmp",
            "sctp",
            "tcp",
            "udp"
        ],
        "{f:#?}"
    );
}

#[test]
fn json_names_kind_line_source_and_protocol() {
    let (text, line) = with_rule(
        &rendered(),
        "",
        r#"{"action": "accept", "src": ["autogroup:shared"], "proto": "tcp", "dst": ["tag:control-plane:22"]}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.hujson");
    std::fs::write(&file, &text).unwrap();
    let out = Command::cargo_bin("fleetnix")
        .unwrap()
        .arg("--root")
        .arg(repo())
        .args(["acl", "check", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["source"] == "autogroup:shared")
        .unwrap();
    assert_eq!(f["kind"], "over-grant");
    assert_eq!(f["line"], line);
    assert_eq!(f["proto"], "tcp");
    assert_eq!(f["ports"], "22");
}

#[test]
fn the_matrix_has_a_row_per_named_principal() {
    let fleet = example_fleet();
    let (text, _) = with_rule(
        &rendered(),
        "",
        r#"{"action": "accept", "src": ["alice@example.com", "autogroup:admin"], "proto": "tcp", "dst": ["tag:control-plane:5432"]}"#,
    );
    let m = matrix::matrix(&fleet, &policy::parse(&text).unwrap().policy);
    let table = m.table();
    for (who, cell) in [
        ("alice@example.com", "5432"),
        ("autogroup:admin", "5432"),
        // the operator keeps the operators' access
        ("ops@example.com", "22,3000 ssh:root,nonroot"),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap_or_else(|| panic!("no row {who}:\n{table}"));
        assert!(row.contains(cell), "{row}");
    }
}

#[test]
fn ssh_rules_are_checked_for_every_principal() {
    let fleet = example_fleet();
    let base = rendered();
    for (rule, source, nodes, users) in [
        (
            r#"{"action": "accept", "src": ["autogroup:admin"], "dst": ["tag:control-plane"], "users": ["root"]}"#,
            "autogroup:admin",
            vec!["control-01"],
            "as root",
        ),
        (
            r#"{"action": "check", "src": ["alice@example.com"], "dst": ["tag:worker"], "users": ["ubuntu"]}"#,
            "alice@example.com",
            vec!["worker-01", "worker-02"],
            "as ubuntu",
        ),
        (
            r#"{"action": "accept", "src": ["tag:worker"], "dst": ["tag:control-plane"], "users": ["autogroup:nonroot"]}"#,
            "tag:worker",
            vec!["control-01"],
            "as any non-root user",
        ),
    ] {
        let text = base.replacen("  \"ssh\": [\n", &format!("  \"ssh\": [\n    {rule},\n"), 1);
        let line = text.lines().position(|l| l.contains(rule)).unwrap() + 1;
        let f = findings(&fleet, &text);
        let o = find(&f, FindingKind::SshOverGrant, line, source);
        assert_eq!(o.nodes, nodes, "{o:#?}");
        assert!(o.message.contains(users), "{}", o.message);
        cli_reports(&text, line, source);
    }
}

#[test]
fn a_host_alias_named_like_a_node_is_not_that_node() {
    // rule 0 makes worker-01 (by its address) a source; rule 1 names a `hosts` alias
    // "worker-01" at another address: that device is not worker-01 and may reach nothing
    let by_node = r#"{"action": "accept", "src": ["100.64.0.2"], "proto": "tcp", "dst": ["tag:control-plane:4000"]}"#;
    let by_alias = r#"{"action": "accept", "src": ["worker-01"], "proto": "tcp", "dst": ["tag:control-plane:4000"]}"#;
    let (text, line) = with_rule(
        &rendered(),
        r#""hosts": {"worker-01": "100.64.9.9"}"#,
        &format!("{by_node},\n    {by_alias}"),
    );
    let f = findings(&example_fleet(), &text);
    assert!(!f.iter().any(|x| x.line == line), "{f:#?}");
    let o = find(&f, FindingKind::OverGrant, line + 1, "worker-01");
    assert_eq!(o.ports.as_deref(), Some("4000"));
}
