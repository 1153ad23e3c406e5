//! The policy evaluator against hand-computed answers: tags, groups, users, autogroups,
//! `*` hosts and ports, port ranges, protocols, addresses, host aliases, and SSH users.

use fleetnix::acl::addrs::Covers;
use fleetnix::acl::eval::{Evaluator, Principal, SshDecision};
use fleetnix::acl::policy::{self, Policy, Selector, TCP, UDP};
use std::net::IpAddr;

const POLICY: &str = r#"{
  // line 2
  "groups": {
    "group:ops": ["alice@example.com"],
    "group:dev": ["bob@example.com", "carol@example.com"],
  },
  "hosts": {"db": "100.64.0.9", "lab": "100.64.1.0/24"},
  "tagOwners": {"tag:cp": ["group:ops"], "tag:w": ["group:ops"], "tag:db": []},
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["*:22"]},
    {"action": "accept", "src": ["tag:w"], "proto": "tcp", "dst": ["tag:cp:4000,4222"]},
    {"action": "accept", "src": ["tag:cp"], "dst": ["tag:w:*"]},
    {"action": "accept", "src": ["group:dev"], "dst": ["autogroup:self:*", "tag:db:5000-5010"]},
    {"action": "accept", "src": ["autogroup:member"], "proto": "udp", "dst": ["tag:cp:53"]},
    {"action": "accept", "src": ["autogroup:tagged"], "dst": ["db:5432"]},
    {"action": "accept", "src": ["lab"], "dst": ["100.64.0.1:8080"]},
  ],
  "ssh": [
    {"action": "accept", "src": ["tag:cp"], "dst": ["tag:w"], "users": ["root"]},
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:cp", "tag:w"], "users": ["root", "autogroup:nonroot"]},
    {"action": "check", "src": ["group:ops"], "dst": ["tag:db"], "users": ["root"]},
    {"action": "accept", "src": ["group:dev"], "dst": ["autogroup:self"], "users": ["localpart:*@example.com"]},
  ],
}"#;

