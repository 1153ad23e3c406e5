//! `fleetnix cloud-init NODE` with the auth key from the node's `.age` file (`--identity`) or
//! minted through the (fake, in-process) Tailscale API (`--mint`): the key lands in the
//! user-data exactly once and nowhere else — not in the output, not in a plaintext file.

mod acl_fake_api;
mod common;
mod secrets_util;

use acl_fake_api::FakeApi;
use secrets_util::*;

fn token() -> String {
    format!("tskey-api-{}", "FAKE-cloudinit-test-only")
}

#[test]
fn key_from_the_age_file_with_identity() {
    let (t, op, key) = worker01_key_for_one_operator();
    let out_file = t.dir.path().join("worker-01.yaml");
    let out = run(t
        .bin()
        .args(["cloud-init", "worker-01", "--identity"])
        .arg(&op)
        .arg("-o")
        .arg(&out_file));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("auth key from secrets/worker-01/tailscale-authkey.age"),
        "{stderr}"
    );
    assert!(!stdout.contains(&key) && !stderr.contains(&key));
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(text.matches(&key).count(), 1, "{text}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let files = doc["write_files"].as_sequence().unwrap();
    let key_file = files
        .iter()
        .find(|f| f["path"] == fleetnix::outputs::cloudinit::AUTHKEY_PATH)
        .expect("the key file");
    assert_eq!(
        key_file["content"].as_str().map(str::trim),
        Some(key.as_str())
    );
    // The only plaintext copy is the user-data the operator asked for.
    for (path, bytes) in snapshot(t.dir.path()) {
        if t.dir.path().join(&path) != out_file {
            assert!(!contains(&bytes, &key), "key in {}", path.display());
        }
    }

    // An identity that is not a recipient: a clear error, no output file.
    let (stranger, _) = ssh_keygen(&t.keys, "stranger", "ed25519");
    let other = t.dir.path().join("other.yaml");
    let out = run(t
        .bin()
        .args(["cloud-init", "worker-01", "--identity"])
        .arg(&stranger)
        .arg("-o")
        .arg(&other));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot decrypt secrets/worker-01/tailscale-authkey.age"),
        "{stderr}"
    );
    assert!(!other.exists());
    // A node without a stored key: the error says how to store one.
    let out = run(t
        .bin()
        .args(["cloud-init", "worker-02", "--identity"])
        .arg(&op));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("secrets/worker-02/tailscale-authkey.age does not exist")
            && stderr.contains("set-authkey worker-02"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn key_minted_for_the_user_data_only() {
    let (t, _op, stored) = worker01_key_for_one_operator();
    let fake = FakeApi::start(&token(), "{}");
    let before = snapshot(&t.root);
    let out = run(t
        .bin()
        .args(["cloud-init", "worker-02", "--mint"])
        .env("TS_API_KEY", token())
        .env("FLEETNIX_TS_API_URL", &fake.base)
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let secret_part = fake.state().key_secret.clone();
    let minted = format!("tskey-auth-{}-{secret_part}", "k1CNTRL");
    assert_eq!(stdout.matches(&minted).count(), 1, "{stdout}");
    assert!(!stdout.contains(&stored));
    assert!(
        stderr.contains("minted auth key k1CNTRL for worker-02"),
        "{stderr}"
    );
    assert!(!stderr.contains(&secret_part));
    let st = fake.state();
    assert_eq!(st.key_requests.len(), 1);
    assert_eq!(
        st.key_requests[0]["capabilities"]["devices"]["create"]["tags"],
        serde_json::json!(["tag:worker"])
    );
    drop(st);
    assert_eq!(snapshot(&t.root), before, "nothing stored");

    // --mint without a token: nothing minted, a clear error.
    let out = run(t
        .bin()
        .args(["cloud-init", "worker-02", "--mint"])
        .env("FLEETNIX_TS_API_URL", &fake.base)
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TS_API_KEY"));
    assert_eq!(fake.state().key_requests.len(), 1);
}
