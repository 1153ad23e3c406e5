//! `fleetnix authkey mint NODE` against the in-process fake Tailscale API: the minted key goes
//! straight into the node's age secret (checked with the real `age` CLI) and is never printed
//! nor written in plaintext.

mod acl_fake_api;
mod common;
mod secrets_util;

use acl_fake_api::FakeApi;
use fleetnix::model::NodeName;
use fleetnix::secrets::{self, State};
use secrecy::ExposeSecret;
use secrets_util::*;

/// An obviously fake API token, built at run time.
fn token() -> String {
    format!("tskey-api-{}", "FAKE-mint-test-only")
}

fn mint_cmd(t: &TestFleet, fake: &FakeApi, node: &str) -> std::process::Command {
    let mut c = t.bin();
    c.args(["authkey", "mint", node])
        .env("TS_API_KEY", token())
        .env("FLEETNIX_TS_API_URL", &fake.base)
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1");
    c
}

#[test]
fn minted_key_is_stored_encrypted_and_never_shown() {
    let t = TestFleet::new();
    let w1 = t.add_host_key("worker-01");
    let (op, op_pub) = age_keygen(&t.keys, "op.age");
    t.set_operators(&[("ops", &op_pub)]);
    let fake = FakeApi::start(&token(), "{}");

    let out = run(&mut mint_cmd(&t, &fake, "worker-01"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let key = format!("tskey-auth-{}-{}", "k1CNTRL", fake.state().key_secret);
    let file = t.secret("worker-01");
    assert_eq!(age_decrypt(&w1, &file).unwrap(), key);
    assert_eq!(age_decrypt(&op, &file).unwrap(), key);
    // Through the library too, as deploy and cloud-init read it.
    let got =
        secrets::decrypt_authkey(&t.root, &NodeName::parse("worker-01").unwrap(), &op).unwrap();
    assert_eq!(got.expose_secret(), key);

    assert!(
        stdout.contains("minted auth key k1CNTRL for worker-01"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote secrets/worker-01/tailscale-authkey.age"),
        "{stdout}"
    );
    let secret_part = fake.state().key_secret.clone();
    assert!(
        !stdout.contains(&secret_part) && !stderr.contains(&secret_part),
        "the key in the output"
    );
    for (path, bytes) in snapshot(t.dir.path()) {
        assert!(!contains(&bytes, &secret_part), "key in {}", path.display());
    }
    // One key, one-off and tagged for the node.
    let st = fake.state();
    assert_eq!(st.key_requests.len(), 1);
    let create = &st.key_requests[0]["capabilities"]["devices"]["create"];
    assert_eq!(create["reusable"], false);
    assert_eq!(create["tags"], serde_json::json!(["tag:worker"]));
    drop(st);
    let status = secrets::status(&t.fleet(), &t.root).unwrap();
    let w1_status = status
        .iter()
        .find(|s| s.file == "secrets/worker-01/tailscale-authkey.age")
        .unwrap();
    assert_eq!(w1_status.state, State::UpToDate);
}

#[test]
fn nothing_is_minted_for_a_node_whose_key_could_not_be_stored() {
    let t = TestFleet::new();
    t.add_host_key("worker-01");
    let fake = FakeApi::start(&token(), "{}");
    // worker-02 has no host key; "worker-1" is no node; a key-like argument is not echoed.
    for (node, words) in [
        (
            "worker-02",
            &["worker-02 has no host_key", "ssh-keyscan"][..],
        ),
        ("worker-1", &["unknown node `worker-1`", "worker-01"][..]),
    ] {
        let out = run(&mut mint_cmd(&t, &fake, node));
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in words {
            assert!(err.contains(w), "{err}");
        }
    }
    let pasted = format!("tskey-auth-{}", "FAKEpasted0123");
    let out = run(&mut mint_cmd(&t, &fake, &pasted));
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&pasted));
    assert!(fake.state().key_requests.is_empty(), "a key was minted");
    assert!(!t.root.join("secrets").exists(), "something was written");

    // A wrong token: the API's 401, nothing written.
    let out = run(mint_cmd(&t, &fake, "worker-01").env("TS_API_KEY", "wrong-token"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    assert!(!t.secret("worker-01").exists());
}
