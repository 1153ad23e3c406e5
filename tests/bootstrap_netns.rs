//! `fleetnix bootstrap` end to end: a namespace test host with the real sshd plays the fresh
//! cloud VM (Debian without Tailscale, or NixOS with a fake system profile); the fake Tailscale
//! install script and CLI run on it, and the operator's `tailscale status` (the same fake, in its
//! operator mode: FAKE_NODE_STATE) shows the node once the VM's `tailscale up` (or first
//! activation) happened. fleetnix runs inside the hub namespace.

mod common;

use common::netns::{run_in, Host, HostOptions, Net};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const NODES_YML: &str = "\
# Test fleet: every comment here must survive bootstrap.
nodes:
  # the control plane
  - name: control-01
    tailscale_ip: 100.90.0.1   # fixed
    os: nixos
    roles: [glm-worker, control-plane, litellm-proxy, temporal, langfuse]
    resources: { cpu: 2, ram_gb: 4 }

  # the fresh VM
  - name: vm-01
    tailscale_ip: 100.90.0.7 # wanted address
    os: OS
    roles: [glm-worker]
    resources:
      cpu: 2   # small
      ram_gb: 4
# end of nodes
";

/// A fleet repository whose nodes.yml is [`NODES_YML`] with the VM's `os`.
fn fleet_repo(os: &str) -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().expect("root");
    let spec = |name: &str, addr: &str| NodeSpec::new(name, addr, &["glm-worker"]);
    write_fleet(
        root.path(),
        &[
            spec("control-01", "100.90.0.1"),
            spec("vm-01", "100.90.0.7"),
        ],
        5,
        false,
    );
    let text = NODES_YML.replace("os: OS", &format!("os: {os}"));
    std::fs::write(root.path().join("fleet/nodes.yml"), &text).expect("nodes.yml");
    (root, text)
}

/// A fresh Debian VM: no tailscale; the install script puts the fake CLI into its state dir.
fn debian_vm(net: &mut Net) -> (Host, PathBuf) {
    debian_vm_env(net, Vec::new())
}

/// [`debian_vm`] whose logins are named after the control server's `records`
/// (`FAKE_CONTROL_RECORDS`).
fn debian_vm_with(net: &mut Net, records: &Path) -> (Host, PathBuf) {
    debian_vm_env(
        net,
        vec![(
            "FAKE_CONTROL_RECORDS".to_string(),
            records.display().to_string(),
        )],
    )
}

fn debian_vm_env(net: &mut Net, extra: Vec<(String, String)>) -> (Host, PathBuf) {
    let state = net.dir().join("state-vm");
    std::fs::create_dir_all(state.join("bin")).expect("state");
    let host = net.add_host(
        "vm-01",
        HostOptions {
            path_prefix: vec![state.join("bin"), fakes().join("host-bin")],
            env: vec![
                ("FAKE_HOST_DIR".into(), state.display().to_string()),
                (
                    "FAKE_TAILSCALE_SRC".into(),
                    fake_tailscale().display().to_string(),
                ),
            ]
            .into_iter()
            .chain(extra)
            .collect(),
            etc_dirs: vec!["systemd/system".into()],
            ..Default::default()
        },
    );
    (host, state)
}

/// `ssh-keygen -lf`'s fingerprint of a public key file.
fn fingerprint(pub_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint field")
        .to_string()
}

/// The fingerprint of `vm`'s SSH host key (what an operator pins with `--host-key-fingerprint`).
fn host_fingerprint(vm: &Host) -> String {
    fingerprint(&vm.dir.join("ssh_host_ed25519_key.pub"))
}

/// `nodes.yml` text with `vm`'s host key pinned at the end of vm-01's block (as bootstrap writes it).
fn with_host_key(nodes_yml: &str, vm: &Host) -> String {
    nodes_yml.replace(
        "      ram_gb: 4\n# end",
        &format!("      ram_gb: 4\n    host_key: \"{}\"\n# end", vm.host_key),
    )
}

/// Operator-side state of one test: the fake `tailscale status` inputs.
struct Operator {
    dir: tempfile::TempDir,
}

impl Operator {
    fn new(assigned_ip: &str) -> Self {
        let dir = tempfile::tempdir().expect("operator dir");
        std::fs::write(dir.path().join("node-ip"), assigned_ip).expect("ip file");
        Operator { dir }
    }
    fn ip_file(&self) -> PathBuf {
        self.dir.path().join("node-ip")
    }
}

