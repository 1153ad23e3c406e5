//! Issue 23 item 5: the blast radius of a policy change (`fleetnix acl diff`, and `acl set`
//! refusing losses without `--yes`), computed with the policy evaluator, against the fake API.

mod acl_fake_api;
mod common;

use acl_fake_api::FakeApi;
use assert_cmd::Command;
use common::{example_fleet, repo};
use fleetnix::acl::apply::{self, ApplyError, SetOptions};
use fleetnix::acl::diff::{diff_texts, PolicyDiff, PrincipalDiff};
use fleetnix::secret::Secret;
use fleetnix::tailscale::api::Client;
use std::path::Path;

fn token() -> String {
    format!("tskey-api-{}", "FAKE-d1ff-test-only")
}

fn rendered() -> String {
    fleetnix::acl::render::render(&example_fleet(), "fleet/").text
}

/// The operators' `ssh` rule of the rendered policy.
const OPS_SSH: &str = r#"    {"action": "accept", "src": ["group:operators"], "dst": ["tag:control-plane", "tag:worker"], "users": ["root", "autogroup:nonroot"]},
"#;

fn without_ops_ssh() -> String {
    let r = rendered();
    assert!(r.contains(OPS_SSH), "{r}");
    r.replace(OPS_SSH, "")
}

fn of<'d>(d: &'d PolicyDiff, who: &str) -> &'d PrincipalDiff {
    d.principals
        .iter()
        .find(|p| p.principal == who)
        .unwrap_or_else(|| panic!("no {who} in {d:#?}"))
}

fn ssh_lost(p: &PrincipalDiff) -> Vec<(String, String)> {
    p.ssh_loses
        .iter()
        .map(|c| (c.node.clone(), c.user.clone()))
        .collect()
}

#[test]
fn dropping_the_operators_ssh_rule_shows_them_losing_ssh_to_every_node() {
    let fleet = example_fleet();
    let d = diff_texts(&fleet, &rendered(), &without_ops_ssh(), "old", "new").unwrap();
    let ops = of(&d, "group:operators");
    let mut want = Vec::new();
    for n in ["control-01", "worker-01", "worker-02"] {
        want.push((n.to_string(), "any non-root user".to_string()));
        want.push((n.to_string(), "root".to_string()));
    }
    assert_eq!(ssh_lost(ops), want);
    assert!(ops.gains.is_empty() && ops.loses.is_empty() && ops.ssh_gains.is_empty());
    // the operator's login loses the same; nobody else changes
    assert_eq!(ssh_lost(of(&d, "ops@example.com")), want);
    let who: Vec<&str> = d.principals.iter().map(|p| p.principal.as_str()).collect();
    assert_eq!(who, ["group:operators", "ops@example.com"]);
    assert!(d.has_losses());
    assert!(d.text().contains("group:operators\n  - ssh control-01 as any non-root user\n  - ssh control-01 as root\n"), "{}", d.text());
    // the reverse is all gains
    let back = diff_texts(&fleet, &without_ops_ssh(), &rendered(), "a", "b").unwrap();
    assert!(!back.has_losses());
    assert_eq!(of(&back, "group:operators").ssh_gains.len(), 6);
}

#[test]
fn issue_21_takes_only_ssh_from_the_control_plane() {
    // the policy rendered before deployers: the control plane had SSH as root and port 22
    let before =
        std::fs::read_to_string(repo().join("tests/fixtures/acl-policy-before-deployers.hujson"))
            .unwrap();
    let d = diff_texts(&example_fleet(), &before, &rendered(), "before", "after").unwrap();
    let who: Vec<&str> = d.principals.iter().map(|p| p.principal.as_str()).collect();
    assert_eq!(who, ["tag:control-plane"], "{}", d.text());
    let cp = of(&d, "tag:control-plane");
    assert!(cp.gains.is_empty() && cp.ssh_gains.is_empty());
    let lost: Vec<String> = cp
        .loses
        .iter()
        .map(|c| format!("{}:{}", c.node, c.ports))
        .collect();
    assert_eq!(
        lost,
        ["control-01:22/tcp", "worker-01:22/tcp", "worker-02:22/tcp"]
    );
    assert_eq!(
        ssh_lost(cp),
        ["control-01", "worker-01", "worker-02"].map(|n| (n.to_string(), "root".to_string()))
    );
}

