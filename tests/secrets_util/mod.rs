//! Shared setup of the secrets tests (next to `common`, which each of them declares too): a
//! temporary copy of the example fleet with real SSH host keys (ssh-keygen) and operator keys
//! (ssh-keygen, age-keygen), and helpers to run things.
#![allow(dead_code)]

use crate::common::{copy_example_fleet, fleetnix_bin};
#[allow(unused_imports)] // each test binary uses a different part of this module
pub use crate::common::{snapshot, unique_fake_authkey as fake_key};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary repository root with `fleet/` and generated keys under `keys/` (outside `root`).
pub struct TestFleet {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// Repository root (holds fleet/ and, after set-authkey, secrets/).
    pub root: PathBuf,
    /// Where keys live.
    pub keys: PathBuf,
    /// HOME and TMPDIR given to the binary.
    pub home: PathBuf,
    /// TMPDIR given to the binary.
    pub tmp: PathBuf,
}

/// Runs a command, panicking with its output if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Generates an unencrypted SSH key pair; returns (private key path, public key line).
pub fn ssh_keygen(dir: &Path, name: &str, kind: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
        .arg(&path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(format!("{}.pub", path.display())).unwrap();
    (path, public.trim().to_string())
}

/// Generates an age identity; returns (identity path, age1… recipient).
pub fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = run(Command::new("age-keygen").arg("-o").arg(&path));
    assert!(out.status.success(), "age-keygen: {out:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .trim()
        .to_string();
    (path, public)
}

impl TestFleet {
    /// Copies the example fleet into a temp root.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let keys = dir.path().join("keys");
        let home = dir.path().join("home");
        let tmp = dir.path().join("tmp");
        for d in [&keys, &home, &tmp] {
            std::fs::create_dir_all(d).unwrap();
        }
        copy_example_fleet(&root.join("fleet"));
        TestFleet {
            dir,
            root,
            keys,
            home,
            tmp,
        }
    }

    /// Generates an ed25519 host key for `node`, writes it into nodes.yml, returns the private key.
    pub fn add_host_key(&self, node: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (private, public) = ssh_keygen(&self.keys, &format!("host-{node}-{n}"), "ed25519");
        self.set_host_key(node, &public);
        private
    }

    /// Sets (or replaces) `host_key` of `node` in nodes.yml.
    pub fn set_host_key(&self, node: &str, key: &str) {
        let path = self.root.join("fleet/nodes.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        let header = format!("  - name: {node}\n");
        assert!(text.contains(&header), "{node} not in nodes.yml");
        let mut out = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            out.push_str(line);
            out.push('\n');
            if format!("{line}\n") == header {
                if lines
                    .peek()
                    .is_some_and(|l| l.trim_start().starts_with("host_key:"))
                {
                    lines.next();
                }
                out.push_str(&format!("    host_key: \"{key}\"\n"));
            }
        }
        std::fs::write(&path, out).unwrap();
    }

    /// Removes `host_key` of `node` from nodes.yml.
    pub fn remove_host_key(&self, node: &str) {
        let path = self.root.join("fleet/nodes.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        let header = format!("  - name: {node}");
        let mut out = String::new();
        let mut after_header = false;
        for line in text.lines() {
            if after_header && line.trim_start().starts_with("host_key:") {
                after_header = false;
                continue;
            }
            after_header = line == header;
            out.push_str(line);
            out.push('\n');
        }
        std::fs::write(&path, out).unwrap();
    }

    /// Replaces operators.keys in fleet.yml with `keys` (name, key).
    pub fn set_operators(&self, keys: &[(&str, &str)]) {
        let path = self.root.join("fleet/fleet.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("  keys:").expect("fleet.yml has operators.keys");
        let end = text[start..]
            .find("\nntfy:")
            .map(|i| start + i + 1)
            .expect("ntfy follows operators");
        let mut block = String::from("  keys:");
        if keys.is_empty() {
            block.push_str(" []\n");
        } else {
            block.push('\n');
            for (name, key) in keys {
                block.push_str(&format!("    - name: {name}\n      key: \"{key}\"\n"));
            }
        }
        let text = format!("{}{}{}", &text[..start], block, &text[end..]);
        std::fs::write(&path, text).unwrap();
    }

    /// Loads the fleet through the manifest.
    pub fn fleet(&self) -> fleetnix::model::Fleet {
        fleetnix::manifest::load(&self.root.join("fleet")).expect("test fleet is valid")
    }

    /// The binary, run in this root with a clean environment (no TAILSCALE_AUTHKEY).
    pub fn bin(&self) -> Command {
        let mut cmd = Command::new(fleetnix_bin());
        cmd.current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("TMPDIR", &self.tmp)
            .env("NO_COLOR", "1")
            .arg("--root")
            .arg(&self.root);
        cmd
    }

    /// Path of a node's secret.
    pub fn secret(&self, node: &str) -> PathBuf {
        self.root
            .join(format!("secrets/{node}/tailscale-authkey.age"))
    }
}

/// Does `haystack` contain `needle`?
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Decrypts with the real `age` CLI; `Ok(plaintext)` or `Err(stderr)`.
pub fn age_decrypt(identity: &Path, file: &Path) -> Result<String, String> {
    let out = run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The example fleet with worker-01's host key and one age operator, and worker-01's auth key
/// stored with `set_authkey`: (fleet, the operator's identity file, the stored key).
pub fn worker01_key_for_one_operator() -> (TestFleet, PathBuf, String) {
    let t = TestFleet::new();
    t.add_host_key("worker-01");
    let (op, op_pub) = age_keygen(&t.keys, "op.age");
    t.set_operators(&[("ops", &op_pub)]);
    let key = fake_key();
    fleetnix::secrets::set_authkey(
        &t.fleet(),
        &t.root,
        &[fleetnix::model::NodeName::parse("worker-01").expect("valid name")],
        &fleetnix::secret::Secret::from(key.clone()),
    )
    .expect("set_authkey");
    (t, op, key)
}
