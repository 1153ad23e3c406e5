//! `fleetnix secrets …` as a user runs it: key sources, no leaks (argv of every process, files,
//! output, errors), bad input (exit 1, clear message, nothing changed).

mod common;
mod secrets_util;

use secrets_util::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Setup {
    t: TestFleet,
    w1: PathBuf,
    op_ssh: PathBuf,
    op_age: PathBuf,
}

fn setup() -> Setup {
    let t = TestFleet::new();
    let w1 = t.add_host_key("worker-01");
    t.add_host_key("worker-02");
    let (op_ssh, op_ssh_pub) = ssh_keygen(&t.keys, "alice", "ed25519");
    let (op_age, op_age_pub) = age_keygen(&t.keys, "bob.age");
    t.set_operators(&[("alice", &op_ssh_pub), ("bob", &op_age_pub)]);
    Setup {
        t,
        w1,
        op_ssh,
        op_age,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs with `input` on stdin.
fn run_stdin(cmd: &mut std::process::Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn assert_no_key_in_output(out: &Output, key: &str) {
    assert!(
        !contains(&out.stdout, key),
        "key in stdout: {}",
        text(&out.stdout)
    );
    assert!(
        !contains(&out.stderr, key),
        "key in stderr: {}",
        text(&out.stderr)
    );
}

/// Asserts exit code 1, an error mentioning every word of `words`, and no key in the output.
fn assert_fails(out: &Output, words: &[&str], key: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
    assert_no_key_in_output(out, key);
}

/// Scans every process's argv and every file under some directories, again and again, for
/// needles, until stopped. Also remembers whether it saw a process whose argv contains `watch`.
struct Scanner {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    hits: Arc<Mutex<Vec<String>>>,
    seen_watch: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Scanner {
    fn start(needles: Vec<String>, dirs: Vec<PathBuf>, watch: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen_watch = Arc::new(AtomicBool::new(false));
        let (s, r, h, w) = (
            stop.clone(),
            rounds.clone(),
            hits.clone(),
            seen_watch.clone(),
        );
        let watch = watch.to_string();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(argv) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    if contains(&argv, &watch) {
                        w.store(true, Ordering::SeqCst);
                    }
                    for n in &needles {
                        if contains(&argv, n) {
                            h.lock().unwrap().push(format!(
                                "argv of {}: {}",
                                entry.path().display(),
                                text(&argv).replace('\0', " ")
                            ));
                        }
                    }
                }
                for d in &dirs {
                    for (path, bytes) in snapshot(d) {
                        for n in &needles {
                            if contains(&bytes, n) {
                                h.lock().unwrap().push(format!("file {}", path.display()));
                            }
                        }
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        Scanner {
            stop,
            rounds,
            hits,
            seen_watch,
            handle: Some(handle),
        }
    }

    /// Waits (polling, with a deadline) until `n` more full scans have completed.
    fn wait_rounds(&self, n: usize) {
        let target = self.rounds.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.rounds.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "scanner stalled");
            std::thread::yield_now();
        }
    }

    fn finish(mut self) -> (Vec<String>, bool) {
        self.wait_rounds(1);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let hits = std::mem::take(&mut *self.hits.lock().unwrap());
        (hits, self.seen_watch.load(Ordering::SeqCst))
    }
}

#[test]
fn scanner_finds_a_needle_in_argv_and_files() {
    // Proves the leak scans below can fail: a canary (not a key) in argv and in a file.
    let dir = tempfile::tempdir().unwrap();
    let canary = format!(
        "canary-{}",
        fake_key().len() * 7919 + std::process::id() as usize
    );
    let mut sleeper = std::process::Command::new("sh")
        .args(["-c", "read x", "sh", &canary])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(dir.path().join("f"), format!("x{canary}x")).unwrap();
    let scan = Scanner::start(
        vec![canary.clone()],
        vec![dir.path().to_path_buf()],
        &canary,
    );
    scan.wait_rounds(2);
    let (hits, seen) = scan.finish();
    drop(sleeper.stdin.take());
    sleeper.wait().unwrap();
    assert!(seen);
    assert!(hits.iter().any(|h| h.starts_with("argv")), "{hits:?}");
    assert!(hits.iter().any(|h| h.starts_with("file")), "{hits:?}");
}

#[test]
fn key_from_stdin_env_or_file_decrypts_with_the_node_key() {
    let s = setup();
    let t = &s.t;
    // stdin
    let k1 = fake_key() + "a";
    let out = run_stdin(
        t.bin().args(["secrets", "set-authkey", "worker-01"]),
        format!("{k1}\n").as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(age_decrypt(&s.w1, &t.secret("worker-01")).unwrap(), k1);
    // environment (wins over stdin)
    let k2 = fake_key() + "b";
    let out = run_stdin(
        t.bin()
            .env("TAILSCALE_AUTHKEY", &k2)
            .args(["secrets", "set-authkey", "worker-01"]),
        b"ignored\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(age_decrypt(&s.w1, &t.secret("worker-01")).unwrap(), k2);
    // file (wins over environment); the file lives outside the repository
    let k3 = fake_key() + "c";
    let file = t.keys.join("authkey");
    std::fs::write(&file, format!("{k3}\n")).unwrap();
    let out = run(t
        .bin()
        .env("TAILSCALE_AUTHKEY", &k2)
        .args(["secrets", "set-authkey", "worker-01", "--from-file"])
        .arg(&file)
        .stdin(Stdio::null()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(age_decrypt(&s.w1, &t.secret("worker-01")).unwrap(), k3);
    for k in [&k1, &k2, &k3] {
        assert_no_key_in_output(&out, k);
    }
}

#[test]
fn no_leak_while_set_authkey_reads_a_slow_stdin() {
    let s = setup();
    let t = &s.t;
    let key = fake_key();
    let scan = Scanner::start(
        vec![key.clone()],
        vec![t.dir.path().to_path_buf()],
        "set-authkey",
    );
    let mut child = t
        .bin()
        .args(["-v", "secrets", "set-authkey", "--all"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (head, tail) = key.split_at(key.len() / 2);
    stdin.write_all(head.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // The process is alive, holding half the key: scan it several times.
    scan.wait_rounds(3);
    stdin.write_all(tail.as_bytes()).unwrap();
    stdin.write_all(b"\n").unwrap();
    scan.wait_rounds(2);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let (hits, seen) = scan.finish();
    assert!(seen, "the scanner never saw the running set-authkey");
    assert!(hits.is_empty(), "leaks: {hits:?}");
    // control-01 has no host key: exit 1, but the others were written.
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ssh-keyscan -t ed25519 100.64.0.1"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("worker-02"),
        "{}",
        text(&out.stdout)
    );
    assert_no_key_in_output(&out, &key);
    assert_eq!(age_decrypt(&s.w1, &t.secret("worker-01")).unwrap(), key);
    // Nothing else under the temp dir holds the key: not secrets.nix, not recipients.json,
    // not a leftover temporary file, not HOME or TMPDIR.
    for (path, bytes) in snapshot(t.dir.path()) {
        assert!(!contains(&bytes, &key), "key in {}", path.display());
    }
    let tmp_left: Vec<_> = std::fs::read_dir(&t.tmp).unwrap().collect();
    assert!(tmp_left.is_empty(), "files left in TMPDIR: {tmp_left:?}");
}

#[test]
fn no_leak_during_rekey_and_list() {
    let s = setup();
    let t = &s.t;
    let key = fake_key();
    let out = run_stdin(
        t.bin()
            .args(["secrets", "set-authkey", "worker-01", "worker-02"]),
        key.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let scan = Scanner::start(vec![key.clone()], vec![t.dir.path().to_path_buf()], "rekey");
    // Rekey repeatedly (it is quick) until the scanner has seen it running, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut runs = 0;
    let mut outputs = Vec::new();
    while runs < 3 || (!scan.seen_watch.load(Ordering::SeqCst) && Instant::now() < deadline) {
        let out = run(t
            .bin()
            .args(["-vv", "secrets", "rekey", "--force", "--identity"])
            .arg(&s.op_age)
            .stdin(Stdio::null()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        outputs.push(out);
        runs += 1;
    }
    let (hits, seen) = scan.finish();
    assert!(seen, "the scanner never saw a running rekey in {runs} runs");
    assert!(hits.is_empty(), "leaks: {hits:?}");
    for out in &outputs {
        assert_no_key_in_output(out, &key);
    }
    for args in [
        &["-v", "secrets", "list"][..],
        &["-v", "secrets", "list", "--json"][..],
    ] {
        let out = run(t.bin().args(args));
        assert!(out.status.success());
        assert_no_key_in_output(&out, &key);
    }
    assert_eq!(age_decrypt(&s.w1, &t.secret("worker-01")).unwrap(), key);
}

#[test]
fn errors_never_echo_the_key() {
    let s = setup();
    let t = &s.t;
    let key = fake_key();
    let before = snapshot(&t.root);
    // Two lines: rejected without showing either.
    let out = run_stdin(
        t.bin().args(["secrets", "set-authkey", "worker-01"]),
        format!("{key}\n{key}\n").as_bytes(),
    );
    assert_fails(&out, &["standard input", "whitespace"], &key);
    // Pasted as an argument by mistake.
    let out = run(t
        .bin()
        .args(["secrets", "set-authkey", "worker-01", &key])
        .stdin(Stdio::null()));
    assert_fails(
        &out,
        &["looks like a Tailscale auth key", "never arguments"],
        &key,
    );
    // A typo in the node name, with the key in the environment.
    let out = run(t
        .bin()
        .env("TAILSCALE_AUTHKEY", &key)
        .args(["secrets", "set-authkey", "worker-1"])
        .stdin(Stdio::null()));
    assert_fails(&out, &["unknown node `worker-1`", "worker-01"], &key);
    assert_eq!(snapshot(&t.root), before);
    // Decrypting with the wrong identity.
    run_stdin(
        t.bin().args(["secrets", "set-authkey", "worker-01"]),
        key.as_bytes(),
    );
    let (carol, carol_pub) = age_keygen(&t.keys, "carol.age");
    t.set_operators(&[("carol", &carol_pub)]);
    let before = snapshot(&t.root);
    let out = run(t
        .bin()
        .args(["-v", "secrets", "rekey", "--identity"])
        .arg(&carol));
    assert_fails(
        &out,
        &[
            "carol.age",
            "secrets/worker-01/tailscale-authkey.age",
            "nothing was written",
        ],
        &key,
    );
    assert_eq!(snapshot(&t.root), before);
}

#[test]
fn empty_key_from_any_source_fails_and_writes_nothing() {
    let s = setup();
    let t = &s.t;
    let before = snapshot(&t.root);
    let out = run_stdin(t.bin().args(["secrets", "set-authkey", "--all"]), b"");
    assert_fails(&out, &["standard input", "empty"], "tskey");
    let out = run_stdin(
        t.bin()
            .env("TAILSCALE_AUTHKEY", "")
            .args(["secrets", "set-authkey", "--all"]),
        b"",
    );
    assert_fails(&out, &["$TAILSCALE_AUTHKEY", "empty"], "tskey");
    let empty = t.keys.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = run(t
        .bin()
        .args(["secrets", "set-authkey", "--all", "--from-file"])
        .arg(&empty));
    assert_fails(&out, &[&empty.display().to_string(), "empty"], "tskey");
    let out = run(t
        .bin()
        .args(["secrets", "set-authkey", "--all", "--from-file"])
        .arg(t.keys.join("nope")));
    assert_fails(&out, &["nope", "cannot read"], "tskey");
    assert_eq!(snapshot(&t.root), before);
}

#[test]
fn unsupported_or_broken_keys_fail_naming_their_place() {
    let s = setup();
    let t = &s.t;
    let key = fake_key();
    let alice = std::fs::read_to_string(format!("{}.pub", s.op_ssh.display())).unwrap();
    let bob = std::fs::read_to_string(format!("{}.pub", s.op_age.display())).ok();
    assert!(bob.is_none(), "age-keygen writes no .pub");
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "ecdsa operator key (manifest check)",
            Box::new(|| {
                t.set_operators(&[(
                    "eve",
                    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY",
                )])
            }),
            vec!["fleet.yml", "ecdsa-sha2-nistp256"],
        ),
        (
            "age plugin operator key",
            Box::new(|| t.set_operators(&[("yubi", "age1yubikey1qwertyqwertyqwertyqwertyqwerty")])),
            vec!["operator yubi", "fleet.yml", "plugin"],
        ),
        (
            "host key that does not decode",
            Box::new(|| {
                t.set_operators(&[("alice", alice.trim())]);
                t.set_host_key(
                    "worker-02",
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                );
            }),
            vec!["node worker-02", "nodes.yml", "does not decode"],
        ),
    ];
    for (what, edit, words) in cases {
        edit();
        let before = snapshot(&t.root);
        let out = run_stdin(
            t.bin().args(["secrets", "set-authkey", "worker-01"]),
            key.as_bytes(),
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert_fails(&out, &words, &key);
        assert_eq!(snapshot(&t.root), before, "{what}: files changed");
        assert!(!t.root.join("secrets").exists(), "{what}");
    }
}

#[test]
fn unreadable_identities_fail_naming_the_file_and_change_nothing() {
    let s = setup();
    let t = &s.t;
    let key = fake_key();
    run_stdin(
        t.bin().args(["secrets", "set-authkey", "--all"]),
        key.as_bytes(),
    );
    // Make rekey have work to do: drop bob.
    let alice = std::fs::read_to_string(format!("{}.pub", s.op_ssh.display())).unwrap();
    t.set_operators(&[("alice", alice.trim())]);
    let before = snapshot(&t.root);
    let garbage = t.keys.join("garbage-identity");
    std::fs::write(&garbage, "hello\n").unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (t.keys.join("missing-identity"), "cannot read identity"),
        (garbage, "not usable"),
        (t.keys.clone(), "directory"),
    ];
    for (path, why) in cases {
        let out = run(t.bin().args(["secrets", "rekey", "--identity"]).arg(&path));
        assert_fails(&out, &[&path.display().to_string(), why], &key);
        assert_eq!(snapshot(&t.root), before, "{}", path.display());
    }
    // No --identity and no ~/.ssh/id_ed25519: the default path is named.
    let out = run(t.bin().args(["secrets", "rekey"]));
    assert_fails(&out, &[".ssh/id_ed25519"], &key);
    // With the operator's key at the default path it works and drops bob.
    std::fs::create_dir_all(t.home.join(".ssh")).unwrap();
    std::fs::copy(&s.op_ssh, t.home.join(".ssh/id_ed25519")).unwrap();
    let out = run(t.bin().args(["secrets", "rekey"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(age_decrypt(&s.op_age, &t.secret("worker-01")).is_err());
    assert_eq!(age_decrypt(&s.op_ssh, &t.secret("worker-01")).unwrap(), key);
}

#[test]
fn list_shows_state_and_recipients() {
    let s = setup();
    let t = &s.t;
    run_stdin(
        t.bin().args(["secrets", "set-authkey", "worker-01"]),
        fake_key().as_bytes(),
    );
    let out = run(t.bin().args(["secrets", "list", "--json"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let state = |n: &str| {
        rows.iter()
            .find(|r| r["node"] == n)
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(state("worker-01"), "up-to-date");
    assert_eq!(state("worker-02"), "missing");
    assert_eq!(state("control-01"), "no-host-key");
    let w1 = rows.iter().find(|r| r["node"] == "worker-01").unwrap();
    let owners: Vec<&str> = w1["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["worker-01", "operator alice", "operator bob"]);
    let out = run(t.bin().args(["secrets", "list"]));
    let table = text(&out.stdout);
    let w1_line = table
        .lines()
        .find(|l| l.starts_with("secrets/worker-01/tailscale-authkey.age "))
        .unwrap_or_default();
    assert!(w1_line.contains(" up to date "), "{table}");
    assert!(
        table.contains("fleetnix secrets set-authkey worker-02"),
        "{table}"
    );
}
