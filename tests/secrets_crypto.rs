//! Secrets through the library, checked with the real `age` CLI, `ssh-keygen`, `age-keygen`
//! and `nix-instantiate`.

mod common;
mod secrets_util;

use fleetnix::model::NodeName;
use fleetnix::secret::Secret;
use fleetnix::secrets::{self, RekeyOptions, SecretsError, State};
use secrecy::ExposeSecret;
use secrets_util::*;
use std::process::Command;

fn nodes(names: &[&str]) -> Vec<NodeName> {
    names.iter().map(|n| NodeName::parse(n).unwrap()).collect()
}

fn secret(s: &str) -> Secret {
    Secret::from(s.to_string())
}

/// worker-01 and worker-02 with host keys, one SSH and one age operator.
struct Setup {
    t: TestFleet,
    w1: std::path::PathBuf,
    w2: std::path::PathBuf,
    op_ssh: std::path::PathBuf,
    op_age: std::path::PathBuf,
}

fn setup() -> Setup {
    let t = TestFleet::new();
    let w1 = t.add_host_key("worker-01");
    let w2 = t.add_host_key("worker-02");
    let (op_ssh, op_ssh_pub) = ssh_keygen(&t.keys, "alice", "ed25519");
    let (op_age, op_age_pub) = age_keygen(&t.keys, "bob.age");
    t.set_operators(&[("alice", &op_ssh_pub), ("bob", &op_age_pub)]);
    Setup {
        t,
        w1,
        w2,
        op_ssh,
        op_age,
    }
}

