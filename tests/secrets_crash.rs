//! Crash safety of the secrets commands: `secrets rekey`, `set-authkey` and `set-nats` killed at
//! every write (the `FLEETNIX_TEST_CRASH_AT` hook aborts like SIGKILL: no clean-up) and by real
//! SIGKILLs at spread-out moments leave every `.age` file whole and decryptable by its intended
//! recipients with the real `age` CLI (old or new content), and `secrets list` either agrees
//! with the files or says which are unrecorded and how to repair; a re-run repairs everything.

mod common;
mod secrets_util;

use fleetnix::fsutil::CRASH_AT_ENV;
use fleetnix::secrets::PENDING_FILE;
use secrets_util::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const NODES: [&str; 3] = ["control-01", "worker-01", "worker-02"];

/// A repository with every secret written, then an operator key swapped (bob → carol) so that
/// every secret is stale: the state a `rekey` starts from.
struct Base {
    t: TestFleet,
    hosts: BTreeMap<&'static str, PathBuf>,
    alice: PathBuf,
    bob: PathBuf,
    carol: PathBuf,
    /// File (relative to the root) → plaintext, as alice decrypts it.
    plain: BTreeMap<String, String>,
}

fn age_files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = snapshot(&root.join("secrets"))
        .into_keys()
        .map(|p| format!("secrets/{}", p.display()))
        .filter(|p| p.ends_with(".age"))
        .collect();
    out.sort();
    out
}

