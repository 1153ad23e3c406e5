//! `acl get|diff|set` and `authkey mint` against the in-process fake of the Tailscale API:
//! backups before set (never overwritten), ETag / If-Match / 412, API validation errors,
//! the lock-out guard, 401, and the token never in argv, output or files.

mod acl_fake_api;
mod common;

use acl_fake_api::FakeApi;
use assert_cmd::Command;
use fleetnix::acl::apply::{self, ApplyError, SetOptions};
use fleetnix::manifest;
use fleetnix::secret::Secret;
use fleetnix::tailscale::api::{ApiError, Client};
use secrecy::ExposeSecret;
use std::path::Path;

/// An obviously fake token, built at run time.
fn token() -> String {
    format!("tskey-api-{}", "FAKE-k7Qm2-test-only")
}

use common::{example_fleet, repo};

const OLD: &str = "// the policy before fleetnix\n{\n  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}],\n  \"ssh\": [{\"action\": \"check\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self\"], \"users\": [\"autogroup:nonroot\", \"root\"]}],\n}\n";

fn client(fake: &FakeApi) -> Client {
    // The fake serves plain http on loopback: the test-only override lets the client use it.
    std::env::set_var("FLEETNIX_ALLOW_INSECURE_URLS", "1");
    Client::new(&fake.base, "-", Secret::from(token())).unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn backups(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| f.starts_with("acl-backup-"))
        .collect()
}

fn rendered() -> String {
    fleetnix::acl::render::render(&example_fleet(), "fleet/").text
}

#[tokio::test]
async fn get_backs_up_without_overwriting_and_remembers_the_etag() {
    let fake = FakeApi::start(&token(), OLD);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&fake);
    let first = apply::get(&c, dir.path()).await.unwrap();
    let today = apply::today();
    assert_eq!(
        first.backup,
        dir.path().join(format!("acl-backup-{today}.hujson"))
    );
    assert_eq!(std::fs::read_to_string(&first.backup).unwrap(), OLD);
    assert_eq!(first.remote.etag, fake.state().etag());
    assert_eq!(
        apply::remembered_etag(dir.path()).unwrap(),
        Some(fake.state().etag())
    );
    // the policy changes; a second get the same day gets a suffix, the first stays as it was
    {
        let mut st = fake.state();
        st.policy = "{}".into();
        st.version += 1;
    }
    let second = apply::get(&c, dir.path()).await.unwrap();
    assert_eq!(
        second.backup,
        dir.path().join(format!("acl-backup-{today}.1.hujson"))
    );
    assert_eq!(std::fs::read_to_string(&first.backup).unwrap(), OLD);
    assert_eq!(std::fs::read_to_string(&second.backup).unwrap(), "{}");
    // HuJSON was asked for, with the token as a bearer
    let st = fake.state();
    assert!(st
        .seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(format!("Bearer {}", token()).as_str())));
}

#[tokio::test]
async fn set_validates_backs_up_then_posts_with_if_match() {
    let fake = FakeApi::start(&token(), OLD);
    let dir = tempfile::tempdir().unwrap();
    fake.state().watch_dir = Some(dir.path().to_path_buf());
    let etag_before = fake.state().etag();
    let new = rendered();
    let out = apply::set(
        &client(&fake),
        &example_fleet(),
        dir.path(),
        &new,
        &SetOptions {
            yes: true, // from allow-all: everyone loses access
            ..SetOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(out.forced.is_empty());
    assert!(!out.unchanged);
    let st = fake.state();
    assert_eq!(st.policy, new, "the rendered policy was stored");
    let calls: Vec<(String, String)> = st
        .seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET".to_string(), "/api/v2/tailnet/-/acl".to_string()),
            (
                "POST".to_string(),
                "/api/v2/tailnet/-/acl/validate".to_string()
            ),
            ("POST".to_string(), "/api/v2/tailnet/-/acl".to_string()),
        ]
    );
    let post = &st.seen[2];
    assert_eq!(post.if_match.as_deref(), Some(etag_before.as_str()));
    assert_eq!(post.content_type.as_deref(), Some("application/hujson"));
    // the backup of the old policy existed when the new one was posted
    let b = format!("acl-backup-{}.hujson", apply::today());
    assert!(st.files_at_post[0].contains(&b), "{:?}", st.files_at_post);
    assert_eq!(std::fs::read_to_string(dir.path().join(&b)).unwrap(), OLD);
    assert_eq!(out.etag, st.etag());
    assert_eq!(apply::remembered_etag(dir.path()).unwrap(), Some(st.etag()));
}

