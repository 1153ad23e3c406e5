//! One fleetnix at a time per repository (`fleetnix::lock`): writers wait for the lock, then fail
//! naming its holder; read-only commands never take it; two writers racing leave exactly what
//! one alone writes.

mod common;
mod secrets_util;

use fleetnix::lock::{RepoLock, LOCK_FILE};
use secrets_util::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Everything under `dir` except the lock file.
fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut s = snapshot(dir);
    s.remove(Path::new(LOCK_FILE));
    s
}

#[test]
fn a_writer_fails_with_the_holders_pid_and_command_and_writes_nothing() {
    let t = TestFleet::new();
    let held = RepoLock::acquire_for(&t.root, "fleetnix test-holder", Duration::ZERO).unwrap();
    let before = files(&t.root);
    let out = run(t.bin().env("FLEETNIX_LOCK_WAIT", "0s").arg("render"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "another fleetnix (pid {}, command fleetnix test-holder) holds the lock",
            std::process::id()
        )),
        "{err}"
    );
    assert_eq!(files(&t.root), before, "a refused render wrote something");

    // Every writer takes it (each refused here before doing anything else)…
    for args in [
        &["secrets", "set-nats"][..],
        &["secrets", "rekey"],
        &["secrets", "set-authkey", "--all"],
        &["acl", "get"],
        &["acl", "set"],
        &["bootstrap", "worker-01", "--ssh", "root@127.0.0.1"],
        &["deploy", "worker-01"],
    ] {
        let out = run(t
            .bin()
            .env("FLEETNIX_LOCK_WAIT", "0s")
            .env("TAILSCALE_AUTHKEY", fake_key())
            .args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            text(&out.stderr).contains("holds the lock"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // …and read-only commands never do.
    for args in [
        &["validate"][..],
        &["render", "--check"],
        &["secrets", "list"],
        &["show", "worker-01"],
        &["acl", "check"],
        &["deploy", "worker-01", "--dry-run"],
    ] {
        let out = run(t.bin().env("FLEETNIX_LOCK_WAIT", "0s").args(args));
        assert!(
            !text(&out.stderr).contains("lock"),
            "{args:?} took the lock: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(files(&t.root), before);
    drop(held);
    // (A little wait: a child forked meanwhile by another test thread holds a copy of the
    // descriptor, and so the lock, until it execs.)
    let out = run(t.bin().env("FLEETNIX_LOCK_WAIT", "5s").arg("render"));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_waiting_writer_goes_ahead_once_the_holder_is_done() {
    let t = TestFleet::new();
    let held = RepoLock::acquire_for(&t.root, "fleetnix test-holder", Duration::ZERO).unwrap();
    let mut child = spawn(t.bin().env("FLEETNIX_LOCK_WAIT", "60s").arg("render"));
    // It says it waits, and for whom; only then is the lock released.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains(&format!(
            "waiting for another fleetnix (pid {}, command fleetnix test-holder)",
            std::process::id()
        )),
        "{line}"
    );
    assert!(!t.root.join("nix/nodes/worker-01.nix").exists());
    drop(held);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(t.root.join("nix/nodes/worker-01.nix").is_file());
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let t = TestFleet::new();
    // A render that dies (abort, like SIGKILL: no clean-up) at its first file write, holding
    // the lock: the kernel frees it.
    let out = run(t
        .bin()
        .env("FLEETNIX_LOCK_WAIT", "0s")
        .env(fleetnix::fsutil::CRASH_AT_ENV, "1")
        .arg("render"));
    assert!(!out.status.success(), "{out:?}");
    assert!(t.root.join(LOCK_FILE).exists());
    let out = run(t.bin().env("FLEETNIX_LOCK_WAIT", "0s").arg("render"));
    assert!(out.status.success(), "{out:?}");
}

/// Runs two copies of `args` at once; returns both outputs.
fn race(t: &TestFleet, args: &[&str], env: &[(&str, &str)]) -> (Output, Output) {
    let start = || {
        let mut c = t.bin();
        for (k, v) in env {
            c.env(k, v);
        }
        spawn(c.args(args))
    };
    let a = start();
    let b = start();
    (a.wait_with_output().unwrap(), b.wait_with_output().unwrap())
}

/// Each run succeeded (after waiting) or failed with the lock message; at least one succeeded.
fn one_waited_or_was_refused(a: &Output, b: &Output) {
    for o in [a, b] {
        assert!(
            o.status.success() || text(&o.stderr).contains("holds the lock"),
            "{o:?}"
        );
    }
    assert!(a.status.success() || b.status.success());
}

#[test]
fn two_concurrent_renders_write_exactly_what_one_writes() {
    let alone = TestFleet::new();
    let out = run(alone.bin().arg("render"));
    assert!(out.status.success(), "{out:?}");
    let expected = files(&alone.root.join("nix"));
    assert!(!expected.is_empty());
    for round in 0..3 {
        let t = TestFleet::new();
        let (a, b) = race(&t, &["render"], &[("FLEETNIX_LOCK_WAIT", "30s")]);
        one_waited_or_was_refused(&a, &b);
        assert_eq!(files(&t.root.join("nix")), expected, "round {round}");
        // Nothing half-written is left behind (no temp files).
        assert!(files(&t.root)
            .keys()
            .all(|p| !p.to_string_lossy().contains(".fleetnix-")));
    }
}

#[test]
fn two_concurrent_set_nats_agree_on_every_password() {
    for (round, wait) in [(0, "30s"), (1, "0s")] {
        let t = TestFleet::new();
        let mut hosts = Vec::new();
        for n in ["control-01", "worker-01", "worker-02"] {
            hosts.push((n, t.add_host_key(n)));
        }
        let (op, op_pub) = ssh_keygen(&t.keys, "alice", "ed25519");
        t.set_operators(&[("alice", &op_pub)]);
        let id = op.to_string_lossy().to_string();
        let (a, b) = race(
            &t,
            &["secrets", "set-nats", "--identity", &id],
            &[("FLEETNIX_LOCK_WAIT", wait)],
        );
        one_waited_or_was_refused(&a, &b);
        // Exactly what one run writes: each node's file holds the password the server
        // environment holds for it, every file recorded; a second run alone keeps them all.
        let env = age_decrypt(&op, &t.root.join("secrets/control-01/nats-server-env.age"))
            .expect("the server environment decrypts");
        for (node, host_key) in &hosts {
            let file = t.root.join(format!("secrets/{node}/nats-password.age"));
            let pw = age_decrypt(host_key, &file).expect("the node decrypts its password");
            let var = format!("NATS_PASSWORD_{}", node.to_uppercase().replace('-', "_"));
            assert!(
                env.lines().any(|l| l == format!("{var}={pw}")),
                "round {round}: {node}'s password is not the server's"
            );
        }
        let list = run(t.bin().args(["secrets", "list", "--json"]));
        let statuses: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let nats = statuses
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["secret"].as_str().unwrap().starts_with("nats-"));
        assert_eq!(
            nats.clone().count(),
            8,
            "3 passwords, the router's, supervisors', registry's and observer's passwords and the server environment"
        );
        for s in nats {
            assert_eq!(s["state"], "up-to-date", "round {round}: {s}");
        }
        assert!(!t.root.join(fleetnix::secrets::PENDING_FILE).exists());
        let before = files(&t.root.join("secrets"));
        let again = run(t.bin().args(["secrets", "set-nats", "--identity", &id]));
        assert!(again.status.success(), "{again:?}");
        assert!(
            text(&again.stdout).contains("0 new"),
            "{}",
            text(&again.stdout)
        );
        assert_eq!(files(&t.root.join("secrets")), before);
    }
}
