//! NATS credentials as age secrets (`secrets::set_nats`, `fleetnix secrets set-nats`), checked
//! with the real `age` CLI: who can decrypt what, passwords kept across runs, byte-identical
//! re-runs, rekey and list covering every kind, nothing in plaintext on disk or in the output.

mod common;
mod secrets_util;

use fleetnix::secrets::{self, RekeyOptions, SecretsError, State};
use secrets_util::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every node with a host key, one SSH and one age operator.
struct Setup {
    t: TestFleet,
    hosts: BTreeMap<&'static str, PathBuf>,
    op_ssh: PathBuf,
    op_age: PathBuf,
}

fn setup() -> Setup {
    let t = TestFleet::new();
    let mut hosts = BTreeMap::new();
    for n in ["control-01", "worker-01", "worker-02"] {
        hosts.insert(n, t.add_host_key(n));
    }
    let (op_ssh, op_ssh_pub) = ssh_keygen(&t.keys, "alice", "ed25519");
    let (op_age, op_age_pub) = age_keygen(&t.keys, "bob.age");
    t.set_operators(&[("alice", &op_ssh_pub), ("bob", &op_age_pub)]);
    Setup {
        t,
        hosts,
        op_ssh,
        op_age,
    }
}

fn password_file(t: &TestFleet, node: &str) -> PathBuf {
    t.root.join(format!("secrets/{node}/nats-password.age"))
}

fn env_file(t: &TestFleet) -> PathBuf {
    t.root.join("secrets/control-01/nats-server-env.age")
}

/// `NATS_PASSWORD_<NODE>` → password, from the decrypted server environment file.
fn env_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn var(node: &str) -> String {
    format!("NATS_PASSWORD_{}", node.to_uppercase().replace('-', "_"))
}

/// Appends a node with a fresh host key to nodes.yml; returns its host private key.
fn add_node(t: &TestFleet, name: &str, ip: &str) -> PathBuf {
    let path = t.root.join("fleet/nodes.yml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "  - name: {name}\n    tailscale_ip: {ip}\n    roles: [glm-worker]\n    resources:\n      cpu: 2\n      ram_gb: 4\n"
    ));
    std::fs::write(&path, text).unwrap();
    t.add_host_key(name)
}

/// Asserts no file under `dir` contains any of `needles`.
fn assert_nowhere_on_disk(dir: &Path, needles: &[String]) {
    for (path, bytes) in snapshot(dir) {
        for n in needles {
            assert!(!contains(&bytes, n), "a password in {}", path.display());
        }
    }
}

