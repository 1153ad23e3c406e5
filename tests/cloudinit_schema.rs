//! cloud-init user-data: valid for the real schema checker, the auth key exactly once and never in
//! a command line, the command's file handling.

use fleetnix::model::Fleet;
use fleetnix::outputs::agent;
use fleetnix::outputs::cloudinit::AuthKey;
use fleetnix::outputs::cloudinit::{self as ci, Options};
use fleetnix::spec::{node_spec, NodeSpec};
use serde_yaml::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fake_key() -> String {
    // Built at run time: no key-shaped literal in the repository.
    format!(
        "tskey-auth-{}-{}",
        "kFAKE7CNTRL", "FAKEFAKEFAKEFAKEFAKE0123"
    )
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet")
}

/// The example fleet plus `edge-01`, a node with every optional field set.
fn full_fleet_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["fleet.yml", "services.yml"] {
        std::fs::copy(example_dir().join(f), dir.path().join(f)).unwrap();
    }
    let mut nodes = std::fs::read_to_string(example_dir().join("nodes.yml")).unwrap();
    nodes.push_str(
        "  - name: edge-01\n    tailscale_ip: 100.64.0.20\n    roles: [kg-writer, mnemopi-replica, control-plane]\n    resources:\n      cpu: 2\n      ram_gb: 4\n      gpu: 1\n    os: linux\n    ssh_user: deploy\n    host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKEFAKEFAKEFAKEFAKE edge-01\n    public_address: 203.0.113.10\n",
    );
    std::fs::write(dir.path().join("nodes.yml"), nodes).unwrap();
    dir
}

fn load(dir: &Path) -> Fleet {
    fleetnix::manifest::load(dir).expect("valid fleet")
}

/// `cloud-init`, or None (said loudly) when it is missing outside CI.
fn cloud_init_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEETNIX_CLOUD_INIT") {
        return Some(PathBuf::from(p));
    }
    match which::which("cloud-init") {
        Ok(p) => Some(p),
        Err(_) if std::env::var_os("CI").is_some() => panic!("cloud-init is missing in CI"),
        Err(_) => {
            eprintln!("SKIPPED: cloud-init is not installed; the schema was not checked");
            None
        }
    }
}