#[test]
fn a_rule_naming_a_node_address_shows_that_node() {
    let fleet = example_fleet();
    let old = rendered();
    let new = old.replacen(
        "  \"acls\": [\n",
        "  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"100.64.0.2\"], \"proto\": \"tcp\", \"dst\": [\"tag:control-plane:5432\"]},\n",
        1,
    );
    let d = diff_texts(&fleet, &old, &new, "old", "new").unwrap();
    let w = of(&d, "worker-01");
    let gained: Vec<String> = w
        .gains
        .iter()
        .map(|c| format!("{}:{}", c.node, c.ports))
        .collect();
    assert_eq!(gained, ["control-01:5432/tcp"]);
    assert!(!d
        .principals
        .iter()
        .any(|p| p.principal == "worker-02" || p.principal == "tag:worker"));
    assert!(!d.has_losses());
    // equal policies: nothing
    assert!(diff_texts(&fleet, &old, &old, "a", "b").unwrap().is_empty());
}

fn cli(fleet_dir: &Path) -> Command {
    let mut c = Command::cargo_bin("fleetnix").unwrap();
    c.arg("--root")
        .arg(repo())
        .arg("--fleet-dir")
        .arg(fleet_dir)
        .env_remove("TS_API_KEY");
    c
}

fn fleet_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_example_fleet(dir.path());
    dir
}

#[test]
fn cli_diff_of_two_files_text_and_json() {
    let fleet = fleet_copy();
    let old = fleet.path().join("old.hujson");
    let new = fleet.path().join("new.hujson");
    std::fs::write(&old, rendered()).unwrap();
    std::fs::write(&new, without_ops_ssh()).unwrap();
    // no token needed for two files
    let out = cli(fleet.path())
        .args(["acl", "diff"])
        .arg(&old)
        .arg(&new)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("group:operators\n  - ssh control-01 as any non-root user\n"),
        "{text}"
    );
    assert!(text.contains("  - ssh worker-02 as root\n"), "{text}");

    let out = cli(fleet.path())
        .args(["acl", "diff", "--json"])
        .arg(&old)
        .arg(&new)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["losses"], true);
    assert_eq!(v["principals"][0]["principal"], "group:operators");
    assert_eq!(v["principals"][0]["ssh_loses"].as_array().unwrap().len(), 6);
    assert_eq!(
        v["principals"][0]["ssh_loses"][1],
        serde_json::json!({"node": "control-01", "user": "root", "action": "accept"})
    );

    // the same file twice: no change, exit 0
    let out = cli(fleet.path())
        .args(["acl", "diff"])
        .arg(&old)
        .arg(&old)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("no change in access"));
}

#[test]
fn cli_diff_of_one_file_is_against_the_live_policy() {
    let fake = FakeApi::start(&token(), &rendered());
    let fleet = fleet_copy();
    let new = fleet.path().join("new.hujson");
    std::fs::write(&new, without_ops_ssh()).unwrap();
    let out = cli(fleet.path())
        .env("FLEETNIX_TS_API_URL", &fake.base)
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1")
        .env("TS_API_KEY", token())
        .args(["acl", "diff"])
        .arg(&new)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("access from tailnet (remote) to "),
        "{text}"
    );
    assert!(
        text.contains("group:operators\n  - ssh control-01"),
        "{text}"
    );
    assert_eq!(fake.state().seen.len(), 1, "one GET");
    assert!(!text.contains(&token()));
}

fn client(fake: &FakeApi) -> Client {
    // The fake serves plain http on loopback: the test-only override lets the client use it.
    std::env::set_var("FLEETNIX_ALLOW_INSECURE_URLS", "1");
    Client::new(&fake.base, "-", Secret::from(token())).unwrap()
}