#[test]
fn each_node_reads_its_own_password_and_the_control_plane_reads_the_environment() {
    let s = setup();
    let fleet = s.t.fleet();
    let out = secrets::set_nats(&fleet, &s.t.root, &s.op_age).unwrap();
    assert_eq!(out.generated, ["control-01", "worker-01", "worker-02"]);
    assert_eq!(
        out.services_generated,
        ["_observer", "_registry", "_router", "_supervisor"]
    );
    assert!(out.kept.is_empty());
    assert!(out.report.skipped.is_empty());
    let written: Vec<&str> = out.report.written.iter().map(|w| w.file.as_str()).collect();
    assert_eq!(
        written,
        [
            "secrets/control-01/nats-observer-password.age",
            "secrets/control-01/nats-password.age",
            "secrets/control-01/nats-registry-password.age",
            "secrets/control-01/nats-router-password.age",
            "secrets/control-01/nats-server-env.age",
            "secrets/control-01/nats-supervisor-password.age",
            "secrets/worker-01/nats-password.age",
            "secrets/worker-02/nats-password.age",
        ]
    );

    let env = env_map(&age_decrypt(&s.hosts["control-01"], &env_file(&s.t)).unwrap());
    // One password per node, and one per service, which only the control plane (and the
    // operators) read.
    assert_eq!(env.len(), 7);
    for (service, var) in [
        ("router", "NATS_ROUTER_PASSWORD"),
        ("supervisor", "NATS_SUPERVISOR_PASSWORD"),
        ("registry", "NATS_REGISTRY_PASSWORD"),
        ("observer", "NATS_OBSERVER_PASSWORD"),
    ] {
        let file =
            s.t.root
                .join(format!("secrets/control-01/nats-{service}-password.age"));
        let pw = age_decrypt(&s.hosts["control-01"], &file).unwrap();
        assert_eq!(env.get(var), Some(&pw), "{var}");
        assert_eq!(age_decrypt(&s.op_ssh, &file).unwrap(), pw);
        assert!(age_decrypt(&s.hosts["worker-01"], &file).is_err());
        assert_ne!(env.get("NATS_PASSWORD_CONTROL_01"), Some(&pw), "{var}");
    }
    let mut passwords = Vec::new();
    for (node, host) in &s.hosts {
        let pw = age_decrypt(host, &password_file(&s.t, node)).unwrap();
        assert_eq!(env.get(&var(node)), Some(&pw), "{node}");
        assert!(fleetnix::bus::creds::is_valid_password(&pw));
        // The operators read it too, and no other node does.
        assert_eq!(
            age_decrypt(&s.op_ssh, &password_file(&s.t, node)).unwrap(),
            pw
        );
        assert_eq!(
            age_decrypt(&s.op_age, &password_file(&s.t, node)).unwrap(),
            pw
        );
        for (other, other_host) in &s.hosts {
            if other != node {
                assert!(
                    age_decrypt(other_host, &password_file(&s.t, node)).is_err(),
                    "{other} reads {node}'s password"
                );
            }
        }
        passwords.push(pw);
    }
    assert!(age_decrypt(&s.hosts["worker-01"], &env_file(&s.t)).is_err());
    assert_eq!(
        age_decrypt(&s.op_ssh, &env_file(&s.t)).unwrap(),
        age_decrypt(&s.hosts["control-01"], &env_file(&s.t)).unwrap()
    );
    passwords.sort();
    passwords.dedup();
    assert_eq!(passwords.len(), 3, "every node has its own password");
    assert_nowhere_on_disk(s.t.dir.path(), &passwords);

    // secrets.nix and recipients.json list every kind; list says they are up to date.
    let nix = std::fs::read_to_string(s.t.root.join(secrets::SECRETS_NIX)).unwrap();
    for f in [
        "\"control-01/nats-server-env.age\".publicKeys",
        "\"worker-02/nats-password.age\".publicKeys",
        "\"worker-02/tailscale-authkey.age\".publicKeys",
    ] {
        assert!(nix.contains(f), "{f} in {nix}");
    }
    let records = secrets::Records::load(&s.t.root).unwrap();
    assert_eq!(records.files.len(), 8);
    let st = secrets::status(&fleet, &s.t.root).unwrap();
    for x in &st {
        let want = if x.secret == "tailscale-authkey" {
            State::Missing
        } else {
            State::UpToDate
        };
        assert_eq!(x.state, want, "{}", x.file);
    }
    assert_eq!(st.len(), 11);
}

#[test]
fn rerun_keeps_every_byte_and_a_new_node_only_adds_its_password() {
    let s = setup();
    secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    let before = snapshot(&s.t.root);
    let again = secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_ssh).unwrap();
    assert!(again.generated.is_empty());
    assert_eq!(again.kept, ["control-01", "worker-01", "worker-02"]);
    assert!(again.report.written.is_empty());
    assert!(again.services_generated.is_empty());
    assert_eq!(again.report.unchanged.len(), 8);
    assert_eq!(snapshot(&s.t.root), before, "a re-run changes nothing");

    let old_env = env_map(&age_decrypt(&s.op_age, &env_file(&s.t)).unwrap());
    let w3 = add_node(&s.t, "worker-03", "100.64.0.4");
    let out = secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    assert_eq!(out.generated, ["worker-03"]);
    let written: Vec<&str> = out.report.written.iter().map(|w| w.file.as_str()).collect();
    assert_eq!(
        written,
        [
            "secrets/control-01/nats-server-env.age",
            "secrets/worker-03/nats-password.age"
        ]
    );
    for n in ["control-01", "worker-01", "worker-02"] {
        let f = password_file(&s.t, n);
        assert_eq!(
            std::fs::read(&f).ok(),
            before.get(f.strip_prefix(&s.t.root).unwrap_or(&f)).cloned(),
            "{n} rewritten"
        );
    }
    let env = env_map(&age_decrypt(&s.hosts["control-01"], &env_file(&s.t)).unwrap());
    assert_eq!(env.len(), 8);
    for (k, v) in &old_env {
        assert_eq!(env.get(k), Some(v), "{k} kept");
    }
    assert_eq!(
        env.get(&var("worker-03")).cloned(),
        Some(age_decrypt(&w3, &password_file(&s.t, "worker-03")).unwrap())
    );
}