#[tokio::test]
async fn a_policy_changed_since_it_was_read_is_not_overwritten() {
    let fake = FakeApi::start(&token(), OLD);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&fake);
    apply::get(&c, dir.path()).await.unwrap();
    let theirs = "{\"acls\": []}";
    {
        let mut st = fake.state();
        st.policy = theirs.into();
        st.version += 1;
        st.seen.clear();
    }
    let err = apply::set(
        &c,
        &example_fleet(),
        dir.path(),
        &rendered(),
        &SetOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ApplyError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("nothing was overwritten"));
    let st = fake.state();
    assert_eq!(st.policy, theirs);
    assert!(st.seen.iter().all(|s| s.method == "GET"), "{:?}", st.seen);
    assert_eq!(backups(dir.path()).len(), 1, "only the backup of `get`");
}

#[tokio::test]
async fn a_race_gives_412_and_writes_nothing() {
    let fake = FakeApi::start(&token(), OLD);
    let dir = tempfile::tempdir().unwrap();
    let theirs = "{\"acls\": []}";
    fake.state().race_on_validate = Some(theirs.into());
    let err = apply::set(
        &client(&fake),
        &example_fleet(),
        dir.path(),
        &rendered(),
        &SetOptions {
            yes: true, // from allow-all: everyone loses access
            ..SetOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ApplyError::Api(ApiError::PreconditionFailed { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was overwritten"), "{err}");
    let st = fake.state();
    assert_eq!(st.policy, theirs, "the other change survives");
    assert_eq!(st.seen.last().map(|s| s.status), Some(412));
    assert!(backups(dir.path()).is_empty(), "{:?}", files(dir.path()));
    assert_eq!(apply::remembered_etag(dir.path()).unwrap(), None);
}

/// A valid policy without any SSH: it would lock deploys and operators out.
const NO_SSH: &str = r#"{
  "groups": {"group:operators": ["ops@example.com"]},
  "tagOwners": {"tag:control-plane": ["group:operators"], "tag:worker": ["group:operators"]},
  "acls": [{"action": "accept", "src": ["tag:worker"], "dst": ["tag:control-plane:4000,4222"]}],
}"#;

#[tokio::test]
async fn lock_out_is_refused_unless_forced() {
    let fake = FakeApi::start(&token(), OLD);
    let dir = tempfile::tempdir().unwrap();
    let fleet = example_fleet();
    let err = apply::set(
        &client(&fake),
        &fleet,
        dir.path(),
        NO_SSH,
        &SetOptions::default(),
    )
    .await
    .unwrap_err();
    let ApplyError::LockOut { cut } = &err else {
        panic!("{err}")
    };
    assert!(
        cut.contains(&"deploys from group:operators to worker-02 as root".to_string()),
        "{cut:?}"
    );
    assert!(
        cut.contains(&"group:operators to control-01 as root".to_string()),
        "{cut:?}"
    );
    assert!(err.to_string().contains("--force"));
    assert!(fake.state().seen.is_empty(), "nothing was sent");
    assert!(files(dir.path()).is_empty());

    let out = apply::set(
        &client(&fake),
        &fleet,
        dir.path(),
        NO_SSH,
        &SetOptions {
            force: true,
            yes: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(out.forced.len(), cut.len());
    assert_eq!(fake.state().policy, NO_SSH);
}

#[tokio::test]
async fn validation_errors_come_back_with_their_details() {
    let fake = FakeApi::start(&token(), OLD);
    let dir = tempfile::tempdir().unwrap();
    // the rendered policy with a drifted rule: its own tests fail on the server
    let drifted = rendered().replace(
        "\"src\": [\"tag:control-plane\"], \"proto\": \"tcp\", \"dst\": [\"tag:control-plane:5432\"]",
        "\"src\": [\"tag:control-plane\", \"tag:worker\"], \"proto\": \"tcp\", \"dst\": [\"tag:control-plane:5432\"]",
    );
    let err = apply::set(
        &client(&fake),
        &example_fleet(),
        dir.path(),
        &drifted,
        &SetOptions {
            yes: true, // from allow-all: everyone loses access
            ..SetOptions::default()
        },
    )
    .await
    .unwrap_err();
    let ApplyError::Api(ApiError::Rejected {
        message, details, ..
    }) = &err
    else {
        panic!("{err}")
    };
    assert_eq!(message, "test(s) failed");
    assert!(
        details
            .iter()
            .any(|d| d.contains("tag:control-plane:5432") && d.contains("want: Drop, got: Accept")),
        "{details:?}"
    );
    let st = fake.state();
    assert_eq!(st.policy, OLD);
    assert!(!st
        .seen
        .iter()
        .any(|s| s.method == "POST" && s.path.ends_with("/acl")));
    assert!(backups(dir.path()).is_empty());
}

#[tokio::test]
async fn a_wrong_token_is_a_clear_401_without_the_token() {
    let fake = FakeApi::start(&token(), OLD);
    let wrong = format!("{}-wrong", token());
    let c = Client::new(&fake.base, "-", Secret::from(wrong.clone())).unwrap();
    let err = c.get_policy().await.unwrap_err();
    assert!(
        matches!(err, ApiError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    let text = format!("{err} {err:?} {c:?}");
    assert!(text.contains("TS_API_KEY"));
    assert!(
        !text.contains(&wrong) && !text.contains("FAKE-k7Qm2"),
        "{text}"
    );
}

#[tokio::test]
async fn authkey_mint_asks_for_a_one_off_tagged_short_key() {
    let fake = FakeApi::start(&token(), OLD);
    let fleet = example_fleet();
    let node = fleet.node("worker-01").unwrap();
    let key = fleetnix::tailscale::authkey::mint_authkey(&client(&fake), &fleet, node, 3600)
        .await
        .unwrap();
    let st = fake.state();
    assert_eq!(
        key.key.expose_secret(),
        format!("tskey-auth-{}-{}", "k1CNTRL", st.key_secret)
    );
    assert_eq!(key.id, "k1CNTRL");
    assert!(!format!("{key:?}").contains(&st.key_secret));
    let req = &st.key_requests[0];
    let create = &req["capabilities"]["devices"]["create"];
    assert_eq!(create["reusable"], false);
    assert_eq!(create["ephemeral"], false);
    assert_eq!(create["preauthorized"], true);
    assert_eq!(create["tags"], serde_json::json!(["tag:worker"]));
    assert_eq!(req["expirySeconds"], 3600);
    assert_eq!(req["description"], "fleetnix worker-01");
}

/// A copy of the example fleet, so the CLI can write backups next to it.
fn fleet_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_example_fleet(dir.path());
    dir
}

fn cli(fake: &FakeApi, fleet_dir: &Path) -> Command {
    let mut c = Command::cargo_bin("fleetnix").unwrap();
    c.arg("--root")
        .arg(repo())
        .arg("--fleet-dir")
        .arg(fleet_dir)
        .env("FLEETNIX_TS_API_URL", &fake.base)
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1")
        .env_remove("TS_API_KEY");
    c
}

/// The token is never sent to a plain-http API address unless the test-only override is set.
#[test]
fn cli_refuses_a_plain_http_api_url_without_the_test_override() {
    let fake = FakeApi::start(&token(), OLD);
    let fleet = fleet_copy();
    let out = cli(&fake, fleet.path())
        .args(["acl", "get"])
        .env("TS_API_KEY", token())
        .env_remove("FLEETNIX_ALLOW_INSECURE_URLS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted {}", fake.base);
    assert!(
        err.contains("FLEETNIX_TS_API_URL") && err.contains("https://"),
        "{err}"
    );
    assert!(!err.contains(&token()), "{err}");
    assert!(fake.state().seen.is_empty(), "nothing was sent");
}

#[test]
fn cli_get_diff_set_keep_the_token_out_of_argv_output_and_files() {
    let fake = FakeApi::start(&token(), OLD);
    let fleet = fleet_copy();
    let out = cli(&fake, fleet.path())
        .args(["acl", "get"])
        .env("TS_API_KEY", token())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), OLD);
    let backup_dir = fleet.path().join("acl-backups");
    assert_eq!(backups(&backup_dir).len(), 1);
    let mut all_output =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);

    // diff against the rendered policy: differs, exit 1
    let out = cli(&fake, fleet.path())
        .args(["acl", "diff", "--text"])
        .env("TS_API_KEY", token())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let d = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(d.contains("+    // services.yml nats"), "{d}");
    all_output += &d;

    // set from a token file; the seed policy is refused by the lock-out guard, nothing sent
    let token_file = fleet.path().join("token");
    std::fs::write(&token_file, format!("{}\n", token())).unwrap();
    fake.state().seen.clear();
    let out = cli(&fake, fleet.path())
        .args(["acl", "set", "--token-file"])
        .arg(&token_file)
        .arg(repo().join("tests/fixtures/seed-acl-policy.hujson"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("--force"), "{err}");
    assert!(fake.state().seen.is_empty());
    all_output += &err;

    // the rendered policy goes through (with --yes: everyone loses the allow-all)
    let out = cli(&fake, fleet.path())
        .args(["acl", "set", "--yes", "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fake.state().policy,
        fleetnix::acl::render::render(
            &manifest::load(fleet.path()).unwrap(),
            &format!(
                "{}, {}, {}",
                fleet.path().join("nodes.yml").display(),
                fleet.path().join("fleet.yml").display(),
                fleet.path().join("services.yml").display()
            )
        )
        .text
    );
    all_output += &String::from_utf8_lossy(&out.stdout);
    all_output += &String::from_utf8_lossy(&out.stderr);
    assert_eq!(backups(&backup_dir).len(), 2);

    // a wrong token: exit 1, a clear message, no token
    let out = cli(&fake, fleet.path())
        .args(["acl", "get"])
        .env("TS_API_KEY", format!("{}-wrong", token()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("refused the token (401)"), "{err}");
    all_output += &err;

    assert!(!all_output.contains("FAKE-k7Qm2"), "{all_output}");
    for f in files(&backup_dir) {
        let text = std::fs::read_to_string(backup_dir.join(&f)).unwrap();
        assert!(!text.contains("FAKE-k7Qm2"), "{f}");
    }
    // there is no way to pass the token as an argument
    let out = cli(&fake, fleet.path())
        .args(["acl", "get", "--token", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // no token at all: a clear message
    let out = cli(&fake, fleet.path())
        .args(["acl", "get"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set TS_API_KEY or pass --token-file"));
}

#[test]
fn cli_authkey_mint_refuses_before_minting_a_key_it_cannot_store() {
    // The example fleet has no host keys: the key could not be encrypted to worker-01.
    let fake = FakeApi::start(&token(), OLD);
    let fleet = fleet_copy();
    let out = cli(&fake, fleet.path())
        .args(["authkey", "mint", "worker-01"])
        .env("TS_API_KEY", token())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("worker-01 has no host_key") && text.contains("no auth key was minted"),
        "{text}"
    );
    assert!(!text.contains("tskey-auth"));
    assert!(
        fake.state().key_requests.is_empty(),
        "no key minted that could not be stored"
    );
}