fn base() -> Base {
    let t = TestFleet::new();
    let mut hosts = BTreeMap::new();
    for n in NODES {
        hosts.insert(n, t.add_host_key(n));
    }
    let (alice, alice_pub) = ssh_keygen(&t.keys, "alice", "ed25519");
    let (bob, bob_pub) = age_keygen(&t.keys, "bob.age");
    let (carol, carol_pub) = age_keygen(&t.keys, "carol.age");
    t.set_operators(&[("alice", &alice_pub), ("bob", &bob_pub)]);
    let out =
        run(t
            .bin()
            .env("TAILSCALE_AUTHKEY", fake_key())
            .args(["secrets", "set-authkey", "--all"]));
    assert!(out.status.success(), "{out:?}");
    let out = run(t.bin().args(["secrets", "set-nats", "-i"]).arg(&alice));
    assert!(out.status.success(), "{out:?}");
    let mut plain = BTreeMap::new();
    for f in age_files(&t.root) {
        plain.insert(f.clone(), age_decrypt(&alice, &t.root.join(&f)).unwrap());
    }
    assert_eq!(
        plain.len(),
        11,
        "3 auth keys, 3 NATS passwords, the router's, supervisors', registry's and observer's passwords, 1 server environment"
    );
    t.set_operators(&[("alice", &alice_pub), ("carol", &carol_pub)]);
    Base {
        t,
        hosts,
        alice,
        bob,
        carol,
        plain,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A fresh copy of the base repository (same keys, same HOME).
fn fresh(b: &Base, name: &str) -> PathBuf {
    let root = b.t.dir.path().join(name);
    copy_dir(&b.t.root, &root);
    root
}

/// The binary in `root`, with the base's clean environment.
fn bin_in(b: &Base, root: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(common::fleetnix_bin());
    c.current_dir(root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &b.t.home)
        .env("TMPDIR", &b.t.tmp)
        .env("NO_COLOR", "1")
        .arg("--root")
        .arg(root);
    c
}

/// The owner whose host key must decrypt `file` (`secrets/<node>/…`).
fn owner(file: &str) -> &str {
    file.split('/').nth(1).unwrap()
}

/// What must hold after any interruption: every secret is whole, holds `ok_content` and is
/// decryptable by alice and its node; it is encrypted to the old (bob) or the new (carol)
/// recipients, never both nor neither; `secrets list` calls a file up to date only if it is
/// the new one and gives every other one a hint that repairs it.
fn check_after_crash(
    b: &Base,
    root: &Path,
    what: &str,
    ok_content: &dyn Fn(&str, &str) -> bool,
) -> usize {
    let list = run(bin_in(b, root).args(["secrets", "list", "--json"]));
    assert!(list.status.success(), "{what}: {list:?}");
    let statuses: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let mut new_files = 0;
    for f in b.plain.keys() {
        let path = root.join(f);
        let by_alice = age_decrypt(&b.alice, &path)
            .unwrap_or_else(|e| panic!("{what}: alice cannot decrypt {f}: {e}"));
        assert!(
            ok_content(f, &by_alice),
            "{what}: {f} holds unexpected content"
        );
        let by_node = age_decrypt(&b.hosts[owner(f)], &path)
            .unwrap_or_else(|e| panic!("{what}: {} cannot decrypt {f}: {e}", owner(f)));
        assert_eq!(by_node, by_alice, "{what}: {f}");
        let old = age_decrypt(&b.bob, &path).is_ok();
        let new = age_decrypt(&b.carol, &path).is_ok();
        assert!(old != new, "{what}: {f}: old recipients {old}, new {new}");
        new_files += usize::from(new);
        let st = statuses
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["file"] == f.as_str())
            .unwrap_or_else(|| panic!("{what}: {f} not listed"));
        match st["state"].as_str().unwrap() {
            "up-to-date" => assert!(new, "{what}: {f} listed up to date but is the old file"),
            "stale" | "unrecorded" => {
                let hint = st["hint"].as_str().unwrap_or_default();
                assert!(
                    hint.contains("fleetnix secrets rekey"),
                    "{what}: {f}: {hint}"
                );
            }
            other => panic!("{what}: {f} is {other}"),
        }
    }
    new_files
}

/// After the repair run, everything is new, recorded and up to date.
fn check_repaired(b: &Base, root: &Path, what: &str) {
    let list = run(bin_in(b, root).args(["secrets", "list", "--json"]));
    let statuses: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    for s in statuses.as_array().unwrap() {
        assert_eq!(s["state"], "up-to-date", "{what}: {s}");
    }
    for f in b.plain.keys() {
        age_decrypt(&b.carol, &root.join(f))
            .unwrap_or_else(|e| panic!("{what}: carol cannot decrypt {f}: {e}"));
    }
    assert!(!root.join(PENDING_FILE).exists(), "{what}");
}

#[test]
fn rekey_killed_at_every_write_loses_nothing() {
    let b = base();
    let same = |f: &str, p: &str| b.plain[f] == p;
    let mut crashed = 0;
    let mut saw_interrupted_hint = false;
    for n in 1.. {
        let root = fresh(&b, &format!("crash-{n}"));
        let out = run(bin_in(&b, &root)
            .env(CRASH_AT_ENV, n.to_string())
            .args(["secrets", "rekey", "-i"])
            .arg(&b.alice));
        let what = format!("rekey killed at write point {n}");
        if out.status.success() {
            check_repaired(&b, &root, &format!("rekey with {n} crash points"));
            break;
        }
        assert_eq!(out.status.code(), None, "{what}: died of a signal: {out:?}");
        crashed += 1;
        check_after_crash(&b, &root, &what, &same);
        let list = run(bin_in(&b, &root).args(["secrets", "list"]));
        saw_interrupted_hint |= String::from_utf8_lossy(&list.stdout).contains("interrupted");
        // The repair the list names: rekey again.
        let out = run(bin_in(&b, &root)
            .args(["secrets", "rekey", "-i"])
            .arg(&b.alice));
        assert!(out.status.success(), "{what}: repair: {out:?}");
        check_repaired(&b, &root, &what);
        for (f, p) in &b.plain {
            assert_eq!(&age_decrypt(&b.alice, &root.join(f)).unwrap(), p, "{what}");
        }
    }
    // 10 secrets, recipients.json and secrets.nix: two crash points each.
    assert!(crashed >= 18, "only {crashed} crash points");
    assert!(
        saw_interrupted_hint,
        "secrets list never said a run was interrupted"
    );
}

/// Starts `rekey` in `root`, waits (spinning, no sleep) until it starts writing (its
/// `secrets/.pending` appears) or exits; returns it and when the writing started.
fn rekey_until_writing(b: &Base, root: &Path) -> (std::process::Child, Option<Instant>) {
    let mut child = bin_in(b, root)
        .args(["secrets", "rekey", "-i"])
        .arg(&b.alice)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pending = root.join(PENDING_FILE);
    loop {
        if pending.exists() {
            return (child, Some(Instant::now()));
        }
        if child.try_wait().unwrap().is_some() {
            return (child, None);
        }
        std::thread::yield_now();
    }
}

#[test]
fn rekey_sigkilled_at_spread_out_moments_loses_nothing() {
    let b = base();
    let same = |f: &str, p: &str| b.plain[f] == p;
    // How long the writing part of a rekey takes here, to spread the kills over it.
    let root = fresh(&b, "timing");
    let (mut child, since) = rekey_until_writing(&b, &root);
    assert!(child.wait().unwrap().success());
    let writing = since.map(|s| s.elapsed()).unwrap_or_default();
    let mut killed_midway = 0;
    for i in 0..12u32 {
        let root = fresh(&b, &format!("kill-{i}"));
        let (mut child, _) = rekey_until_writing(&b, &root);
        // Fault injection, not synchronisation: the kill lands somewhere in the writes.
        let delay = writing.mul_f64(f64::from(i) / 10.0);
        let t = Instant::now();
        while t.elapsed() < delay {
            std::thread::yield_now();
        }
        let _ = child.kill();
        child.wait().unwrap();
        let what = format!("rekey SIGKILLed {delay:?} into its writes");
        let new = check_after_crash(&b, &root, &what, &same);
        killed_midway += usize::from(new > 0 && new < b.plain.len());
        let out = run(bin_in(&b, &root)
            .args(["secrets", "rekey", "-i"])
            .arg(&b.alice));
        assert!(out.status.success(), "{what}: repair: {out:?}");
        check_repaired(&b, &root, &what);
    }
    eprintln!(
        "writes took {writing:?}; {killed_midway} of 12 kills landed between two file writes"
    );
}

#[test]
fn set_authkey_killed_at_every_write_leaves_old_or_new_keys() {
    let b = base();
    // Bring the base up to date first, then write a new key everywhere.
    let root0 = fresh(&b, "authkey-base");
    let out = run(bin_in(&b, &root0)
        .args(["secrets", "rekey", "-i"])
        .arg(&b.alice));
    assert!(out.status.success(), "{out:?}");
    let new_key = fake_key();
    let old = |f: &str| b.plain[f].clone();
    let mut crashed = 0;
    for n in 1.. {
        let root = b.t.dir.path().join(format!("authkey-crash-{n}"));
        copy_dir(&root0, &root);
        let out = run(bin_in(&b, &root)
            .env(CRASH_AT_ENV, n.to_string())
            .env("TAILSCALE_AUTHKEY", &new_key)
            .args(["secrets", "set-authkey", "--all"]));
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.code(), None, "{out:?}");
        crashed += 1;
        let what = format!("set-authkey killed at write point {n}");
        let list = run(bin_in(&b, &root).args(["secrets", "list", "--json"]));
        let statuses: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        for f in b.plain.keys() {
            let p =
                age_decrypt(&b.alice, &root.join(f)).unwrap_or_else(|e| panic!("{what}: {f}: {e}"));
            let node_p = age_decrypt(&b.hosts[owner(f)], &root.join(f)).unwrap();
            assert_eq!(p, node_p);
            if f.ends_with("tailscale-authkey.age") {
                assert!(p == old(f) || p.trim() == new_key, "{what}: {f} torn");
            } else {
                assert_eq!(p, old(f), "{what}: {f} changed");
            }
            let st = statuses
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["file"] == f.as_str())
                .unwrap();
            if st["state"] != "up-to-date" {
                let hint = st["hint"].as_str().unwrap_or_default();
                assert!(
                    hint.contains("run that command again"),
                    "{what}: {f}: {hint}"
                );
            }
        }
        // Repair: the interrupted command again.
        let out = run(bin_in(&b, &root).env("TAILSCALE_AUTHKEY", &new_key).args([
            "secrets",
            "set-authkey",
            "--all",
        ]));
        assert!(out.status.success(), "{what}: {out:?}");
        for n in NODES {
            let f = root.join(format!("secrets/{n}/tailscale-authkey.age"));
            assert_eq!(age_decrypt(&b.alice, &f).unwrap().trim(), new_key);
        }
        check_repaired(&b, &root, &what);
    }
    assert!(crashed >= 8, "only {crashed} crash points");
}