#[tokio::test]
async fn set_refuses_losses_without_yes_and_applies_with_it() {
    let fake = FakeApi::start(&token(), &rendered());
    let dir = tempfile::tempdir().unwrap();
    let fleet = example_fleet();
    // a policy that keeps deploys (the guard passes: operators are the deployers, kept by a
    // rule of their own) but takes the non-root logins away
    let new = rendered().replace(
        "\"users\": [\"root\", \"autogroup:nonroot\"]",
        "\"users\": [\"root\"]",
    );
    assert_ne!(new, rendered());
    let err = apply::set(
        &client(&fake),
        &fleet,
        dir.path(),
        &new,
        &SetOptions::default(),
    )
    .await
    .unwrap_err();
    let ApplyError::Losses { diff } = &err else {
        panic!("{err}")
    };
    assert_eq!(diff.losers(), ["group:operators", "ops@example.com"]);
    let msg = err.to_string();
    assert!(
        msg.contains("  - ssh worker-01 as any non-root user"),
        "{msg}"
    );
    assert!(msg.contains("--yes"), "{msg}");
    {
        let st = fake.state();
        assert_eq!(st.policy, rendered(), "nothing applied");
        assert!(st.seen.iter().all(|s| s.method == "GET"), "{:?}", st.seen);
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("acl-backup-")));

    let out = apply::set(
        &client(&fake),
        &fleet,
        dir.path(),
        &new,
        &SetOptions {
            yes: true,
            ..SetOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(!out.unchanged);
    assert!(out.blast.as_ref().unwrap().has_losses());
    assert_eq!(fake.state().policy, new);

    // gains only: applied without --yes
    let out = apply::set(
        &client(&fake),
        &fleet,
        dir.path(),
        &rendered(),
        &SetOptions::default(),
    )
    .await
    .unwrap();
    assert!(!out.blast.unwrap().has_losses());
    assert_eq!(fake.state().policy, rendered());
}

#[test]
fn cli_set_shows_the_losses_and_needs_yes() {
    let fake = FakeApi::start(&token(), &rendered());
    let fleet = fleet_copy();
    let new = fleet.path().join("new.hujson");
    std::fs::write(
        &new,
        rendered().replace(
            "\"users\": [\"root\", \"autogroup:nonroot\"]",
            "\"users\": [\"root\"]",
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        cli(fleet.path())
            .env("FLEETNIX_TS_API_URL", &fake.base)
            .env("FLEETNIX_ALLOW_INSECURE_URLS", "1")
            .env("TS_API_KEY", token())
            .args(["acl", "set"])
            .args(extra)
            .arg(&new)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("takes access away from group:operators, ops@example.com"),
        "{err}"
    );
    assert!(
        err.contains("- ssh control-01 as any non-root user"),
        "{err}"
    );
    assert_eq!(fake.state().policy, rendered());
    let out = run(&["--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("- ssh control-01 as any non-root user"),
        "{stdout}"
    );
    assert_eq!(fake.state().policy, std::fs::read_to_string(&new).unwrap());
}

#[tokio::test]
async fn the_server_rejects_a_hand_edit_giving_the_control_plane_root() {
    // the rendered sshTests make the control server refuse the old deploy rule
    let fake = FakeApi::start(&token(), &rendered());
    let dir = tempfile::tempdir().unwrap();
    let edited = rendered().replacen(
        "  \"ssh\": [\n",
        "  \"ssh\": [\n    {\"action\": \"accept\", \"src\": [\"tag:control-plane\"], \"dst\": [\"tag:worker\"], \"users\": [\"root\"]},\n",
        1,
    );
    let err = apply::set(
        &client(&fake),
        &example_fleet(),
        dir.path(),
        &edited,
        &SetOptions::default(),
    )
    .await
    .unwrap_err();
    let ApplyError::Api(fleetnix::tailscale::api::ApiError::Rejected {
        message, details, ..
    }) = &err
    else {
        panic!("{err}")
    };
    assert_eq!(message, "test(s) failed");
    // the answer groups the failure under the test's src (`data[].user`), as the reference shows
    assert!(
        details.iter().any(|d| d.starts_with("tag:control-plane: ")
            && d.contains("tag:worker as \"root\": want: Deny, got: Accept")),
        "{details:?}"
    );
    assert_eq!(fake.state().policy, rendered());
}