/// `fleetnix --root <root> bootstrap vm-01 --ssh root@<vm> …` inside the hub.
fn bootstrap_cmd(
    net: &Net,
    root: &Path,
    vm: &Host,
    state: &Path,
    joined_when: &Path,
    op: &Operator,
    extra: &[&str],
) -> Command {
    bootstrap_cmd_to(
        net,
        root,
        vm,
        &vm.addr.to_string(),
        state,
        joined_when,
        op,
        extra,
    )
}

/// [`bootstrap_cmd`] reaching the VM at `address` (e.g. its IPv6 address).
#[allow(clippy::too_many_arguments)]
fn bootstrap_cmd_to(
    net: &Net,
    root: &Path,
    vm: &Host,
    address: &str,
    state: &Path,
    joined_when: &Path,
    op: &Operator,
    extra: &[&str],
) -> Command {
    let mut c = net.command(fleetnix_bin());
    c.arg("--root")
        .arg(root)
        .args(["bootstrap", "vm-01", "--ssh", &format!("root@{address}")])
        .arg("--ssh-identity")
        .arg(net.client_key())
        .args(["--rollback-grace", "10"])
        .arg("--install-url")
        .arg(format!(
            "file://{}",
            fakes().join("tailscale-install.sh").display()
        ))
        .args(extra)
        .env("FLEETNIX_TAILSCALE", fake_tailscale())
        .env("FAKE_NODE_STATE", joined_when)
        .env("FAKE_NODE_NAME", "vm-01")
        .env("FAKE_NODE_IP_FILE", op.ip_file())
        .env("FAKE_NODE_KEY", &vm.host_key)
        .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
        .env("FAKE_RECORD_DIR", state)
        .env_remove("TAILSCALE_AUTHKEY")
        .env_remove("TS_API_KEY")
        // Local fakes (file:// install script, plain-http API): the test-only override.
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1")
        .env_remove("FLEETNIX_TS_API_URL")
        .stdin(std::process::Stdio::null());
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SSH logins the VM's sshd accepted so far.
fn logins(vm: &Host) -> usize {
    std::fs::read_to_string(vm.dir.join("sshd.log"))
        .unwrap_or_default()
        .matches("Accepted publickey")
        .count()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn fresh_debian_vm_joins_and_a_rerun_is_a_no_op() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, original) = fleet_repo("auto");
    let root = root.path();
    let op = Operator::new("100.90.0.42");
    let fp = host_fingerprint(&vm);
    let key = fake_authkey();
    let joined_when = state.join("ts-state.json");

    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &joined_when,
        &op,
        &["--host-key-fingerprint", &fp, "--wait-timeout", "20"],
    )
    .env("TAILSCALE_AUTHKEY", &key)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("vm-01 bootstrapped"), "{stdout}");

    // nodes.yml gained the host key at the end of vm-01's block and the assigned address
    // (no API token), with every comment, blank line and the key order kept.
    let expected = with_host_key(&original, &vm).replace(
        "100.90.0.7 # wanted address",
        "100.90.0.42 # wanted address",
    );
    let nodes_yml = root.join("fleet/nodes.yml");
    assert_eq!(
        std::fs::read_to_string(&nodes_yml).expect("nodes.yml"),
        expected
    );
    assert!(
        stderr.contains("tailscale_ip in nodes.yml is now 100.90.0.42"),
        "{stderr}"
    );

    // The auth key is encrypted to the VM's host key: the VM's private key decrypts it.
    let node = fleetnix::model::NodeName::parse("vm-01").expect("name");
    let decrypted =
        fleetnix::secrets::decrypt_authkey(root, &node, &vm.dir.join("ssh_host_ed25519_key"))
            .expect("the VM's host key decrypts its secret");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&decrypted), key);

    // Deploy's fallback installer ran over the public address, once, with the key on stdin.
    assert_eq!(lines(&state.join("install.runs")).len(), 1);
    assert_eq!(lines(&state.join("ts-up.calls")).len(), 1);
    assert!(lines(&state.join("ts-up.argv")).contains(&"--hostname=vm-01".to_string()));
    assert_eq!(
        std::fs::read_to_string(state.join("ts-key.content")).expect("key content"),
        key
    );
    assert!(vm.etc.join("systemd/system/omp-agent.service").is_file());
    // Handover: the public-address pin is gone; nothing logged the key.
    assert!(!root.join(".fleetnix/bootstrap/known_hosts/vm-01").exists());
    for log in [
        root.join(".fleetnix/bootstrap/vm-01.log"),
        root.join(".fleetnix/bootstrap/logs/vm-01.log"),
    ] {
        let l = std::fs::read_to_string(&log).expect("log");
        assert!(!l.contains(&key), "key in {}", log.display());
    }
    assert!(!stdout.contains(&key) && !stderr.contains(&key));
    // Not NixOS: no hardware configuration is read or written.
    assert!(
        stderr.contains("step 2 hardware: skipped: the VM is not NixOS"),
        "{stderr}"
    );
    assert!(!root.join("hosts").exists());

    // A re-run changes nothing and does not even connect to the public address.
    let before_logins = logins(&vm);
    assert!(before_logins > 0);
    let files = [
        nodes_yml.clone(),
        root.join("secrets/vm-01/tailscale-authkey.age"),
        root.join("secrets/secrets.nix"),
        root.join("secrets/recipients.json"),
    ];
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &joined_when,
        &op,
        &["--host-key-fingerprint", &fp, "--wait-timeout", "20"],
    )
    .env("TAILSCALE_AUTHKEY", &key)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("already bootstrapped"), "{stdout}");
    assert!(!stderr.contains(": done:"), "{stderr}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    assert!(before == after, "a re-run rewrote a file");
    assert_eq!(lines(&state.join("install.runs")).len(), 1);
    assert_eq!(lines(&state.join("ts-up.calls")).len(), 1);
    assert_eq!(logins(&vm), before_logins, "the re-run logged in to the VM");
}