#[test]
fn node_host_key_decrypts_with_age_cli_and_other_keys_do_not() {
    let s = setup();
    let key = fake_key();
    let report = secrets::set_authkey(
        &s.t.fleet(),
        &s.t.root,
        &nodes(&["worker-01", "worker-02"]),
        &secret(&key),
    )
    .unwrap();
    assert_eq!(report.written.len(), 2);
    assert!(report.skipped.is_empty());

    assert_eq!(age_decrypt(&s.w1, &s.t.secret("worker-01")).unwrap(), key);
    assert_eq!(age_decrypt(&s.w2, &s.t.secret("worker-02")).unwrap(), key);
    // A node cannot decrypt another node's key.
    assert!(age_decrypt(&s.w2, &s.t.secret("worker-01")).is_err());
    assert!(age_decrypt(&s.w1, &s.t.secret("worker-02")).is_err());
    // Random SSH and age keys cannot either.
    let (random_ssh, _) = ssh_keygen(&s.t.keys, "random", "ed25519");
    let (random_age, _) = age_keygen(&s.t.keys, "random.age");
    for id in [&random_ssh, &random_age] {
        let err = age_decrypt(id, &s.t.secret("worker-01")).unwrap_err();
        assert!(err.contains("no identity matched"), "{err}");
    }
    // The library agrees.
    let e =
        secrets::decrypt_authkey(&s.t.root, &nodes(&["worker-01"])[0], &random_ssh).unwrap_err();
    assert!(matches!(e, SecretsError::Decrypt { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("secrets/worker-01/tailscale-authkey.age"),
        "{e}"
    );
}

#[test]
fn rsa_host_key_works_too() {
    let t = TestFleet::new();
    let (private, public) = ssh_keygen(&t.keys, "host-rsa", "rsa");
    t.set_host_key("worker-01", &public);
    let key = fake_key();
    secrets::set_authkey(&t.fleet(), &t.root, &nodes(&["worker-01"]), &secret(&key)).unwrap();
    assert_eq!(age_decrypt(&private, &t.secret("worker-01")).unwrap(), key);
}

#[test]
fn operator_age_and_ssh_identities_round_trip() {
    let s = setup();
    let key = fake_key();
    let w1 = &nodes(&["worker-01"])[0];
    secrets::set_authkey(
        &s.t.fleet(),
        &s.t.root,
        std::slice::from_ref(w1),
        &secret(&key),
    )
    .unwrap();
    for id in [&s.op_ssh, &s.op_age] {
        let got = secrets::decrypt_authkey(&s.t.root, w1, id).unwrap();
        assert_eq!(got.expose_secret(), key);
        assert_eq!(age_decrypt(id, &s.t.secret("worker-01")).unwrap(), key);
    }
    // The node's own host key also works through the library (deploy may use it).
    let got = secrets::decrypt_authkey(&s.t.root, w1, &s.w1).unwrap();
    assert_eq!(got.expose_secret(), key);
}

#[test]
fn node_without_host_key_is_skipped_with_the_keyscan_command() {
    let s = setup();
    let fleet = s.t.fleet();
    let report = secrets::set_authkey(
        &fleet,
        &s.t.root,
        &nodes(&["control-01", "worker-01"]),
        &secret(&fake_key()),
    )
    .unwrap();
    assert_eq!(report.written.len(), 1);
    assert_eq!(report.skipped.len(), 1);
    let skip = &report.skipped[0];
    assert_eq!(skip.node, "control-01");
    let ip = fleet.node("control-01").unwrap().tailscale_ip.to_string();
    assert!(
        skip.fix.contains("ssh-keyscan") && skip.fix.contains(&ip),
        "{}",
        skip.fix
    );
    assert!(!s.t.secret("control-01").exists());
    let nix = std::fs::read_to_string(s.t.root.join("secrets/secrets.nix")).unwrap();
    assert!(!nix.contains("control-01"), "{nix}");
    let st = secrets::status(&fleet, &s.t.root).unwrap();
    let cp = st.iter().find(|x| x.node == "control-01").unwrap();
    assert_eq!(cp.state, State::NoHostKey);
}

#[test]
fn secrets_nix_is_agenix_rules_and_deterministic() {
    let s = setup();
    let fleet = s.t.fleet();
    let all: Vec<NodeName> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    secrets::set_authkey(&fleet, &s.t.root, &all, &secret(&fake_key())).unwrap();
    let path = s.t.root.join("secrets/secrets.nix");
    let first = std::fs::read(&path).unwrap();
    assert!(fleetnix::nix::check_syntax(std::str::from_utf8(&first).unwrap()).is_ok());

    // Evaluate it the way agenix does: attribute names are paths relative to secrets/.
    let out = run(Command::new("nix-instantiate")
        .current_dir(s.t.root.join("secrets"))
        .args([
            "--eval",
            "--strict",
            "--json",
            "-E",
            "builtins.mapAttrs (n: v: v.publicKeys) (import ./secrets.nix)",
        ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rules.keys().map(String::as_str).collect();
    // Every secret the rendered modules reference, of every node with a host key (the NATS
    // passwords are not written yet: `set-nats` does that).
    assert_eq!(
        names,
        [
            "worker-01/nats-password.age",
            "worker-01/tailscale-authkey.age",
            "worker-02/nats-password.age",
            "worker-02/tailscale-authkey.age"
        ]
    );
    for (file, keys) in &rules {
        assert_eq!(
            s.t.root.join("secrets").join(file).is_file(),
            file.ends_with("/tailscale-authkey.age"),
            "{file}"
        );
        let node = fleet.node(file.split('/').next().unwrap()).unwrap();
        let desired = secrets::desired_recipients(&fleet, node).unwrap().unwrap();
        let want: Vec<String> = desired.iter().map(|r| r.key.clone()).collect();
        assert_eq!(keys, &want);
        // The host key comes first, then alice (SSH) and bob (age).
        assert_eq!(keys.len(), 3);
        assert!(node.host_key.as_ref().unwrap().starts_with(&keys[0]));
        assert!(keys[2].starts_with("age1"));
    }

    // Re-running gives byte-identical rules and record files.
    let record = std::fs::read(s.t.root.join("secrets/recipients.json")).unwrap();
    secrets::rekey(&fleet, &s.t.root, &s.op_age, &RekeyOptions::default()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
    assert_eq!(
        std::fs::read(s.t.root.join("secrets/recipients.json")).unwrap(),
        record
    );
}

#[test]
fn agenix_cli_style_encryption_from_the_rules_decrypts() {
    // What `agenix -e` does: age -r <each publicKey> -o <file>. Such a file is "unrecorded",
    // and rekey makes it recorded again.
    let s = setup();
    let fleet = s.t.fleet();
    let key = fake_key();
    secrets::set_authkey(&fleet, &s.t.root, &nodes(&["worker-01"]), &secret(&key)).unwrap();
    let desired = secrets::desired_recipients(&fleet, fleet.node("worker-01").unwrap())
        .unwrap()
        .unwrap();
    let mut cmd = Command::new("age");
    cmd.arg("-e");
    for r in &desired {
        cmd.arg("-r").arg(&r.key);
    }
    let other = fake_key();
    let plain = s.t.dir.path().join("agenix-plain");
    std::fs::write(&plain, &other).unwrap();
    cmd.arg("-o").arg(s.t.secret("worker-01")).arg(&plain);
    assert!(run(&mut cmd).status.success());
    std::fs::remove_file(&plain).unwrap();

    let st = secrets::status(&fleet, &s.t.root).unwrap();
    assert_eq!(
        st.iter().find(|x| x.node == "worker-01").unwrap().state,
        State::Unrecorded
    );
    let report = secrets::rekey(&fleet, &s.t.root, &s.op_ssh, &RekeyOptions::default()).unwrap();
    assert_eq!(report.written.len(), 1);
    assert_eq!(age_decrypt(&s.w1, &s.t.secret("worker-01")).unwrap(), other);
    let st = secrets::status(&fleet, &s.t.root).unwrap();
    assert_eq!(
        st.iter().find(|x| x.node == "worker-01").unwrap().state,
        State::UpToDate
    );
}

#[test]
fn rendered_module_points_at_the_written_file() {
    let s = setup();
    let fleet = s.t.fleet();
    let key = fake_key();
    secrets::set_authkey(&fleet, &s.t.root, &nodes(&["worker-01"]), &secret(&key)).unwrap();
    let plan = fleetnix::spec::node_spec(&fleet, fleet.node("worker-01").unwrap());
    let text = fleetnix::outputs::render_node(&fleetnix::outputs::engine().unwrap(), &plan, "test")
        .unwrap();
    let module = s.t.root.join(fleetnix::outputs::node_path("worker-01"));
    std::fs::create_dir_all(module.parent().unwrap()).unwrap();
    std::fs::write(&module, text).unwrap();
    let expr = format!(
        "toString (import {} {{ config = {{}}; }}).age.secrets.{}.file",
        fleetnix::nix::string(&module.display().to_string()).trim_matches('"'),
        fleetnix::nix::string(fleetnix::spec::secrets::AUTHKEY_SECRET)
    );
    let out =
        run(Command::new("nix-instantiate").args(["--eval", "--strict", "--json", "-E", &expr]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file: String = serde_json::from_slice(&out.stdout).unwrap();
    let written = s.t.root.join(&plan.secrets[0].file);
    assert_eq!(std::path::Path::new(&file), written);
    assert_eq!(
        age_decrypt(&s.w1, std::path::Path::new(&file)).unwrap(),
        key
    );
}

#[test]
fn rekey_rewrites_only_files_whose_recipients_changed() {
    let s = setup();
    let key = fake_key();
    let both = nodes(&["worker-01", "worker-02"]);
    secrets::set_authkey(&s.t.fleet(), &s.t.root, &both, &secret(&key)).unwrap();
    let w1_before = std::fs::read(s.t.secret("worker-01")).unwrap();
    let w2_before = std::fs::read(s.t.secret("worker-02")).unwrap();

    // worker-02 was reinstalled: new host key.
    let w2_new = s.t.add_host_key("worker-02");
    let fleet = s.t.fleet();
    let st = secrets::status(&fleet, &s.t.root).unwrap();
    let state = |n: &str| st.iter().find(|x| x.node == n).unwrap().state;
    assert_eq!(state("worker-01"), State::UpToDate);
    assert_eq!(state("worker-02"), State::Stale);

    let report = secrets::rekey(&fleet, &s.t.root, &s.op_age, &RekeyOptions::default()).unwrap();
    let written: Vec<&str> = report.written.iter().map(|w| w.node.as_str()).collect();
    assert_eq!(written, ["worker-02"]);
    assert_eq!(std::fs::read(s.t.secret("worker-01")).unwrap(), w1_before);
    assert_ne!(std::fs::read(s.t.secret("worker-02")).unwrap(), w2_before);
    assert_eq!(age_decrypt(&w2_new, &s.t.secret("worker-02")).unwrap(), key);
    assert!(
        age_decrypt(&s.w2, &s.t.secret("worker-02")).is_err(),
        "old host key still decrypts"
    );

    // Nothing left to do: a second rekey writes nothing.
    let snap = snapshot(&s.t.root);
    let again = secrets::rekey(&fleet, &s.t.root, &s.op_age, &RekeyOptions::default()).unwrap();
    assert!(again.written.is_empty());
    assert_eq!(snapshot(&s.t.root), snap);

    // --force rewrites all.
    let forced =
        secrets::rekey(&fleet, &s.t.root, &s.op_ssh, &RekeyOptions { force: true }).unwrap();
    assert_eq!(forced.written.len(), 2);
}

#[test]
fn removed_operator_loses_access_after_rekey() {
    let s = setup();
    let key = fake_key();
    secrets::set_authkey(
        &s.t.fleet(),
        &s.t.root,
        &nodes(&["worker-01"]),
        &secret(&key),
    )
    .unwrap();
    assert!(age_decrypt(&s.op_age, &s.t.secret("worker-01")).is_ok());
    // bob leaves: only alice's SSH key remains.
    let alice = std::fs::read_to_string(format!("{}.pub", s.op_ssh.display())).unwrap();
    s.t.set_operators(&[("alice", alice.trim())]);
    let fleet = s.t.fleet();
    let listed = secrets::status(&fleet, &s.t.root).unwrap();
    let w1 = listed.iter().find(|x| x.node == "worker-01").unwrap();
    assert_eq!(w1.state, State::Stale);
    assert!(w1.recipients.iter().any(|k| k.owner == "operator bob"));
    assert!(!w1.desired.iter().any(|k| k.owner == "operator bob"));
    secrets::rekey(&fleet, &s.t.root, &s.op_ssh, &RekeyOptions::default()).unwrap();
    assert!(age_decrypt(&s.op_age, &s.t.secret("worker-01")).is_err());
    assert_eq!(
        age_decrypt(&s.op_ssh, &s.t.secret("worker-01")).unwrap(),
        key
    );
    assert_eq!(age_decrypt(&s.w1, &s.t.secret("worker-01")).unwrap(), key);
}

#[test]
fn wrong_or_unreadable_identity_touches_nothing() {
    let s = setup();
    secrets::set_authkey(
        &s.t.fleet(),
        &s.t.root,
        &nodes(&["worker-01", "worker-02"]),
        &secret(&fake_key()),
    )
    .unwrap();
    // Change the recipients so that rekey has work to do.
    let (carol, carol_pub) = age_keygen(&s.t.keys, "carol.age");
    s.t.set_operators(&[("carol", &carol_pub)]);
    let fleet = s.t.fleet();
    let before = snapshot(&s.t.root);

    // carol is a recipient in the manifest but not yet of the files: she cannot rekey.
    let e = secrets::rekey(&fleet, &s.t.root, &carol, &RekeyOptions::default()).unwrap_err();
    assert!(matches!(e, SecretsError::Decrypt { .. }), "{e}");
    assert!(e.to_string().contains("tailscale-authkey.age"), "{e}");
    assert!(e.to_string().contains("carol.age"), "{e}");
    assert_eq!(snapshot(&s.t.root), before);

    let missing = s.t.keys.join("does-not-exist");
    let e = secrets::rekey(&fleet, &s.t.root, &missing, &RekeyOptions::default()).unwrap_err();
    assert!(matches!(e, SecretsError::IdentityRead { .. }), "{e}");
    assert!(e.to_string().contains("does-not-exist"), "{e}");

    let garbage = s.t.keys.join("garbage");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let e = secrets::rekey(&fleet, &s.t.root, &garbage, &RekeyOptions::default()).unwrap_err();
    assert!(matches!(e, SecretsError::IdentityInvalid { .. }), "{e}");
    assert!(e.to_string().contains("garbage"), "{e}");
    assert_eq!(snapshot(&s.t.root), before);

    // The old operator still can.
    let report = secrets::rekey(&fleet, &s.t.root, &s.op_ssh, &RekeyOptions::default()).unwrap();
    assert_eq!(report.written.len(), 2);
    assert!(age_decrypt(&carol, &s.t.secret("worker-01")).is_ok());
}

#[test]
fn bad_keys_in_the_manifest_name_their_owner_and_write_nothing() {
    let s = setup();
    let key = secret(&fake_key());
    // Passes the manifest's syntax check, but the key data does not decode to an ed25519 key.
    s.t.set_host_key(
        "worker-02",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    let fleet = s.t.fleet();
    let e = secrets::set_authkey(&fleet, &s.t.root, &nodes(&["worker-01"]), &key).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("worker-02") && msg.contains("nodes.yml"),
        "{msg}"
    );
    assert!(!s.t.root.join("secrets").exists());

    // An age plugin recipient for an operator: unsupported.
    s.t.add_host_key("worker-02");
    s.t.set_operators(&[("yubi", "age1yubikey1qwertyqwertyqwertyqwertyqwerty")]);
    let fleet = s.t.fleet();
    let e = secrets::set_authkey(&fleet, &s.t.root, &nodes(&["worker-01"]), &key).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("operator yubi") && msg.contains("fleet.yml") && msg.contains("plugin"),
        "{msg}"
    );
    assert!(!s.t.root.join("secrets").exists());
}

#[test]
fn empty_key_and_unknown_node_are_rejected() {
    let s = setup();
    let fleet = s.t.fleet();
    let e = secrets::set_authkey(&fleet, &s.t.root, &nodes(&["worker-01"]), &secret("  \n"))
        .unwrap_err();
    assert!(matches!(e, SecretsError::EmptyKey { .. }), "{e}");
    let e = secrets::set_authkey(
        &fleet,
        &s.t.root,
        &nodes(&["worker-1"]),
        &secret(&fake_key()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("did you mean `worker-01`"), "{e}");
    assert!(!s.t.root.join("secrets").exists());
}

#[test]
fn orphans_and_missing_secrets_are_listed() {
    let s = setup();
    let fleet = s.t.fleet();
    secrets::set_authkey(
        &fleet,
        &s.t.root,
        &nodes(&["worker-01"]),
        &secret(&fake_key()),
    )
    .unwrap();
    std::fs::create_dir_all(s.t.root.join("secrets/old-node")).unwrap();
    std::fs::copy(s.t.secret("worker-01"), s.t.secret("old-node")).unwrap();
    let st = secrets::status(&fleet, &s.t.root).unwrap();
    let got: Vec<(&str, &str, State)> = st
        .iter()
        .map(|x| (x.node.as_str(), x.secret.as_str(), x.state))
        .collect();
    assert_eq!(
        got,
        [
            ("control-01", "tailscale-authkey", State::NoHostKey),
            ("control-01", "nats-password", State::NoHostKey),
            ("control-01", "nats-server-env", State::NoHostKey),
            ("control-01", "nats-router-password", State::NoHostKey),
            ("control-01", "nats-supervisor-password", State::NoHostKey),
            ("control-01", "nats-registry-password", State::NoHostKey),
            ("control-01", "nats-observer-password", State::NoHostKey),
            ("old-node", "tailscale-authkey", State::Orphan),
            ("worker-01", "tailscale-authkey", State::UpToDate),
            ("worker-01", "nats-password", State::Missing),
            ("worker-02", "tailscale-authkey", State::Missing),
            ("worker-02", "nats-password", State::Missing),
        ]
    );
    let hint = |n: &str, secret: &str| {
        st.iter()
            .find(|x| x.node == n && x.secret == secret)
            .and_then(|x| x.hint.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        hint("worker-02", "tailscale-authkey"),
        "fleetnix secrets set-authkey worker-02"
    );
    assert_eq!(
        hint("worker-01", "nats-password"),
        "fleetnix secrets set-nats"
    );
    // rekey leaves the orphan alone and reports the missing one.
    let r = secrets::rekey(&fleet, &s.t.root, &s.op_age, &RekeyOptions::default()).unwrap();
    assert!(r.written.is_empty());
    assert!(r
        .skipped
        .iter()
        .any(|k| k.node == "worker-02" && k.fix.contains("set-authkey")));
    assert!(r.warnings.iter().any(|w| w.contains("old-node")));
    assert!(s.t.secret("old-node").exists());
}

#[test]
fn damaged_record_file_is_an_error_that_names_it() {
    let s = setup();
    let fleet = s.t.fleet();
    secrets::set_authkey(
        &fleet,
        &s.t.root,
        &nodes(&["worker-01"]),
        &secret(&fake_key()),
    )
    .unwrap();
    let record = s.t.root.join(secrets::RECIPIENTS_FILE);
    std::fs::write(&record, "{ \"version\": 99, \"files\": {} }\n").unwrap();
    let before = snapshot(&s.t.root);
    let e = secrets::set_authkey(
        &fleet,
        &s.t.root,
        &nodes(&["worker-02"]),
        &secret(&fake_key()),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("recipients.json") && e.to_string().contains("version"),
        "{e}"
    );
    assert_eq!(snapshot(&s.t.root), before);
}

#[test]
fn secret_of_a_node_that_lost_its_host_key_is_reported_not_rewritten() {
    let s = setup();
    secrets::set_authkey(
        &s.t.fleet(),
        &s.t.root,
        &nodes(&["worker-01", "worker-02"]),
        &secret(&fake_key()),
    )
    .unwrap();
    s.t.remove_host_key("worker-02");
    let fleet = s.t.fleet();
    assert!(fleet.node("worker-02").unwrap().host_key.is_none());
    let w2 = std::fs::read(s.t.secret("worker-02")).unwrap();
    let r = secrets::rekey(&fleet, &s.t.root, &s.op_ssh, &RekeyOptions { force: true }).unwrap();
    assert_eq!(r.written.len(), 1);
    assert_eq!(r.stuck.len(), 1);
    assert_eq!(r.stuck[0].node, "worker-02");
    assert!(r.stuck[0].fix.contains("ssh-keyscan"), "{:?}", r.stuck[0]);
    assert_eq!(std::fs::read(s.t.secret("worker-02")).unwrap(), w2);
    let nix = std::fs::read_to_string(s.t.root.join(secrets::SECRETS_NIX)).unwrap();
    assert!(!nix.contains("worker-02"), "{nix}");
}