#[test]
fn a_node_that_left_is_dropped_from_the_environment_and_its_file_is_an_orphan() {
    let s = setup();
    secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    // worker-02 leaves the fleet.
    let path = s.t.root.join("fleet/nodes.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.find("  - name: worker-02").unwrap();
    std::fs::write(&path, &text[..cut]).unwrap();
    let fleet = s.t.fleet();
    let out = secrets::set_nats(&fleet, &s.t.root, &s.op_age).unwrap();
    assert!(out.generated.is_empty());
    let written: Vec<&str> = out.report.written.iter().map(|w| w.file.as_str()).collect();
    assert_eq!(written, ["secrets/control-01/nats-server-env.age"]);
    let env = env_map(&age_decrypt(&s.op_age, &env_file(&s.t)).unwrap());
    assert!(!env.contains_key(&var("worker-02")), "{:?}", env.keys());
    let st = secrets::status(&fleet, &s.t.root).unwrap();
    let orphan = st
        .iter()
        .find(|x| x.file == "secrets/worker-02/nats-password.age")
        .unwrap();
    assert_eq!(orphan.state, State::Orphan);
    assert!(password_file(&s.t, "worker-02").exists(), "left alone");
}

#[test]
fn a_wrong_identity_or_a_damaged_environment_writes_nothing() {
    let s = setup();
    secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    add_node(&s.t, "worker-03", "100.64.0.4");
    let fleet = s.t.fleet();
    let before = snapshot(&s.t.root);
    let e = secrets::set_nats(&fleet, &s.t.root, &s.hosts["worker-01"]).unwrap_err();
    assert!(matches!(e, SecretsError::Decrypt { .. }), "{e}");
    assert!(e.to_string().contains("nats-server-env.age"), "{e}");
    let missing = s.t.keys.join("no-such-key");
    let e = secrets::set_nats(&fleet, &s.t.root, &missing).unwrap_err();
    assert!(e.to_string().contains("no-such-key"), "{e}");
    assert_eq!(snapshot(&s.t.root), before);

    // An environment file edited by hand into something set-nats did not write.
    let secret_value = format!("{}{}", "not a", " password!");
    let plain = s.t.dir.path().join("plain-env");
    std::fs::write(&plain, format!("{}={secret_value}\n", var("worker-01"))).unwrap();
    let pub_key = std::fs::read_to_string(format!("{}.pub", s.op_ssh.display())).unwrap();
    let out = run(std::process::Command::new("age")
        .args(["-e", "-r", pub_key.trim(), "-o"])
        .arg(env_file(&s.t))
        .arg(&plain));
    assert!(out.status.success());
    std::fs::remove_file(&plain).unwrap();
    let before = snapshot(&s.t.root);
    let e = secrets::set_nats(&fleet, &s.t.root, &s.op_ssh).unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(
        text.contains("nats-server-env.age") && text.contains(&var("worker-01")),
        "{text}"
    );
    assert!(!text.contains(&secret_value), "{text}");
    assert_eq!(snapshot(&s.t.root), before);
}

#[test]
fn the_control_plane_needs_a_host_key_and_other_nodes_are_skipped_without_one() {
    let s = setup();
    s.t.remove_host_key("control-01");
    let before = snapshot(&s.t.root);
    let e = secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap_err();
    assert!(matches!(e, SecretsError::NoHostKey { .. }), "{e}");
    assert!(e.to_string().contains("ssh-keyscan"), "{e}");
    assert_eq!(snapshot(&s.t.root), before);

    let s = setup();
    s.t.remove_host_key("worker-02");
    let out = secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    assert_eq!(out.report.skipped.len(), 1);
    assert_eq!(out.report.skipped[0].node, "worker-02");
    assert!(!password_file(&s.t, "worker-02").exists());
    // Its password is kept in the environment and written once it has a host key.
    let env = env_map(&age_decrypt(&s.op_age, &env_file(&s.t)).unwrap());
    let w2 = s.t.add_host_key("worker-02");
    let out = secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    assert!(out.generated.is_empty());
    assert_eq!(
        age_decrypt(&w2, &password_file(&s.t, "worker-02")).ok(),
        env.get(&var("worker-02")).cloned()
    );
}

#[test]
fn rekey_and_list_cover_every_kind() {
    let s = setup();
    let fleet = s.t.fleet();
    let all: Vec<_> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    let key = fake_key();
    secrets::set_authkey(
        &fleet,
        &s.t.root,
        &all,
        &fleetnix::secret::Secret::from(key.clone()),
    )
    .unwrap();
    secrets::set_nats(&fleet, &s.t.root, &s.op_age).unwrap();
    let env = age_decrypt(&s.op_age, &env_file(&s.t)).unwrap();
    let w1_pw = age_decrypt(&s.op_age, &password_file(&s.t, "worker-01")).unwrap();

    // bob leaves: every one of the 10 files is stale, rekey rewrites them all.
    let alice = std::fs::read_to_string(format!("{}.pub", s.op_ssh.display())).unwrap();
    s.t.set_operators(&[("alice", alice.trim())]);
    let fleet = s.t.fleet();
    let st = secrets::status(&fleet, &s.t.root).unwrap();
    assert_eq!(st.len(), 11);
    assert!(st.iter().all(|x| x.state == State::Stale), "{st:#?}");
    let r = secrets::rekey(&fleet, &s.t.root, &s.op_ssh, &RekeyOptions::default()).unwrap();
    assert_eq!(r.written.len(), 11);
    assert!(age_decrypt(&s.op_age, &env_file(&s.t)).is_err());
    assert!(age_decrypt(&s.op_age, &password_file(&s.t, "worker-01")).is_err());
    assert_eq!(
        age_decrypt(&s.hosts["control-01"], &env_file(&s.t)).unwrap(),
        env
    );
    assert_eq!(
        age_decrypt(&s.hosts["worker-01"], &password_file(&s.t, "worker-01")).unwrap(),
        w1_pw
    );
    assert_eq!(
        age_decrypt(&s.hosts["worker-01"], &s.t.secret("worker-01")).unwrap(),
        key
    );
    assert!(secrets::status(&fleet, &s.t.root)
        .unwrap()
        .iter()
        .all(|x| x.state == State::UpToDate));
    // set-nats after a rekey has nothing to do.
    let out = secrets::set_nats(&fleet, &s.t.root, &s.op_ssh).unwrap();
    assert!(out.report.written.is_empty());
}

#[test]
fn cli_set_nats_prints_no_password_and_list_shows_every_kind() {
    let s = setup();
    let t = &s.t;
    let out = run(t
        .bin()
        .args(["-vv", "secrets", "set-nats", "--identity"])
        .arg(&s.op_age));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("wrote secrets/control-01/nats-server-env.age"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 new (control-01, worker-01, worker-02)"),
        "{stdout}"
    );
    let env = env_map(&age_decrypt(&s.op_age, &env_file(t)).unwrap());
    let passwords: Vec<String> = env.values().cloned().collect();
    assert_eq!(passwords.len(), 7);
    assert!(
        stdout.contains("new service password(s): _observer, _registry, _router, _supervisor"),
        "{stdout}"
    );

    // Second run, with the default identity (~/.ssh/id_ed25519 = alice's key).
    std::fs::create_dir_all(t.home.join(".ssh")).unwrap();
    std::fs::copy(&s.op_ssh, t.home.join(".ssh/id_ed25519")).unwrap();
    let again = run(t.bin().args(["-v", "secrets", "set-nats"]));
    let again_out = String::from_utf8_lossy(&again.stdout).to_string();
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert!(again_out.contains("0 new (-), 3 kept"), "{again_out}");

    let list = run(t.bin().args(["-v", "secrets", "list", "--json"]));
    assert!(list.status.success());
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let rows: Vec<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap().to_string(),
                r["secret"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |n: &str, sec: &str| {
        rows.iter()
            .find(|r| r.0 == n && r.1 == sec)
            .map(|r| r.2.as_str())
            .unwrap_or("absent")
            .to_string()
    };
    assert_eq!(row("control-01", "nats-server-env"), "up-to-date");
    assert_eq!(row("worker-02", "nats-password"), "up-to-date");
    assert_eq!(row("worker-02", "tailscale-authkey"), "missing");
    assert_eq!(row("worker-02", "nats-server-env"), "absent");
    let table = run(t.bin().args(["secrets", "list"]));
    let table_out = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table_out
            .lines()
            .any(|l| l.starts_with("secrets/worker-01/nats-password.age ")
                && l.contains(" up to date ")),
        "{table_out}"
    );

    let mut all_output = stdout + &stderr;
    for o in [&again, &list, &table] {
        all_output += &String::from_utf8_lossy(&o.stdout);
        all_output += &String::from_utf8_lossy(&o.stderr);
    }
    for p in &passwords {
        assert!(!all_output.contains(p.as_str()), "a password in the output");
    }
    assert_nowhere_on_disk(t.dir.path(), &passwords);
}

/// A fleet from before `_supervisor` and `_registry` (issue 21): the environment file holds the
/// nodes' and the router's passwords only, and there are no supervisor or registry files.
/// `set-nats` adds those two, keeps every existing password and rewrites no node file.
#[test]
fn migration_from_an_old_style_secrets_dir_adds_the_service_passwords_and_keeps_the_rest() {
    let s = setup();
    secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    // Make it what set-nats wrote before: drop the new users' lines and files.
    let new_vars = [
        "NATS_SUPERVISOR_PASSWORD",
        "NATS_REGISTRY_PASSWORD",
        "NATS_OBSERVER_PASSWORD",
    ];
    let full = age_decrypt(&s.op_age, &env_file(&s.t)).unwrap();
    let old_text: String = full
        .lines()
        .filter(|l| !new_vars.iter().any(|v| l.starts_with(&format!("{v}="))))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(env_map(&old_text).len(), 4, "the nodes and the router");
    let plain = s.t.dir.path().join("old-env");
    std::fs::write(&plain, &old_text).unwrap();
    let mut recipients = Vec::new();
    for key in [&s.hosts["control-01"], &s.op_ssh, &s.op_age] {
        let pub_path = format!("{}.pub", key.display());
        let text = match std::fs::read_to_string(&pub_path) {
            Ok(t) => t,
            // An age identity: its public key is in a comment.
            Err(_) => std::fs::read_to_string(key)
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
                .unwrap(),
        };
        recipients.extend(["-r".to_string(), text.trim().to_string()]);
    }
    let out = run(std::process::Command::new("age")
        .arg("-e")
        .args(&recipients)
        .arg("-o")
        .arg(env_file(&s.t))
        .arg(&plain));
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(&plain).unwrap();
    for f in [
        "nats-supervisor-password.age",
        "nats-registry-password.age",
        "nats-observer-password.age",
    ] {
        std::fs::remove_file(s.t.root.join("secrets/control-01").join(f)).unwrap();
    }
    let old = snapshot(&s.t.root);
    let old_env = env_map(&old_text);

    let out = secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_age).unwrap();
    assert!(out.generated.is_empty(), "{:?}", out.generated);
    assert_eq!(out.kept, ["control-01", "worker-01", "worker-02"]);
    assert_eq!(
        out.services_generated,
        ["_observer", "_registry", "_supervisor"]
    );
    let written: Vec<&str> = out.report.written.iter().map(|w| w.file.as_str()).collect();
    assert_eq!(
        written,
        [
            "secrets/control-01/nats-observer-password.age",
            "secrets/control-01/nats-registry-password.age",
            "secrets/control-01/nats-server-env.age",
            "secrets/control-01/nats-supervisor-password.age",
        ]
    );
    // Every old password kept, byte for byte where its file was.
    let env = env_map(&age_decrypt(&s.hosts["control-01"], &env_file(&s.t)).unwrap());
    for (k, v) in &old_env {
        assert_eq!(env.get(k), Some(v), "{k} kept");
    }
    for f in [
        "secrets/control-01/nats-password.age",
        "secrets/control-01/nats-router-password.age",
        "secrets/worker-01/nats-password.age",
        "secrets/worker-02/nats-password.age",
    ] {
        let p = std::path::PathBuf::from(f);
        assert_eq!(
            std::fs::read(s.t.root.join(f)).ok().as_ref(),
            old.get(&p),
            "{f} rewritten"
        );
    }
    // The new ones are there, in the environment and in their files, for the control plane.
    for (service, var) in [
        ("supervisor", "NATS_SUPERVISOR_PASSWORD"),
        ("registry", "NATS_REGISTRY_PASSWORD"),
        ("observer", "NATS_OBSERVER_PASSWORD"),
    ] {
        let file =
            s.t.root
                .join(format!("secrets/control-01/nats-{service}-password.age"));
        let pw = age_decrypt(&s.hosts["control-01"], &file).unwrap();
        assert!(fleetnix::bus::creds::is_valid_password(&pw));
        assert_eq!(env.get(var), Some(&pw), "{var}");
    }
    assert_eq!(env.len(), 7);
    // And a second run has nothing left to do.
    let again = secrets::set_nats(&s.t.fleet(), &s.t.root, &s.op_ssh).unwrap();
    assert!(again.report.written.is_empty());
}