#[test]
fn a_wrong_or_missing_fingerprint_sends_nothing() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, original) = fleet_repo("auto");
    let root = root.path();
    let op = Operator::new("100.90.0.7");
    // The fingerprint of another key (the test client's).
    let wrong = fingerprint(&net.client_key().with_extension("pub"));
    let joined_when = state.join("ts-state.json");

    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &joined_when,
        &op,
        &["--host-key-fingerprint", &wrong, "--wait-timeout", "20"],
    )
    .env("TAILSCALE_AUTHKEY", fake_authkey())
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("step 1 (host-key) failed"), "{stderr}");
    assert!(
        stderr.contains(&wrong) && stderr.contains("nothing was sent"),
        "{stderr}"
    );
    assert!(stderr.contains("to resume:"), "{stderr}");

    // Not interactive and no fingerprint: refused too.
    let out = bootstrap_cmd(&net, root, &vm, &state, &joined_when, &op, &[])
        .env("TAILSCALE_AUTHKEY", fake_authkey())
        .output()
        .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("not interactive"), "{stderr}");

    // Nothing reached the host: no login, no fake called; nothing written here either.
    assert_eq!(logins(&vm), 0, "sshd accepted a login");
    let host_files: Vec<_> = std::fs::read_dir(&state)
        .expect("state dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(host_files, vec![std::ffi::OsString::from("bin")]);
    assert!(!state.join("bin/tailscale").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("fleet/nodes.yml")).expect("nodes.yml"),
        original
    );
    assert!(!root.join("secrets").exists());
}

