//! The non-NixOS path end to end: Ubuntu test hosts with the fake Tailscale install script and
//! CLI, the real sshd, real nftables in the host's namespace.

mod common;

use common::netns::{Host, HostOptions, Net};
use common::*;
use std::path::PathBuf;

fn ubuntu_host(net: &mut Net, name: &str) -> (Host, PathBuf) {
    // `ip netns exec` bind-mounts /etc/netns/<ns>/fleetnix over /etc/fleetnix only where that
    // mount point exists: an empty one keeps the host's writes in its own overlay.
    std::fs::create_dir_all("/etc/fleetnix").expect("/etc/fleetnix mount point");
    let state = net.dir().join(format!("state-{name}"));
    std::fs::create_dir_all(state.join("bin")).expect("state");
    let host = net.add_host(
        name,
        HostOptions {
            os_release: Some(
                "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n".into(),
            ),
            path_prefix: vec![state.join("bin"), fakes().join("host-bin")],
            env: vec![
                ("FAKE_HOST_DIR".into(), state.display().to_string()),
                ("FAKE_TAILSCALE_SRC".into(), fakes().join("tailscale").display().to_string()),
            ],
            etc_dirs: vec!["systemd/system".into(), "fleetnix".into()],
            ..Default::default()
        },
    );
    (host, state)
}

