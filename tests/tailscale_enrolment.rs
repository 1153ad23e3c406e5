//! Issue 23, "no stranded node": `fleetnix status --enrolment` against the in-process fake
//! Tailscale API (devices, key metadata; shared reference tailscale-api.md) names a node whose
//! pre-auth key expired and that is not in the tailnet as stranded (exit 1) with the fix, and
//! after the documented fix (`fleetnix authkey mint NODE`) it does not. Also: credentials of
//! the wrong kind are refused by `secrets set-authkey` without being echoed.

mod acl_fake_api;
mod common;
mod secrets_util;

use acl_fake_api::FakeApi;
use secrets_util::*;
use std::time::Duration;

fn token() -> String {
    format!("tskey-api-{}", "FAKE-enrolment-test-only")
}

fn key(id: &str) -> String {
    format!("tskey-auth-{id}-{}", "FAKEsecretpart")
}

/// A fleet whose three nodes have host keys and an operator who can decrypt their secrets.
fn fleet() -> (TestFleet, std::path::PathBuf) {
    let t = TestFleet::new();
    for n in ["control-01", "worker-01", "worker-02"] {
        t.add_host_key(n);
    }
    let (op, op_pub) = age_keygen(&t.keys, "op.age");
    t.set_operators(&[("ops", &op_pub)]);
    (t, op)
}

fn store(t: &TestFleet, node: &str, k: &str) {
    let out = run(t
        .bin()
        .args(["secrets", "set-authkey", node])
        .env("TAILSCALE_AUTHKEY", k));
    assert!(out.status.success(), "{out:?}");
}

fn api_env<'a>(c: &'a mut std::process::Command, fake: &FakeApi) -> &'a mut std::process::Command {
    c.env("TS_API_KEY", token())
        .env("FLEETNIX_TS_API_URL", &fake.base)
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1")
}

fn status(t: &TestFleet, fake: &FakeApi, op: &std::path::Path) -> (Option<i32>, String) {
    let mut c = t.bin();
    c.args(["status", "--enrolment", "--identity"]).arg(op);
    let out = run(api_env(&mut c, fake));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn an_expired_key_of_a_node_not_in_the_tailnet_is_stranded_until_a_fresh_key_is_minted() {
    let (t, op) = fleet();
    let fake = FakeApi::start(&token(), "{}");
    {
        let mut st = fake.state();
        let n = &mut st.tailnet;
        n.add_key("kCP1CNTRL", 30 * 24 * 3600, serde_json::json!({}));
        n.add_key("kW2CNTRL", 30 * 24 * 3600, serde_json::json!({}));
        n.add_expired_key("kOLD1CNTRL", Duration::from_secs(5 * 24 * 3600));
        n.add_device(
            "nCP1CNTRL",
            "control-01",
            "control-01",
            "100.64.0.1",
            true,
            &["tag:control-plane"],
        );
        n.add_device(
            "nW2CNTRL",
            "worker-02",
            "worker-02",
            "100.64.0.3",
            true,
            &["tag:worker"],
        );
        // worker-01 was re-imaged: only its old, offline record is left.
        n.add_device(
            "nW1OLDCNTRL",
            "worker-01",
            "worker-01",
            "100.64.0.2",
            false,
            &["tag:worker"],
        );
    }
    store(&t, "control-01", &key("kCP1CNTRL"));
    store(&t, "worker-02", &key("kW2CNTRL"));
    store(&t, "worker-01", &key("kOLD1CNTRL"));

    let (code, text) = status(&t, &fake, &op);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("stranded (1):"), "{text}");
    let stranded = &text[text.find("stranded (1):").unwrap()..];
    assert!(stranded.contains("worker-01: it is not online"), "{text}");
    assert!(stranded.contains("pre-auth key is invalid"), "{text}");
    assert!(
        stranded.contains("fix: `fleetnix authkey mint worker-01`"),
        "{text}"
    );
    assert!(
        !stranded.contains("control-01") && !stranded.contains("worker-02:"),
        "{text}"
    );
    assert!(
        !text.contains("FAKEsecretpart"),
        "a key was printed: {text}"
    );
    // The table: kinds, key ids, validity.
    let row = |node: &str| {
        text.lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no row for {node}: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let w1 = row("worker-01");
    assert_eq!(&w1[1..3], ["pre-auth-key", "kOLD1CNTRL"], "{w1:?}");
    assert_eq!(w1[4..6], ["no", "no"], "{w1:?}");
    let w2 = row("worker-02");
    assert_eq!(w2[4..6], ["yes", "yes"], "{w2:?}");
    assert_eq!(w2[6..], ["never", "yes"], "{w2:?}");

    // The documented fix.
    let mut c = t.bin();
    c.args(["authkey", "mint", "worker-01"]);
    let out = run(api_env(&mut c, &fake));
    assert!(out.status.success(), "{out:?}");
    let (code, text) = status(&t, &fake, &op);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("stranded: none"), "{text}");
    assert_eq!(
        row_of(&text, "worker-01")[1..3],
        ["pre-auth-key", "k1CNTRL"]
    );
}