fn policy() -> Policy {
    let p = policy::parse(POLICY).unwrap();
    assert!(p.issues.is_empty(), "{:?}", p.issues);
    p.policy
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn device(user: &str, policy: &Policy) -> Principal {
    Principal {
        ip: Some(ip("100.64.2.7")),
        ..Principal::user(user, policy)
    }
}

#[test]
fn tags_and_ports() {
    let p = policy();
    let ev = Evaluator::new(&p);
    let (w, cp) = (Principal::tag("tag:w"), Principal::tag("tag:cp"));
    // rule 2: tcp only, two ports
    assert!(ev.reach(&w, &cp, 4000, TCP).is_some());
    assert!(ev.reach(&w, &cp, 4222, TCP).is_some());
    assert!(ev.reach(&w, &cp, 4222, UDP).is_none());
    assert!(ev.reach(&w, &cp, 5432, TCP).is_none());
    assert!(ev.reach(&w, &w, 22, TCP).is_none());
    assert_eq!(ev.ports(&w, &cp, Some(TCP)).to_string(), "4000,4222");
    // rule 3: `*` ports, any of tcp/udp
    assert!(ev.reach(&cp, &w, 1, TCP).is_some());
    assert!(ev.reach(&cp, &w, 65535, UDP).is_some());
    assert!(ev.ports(&cp, &w, None).is_all());
    // deny by default the other way round
    assert!(ev.reach(&cp, &cp, 4000, TCP).is_none());
    // the rule reported is the one that grants
    assert_eq!(ev.reach(&w, &cp, 4000, TCP).unwrap().index, 1);
}

#[test]
fn groups_users_and_star_hosts() {
    let p = policy();
    let ev = Evaluator::new(&p);
    let alice = Principal::user("alice@example.com", &p);
    let bob = Principal::user("bob@example.com", &p);
    let ops = Principal::group("group:ops");
    let (w, cp) = (Principal::tag("tag:w"), Principal::tag("tag:cp"));
    // `*:22` reaches every device, tagged or not, for group:ops (by membership or as the group)
    for who in [&alice, &ops] {
        assert!(ev.reach(who, &w, 22, TCP).is_some());
        assert!(ev.reach(who, &cp, 22, TCP).is_some());
        assert!(ev.reach(who, &bob, 22, TCP).is_some());
        assert!(ev.reach(who, &w, 23, TCP).is_none());
    }
    // bob is in group:dev, not group:ops
    assert!(ev.reach(&bob, &w, 22, TCP).is_none());
    // a tag is never a group member
    assert!(ev.reach(&w, &cp, 22, TCP).is_none());
}

#[test]
fn autogroups() {
    let p = policy();
    let ev = Evaluator::new(&p);
    let bob = device("bob@example.com", &p);
    let carol = device("carol@example.com", &p);
    let (w, cp, db) = (
        Principal::tag("tag:w"),
        Principal::tag("tag:cp"),
        Principal::tag("tag:db"),
    );
    // autogroup:self: bob's own (untagged) devices only
    assert!(ev.reach(&bob, &bob, 1234, TCP).is_some());
    assert!(ev.reach(&bob, &carol, 1234, TCP).is_none());
    // port range 5000-5010 on tag:db
    assert!(ev.reach(&bob, &db, 5000, TCP).is_some());
    assert!(ev.reach(&bob, &db, 5010, UDP).is_some());
    assert!(ev.reach(&bob, &db, 5011, TCP).is_none());
    // autogroup:member: users and group members, never tags; udp only
    assert!(ev.reach(&bob, &cp, 53, UDP).is_some());
    assert!(ev
        .reach(&Principal::group("group:ops"), &cp, 53, UDP)
        .is_some());
    assert!(ev.reach(&Principal::any_member(), &cp, 53, UDP).is_some());
    assert!(ev.reach(&bob, &cp, 53, TCP).is_none());
    assert!(ev.reach(&w, &cp, 53, UDP).is_none());
    // autogroup:tagged → host alias db (100.64.0.9): only a device with that address
    let db_node = Principal::node("db-01", ip("100.64.0.9"), &["tag:db".to_string()]);
    let other = Principal::node("db-02", ip("100.64.0.10"), &["tag:db".to_string()]);
    assert!(ev.reach(&w, &db_node, 5432, TCP).is_some());
    assert!(ev.reach(&w, &other, 5432, TCP).is_none());
    assert!(ev.reach(&bob, &db_node, 5432, TCP).is_none());
}

#[test]
fn addresses_and_cidr_aliases() {
    let p = policy();
    let ev = Evaluator::new(&p);
    let cp_node = Principal::node("control-01", ip("100.64.0.1"), &["tag:cp".to_string()]);
    let in_lab = Principal::node("lab-5", ip("100.64.1.5"), &[]);
    let outside = Principal::node("x", ip("100.64.2.5"), &[]);
    assert!(ev.reach(&in_lab, &cp_node, 8080, TCP).is_some());
    assert!(ev.reach(&outside, &cp_node, 8080, TCP).is_none());
    // a tag principal without an address does not match address rules
    assert!(ev
        .reach(&in_lab, &Principal::tag("tag:cp"), 8080, TCP)
        .is_none());
}

#[test]
fn ssh_users_and_actions() {
    let p = policy();
    let ev = Evaluator::new(&p);
    let (w, cp, db) = (
        Principal::tag("tag:w"),
        Principal::tag("tag:cp"),
        Principal::tag("tag:db"),
    );
    let ops = Principal::group("group:ops");
    assert!(matches!(ev.ssh(&cp, &w, "root"), SshDecision::Accept(l) if l.line == 19));
    assert_eq!(ev.ssh(&cp, &w, "ubuntu"), SshDecision::Deny);
    assert_eq!(ev.ssh(&cp, &cp, "root"), SshDecision::Deny);
    assert_eq!(ev.ssh(&w, &cp, "root"), SshDecision::Deny);
    // autogroup:nonroot: any user but root
    assert!(matches!(ev.ssh(&ops, &w, "ubuntu"), SshDecision::Accept(_)));
    assert!(matches!(ev.ssh(&ops, &cp, "root"), SshDecision::Accept(_)));
    // check rule
    assert!(matches!(ev.ssh(&ops, &db, "root"), SshDecision::Check(_)));
    assert_eq!(ev.ssh(&ops, &db, "ubuntu"), SshDecision::Deny);
    // localpart:*@example.com → own devices, as the login's local part only
    let bob = device("bob@example.com", &p);
    let carol = device("carol@example.com", &p);
    assert!(matches!(ev.ssh(&bob, &bob, "bob"), SshDecision::Accept(_)));
    assert_eq!(ev.ssh(&bob, &bob, "carol"), SshDecision::Deny);
    assert_eq!(ev.ssh(&bob, &carol, "bob"), SshDecision::Deny);
    // Tailscale SSH also needs a network rule to 22: ops has `*:22`, tag:cp → tag:w has `*`
    assert!(ev.ssh_works(&ops, &w, "root"));
    assert!(ev.ssh_works(&cp, &w, "root"));
    assert!(
        !ev.ssh_works(&ops, &db, "root"),
        "check is not a non-interactive accept"
    );
}

#[test]
fn policy_tests_are_run() {
    let text = r#"{
      "tagOwners": {"tag:a": [], "tag:b": []},
      "acls": [{"action": "accept", "src": ["tag:a"], "dst": ["tag:b:22"]}],
      "ssh": [{"action": "accept", "src": ["tag:a"], "dst": ["tag:b"], "users": ["root"]}],
      "tests": [
        {"src": "tag:a", "accept": ["tag:b:22"], "deny": ["tag:b:23"]},
        {"src": "tag:b", "accept": ["tag:a:22"]},
      ],
      "sshTests": [
        {"src": "tag:a", "dst": ["tag:b"], "accept": ["root"], "deny": ["ubuntu"]},
        {"src": "tag:b", "dst": ["tag:a"], "accept": ["root"]},
      ],
    }"#;
    let p = policy::parse(text).unwrap();
    assert!(p.issues.is_empty(), "{:?}", p.issues);
    let failures = Evaluator::new(&p.policy).run_tests();
    let msgs: Vec<&str> = failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(failures.len(), 2, "{msgs:?}");
    assert_eq!(failures[0].test, "tests[1]");
    assert!(msgs[0].contains("want: Accept, got: Drop"), "{msgs:?}");
    assert_eq!(failures[1].test, "sshTests[1]");
    assert!(msgs[1].contains("want: Accept, got: Deny"), "{msgs:?}");
}