/// A fake Tailscale API (bearer token; `POST /tailnet/-/keys`, `POST /device/{id}/ip`,
/// `GET /tailnet/-/devices`, `DELETE /device/{id}`) listening on 127.0.0.1 *inside the hub
/// namespace*, where fleetnix runs. The device records are the control server's: the offline
/// ones in the records file (`nodeId hostname dns-label address` a line, shared with the fake
/// CLI's `up`, which names a login after them), plus the VM's own device (`nFAKE1CNTRL`, online)
/// once its state file exists.
struct FakeApi {
    base: String,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FakeApi {
    fn start(hub: &str, token: String, minted: String, ip_file: PathBuf) -> FakeApi {
        let none = ip_file.with_file_name("no-records");
        Self::start_with(hub, token, minted, ip_file, none.clone(), none)
    }

    /// [`FakeApi::start`] with the control server's `records` and the VM's `node_state` file.
    fn start_with(
        hub: &str,
        token: String,
        minted: String,
        ip_file: PathBuf,
        records: PathBuf,
        node_state: PathBuf,
    ) -> FakeApi {
        // A socket belongs to the namespace of the thread that creates it.
        let server = run_in(hub, || {
            tiny_http::Server::http("127.0.0.1:0").expect("bind in the hub")
        });
        let server = Arc::new(server);
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, log) = (server.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while let Ok(mut rq) = s.recv() {
                let mut body = String::new();
                let _ = rq.as_reader().read_to_string(&mut body);
                let path = rq.url().to_string();
                let method = rq.method().to_string();
                let auth = rq
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string());
                log.lock()
                    .expect("lock")
                    .push((method.clone(), path.clone(), body.clone()));
                let (status, reply) = if auth.as_deref() != Some(&format!("Bearer {token}")) {
                    (401, r#"{"message":"API token invalid"}"#.to_string())
                } else if method == "POST" && path == "/api/v2/tailnet/-/keys" {
                    (
                        200,
                        serde_json::json!({"id": "kFAKE1CNTRL", "key": minted, "expires": "2030-01-01T00:00:00Z"})
                            .to_string(),
                    )
                } else if method == "GET" && path == "/api/v2/tailnet/-/devices" {
                    (
                        200,
                        serde_json::json!({ "devices": devices(&records, &node_state, &ip_file) })
                            .to_string(),
                    )
                } else if let Some(id) = path
                    .strip_prefix("/api/v2/device/")
                    .filter(|id| method == "DELETE" && !id.contains('/'))
                {
                    let text = std::fs::read_to_string(&records).unwrap_or_default();
                    let kept: Vec<&str> = text
                        .lines()
                        .filter(|l| l.split_whitespace().next() != Some(id))
                        .collect();
                    if kept.len() == text.lines().count() {
                        (404, r#"{"message":"not found"}"#.to_string())
                    } else {
                        let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
                        std::fs::write(&records, body).expect("records");
                        (200, "{}".to_string())
                    }
                } else if method == "POST" && path == "/api/v2/device/nFAKE1CNTRL/ip" {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let ip = v["ipv4"].as_str().unwrap_or_default().to_string();
                    std::fs::write(&ip_file, ip).expect("ip file");
                    (200, "{}".to_string())
                } else {
                    (404, r#"{"message":"not found"}"#.to_string())
                };
                let _ =
                    rq.respond(tiny_http::Response::from_string(reply).with_status_code(status));
            }
        });
        FakeApi {
            base: format!("http://127.0.0.1:{port}/api/v2/"),
            seen,
            server,
            thread: Some(thread),
        }
    }
}

/// The device objects (tailscale-api.md) of the fake control server: the offline records of
/// `records`, then the VM's device once `node_state` exists (named by its `DNSName`).
fn devices(records: &Path, node_state: &Path, ip_file: &Path) -> Vec<serde_json::Value> {
    let device = |node_id: &str, host: &str, label: &str, ip: &str, online: bool| {
        serde_json::json!({
            "addresses": [ip], "id": format!("{}", node_id.len()), "nodeId": node_id,
            "user": "tagged-devices", "name": format!("{label}.tail0fake.ts.net"),
            "hostname": host, "os": "linux", "lastSeen": "2026-06-01T00:00:00Z",
            "connectedToControl": online, "keyExpiryDisabled": true,
            "expires": "0001-01-01T00:00:00Z", "tags": ["tag:worker"],
        })
    };
    let mut out: Vec<serde_json::Value> = std::fs::read_to_string(records)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| device(f[0], f[1], f[2], f[3], false))
        })
        .collect();
    if let Ok(state) = std::fs::read_to_string(node_state) {
        let field = |name: &str| {
            let key = format!("\"{name}\":\"");
            state.find(&key).map(|i| {
                let rest = &state[i + key.len()..];
                rest[..rest.find('"').unwrap_or(rest.len())].to_string()
            })
        };
        let host = field("HostName").unwrap_or_else(|| "vm-01".into());
        let dns = field("DNSName").unwrap_or_else(|| format!("{host}.tail0fake.ts.net."));
        let ip = std::fs::read_to_string(ip_file).unwrap_or_default();
        out.push(device(
            "nFAKE1CNTRL",
            &host,
            dns.split('.').next().unwrap_or_default(),
            ip.trim(),
            true,
        ));
    }
    out
}