fn row_of(text: &str, node: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.starts_with(node))
        .unwrap_or_else(|| panic!("no row for {node}: {text}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn without_an_identity_the_kind_is_unknown_and_nothing_is_called_stranded() {
    let (t, _op) = fleet();
    let fake = FakeApi::start(&token(), "{}");
    store(&t, "worker-01", &key("kOLD1CNTRL"));
    fake.state()
        .tailnet
        .add_expired_key("kOLD1CNTRL", Duration::from_secs(60));
    let mut c = t.bin();
    c.args(["status", "--enrolment"]);
    let out = run(api_env(&mut c, &fake));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // control-01 and worker-02 have no secret: missing, not joined → stranded; worker-01 unknown.
    assert_eq!(row_of(&text, "worker-01")[1], "unknown", "{text}");
    assert!(text.contains("worker-01: cannot tell"), "{text}");
    let stranded = &text[text.find("stranded").unwrap()..];
    assert!(!stranded.contains("worker-01"), "{text}");
    assert!(stranded.contains("control-01: it is not online"), "{text}");
    assert!(stranded.contains("no auth key is stored"), "{text}");
    // No key was looked up: nothing was decrypted.
    assert!(fake.state().seen.iter().all(|s| !s.path.contains("/keys/")));
}

#[test]
fn an_expired_api_token_is_named_with_the_fix() {
    let (t, op) = fleet();
    let fake = FakeApi::start(&token(), "{}");
    let mut c = t.bin();
    c.args(["status", "--enrolment", "--identity"])
        .arg(&op)
        .env("TS_API_KEY", format!("tskey-api-{}", "EXPIRED"))
        .env("FLEETNIX_TS_API_URL", &fake.base)
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1");
    let out = run(&mut c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("401") && err.contains("unexpired API access token"),
        "{err}"
    );
    assert!(!err.contains("EXPIRED"), "{err}");
}

#[test]
fn credentials_of_the_wrong_kind_are_refused_and_not_echoed() {
    let (t, _op) = fleet();
    let api_token = format!("tskey-api-{}", "FAKEsecretpart");
    let client = format!("tskey-client-{}", "FAKEsecretpart");
    for (k, want) in [
        (&api_token, "TS_API_KEY"),
        (&client, "tailscale_auth: oauth-client"),
    ] {
        let out = run(t
            .bin()
            .args(["secrets", "set-authkey", "worker-01"])
            .env("TAILSCALE_AUTHKEY", k));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(want) && !err.contains("FAKEsecretpart"),
            "{err}"
        );
        assert!(!t.secret("worker-01").exists());
    }
    // In a fleet that enrols with OAuth client secrets, the client secret is stored and
    // `authkey mint` refuses before asking the API.
    let path = t.root.join("fleet/fleet.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}tailscale_auth: oauth-client\n")).unwrap();
    let out = run(t
        .bin()
        .args(["secrets", "set-authkey", "worker-01"])
        .env("TAILSCALE_AUTHKEY", &client));
    assert!(out.status.success(), "{out:?}");
    let fake = FakeApi::start(&token(), "{}");
    let mut c = t.bin();
    c.args(["authkey", "mint", "worker-01"]);
    let out = run(api_env(&mut c, &fake));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("oauth-client"), "{err}");
    assert!(fake.state().seen.is_empty(), "the API was asked");
}