#[test]
fn install_up_agent_firewall_once_then_nothing() {
    let Some(mut net) = Net::new() else { return };
    let (ubuntu, st_u) = ubuntu_host(&mut net, "ubuntu-01");
    let (auto, st_a) = ubuntu_host(&mut net, "auto-01");
    let root = tempfile::tempdir().expect("root");
    let mut u = NodeSpec::for_host(&ubuntu);
    u.os = "linux";
    let mut a = NodeSpec::for_host(&auto);
    a.os = "auto";
    write_fleet(root.path(), &[u, a], 5, false);
    let url = format!("file://{}", fakes().join("tailscale-install.sh").display());
    let key = fake_authkey();

    // On one shared SSH connection per node (the second run below uses a connection per command).
    let out = deploy_cmd(
        &net,
        root.path(),
        &["--all", "--install-url", &url, "--ssh-multiplex"],
    )
    .env("TAILSCALE_AUTHKEY", &key)
    .output()
    .expect("fleetnix runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let log =
        std::fs::read_to_string(root.path().join(".fleetnix/logs/ubuntu-01.log")).expect("log");
    let shared = log
        .lines()
        .filter(|l| l.starts_with("$ ") && l.contains("-o ControlMaster=auto"))
        .count();
    assert!(
        shared >= 4,
        "probe, install, up, agent, firewall share one connection: {log}"
    );
    assert!(log.contains("-O exit"), "{log}");
    for (name, st, tags) in [
        ("ubuntu-01", &st_u, "tag:control-plane"),
        ("auto-01", &st_a, "tag:worker"),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .expect("summary row");
        assert!(
            row.contains("changed: installed tailscale, tailscale up, agent unit, firewall"),
            "{row}"
        );
        assert_eq!(
            lines(&st.join("install.runs")).len(),
            1,
            "{name}: install ran once"
        );
        let argv = lines(&st.join("ts-up.argv"));
        let path = std::fs::read_to_string(st.join("ts-key.path")).expect("key path");
        let path = path.trim();
        assert!(path.starts_with("/tmp/fleetnix-authkey."), "{path}");
        assert_eq!(
            argv,
            [
                format!("--auth-key=file:{path}"),
                "--ssh".into(),
                "--accept-routes".into(),
                format!("--hostname={name}"),
                format!("--advertise-tags={tags}"),
            ]
        );
        assert!(
            !st.join("ts-set.calls").exists(),
            "{name}: tailscale up just set every pref: no tailscale set"
        );
        assert_eq!(
            std::fs::read_to_string(st.join("ts-key.mode"))
                .expect("mode")
                .trim(),
            "600"
        );
        assert_eq!(
            std::fs::read_to_string(st.join("ts-key.content")).expect("content"),
            key
        );
        assert!(
            !std::path::Path::new(path).exists(),
            "auth key file left behind"
        );
        let cmdline = std::fs::read_to_string(st.join("ts-up.cmdline")).expect("cmdline");
        assert!(!cmdline.contains(&key), "auth key in tailscale's argv");
        let log = std::fs::read_to_string(root.path().join(format!(".fleetnix/logs/{name}.log")))
            .expect("log");
        assert!(!log.contains(&key), "auth key in the log");
    }
    assert!(!stdout.contains(&key) && !stderr.contains(&key));

    // The agent unit carries the plan's agent arguments.
    let unit =
        std::fs::read_to_string(ubuntu.etc.join("systemd/system/omp-agent.service")).expect("unit");
    assert!(
        unit.contains(&format!(
            "ExecStart=\"/usr/local/bin/omp\" \"agent\" \"start\" \"--node-name\" \"ubuntu-01\" \"--control-plane\" \"{}:4000\"",
            ubuntu.addr
        )),
        "{unit}"
    );
    // Role ports open on tailscale0 only, in the host's real nftables.
    let nft = net_nft(&ubuntu);
    let lo = nft
        .find("iifname \"lo\" accept")
        .expect("loopback accepted");
    assert!(lo < nft.find(" drop").expect("drop rule"), "{nft}");
    assert!(nft.contains("iifname \"tailscale0\" tcp dport { 3000, 4000, 4222, 5432, 6379, 7233, 8080, 8090 } accept"), "{nft}");
    assert!(
        nft.contains("tcp dport { 3000, 4000, 4222, 5432, 6379, 7233, 8080, 8090 } drop"),
        "{nft}"
    );
    assert!(
        !net_nft(&auto).contains("dport"),
        "auto-01 hosts no services"
    );

    // Second run, without any auth key: nothing changes and it says so.
    let out = deploy_cmd(&net, root.path(), &["--all", "--install-url", &url])
        .output()
        .expect("fleetnix runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, st) in [("ubuntu-01", &st_u), ("auto-01", &st_a)] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .expect("summary row");
        assert!(
            row.contains("unchanged") && row.contains("nothing changed"),
            "{row}"
        );
        assert_eq!(lines(&st.join("install.runs")).len(), 1);
        assert_eq!(lines(&st.join("ts-up.calls")).len(), 1);
        // Already up as planned: its prefs follow the manifest through `tailscale set` (the
        // fake refuses `--advertise-tags`, as the real CLI does).
        assert_eq!(lines(&st.join("ts-set.calls")).len(), 1, "{name}");
        assert_eq!(
            lines(&st.join("ts-set.argv")),
            ["--ssh", "--accept-routes", &format!("--hostname={name}")],
            "{name}"
        );
    }
}

fn net_nft(h: &Host) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &h.ns, "nft", "list", "table", "inet", "fleetnix",
        ])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Replaces `keys: []` in fleet.yml with one operator key.
fn add_operator(root: &std::path::Path, key: &str) {
    let path = root.join("fleet/fleet.yml");
    let text = std::fs::read_to_string(&path).expect("fleet.yml");
    assert!(text.contains("  keys: []\n"), "{text}");
    let text = text.replace(
        "  keys: []\n",
        &format!("  keys:\n    - name: ops\n      key: \"{key}\"\n"),
    );
    std::fs::write(&path, text).expect("fleet.yml");
}

/// An age identity made by the real `age-keygen`: (file, age1… recipient).
fn age_identity(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&path).expect("identity");
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .trim()
        .to_string();
    (path, public)
}