/// Issue 23, stable names: the VM was rebuilt and its old device record (offline) still holds
/// `vm-01`. Bootstrap deletes that record through the API before the login, so the tailnet
/// ends with one device, named `vm-01` as in the manifest (without it: `vm-01-1`). An online
/// device of another node is never touched.
#[test]
fn rebootstrapping_over_an_offline_old_record_keeps_the_manifest_name() {
    let Some(mut net) = Net::new() else { return };
    let dir = net.dir().join("control");
    std::fs::create_dir_all(&dir).expect("control dir");
    let records = dir.join("records");
    std::fs::write(
        &records,
        "nOLD7CNTRL vm-01 vm-01 100.90.0.7\nnOLD8CNTRL vm-01 vm-01-1 100.90.0.8\n",
    )
    .expect("records");
    let (vm, state) = debian_vm_with(&mut net, &records);
    let (root, _) = fleet_repo("auto");
    let root = root.path();
    let op = Operator::new("100.90.0.7");
    let token = format!("tskey-api-{}", "FAKEtoken");
    let joined_when = state.join("ts-state.json");
    let api = FakeApi::start_with(
        net.hub(),
        token.clone(),
        format!("tskey-auth-{}-{}", "kFAKE1CNTRL", "FAKEunused"),
        op.ip_file(),
        records.clone(),
        joined_when.clone(),
    );
    let fp = host_fingerprint(&vm);
    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &joined_when,
        &op,
        &["--host-key-fingerprint", &fp, "--wait-timeout", "20"],
    )
    .env("TAILSCALE_AUTHKEY", fake_authkey())
    .env("TS_API_KEY", &token)
    .env("FLEETNIX_TS_API_URL", &api.base)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // One device holds the node's name, and it is the one that just logged in.
    let devices = devices(&records, &joined_when, &op.ip_file());
    let named: Vec<(&str, &str)> = devices
        .iter()
        .filter(|d| d["hostname"] == "vm-01")
        .map(|d| (d["nodeId"].as_str().unwrap(), d["name"].as_str().unwrap()))
        .collect();
    assert_eq!(named, [("nFAKE1CNTRL", "vm-01.tail0fake.ts.net")]);
    assert!(
        stderr.contains("deleted the offline device record nOLD7CNTRL (vm-01.tail0fake.ts.net"),
        "{stderr}"
    );
    let seen = api.seen.lock().expect("lock").clone();
    let deletes: Vec<&str> = seen
        .iter()
        .filter(|(m, _, _)| m == "DELETE")
        .map(|(_, p, _)| p.as_str())
        .collect();
    assert_eq!(
        deletes,
        ["/api/v2/device/nOLD7CNTRL", "/api/v2/device/nOLD8CNTRL"]
    );
    assert!(!stdout.contains(&token) && !stderr.contains(&token));
}

/// Issue 23, no stranded node: a node about to log in gets a fresh one-off key minted through the
/// API when a token is given, not the stored key (which may be spent or expired).
#[test]
fn a_node_that_logs_in_gets_a_freshly_minted_key_over_the_stored_one() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, original) = fleet_repo("auto");
    let root = root.path();
    std::fs::write(root.join("fleet/nodes.yml"), with_host_key(&original, &vm)).expect("nodes.yml");
    let old = format!("tskey-auth-{}-{}", "kOLD1CNTRL", "FAKEspent");
    let out = Command::new(fleetnix_bin())
        .arg("--root")
        .arg(root)
        .args(["secrets", "set-authkey", "vm-01"])
        .env("TAILSCALE_AUTHKEY", &old)
        .output()
        .expect("fleetnix runs");
    assert!(out.status.success(), "{out:?}");
    let op = Operator::new("100.90.0.7");
    let token = format!("tskey-api-{}", "FAKEtoken");
    let minted = format!("tskey-auth-{}-{}", "kFAKE1CNTRL", "FAKEfresh");
    let api = FakeApi::start(net.hub(), token.clone(), minted.clone(), op.ip_file());
    let fp = host_fingerprint(&vm);
    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &state.join("ts-state.json"),
        &op,
        &["--host-key-fingerprint", &fp, "--wait-timeout", "20"],
    )
    .env("TS_API_KEY", &token)
    .env("FLEETNIX_TS_API_URL", &api.base)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // The VM logged in with the fresh key, which the secret now holds.
    assert_eq!(
        std::fs::read_to_string(state.join("ts-key.content")).expect("key content"),
        minted
    );
    let node = fleetnix::model::NodeName::parse("vm-01").expect("name");
    let decrypted =
        fleetnix::secrets::decrypt_authkey(root, &node, &vm.dir.join("ssh_host_ed25519_key"))
            .expect("decrypts");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&decrypted), minted);
    assert!(stderr.contains("minted through the API"), "{stderr}");
    for k in [&old, &minted] {
        assert!(!stdout.contains(k.as_str()) && !stderr.contains(k.as_str()));
    }
}

