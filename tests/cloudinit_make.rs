//! `fleetnix::bootstrap::cloudinit::make`, the library behind `fleetnix cloud-init`, called directly: the
//! key decrypted from the node's `.age` file (real `age`) or minted through the fake, in-process
//! Tailscale API; the notes it tells and when; the user-data written once, with the key once,
//! and nothing written on failure.

mod acl_fake_api;
mod common;
mod secrets_util;

use acl_fake_api::FakeApi;
use fleetnix::bootstrap::cloudinit::{make, CloudInitError, Destination, Request};
use fleetnix::outputs::agent::UNIT_PATH as AGENT_UNIT_PATH;
use fleetnix::outputs::cloudinit::Options;
use fleetnix::secret::Secret;
use fleetnix::tailscale::api::{ApiError, Client};
use secrets_util::*;
use std::path::Path;

/// A request for the key in the `.age` file, decrypted with `identity`.
fn decrypt<'a>(root: &'a Path, identity: &'a Path) -> Request<'a> {
    Request {
        root,
        mint: false,
        identity: Some(identity),
        default_identity: None,
        env_set: false,
        stdin_is_terminal: true,
        expiry_seconds: 600,
        options: Options::default(),
    }
}

/// An API factory that must not be called.
fn no_api() -> Result<Client, ApiError> {
    panic!("the API was asked for although nothing is minted")
}

/// Runs `make` for `node`, collecting the notes.
fn run(
    t: &TestFleet,
    node: &str,
    req: &Request<'_>,
    api: impl FnOnce() -> Result<Client, ApiError>,
    to: Destination<'_>,
) -> (Result<(), CloudInitError>, Vec<String>) {
    let fleet = t.fleet();
    let node = fleet.node(node).expect("node");
    let mut notes = Vec::new();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(make(&fleet, node, req, api, to, &mut |n| notes.push(n)));
    (r, notes)
}

#[test]
fn decrypted_key_to_a_stream_with_its_notes_in_order() {
    let (t, op, key) = worker01_key_for_one_operator();
    let mut out = Vec::new();
    let req = decrypt(&t.root, &op);
    let (r, notes) = run(&t, "worker-01", &req, no_api, Destination::Stream(&mut out));
    r.expect("user-data");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    assert_eq!(text.matches(&key).count(), 1, "{text}");
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert_eq!(
        notes[0],
        format!(
            "auth key from secrets/worker-01/tailscale-authkey.age (decrypted with {})",
            op.display()
        )
    );
    assert!(
        notes[1].starts_with(
            "this user-data contains worker-01's Tailscale auth key, its only secret;"
        ),
        "{}",
        notes[1]
    );
    assert!(notes[2].contains("declared os: nixos"), "{}", notes[2]);
    assert!(notes.iter().all(|n| !n.contains(&key)));
}

#[test]
fn decrypted_key_to_a_file_with_mode_0600_and_nothing_on_failure() {
    use std::os::unix::fs::PermissionsExt;
    let (t, op, key) = worker01_key_for_one_operator();
    let file = t.dir.path().join("out/worker-01.yaml");
    let req = Request {
        options: Options {
            with_agent: true,
            ..Options::default()
        },
        ..decrypt(&t.root, &op)
    };
    let (r, notes) = run(&t, "worker-01", &req, no_api, Destination::File(&file));
    r.expect("user-data");
    let text = std::fs::read_to_string(&file).expect("written");
    assert_eq!(text.matches(&key).count(), 1);
    assert!(text.contains(AGENT_UNIT_PATH), "{text}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        notes[1].contains(&format!("({} is mode 0600)", file.display())),
        "{notes:?}"
    );

    // An identity that is not a recipient: the decryption's error, no note, no file.
    let (stranger, _) = ssh_keygen(&t.keys, "stranger", "ed25519");
    let other = t.dir.path().join("other.yaml");
    let (r, notes) = run(
        &t,
        "worker-01",
        &decrypt(&t.root, &stranger),
        no_api,
        Destination::File(&other),
    );
    let e = r.expect_err("not a recipient");
    assert!(matches!(e, CloudInitError::Key(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("cannot decrypt secrets/worker-01/tailscale-authkey.age"),
        "{e}"
    );
    assert!(notes.is_empty(), "{notes:?}");
    assert!(!other.exists());

    // A bad install URL: refused after the key was read, nothing written to the stream.
    let mut out = Vec::new();
    let req = Request {
        options: Options {
            install_url: "http://example.com/install.sh".into(),
            ..Options::default()
        },
        ..decrypt(&t.root, &op)
    };
    let (r, notes) = run(&t, "worker-01", &req, no_api, Destination::Stream(&mut out));
    assert!(
        matches!(
            r,
            Err(CloudInitError::UserData(
                fleetnix::outputs::cloudinit::UserDataError::BadInstallUrl(_)
            ))
        ),
        "{r:?}"
    );
    assert!(out.is_empty());
    assert_eq!(notes.len(), 1, "only the key's origin: {notes:?}");
}

#[test]
fn no_source_names_the_ways_to_give_a_key() {
    let (t, _op, _key) = worker01_key_for_one_operator();
    let req = Request {
        identity: None,
        ..decrypt(&t.root, Path::new("/unused"))
    };
    let mut out = Vec::new();
    // worker-02 has no stored key, no identity, stdin a terminal, no environment variable.
    let (r, notes) = run(&t, "worker-02", &req, no_api, Destination::Stream(&mut out));
    let e = r.expect_err("no source").to_string();
    assert!(
        e.contains("no Tailscale auth key for worker-02") && e.contains("--mint"),
        "{e}"
    );
    assert!(notes.is_empty() && out.is_empty());
}

#[test]
fn minted_key_asks_the_api_once_and_stores_nothing() {
    let (t, _op, stored) = worker01_key_for_one_operator();
    let token = format!("tskey-api-{}", "FAKE-cloudinit-make-only");
    let fake = FakeApi::start(&token, "{}");
    let before = snapshot(&t.root);
    let fleet = t.fleet();
    let mut asked = 0;
    // The fake serves plain http on loopback: the test-only override lets the client use it.
    std::env::set_var("FLEETNIX_ALLOW_INSECURE_URLS", "1");
    let api = || {
        asked += 1;
        Client::new(
            &fake.base,
            &fleet.settings.tailnet,
            Secret::from(token.clone()),
        )
    };
    let req = Request {
        mint: true,
        identity: None,
        ..decrypt(&t.root, Path::new("/unused"))
    };
    let mut out = Vec::new();
    let (r, notes) = run(&t, "worker-02", &req, api, Destination::Stream(&mut out));
    r.expect("minted");
    assert_eq!(asked, 1);
    let minted = format!("tskey-auth-{}-{}", "k1CNTRL", fake.state().key_secret);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches(&minted).count(), 1);
    assert!(!text.contains(&stored));
    assert!(
        notes[0].starts_with(
            "minted auth key k1CNTRL for worker-02 (one-off, pre-authorised, expires "
        ),
        "{notes:?}"
    );
    assert_eq!(fake.state().key_requests.len(), 1);
    assert_eq!(snapshot(&t.root), before, "nothing stored");

    // The API client cannot be made: its error, nothing minted, nothing written.
    let mut out = Vec::new();
    let (r, notes) = run(
        &t,
        "worker-02",
        &req,
        || Err(ApiError::NoToken),
        Destination::Stream(&mut out),
    );
    assert!(
        matches!(r, Err(CloudInitError::Api(ApiError::NoToken))),
        "{r:?}"
    );
    assert!(notes.is_empty() && out.is_empty());
    assert_eq!(fake.state().key_requests.len(), 1);
}