/// Runs `cloud-init schema --config-file` on `text`; Ok(()) when valid, else its output.
fn schema_check(bin: &Path, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("user-data.yaml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(bin)
        .args(["schema", "--config-file"])
        .arg(&f)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && all.contains("Valid cloud-config") {
        Ok(())
    } else {
        Err(all)
    }
}

/// Structural checks every user-data must pass.
fn check_structure(plan: &NodeSpec, text: &str, key: &str, with_agent: bool) {
    assert!(text.starts_with("#cloud-config\n"));
    assert_eq!(
        text.matches(key).count(),
        1,
        "the key must appear exactly once"
    );
    let doc: Value = serde_yaml::from_str(text).unwrap();
    let files = doc["write_files"].as_sequence().unwrap();
    let key_file = &files[0];
    assert_eq!(key_file["path"].as_str(), Some(ci::AUTHKEY_PATH));
    assert_eq!(key_file["permissions"].as_str(), Some("0600"));
    assert_eq!(key_file["owner"].as_str(), Some("root:root"));
    assert_eq!(key_file["content"].as_str().unwrap().trim(), key);

    let runcmd: Vec<Vec<String>> = serde_yaml::from_value(doc["runcmd"].clone()).unwrap();
    for argv in &runcmd {
        assert!(
            !argv.iter().any(|a| a.contains(key)),
            "key in argv {argv:?}"
        );
    }
    let pos = |first: &str, second: &str| {
        runcmd
            .iter()
            .position(|a| a.len() > 1 && a[0] == first && a[1] == second)
            .unwrap_or_else(|| panic!("no `{first} {second}` in {runcmd:?}"))
    };
    let install = pos("sh", ci::INSTALLER_PATH);
    let up = pos("tailscale", "up");
    let rm = pos("rm", "-f");
    assert!(pos("curl", "-fsSL") < install && install < up && up < rm);
    assert_eq!(runcmd[up], ci::up_argv(plan));
    assert!(runcmd[up].contains(&format!("--hostname={}", plan.name)));
    assert!(runcmd[up].contains(&format!("--advertise-tags={}", plan.tags.join(","))));
    assert!(runcmd[up].contains(&format!("--auth-key=file:{}", ci::AUTHKEY_PATH)));
    assert!(runcmd[rm].contains(&ci::AUTHKEY_PATH.to_string()));

    let unit = files
        .iter()
        .find(|f| f["path"].as_str() == Some(agent::UNIT_PATH));
    assert_eq!(unit.is_some(), with_agent);
    if let Some(unit) = unit {
        let content = unit["content"].as_str().unwrap();
        let exec = content
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let mut expected = vec![format!("\"{}\"", agent::DEFAULT_AGENT_BIN)];
        expected.extend(plan.agent.argv().iter().map(|a| format!("\"{a}\"")));
        assert_eq!(exec, expected.join(" "));
        assert!(runcmd.contains(&vec![
            "systemctl".to_string(),
            "enable".into(),
            "--now".into(),
            "omp-agent.service".into()
        ]));
    }
}

#[test]
fn example_nodes_and_a_node_with_every_optional_field_pass_the_schema() {
    let key_text = fake_key();
    let key = AuthKey::parse(&key_text).unwrap();
    let full = full_fleet_dir();
    let checker = cloud_init_bin();
    let mut documents = Vec::new();
    for dir in [example_dir(), full.path().to_path_buf()] {
        let fleet = load(&dir);
        for node in &fleet.nodes {
            let plan = node_spec(&fleet, node);
            for with_agent in [false, true] {
                let opts = Options {
                    with_agent,
                    ..Options::default()
                };
                let text = ci::user_data(&plan, &key, &opts).unwrap();
                check_structure(&plan, &text, &key_text, with_agent);
                // Deterministic.
                assert_eq!(text, ci::user_data(&plan, &key, &opts).unwrap());
                documents.push((node.name.to_string(), text));
            }
        }
    }
    assert_eq!(documents.len(), 2 * (3 + 4));
    let Some(bin) = checker else { return };
    // The checker is slow to start: run them side by side.
    std::thread::scope(|scope| {
        let handles: Vec<_> = documents
            .iter()
            .map(|(name, text)| {
                let bin = &bin;
                scope.spawn(move || (name, text, schema_check(bin, text)))
            })
            .collect();
        for h in handles {
            let (name, text, result) = h.join().unwrap();
            if let Err(e) = result {
                panic!("{name}: {e}\n{text}");
            }
        }
    });
}

#[test]
fn a_node_with_a_non_root_ssh_user_gets_that_user() {
    let full = full_fleet_dir();
    let fleet = load(full.path());
    let plan = node_spec(&fleet, fleet.node("edge-01").unwrap());
    assert_eq!(plan.access.ssh_user, "deploy");
    let text = ci::user_data(
        &plan,
        &AuthKey::parse(&fake_key()).unwrap(),
        &Options::default(),
    )
    .unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let users = doc["users"].as_sequence().unwrap();
    assert_eq!(users[0].as_str(), Some("default"));
    assert_eq!(users[1]["name"].as_str(), Some("deploy"));
    assert_eq!(users[1]["lock_passwd"].as_bool(), Some(true));
    // Root nodes leave the image's users alone.
    let root_plan = node_spec(&fleet, fleet.node("worker-01").unwrap());
    let text = ci::user_data(
        &root_plan,
        &AuthKey::parse(&fake_key()).unwrap(),
        &Options::default(),
    )
    .unwrap();
    assert!(serde_yaml::from_str::<Value>(&text).unwrap()["users"].is_null());
}

#[test]
fn the_schema_checker_is_not_vacuous() {
    let Some(bin) = cloud_init_bin() else { return };
    let fleet = load(&example_dir());
    let plan = node_spec(&fleet, fleet.node("worker-01").unwrap());
    let text = ci::user_data(
        &plan,
        &AuthKey::parse(&fake_key()).unwrap(),
        &Options::default(),
    )
    .unwrap();
    schema_check(&bin, &text).unwrap();
    // The same document with an unquoted octal mode, or runcmd not a list, is rejected.
    let broken = text.replace("permissions: '0600'", "permissions: [0600]");
    assert_ne!(broken, text);
    assert!(schema_check(&bin, &broken).is_err());
    let broken = text.replace("runcmd:\n", "runcmd: 5\nx:\n");
    assert!(schema_check(&bin, &broken).is_err());
}

#[test]
fn bad_inputs_are_refused_without_echoing_the_key() {
    let fleet = load(&example_dir());
    let plan = node_spec(&fleet, fleet.node("worker-01").unwrap());
    let key = AuthKey::parse(&fake_key()).unwrap();
    for url in [
        "http://tailscale.com/install.sh",
        "https://x/a b",
        "https://x/'$(id)'",
    ] {
        let opts = Options {
            install_url: url.to_string(),
            ..Options::default()
        };
        let e = ci::user_data(&plan, &key, &opts).unwrap_err().to_string();
        assert!(!e.contains(key.expose()));
    }
    let opts = Options {
        with_agent: true,
        agent_bin: "omp".into(),
        ..Options::default()
    };
    assert!(ci::user_data(&plan, &key, &opts).is_err());
    let with_newline = format!("{}\nruncmd: [[id]]", fake_key());
    let e = AuthKey::parse(&with_newline).unwrap_err().to_string();
    assert!(!e.contains(&fake_key()));
}

fn fleetnix(args: &[&str], env_key: Option<&str>, stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetnix"));
    cmd.arg("--root")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env_remove("TAILSCALE_AUTHKEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = env_key {
        cmd.env("TAILSCALE_AUTHKEY", k);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn command_writes_0600_files_and_says_the_output_is_secret() {
    let key = fake_key();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub").join("worker-02.yaml");
    let out = fleetnix(
        &[
            "cloud-init",
            "worker-02",
            "-o",
            file.to_str().unwrap(),
            "--with-agent",
        ],
        Some(&key),
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("auth key, its only secret"), "{stderr}");
    assert!(!stderr.contains(&key));
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches(&key).count(), 1);
    // No temp files left beside it.
    assert_eq!(
        std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
        1
    );

    // From stdin, to stdout: the same document.
    let out = fleetnix(
        &["cloud-init", "worker-02", "--with-agent"],
        None,
        Some(&format!("{key}\n")),
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
}

#[test]
fn command_fails_on_bad_input_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.yaml");
    let f = file.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Option<String>, &str)> = vec![
        (
            vec!["cloud-init", "worker-09", "-o", f],
            Some(fake_key()),
            "no node `worker-09`",
        ),
        (
            vec!["cloud-init", "worker-01", "-o", f],
            None,
            "it is empty",
        ),
        (
            vec!["cloud-init", "worker-01", "-o", f],
            Some(format!("not-a-key-{}", "FAKE")),
            "neither a pre-auth key (tskey-auth-…) nor an OAuth client secret",
        ),
        (
            vec![
                "cloud-init",
                "worker-01",
                "-o",
                f,
                "--install-url",
                "http://x/i.sh",
            ],
            Some(fake_key()),
            "expected an https:// URL",
        ),
    ];
    for (args, key, needle) in cases {
        let out = fleetnix(&args, key.as_deref(), None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        if let Some(k) = &key {
            assert!(!stderr.contains(k.as_str()));
        }
        assert!(!file.exists());
    }
}