#[test]
fn grants_are_network_rules_too() {
    let text = r#"{"grants": [{"src": ["tag:a"], "dst": ["tag:b"], "ip": ["tcp:443", "udp:53"]}]}"#;
    let p = policy::parse(text).unwrap();
    let ev = Evaluator::new(&p.policy);
    let (a, b) = (Principal::tag("tag:a"), Principal::tag("tag:b"));
    assert!(ev.reach(&a, &b, 443, TCP).is_some());
    assert!(ev.reach(&a, &b, 443, UDP).is_none());
    assert!(ev.reach(&a, &b, 53, UDP).is_some());
    assert_eq!(ev.ports(&a, &b, None).to_string(), "53,443");
}

#[test]
fn roles_shared_users_and_domains() {
    let text = r#"{
      "groups": {"group:ops": ["ops@example.com"]},
      "acls": [
        {"action": "accept", "src": ["autogroup:admin"], "proto": "tcp", "dst": ["tag:cp:22"]},
        {"action": "accept", "src": ["autogroup:shared"], "proto": "tcp", "dst": ["tag:cp:80"]},
        {"action": "accept", "src": ["user:*@example.com"], "proto": "tcp", "dst": ["tag:cp:443"]},
        {"action": "accept", "src": ["autogroup:member"], "proto": "tcp", "dst": ["tag:cp:8080"]},
      ],
    }"#;
    let p = policy::parse(text).unwrap().policy;
    let ev = Evaluator::new(&p);
    let cp = Principal::tag("tag:cp");
    let (admin, shared) = (Principal::role("admin"), Principal::shared());
    let (alice, anyone) = (
        Principal::login("alice@example.com"),
        Principal::domain_user("example.com"),
    );
    let other = Principal::login("bob@elsewhere.org");
    let port = |p: &Principal| ev.ports(p, &cp, Some(TCP)).to_string();
    // an admin is a member with a role: 22 as admin, 8080 as a member
    assert_eq!(port(&admin), "22,8080");
    assert_eq!(port(&Principal::role("network-admin")), "8080");
    // a shared-in user is not a member of this tailnet
    assert_eq!(port(&shared), "80");
    // user:*@example.com: every login of the domain, and "some user of it"
    assert_eq!(port(&alice), "443,8080");
    assert_eq!(port(&anyone), "443,8080");
    assert_eq!(port(&other), "8080");
    // a tagged device is none of these
    assert_eq!(
        ev.ports(&Principal::tag("tag:w"), &cp, Some(TCP))
            .to_string(),
        "none"
    );
}