#[test]
fn auth_key_from_the_nodes_age_file_when_the_environment_has_none() {
    let Some(mut net) = Net::new() else { return };
    let (ubuntu, st) = ubuntu_host(&mut net, "ubuntu-02");
    let root = tempfile::tempdir().expect("root");
    let mut u = NodeSpec::for_host(&ubuntu);
    u.os = "linux";
    write_fleet(root.path(), &[u], 5, false);
    let keys = tempfile::tempdir().expect("keys");
    let (op, op_pub) = age_identity(keys.path(), "ops.age");
    let (stranger, _) = age_identity(keys.path(), "stranger.age");
    add_operator(root.path(), &op_pub);
    // Store the key as the operator would (`fleetnix secrets set-authkey ubuntu-02`), from stdin.
    let key = fake_authkey();
    let mut child = std::process::Command::new(fleetnix_bin())
        .arg("--root")
        .arg(root.path())
        .args(["secrets", "set-authkey", "ubuntu-02"])
        .env_remove("TAILSCALE_AUTHKEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleetnix runs");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), key.as_bytes())
        .expect("write key");
    let out = child.wait_with_output().expect("set-authkey");
    assert!(out.status.success(), "{out:?}");
    let url = format!("file://{}", fakes().join("tailscale-install.sh").display());

    // Dry run: names the file and the identity, decrypts nothing (the identity does not exist).
    let missing = keys.path().join("not-there");
    let id_arg = format!("--identity={}", missing.display());
    let out = deploy_cmd(&net, root.path(), &["--all", "--dry-run", &id_arg])
        .output()
        .expect("fleetnix runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains(&format!(
            "stdin: the auth key from secrets/ubuntu-02/tailscale-authkey.age decrypted with {} (redacted)",
            missing.display()
        )),
        "{stdout}"
    );

    // Deploys with `identity`: exit code and stdout+stderr.
    let deploy = |identity: &std::path::Path| {
        let id_arg = format!("--identity={}", identity.display());
        let out = deploy_cmd(
            &net,
            root.path(),
            &["--all", "--install-url", &url, &id_arg],
        )
        .output()
        .expect("fleetnix runs");
        let all = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), all)
    };

    // An identity that is no recipient: the node fails at `tailscale up`, which never ran.
    let (code, all) = deploy(&stranger);
    assert_eq!(code, Some(1), "{all}");
    assert!(
        all.contains("cannot decrypt secrets/ubuntu-02/tailscale-authkey.age"),
        "{all}"
    );
    assert!(
        lines(&st.join("ts-up.calls")).is_empty(),
        "tailscale up ran"
    );

    // The operator's identity: the key reaches `tailscale up` through the 0600 file only.
    let (code, all) = deploy(&op);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(
        std::fs::read_to_string(st.join("ts-key.content")).expect("content"),
        key
    );
    assert_eq!(lines(&st.join("ts-up.calls")).len(), 1);
    let cmdline = std::fs::read_to_string(st.join("ts-up.cmdline")).expect("cmdline");
    assert!(!cmdline.contains(&key), "auth key in tailscale's argv");
    let log =
        std::fs::read_to_string(root.path().join(".fleetnix/logs/ubuntu-02.log")).expect("log");
    assert!(!log.contains(&key), "auth key in the log");
    assert!(!all.contains(&key), "auth key in the output");

    // A stored NATS password reaches the agent through stdin into a 0600 file, once.
    let password = format!("natsPw{}", std::process::id());
    let pw_file = root.path().join("secrets/ubuntu-02/nats-password.age");
    let mut age = std::process::Command::new("age")
        .args(["-r", &op_pub, "-o"])
        .arg(&pw_file)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("age");
    std::io::Write::write_all(&mut age.stdin.take().expect("stdin"), password.as_bytes())
        .expect("write password");
    assert!(age.wait().expect("age").success());
    let (_, all) = deploy(&op);
    assert!(all.contains("agent NATS password"), "{all}");
    let installed = ubuntu.etc.join("fleetnix/nats-password");
    assert_eq!(
        std::fs::read_to_string(&installed).expect("password"),
        password
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&installed)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "password file mode {mode:o}");
    assert!(!all.contains(&password), "password in the output");
    let log =
        std::fs::read_to_string(root.path().join(".fleetnix/logs/ubuntu-02.log")).expect("log");
    assert!(!log.contains(&password), "password in the log");
    let (_, again) = deploy(&op);
    assert!(again.contains("nothing changed"), "{again}");
}