#[test]
fn set_nats_killed_at_every_write_never_gives_a_node_a_password_the_server_lacks() {
    let b = base();
    let root0 = fresh(&b, "nats-base");
    let out = run(bin_in(&b, &root0)
        .args(["secrets", "rekey", "-i"])
        .arg(&b.alice));
    assert!(out.status.success(), "{out:?}");
    // A new node, named to sort before the control plane (files are otherwise written in path
    // order): set-nats writes its password file and the server environment.
    let nodes_yml = root0.join("fleet/nodes.yml");
    let mut text = std::fs::read_to_string(&nodes_yml).unwrap();
    let (w3, w3_pub) = ssh_keygen(&b.t.keys, "host-aa-03", "ed25519");
    text.push_str(&format!(
        "  - name: aa-03\n    tailscale_ip: 100.64.0.9\n    roles: [glm-worker]\n    resources:\n      cpu: 2\n      ram_gb: 4\n    host_key: \"{w3_pub}\"\n"
    ));
    std::fs::write(&nodes_yml, text).unwrap();
    let env_file = "secrets/control-01/nats-server-env.age";
    let pw_of = |env: &str, node: &str| {
        let var = format!("NATS_PASSWORD_{}=", node.to_uppercase().replace('-', "_"));
        env.lines()
            .find_map(|l| l.strip_prefix(&var))
            .map(str::to_string)
    };
    let mut crashed = 0;
    for n in 1.. {
        let root = b.t.dir.path().join(format!("nats-crash-{n}"));
        copy_dir(&root0, &root);
        let out = run(bin_in(&b, &root)
            .env(CRASH_AT_ENV, n.to_string())
            .args(["secrets", "set-nats", "-i"])
            .arg(&b.alice));
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.code(), None, "{out:?}");
        crashed += 1;
        let what = format!("set-nats killed at write point {n}");
        let env = age_decrypt(&b.alice, &root.join(env_file)).unwrap();
        // Old nodes keep their passwords whatever happened.
        for node in NODES {
            assert_eq!(
                pw_of(&env, node),
                pw_of(&b.plain[env_file], node),
                "{what}: {node}"
            );
        }
        // Each service's password file holds what the server has for it.
        for (service, var) in [
            ("router", "NATS_ROUTER_PASSWORD"),
            ("supervisor", "NATS_SUPERVISOR_PASSWORD"),
            ("registry", "NATS_REGISTRY_PASSWORD"),
            ("observer", "NATS_OBSERVER_PASSWORD"),
        ] {
            let pw = age_decrypt(
                &b.alice,
                &root.join(format!("secrets/control-01/nats-{service}-password.age")),
            )
            .unwrap();
            assert!(
                env.lines().any(|l| l == format!("{var}={}", pw.trim_end())),
                "{what}: the {service}'s password is not the server's"
            );
        }
        // aa-03's file, if written, holds the password the server has.
        let w3_file = root.join("secrets/aa-03/nats-password.age");
        if w3_file.exists() {
            let pw = age_decrypt(&w3, &w3_file).unwrap();
            assert_eq!(Some(pw), pw_of(&env, "aa-03"), "{what}");
        }
        let out = run(bin_in(&b, &root)
            .args(["secrets", "set-nats", "-i"])
            .arg(&b.alice));
        assert!(out.status.success(), "{what}: repair: {out:?}");
        let env = age_decrypt(&b.alice, &root.join(env_file)).unwrap();
        let pw = age_decrypt(&w3, &w3_file).unwrap();
        assert_eq!(Some(pw), pw_of(&env, "aa-03"), "{what}: after repair");
        assert!(!root.join(PENDING_FILE).exists());
    }
    assert!(crashed >= 4, "only {crashed} crash points");
}