#[test]
fn nixos_vm_first_rebuild_with_a_minted_key_and_the_address_set_through_the_api() {
    let Some(mut net) = Net::new() else { return };
    let vm = nixos_host(&mut net, "vm-01");
    let state = state_dir(&net, "vm-01");
    let (root, original) = fleet_repo("nixos");
    let root = root.path();
    let op = Operator::new("100.90.0.42");
    let token = format!("tskey-api-{}", "FAKEtoken");
    let minted = format!("tskey-auth-{}-{}", "kFAKE1CNTRL", "FAKEminted");
    let api = FakeApi::start(net.hub(), token.clone(), minted.clone(), op.ip_file());
    let fp = host_fingerprint(&vm);

    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &state.join("activations"),
        &op,
        &["--host-key-fingerprint", &fp, "--wait-timeout", "20"],
    )
    .env("TS_API_KEY", &token)
    .env("FLEETNIX_TS_API_URL", &api.base)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");

    // Only host_key was added: the address was fixed through the API, not in the manifest.
    let expected = with_host_key(&original, &vm);
    assert_eq!(
        std::fs::read_to_string(root.join("fleet/nodes.yml")).expect("nodes.yml"),
        expected
    );
    assert!(stderr.contains("through the Tailscale API"), "{stderr}");
    let seen = api.seen.lock().expect("lock").clone();
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/api/v2/tailnet/-/keys"),
            ("GET", "/api/v2/tailnet/-/devices"),
            ("POST", "/api/v2/device/nFAKE1CNTRL/ip")
        ]
    );
    let key_req: serde_json::Value = serde_json::from_str(&seen[0].2).expect("json");
    assert_eq!(
        key_req["capabilities"]["devices"]["create"]["tags"],
        serde_json::json!(["tag:worker"])
    );
    assert_eq!(seen[2].2, r#"{"ipv4":"100.90.0.7"}"#);

    // The minted key is what the node's secret holds.
    let node = fleetnix::model::NodeName::parse("vm-01").expect("name");
    let decrypted =
        fleetnix::secrets::decrypt_authkey(root, &node, &vm.dir.join("ssh_host_ed25519_key"))
            .expect("decrypts");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&decrypted), minted);

    // deploy's NixOS path ran against the public address: guarded switch = build + activate
    // (`test`) + confirm + boot default.
    let argv = lines(&state.join("nixos-rebuild.vm-01.argv"));
    assert_eq!(argv[0], "build", "{argv:?}");
    assert!(argv.contains(&format!("root@{}", vm.addr)), "{argv:?}");
    assert!(argv.contains(&format!(
        "{}#vm-01",
        std::fs::canonicalize(root).expect("root").display()
    )));
    assert_eq!(lines(&state.join("activations")), ["2 test", "2 boot"]);
    assert!(root.join("nix/nodes/vm-01.nix").is_file());
    assert!(!stdout.contains(&minted) && !stderr.contains(&minted));

    // The VM runs NixOS: its hardware configuration and boot loader were written from it
    // before the first rebuild, and they are what `validate` asks for.
    assert_eq!(
        lines(&state.join("nixos-generate-config.calls")),
        ["nixos-generate-config --show-hardware-config"]
    );
    assert!(stderr.contains("step 2 hardware: done"), "{stderr}");
    let hw = std::fs::read_to_string(root.join("hosts/vm-01/hardware-configuration.nix"))
        .expect("hardware configuration written");
    assert!(hw.contains("fileSystems.\"/\""), "{hw}");
    assert!(!hw.contains("fleetnix boot loader"), "{hw}");
    let boot = std::fs::read_to_string(root.join("hosts/vm-01/boot.nix")).expect("boot.nix");
    assert!(
        boot.contains("boot.loader.systemd-boot.enable = true;")
            || boot.contains("boot.loader.grub.device = \"/dev/"),
        "{boot}"
    );
    fleetnix::nix::check_syntax(&boot).expect("boot.nix is Nix");
    let problems = fleetnix::manifest::hosts::check(
        root,
        &fleetnix::manifest::load(&root.join("fleet")).expect("fleet"),
    );
    assert!(
        problems
            .iter()
            .all(|p| p.node.as_deref() != Some("vm-01") || !p.message.contains("hardware")),
        "{problems:?}"
    );
}