/// Issue 23 item 4: a running node's tags follow its roles through the API
/// (`POST /device/{id}/tags`); a second run changes nothing; a tag the token may not give is the
/// API's 400, named.
#[test]
fn device_tags_are_reconciled_through_the_api() {
    let (t, _op) = fleet();
    let fleet = t.fleet();
    let fake = FakeApi::start(&token(), "{}");
    {
        let mut st = fake.state();
        let n = &mut st.tailnet;
        n.known_tags = vec!["tag:worker".into(), "tag:control-plane".into()];
        n.add_device(
            "nW1OLD",
            "worker-01",
            "worker-01",
            "100.64.0.2",
            false,
            &["tag:old"],
        );
        n.add_device(
            "nW1",
            "worker-01",
            "worker-01-1",
            "100.64.0.2",
            true,
            &["tag:old"],
        );
        n.add_device(
            "nW2",
            "worker-02",
            "worker-02",
            "100.64.0.3",
            true,
            &["tag:worker"],
        );
    }
    // The fake serves plain http on loopback: the test-only override lets the client use it.
    std::env::set_var("FLEETNIX_ALLOW_INSECURE_URLS", "1");
    let client = fleetnix::tailscale::api::Client::new(
        &fake.base,
        "-",
        fleetnix::secret::Secret::new(token()),
    )
    .unwrap();
    let nodes: Vec<fleetnix::model::NodeName> =
        fleet.nodes.iter().map(|n| n.name.clone()).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let changes = rt
        .block_on(fleetnix::tailscale::prefs::reconcile_tags(
            &client, &fleet, &nodes,
        ))
        .unwrap();
    // Only the online worker-01 device; control-01 has no device; worker-02 agrees.
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].device_id, "nW1");
    assert_eq!(changes[0].to, ["tag:worker"]);
    {
        let st = fake.state();
        let d = st
            .tailnet
            .devices
            .iter()
            .find(|d| d["nodeId"] == "nW1")
            .unwrap();
        assert_eq!(d["tags"], serde_json::json!(["tag:worker"]));
        let old = st
            .tailnet
            .devices
            .iter()
            .find(|d| d["nodeId"] == "nW1OLD")
            .unwrap();
        assert_eq!(old["tags"], serde_json::json!(["tag:old"]));
    }
    let again = rt
        .block_on(fleetnix::tailscale::prefs::reconcile_tags(
            &client, &fleet, &nodes,
        ))
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let posts = fake
        .state()
        .seen
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 1);

    // The token's owner may not give tag:worker: the API's 400 comes back named.
    fake.state().tailnet.known_tags = vec!["tag:control-plane".into()];
    fake.state().tailnet.devices[2]["tags"] = serde_json::json!([]);
    let e = rt
        .block_on(fleetnix::tailscale::prefs::reconcile_tags(
            &client, &fleet, &nodes,
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("400") && e.contains("requested tags [tag:worker] are invalid or not permitted"),
        "{e}"
    );
}

/// `deploy --retag` without a token fails before anything is deployed.
#[test]
fn deploy_retag_without_a_token_fails_first() {
    let (t, _op) = fleet();
    let out = run(t.bin().args(["deploy", "--all", "--retag"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("TS_API_KEY"), "{err}");
    assert!(
        !err.contains("rendered") && !t.root.join("nix/nodes").exists(),
        "something ran: {err}"
    );
}