#[test]
fn ipsets_and_unknown_ipv6_addresses() {
    let text = r#"{
      "hosts": {"db": "100.64.0.9"},
      "ipsets": {
        "ipset:lab": ["add 100.64.1.0/24", "remove 100.64.1.7", "add db"],
        "ipset:v6": ["fd7a:115c:a1e0::/48"],
        "ipset:bad": ["add tag:cp"],
      },
      "acls": [
        {"action": "accept", "src": ["ipset:lab"], "proto": "tcp", "dst": ["ipset:v6:22"]},
        {"action": "accept", "src": ["ipset:bad"], "proto": "tcp", "dst": ["*:80"]},
      ],
    }"#;
    let parsed = policy::parse(text).unwrap();
    assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
    let p = parsed.policy;
    let ev = Evaluator::new(&p);
    let node = |name: &str, addr: &str| Principal::node(name, ip(addr), &["tag:n".to_string()]);
    let (a, removed, db, outside) = (
        node("a", "100.64.1.5"),
        node("b", "100.64.1.7"),
        node("db", "100.64.0.9"),
        node("c", "100.64.2.5"),
    );
    // every node has an IPv6 address in fd7a:115c:a1e0::/48, unknown here but covered whole
    assert!(ev.reach(&a, &outside, 22, TCP).is_some());
    assert!(ev.reach(&db, &a, 22, TCP).is_some());
    assert!(ev.reach(&removed, &a, 22, TCP).is_none());
    assert!(ev.reach(&outside, &a, 22, TCP).is_none());
    // an ipset the evaluator cannot read matches nothing, and says it cannot tell
    assert!(ev.reach(&a, &outside, 80, TCP).is_none());
    let bad = Selector::IpSet("ipset:bad".into());
    assert_eq!(ev.covers(&bad, &a), Some(Covers::Unknown));
    assert!(ev.ipset("ipset:bad").unwrap().is_err());
    // one IPv6 address: it may or may not be a node's
    let one = Selector::Ip(ip("fd7a:115c:a1e0::5"));
    assert_eq!(ev.covers(&one, &a), Some(Covers::Unknown));
    let v6 = Principal::node("v6", ip("fd7a:115c:a1e0::5"), &[]);
    assert_eq!(ev.covers(&one, &v6), Some(Covers::Yes));
    assert_eq!(ev.covers(&Selector::Tag("tag:n".into()), &a), None);
}

#[test]
fn access_per_protocol() {
    let text = r#"{
      "acls": [
        {"action": "accept", "src": ["tag:a"], "dst": ["tag:b:53"]},
        {"action": "accept", "src": ["tag:a"], "proto": "icmp", "dst": ["tag:c:*"]},
        {"action": "accept", "src": ["tag:a"], "proto": "47", "dst": ["tag:c:*"]},
      ],
      "grants": [{"src": ["tag:a"], "dst": ["tag:d"], "ip": ["*"]}],
    }"#;
    let p = policy::parse(text).unwrap().policy;
    let ev = Evaluator::new(&p);
    let t = |s: &str| Principal::tag(s);
    let (a, b, c, d) = (t("tag:a"), t("tag:b"), t("tag:c"), t("tag:d"));
    // no proto: TCP and UDP; ICMP goes along
    assert_eq!(ev.access(&a, &b).text(), "53/tcp 53/udp");
    assert_eq!(
        ev.access(&a, &b).with_implied_icmp().text(),
        "53/tcp 53/udp icmp ipv6-icmp"
    );
    assert!(ev.reach(&a, &b, 0, policy::ICMP).is_some());
    // ICMP and GRE have no ports: never "every port"
    assert_eq!(ev.access(&a, &c).text(), "icmp gre");
    assert!(ev.ports(&a, &c, None).is_empty());
    // `*`: every protocol
    assert_eq!(
        ev.access(&a, &d).text(),
        "*/tcp */udp */sctp icmp ipv6-icmp every other IP protocol"
    );
    assert!(ev.reach(&a, &d, 1, 47).is_some());
    assert!(ev.reach(&b, &a, 53, UDP).is_none());
}