#[test]
fn a_node_that_does_not_join_fails_at_step_4_and_a_rerun_resumes() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, _) = fleet_repo("linux");
    let root = root.path();
    let op = Operator::new("100.90.0.7");
    let fp = host_fingerprint(&vm);
    // The operator's tailnet only sees the node once this file exists.
    let joined_when = op.dir.path().join("joined");
    let args = ["--host-key-fingerprint", fp.as_str(), "--wait-timeout", "1"];

    let out = bootstrap_cmd(&net, root, &vm, &state, &joined_when, &op, &args)
        .env("TAILSCALE_AUTHKEY", fake_authkey())
        .output()
        .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "step 4 (join) failed: vm-01 did not show up online in `tailscale status` within 1s"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("to resume: look at the VM"), "{stderr}");
    // Steps 1-3 are done: host key recorded, installer ran.
    let nodes = std::fs::read_to_string(root.join("fleet/nodes.yml")).expect("nodes.yml");
    assert!(nodes.contains(&vm.host_key));
    assert_eq!(lines(&state.join("ts-up.calls")).len(), 1);

    // The node shows up later; the re-run picks up from there.
    std::fs::copy(state.join("ts-state.json"), &joined_when).expect("joined");
    let out = bootstrap_cmd(&net, root, &vm, &state, &joined_when, &op, &args)
        .output()
        .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for line in [
        "step 1 host-key: unchanged",
        "step 2 record: unchanged",
        "step 2 secret: unchanged",
        "step 3 install: skipped",
        "step 4 join: unchanged",
        "step 4 address: unchanged",
        "step 5 handover: done",
    ] {
        assert!(stderr.contains(line), "{line:?} missing in\n{stderr}");
    }
    assert_eq!(lines(&state.join("ts-up.calls")).len(), 1);
    assert_eq!(lines(&state.join("install.runs")).len(), 1);
}

/// Issue 23, credential kinds: an OAuth client secret given to a `preauth` fleet (it would enrol
/// an ephemeral node) or an API token stops bootstrap at step 2, naming where it came from and
/// what to use; nothing is installed and the value is not echoed.
#[test]
fn a_credential_of_the_wrong_kind_stops_bootstrap_before_the_install() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, _) = fleet_repo("auto");
    let root = root.path();
    let op = Operator::new("100.90.0.7");
    let fp = host_fingerprint(&vm);
    for (key, want) in [
        (
            format!("tskey-client-{}", "FAKEsecretpart"),
            "set `tailscale_auth: oauth-client` in fleet.yml",
        ),
        (format!("tskey-api-{}", "FAKEsecretpart"), "TS_API_KEY"),
    ] {
        let out = bootstrap_cmd(
            &net,
            root,
            &vm,
            &state,
            &state.join("ts-state.json"),
            &op,
            &["--host-key-fingerprint", &fp, "--wait-timeout", "5"],
        )
        .env("TAILSCALE_AUTHKEY", &key)
        .output()
        .expect("fleetnix runs");
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("step 2 (secret) failed")
                && stderr.contains("$TAILSCALE_AUTHKEY")
                && stderr.contains(want),
            "{stderr}"
        );
        assert!(!stdout.contains("FAKEsecretpart") && !stderr.contains("FAKEsecretpart"));
        assert!(!state.join("install.runs").exists());
        assert!(!root.join("secrets/vm-01/tailscale-authkey.age").exists());
    }
}

/// A VM reached over IPv6 and given an address on the tailnet's IPv6 prefix is bootstrapped:
/// every ssh destination is `root@<v6>`, never `root@[v6]` (issue 21 finding 1).
#[test]
fn a_vm_reached_over_ipv6_joins_with_an_ipv6_tailnet_address() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, original) = fleet_repo("auto");
    let root = root.path();
    // The fleet wants vm-01 on the tailnet's IPv6 prefix; the tailnet gives it another one.
    let original = original.replace(
        "100.90.0.7 # wanted address",
        "fd7a:115c:a1e0::7 # wanted address",
    );
    std::fs::write(root.join("fleet/nodes.yml"), &original).expect("nodes.yml");
    let op = Operator::new("fd7a:115c:a1e0::42");
    let fp = host_fingerprint(&vm);
    let key = fake_authkey();
    let joined_when = state.join("ts-state.json");
    let out = bootstrap_cmd_to(
        &net,
        root,
        &vm,
        &vm.addr6.to_string(),
        &state,
        &joined_when,
        &op,
        &["--host-key-fingerprint", &fp, "--wait-timeout", "20"],
    )
    .env("TAILSCALE_AUTHKEY", &key)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("vm-01 bootstrapped"), "{stdout}");
    let nodes = std::fs::read_to_string(root.join("fleet/nodes.yml")).expect("nodes.yml");
    assert!(
        nodes.contains("tailscale_ip: fd7a:115c:a1e0::42 # wanted address"),
        "{nodes}"
    );
    assert_ne!(nodes, original);
    assert!(!stderr.contains("@["), "{stderr}");
    // The install and `tailscale up` ran on the VM, reached over IPv6.
    assert_eq!(lines(&state.join("install.runs")).len(), 1);
    assert_eq!(lines(&state.join("ts-up.calls")).len(), 1);
    let log = std::fs::read_to_string(vm.dir.join("sshd.log")).expect("sshd log");
    assert!(
        log.contains("Accepted publickey for root from fd7a:115c:a1e0::fe"),
        "{log}"
    );
}

/// Another device of the tailnet: online, tagged like a worker, with SSH host key `key`, that
/// calls itself `host_name` (its self-reported OS host name) and that the control server named
/// `dns_label` (its MagicDNS name), as `tailscale status --json` shows a peer.
fn other_device(dir: &Path, host_name: &str, dns_label: &str, key: &str) -> PathBuf {
    let file = dir.join("other-peers.json");
    std::fs::write(
        &file,
        format!(
            r#""nodekey:0bad":{{"ID":"nEVIL1CNTRL","PublicKey":"nodekey:0bad","HostName":"{host_name}","DNSName":"{dns_label}.tail0fake.ts.net.","OS":"linux","TailscaleIPs":["100.90.0.66"],"Tags":["tag:worker"],"Online":true,"sshHostKeys":["{key}"]}}"#
        ),
    )
    .expect("other peers");
    file
}

/// A key that is not the VM's.
const OTHER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS/vcGfRqtpcVld33fFR5cjD2Ai9gXARYCEHEn";

/// A device that only calls itself `vm-01` (the control server named it otherwise) is not the
/// node: the VM is installed and joins, and nodes.yml gets the VM's address, not the other's
/// (issue 21 finding 4).
#[test]
fn a_device_that_only_calls_itself_like_the_node_is_ignored() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, _) = fleet_repo("auto");
    let root = root.path();
    let op = Operator::new("100.90.0.42");
    let fp = host_fingerprint(&vm);
    let joined_when = state.join("ts-state.json");
    let others = other_device(net.dir(), "vm-01", "evil-box", OTHER_KEY);
    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &joined_when,
        &op,
        &["--host-key-fingerprint", &fp, "--wait-timeout", "20"],
    )
    .env("TAILSCALE_AUTHKEY", fake_authkey())
    .env("FAKE_OTHER_PEERS", &others)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let nodes = std::fs::read_to_string(root.join("fleet/nodes.yml")).expect("nodes.yml");
    assert!(nodes.contains("tailscale_ip: 100.90.0.42"), "{nodes}");
    assert!(!nodes.contains("100.90.0.66"), "{nodes}");
    assert_eq!(
        lines(&state.join("install.runs")).len(),
        1,
        "the VM was installed"
    );
}

/// The device the control server named `vm-01` does not publish the pinned host key: the
/// bootstrap stops before giving it anything (no address recorded, no install skipped on its
/// account), naming the device (issue 21 finding 4).
#[test]
fn the_named_device_without_the_pinned_key_gets_nothing() {
    let Some(mut net) = Net::new() else { return };
    let (vm, state) = debian_vm(&mut net);
    let (root, original) = fleet_repo("auto");
    let root = root.path();
    // A re-run: nodes.yml pins the VM's key already.
    let pinned = with_host_key(&original, &vm);
    std::fs::write(root.join("fleet/nodes.yml"), &pinned).expect("nodes.yml");
    let op = Operator::new("100.90.0.42");
    let joined_when = state.join("ts-state.json");
    let others = other_device(net.dir(), "vm-01", "vm-01", OTHER_KEY);
    let out = bootstrap_cmd(
        &net,
        root,
        &vm,
        &state,
        &joined_when,
        &op,
        &["--wait-timeout", "5"],
    )
    .env("TAILSCALE_AUTHKEY", fake_authkey())
    .env("FAKE_OTHER_PEERS", &others)
    .output()
    .expect("fleetnix runs");
    let (stdout, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("nEVIL1CNTRL") && stderr.contains("does not publish the pinned host key"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("fleet/nodes.yml")).expect("nodes.yml"),
        pinned,
        "no address was recorded"
    );
    assert!(lines(&state.join("install.runs")).is_empty());
    assert!(
        !root.join("secrets/vm-01").exists(),
        "no secret was written"
    );
}
