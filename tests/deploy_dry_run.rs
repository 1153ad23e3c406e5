//! `deploy --dry-run`: prints the exact commands and environment per node, no secret, no connection.

mod common;

use common::{fake_authkey, fleetnix_bin, repo, write_script, Ran};
use std::path::Path;
use std::process::Command;

/// A recorder standing in for ssh / nixos-rebuild / tailscale: any call leaves a file.
fn recorder(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("recorder");
    let script = format!(
        "#!/bin/sh\necho \"$0 $*\" >> {}/called\nexit 1\n",
        dir.display()
    );
    write_script(&p, &script);
    p
}

fn dry_run(root: &Path, args: &[&str], rec: &Path) -> (i32, String, String) {
    let r = recorder(rec);
    let mut cmd = Command::new(fleetnix_bin());
    cmd.arg("--root")
        .arg(root)
        .arg("deploy")
        .args(args)
        .arg("--dry-run")
        .env("FLEETNIX_SSH", &r)
        .env("FLEETNIX_NIXOS_REBUILD", &r)
        .env("FLEETNIX_TAILSCALE", &r)
        .env("TAILSCALE_AUTHKEY", fake_authkey());
    let r = Ran::of(&mut cmd);
    (r.code.unwrap_or(-1), r.stdout, r.stderr)
}

/// A plain-http (or file) install script URL is refused before anything runs: the script is run
/// as root. Only the test-only `FLEETNIX_ALLOW_INSECURE_URLS=1` lets tests use local fakes.
#[test]
fn insecure_install_url_is_refused_unless_the_test_override_is_set() {
    let root = tempfile::tempdir().expect("root");
    let specs = [
        common::NodeSpec::new("cp", "100.64.0.1", &[]),
        common::NodeSpec {
            os: "linux",
            host_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS/vcGfRqtpcVld33fFR5cjD2Ai9gXARYCEHEn"
                    .into(),
            ),
            ..common::NodeSpec::new("ubuntu-01", "100.64.0.9", &["glm-worker"])
        },
    ];
    common::write_fleet(root.path(), &specs, 7, true);
    for url in ["http://mirror.example/install.sh", "file:///tmp/install.sh"] {
        for (how, env) in [("flag", false), ("env", true)] {
            let rec = tempfile::tempdir().expect("rec");
            let r = recorder(rec.path());
            let mut cmd = Command::new(fleetnix_bin());
            cmd.arg("--root")
                .arg(root.path())
                .args(["deploy", "ubuntu-01", "--dry-run"])
                .env("FLEETNIX_SSH", &r)
                .env("FLEETNIX_NIXOS_REBUILD", &r)
                .env("FLEETNIX_TAILSCALE", &r)
                .env("TAILSCALE_AUTHKEY", fake_authkey())
                .env_remove("FLEETNIX_ALLOW_INSECURE_URLS");
            if env {
                cmd.env("FLEETNIX_TAILSCALE_INSTALL_URL", url);
            } else {
                cmd.args(["--install-url", url]);
            }
            let ran = Ran::of(&mut cmd);
            assert_ne!(ran.code, Some(0), "{how} {url} accepted: {}", ran.stdout);
            assert!(
                ran.stderr.contains("https://") && ran.stderr.contains("install script URL"),
                "{how} {url}: {}",
                ran.stderr
            );
            assert!(!ran.stdout.contains(url), "{}", ran.stdout);
            // With the test-only override the same run goes on.
            let ran = Ran::of(cmd.env("FLEETNIX_ALLOW_INSECURE_URLS", "1"));
            assert_eq!(ran.code, Some(0), "{how} {url}: {}", ran.stderr);
            assert!(ran.stdout.contains(url), "{}", ran.stdout);
        }
    }
}

#[test]
fn readme_first_command_on_the_example_fleet() {
    let repo = repo();
    let rec = tempfile::tempdir().expect("tmp");
    let before = repo.join(".fleetnix").exists();
    let (code, out, err) = dry_run(&repo, &["worker-01"], rec.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("worker-01 (nixos, root@100.64.0.2)"), "{out}");
    assert!(!out.contains("worker-02"), "only the selected node: {out}");
    // The exact nixos-rebuild command and its environment.
    let kh = repo.join(".fleetnix/known_hosts/worker-01");
    let expected = format!(
        "$ NIX_SSHOPTS='-o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=30",
        kh.display()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains(&format!(
            " build --flake '{}#worker-01' --target-host root@100.64.0.2\n",
            repo.display()
        )),
        "{out}"
    );
    // The example's (demo) host_key is the pin.
    let key = common::example_fleet()
        .node("worker-01")
        .and_then(|n| n.host_key.clone())
        .expect("the example pins worker-01's host key");
    let pinned = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert!(out.contains(&format!("    100.64.0.2 {pinned}\n")), "{out}");
    assert!(!out.contains("no host_key in the manifest"), "{out}");
    // The rollback guard around switch.
    assert!(out.contains("readlink /run/current-system"), "{out}");
    assert!(
        out.contains("systemd-run --unit=fleetnix-rollback-ID"),
        "{out}"
    );
    assert!(
        out.contains("NEW_SYSTEM/bin/switch-to-configuration test"),
        "{out}"
    );
    // The boot default moves only in the confirmation, after the guard is disarmed.
    let confirm = &out[out.find("SSH_NEW =").expect("confirmation")..];
    assert!(
        confirm.contains("--set \"$N\"") && confirm.contains("switch-to-configuration\" boot"),
        "{out}"
    );
    assert!(
        !out[..out.find("SSH_NEW =").expect("confirmation")].contains(" boot"),
        "{out}"
    );
    // Nothing ran, nothing written.
    assert!(
        !rec.path().join("called").exists(),
        "a tool was called during a dry run"
    );
    assert_eq!(
        repo.join(".fleetnix").exists(),
        before,
        "dry run wrote state"
    );
}

#[test]
fn fallback_dry_run_names_the_secret_but_never_prints_it() {
    let root = tempfile::tempdir().expect("root");
    let specs = [
        common::NodeSpec::new("cp", "100.64.0.1", &[]),
        common::NodeSpec {
            os: "linux",
            host_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS/vcGfRqtpcVld33fFR5cjD2Ai9gXARYCEHEn"
                    .into(),
            ),
            ..common::NodeSpec::new("ubuntu-01", "100.64.0.9", &["glm-worker"])
        },
    ];
    common::write_fleet(root.path(), &specs, 7, true);
    let (code, out, err) = dry_run(
        root.path(),
        &[
            "ubuntu-01",
            "--install-url",
            "https://mirror.example/install.sh",
        ],
        root.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains(&fake_authkey()) && !err.contains(&fake_authkey()));
    assert!(!out.contains("tskey-"), "{out}");
    assert!(
        out.contains("stdin: the auth key from $TAILSCALE_AUTHKEY (redacted)"),
        "{out}"
    );
    assert!(out.contains("tailscale up --auth-key=\"file:$f\" --ssh --accept-routes --hostname=ubuntu-01 --advertise-tags=tag:worker"), "{out}");
    assert!(
        out.contains("curl -fsSL https://mirror.example/install.sh"),
        "{out}"
    );
    assert!(
        out.contains("pins:\n    100.64.0.9 ssh-ed25519 AAAAC3"),
        "{out}"
    );
    assert!(out.contains("ConnectTimeout=7"), "{out}");
    // Stale renders are reported, not written.
    assert!(out.contains("out of date"), "{out}");
    assert!(!root.path().join("nix").exists());
    assert!(!root.path().join("called").exists());
}

#[test]
fn a_selector_matching_nothing_fails() {
    let repo = repo();
    let rec = tempfile::tempdir().expect("tmp");
    let (code, _, err) = dry_run(&repo, &["@gpu"], rec.path());
    assert_eq!(code, 1);
    assert!(err.contains("`@gpu` matches no node"), "{err}");
    let (code, _, err) = dry_run(&repo, &[], rec.path());
    assert_eq!(code, 1);
    assert!(err.contains("no target"), "{err}");
}

#[test]
fn fallback_dry_run_without_the_environment_names_the_age_file_or_says_there_is_none() {
    let root = tempfile::tempdir().expect("root");
    let specs = [common::NodeSpec {
        os: "linux",
        host_key: Some(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS/vcGfRqtpcVld33fFR5cjD2Ai9gXARYCEHEn"
                .into(),
        ),
        ..common::NodeSpec::new("ubuntu-01", "100.64.0.9", &["glm-worker"])
    }];
    common::write_fleet(root.path(), &specs, 7, true);
    let r = recorder(root.path());
    let identity = root.path().join("no-such-identity");
    let run = || {
        let out = Command::new(fleetnix_bin())
            .arg("--root")
            .arg(root.path())
            .args(["deploy", "ubuntu-01", "--dry-run", "--identity"])
            .arg(&identity)
            .env("FLEETNIX_SSH", &r)
            .env("FLEETNIX_NIXOS_REBUILD", &r)
            .env("FLEETNIX_TAILSCALE", &r)
            .env_remove("TAILSCALE_AUTHKEY")
            .output()
            .expect("fleetnix runs");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run();
    assert!(
        out.contains("the auth key from nowhere: $TAILSCALE_AUTHKEY is not set and secrets/ubuntu-01/tailscale-authkey.age does not exist"),
        "{out}"
    );
    // With the file (encrypted to the node's host key), the dry run names it and the identity,
    // without reading the identity (it does not exist).
    let fleet = fleetnix::manifest::load(&root.path().join("fleet")).expect("fleet");
    let key = fleetnix::secret::Secret::from(fake_authkey());
    fleetnix::secrets::set_authkey(
        &fleet,
        root.path(),
        &[fleetnix::model::NodeName::parse("ubuntu-01").expect("name")],
        &key,
    )
    .expect("set-authkey");
    let out = run();
    assert!(
        out.contains(&format!(
            "stdin: the auth key from secrets/ubuntu-01/tailscale-authkey.age decrypted with {} (redacted)",
            identity.display()
        )),
        "{out}"
    );
    assert!(!out.contains(&fake_authkey()));
    assert!(!root.path().join("called").exists());
}

#[test]
fn multiplexed_dry_run_prints_the_shared_and_the_new_connection_options() {
    let repo = repo();
    let rec = tempfile::tempdir().expect("tmp");
    // Default: a new connection per command.
    let (code, out, err) = dry_run(&repo, &["worker-01"], rec.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("ControlMaster=auto"), "{out}");
    assert!(out.contains("-o ControlMaster=no -o ControlPath=none -T -- root@100.64.0.2\n"));

    let (code, out, err) = dry_run(&repo, &["worker-01", "--ssh-multiplex"], rec.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let shared = "-o ControlMaster=auto -o 'ControlPath=<control-dir>/0' -o ControlPersist=60";
    let ssh = out
        .lines()
        .find(|l| l.starts_with("  SSH = "))
        .expect("SSH line");
    assert!(
        ssh.contains(shared) && ssh.contains("StrictHostKeyChecking=yes"),
        "{ssh}"
    );
    // nixos-rebuild shares it (quoted once more inside NIX_SSHOPTS).
    assert!(
        out.contains(
            "-o ControlMaster=auto -o '\\''ControlPath=<control-dir>/0'\\'' -o ControlPersist=60' "
        ),
        "{out}"
    );
    // Closed before the confirmation, which runs on a new connection.
    let close = out.find("-O exit -- root@100.64.0.2").expect("close step");
    let new = out.find("  SSH_NEW = ").expect("SSH_NEW line");
    let confirm = out
        .find("$ $SSH_NEW 'sh -c <script>'")
        .expect("confirm via SSH_NEW");
    assert!(close < new && new < confirm, "{out}");
    assert!(out[new..]
        .lines()
        .next()
        .unwrap_or("")
        .contains("-o ControlMaster=no -o ControlPath=none"));
    assert_eq!(out.matches("-O exit").count(), 1, "{out}");
    assert!(
        !rec.path().join("called").exists(),
        "a tool ran during a dry run"
    );
}

/// The golden dry runs: the example fleet plus an `os: linux` node (reached as a non-root user,
/// so through `sudo -n`) and an `os: auto` node without a host key, rendered first so the header
/// says "up to date". Each case's stdout, with the temporary root written as `<root>`, must equal
/// `tests/golden/dry-run-<case>.txt` byte for byte. `FLEETNIX_UPDATE_GOLDEN=1` rewrites the files
/// (only ever on purpose: they pin what the operator sees).
#[test]
fn dry_run_output_matches_the_golden_files() {
    let root = tempfile::tempdir().expect("root");
    let root_path = std::fs::canonicalize(root.path()).expect("canonical root");
    let fleet = root_path.join("fleet");
    std::fs::create_dir_all(&fleet).expect("fleet dir");
    for f in ["nodes.yml", "fleet.yml", "services.yml"] {
        std::fs::copy(common::example_fleet_dir().join(f), fleet.join(f)).expect("copy");
    }
    let mut nodes = std::fs::read_to_string(fleet.join("nodes.yml")).expect("nodes.yml");
    nodes.push_str(
        "  - name: ubuntu-01\n    os: linux\n    ssh_user: admin\n    host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS/vcGfRqtpcVld33fFR5cjD2Ai9gXARYCEHEn\"\n    tailscale_ip: 100.64.0.9\n    roles: [glm-worker]\n    resources: { cpu: 2, ram_gb: 4 }\n\
         \x20 - name: edge-01\n    os: auto\n    ssh_user: deploy\n    tailscale_ip: 100.64.0.10\n    roles: [kg-writer]\n    resources: { cpu: 2, ram_gb: 4 }\n",
    );
    std::fs::write(fleet.join("nodes.yml"), nodes).expect("nodes.yml");
    let rendered = Ran::of(
        Command::new(fleetnix_bin())
            .arg("--root")
            .arg(&root_path)
            .arg("render"),
    );
    assert_eq!(rendered.code, Some(0), "{}", rendered.stderr);
    let rec = tempfile::tempdir().expect("rec");
    let r = recorder(rec.path());
    // The tools named below resolve, through PATH, to the recorder: any call would leave a file.
    for tool in ["ssh", "nixos-rebuild", "tailscale"] {
        std::os::unix::fs::symlink(&r, rec.path().join(tool)).expect("symlink");
    }
    let cases: [(&str, &[&str], bool); 6] = [
        ("nixos-guarded", &["worker-01"], true),
        (
            "nixos-unguarded",
            &["worker-01", "--no-rollback", "--build-on", "target"],
            true,
        ),
        (
            "linux",
            &[
                "ubuntu-01",
                "--install-url",
                "https://mirror.example/install.sh",
            ],
            true,
        ),
        (
            "role-multiplexed",
            &["@glm-worker", "--ssh-multiplex"],
            true,
        ),
        (
            "all-test-no-tailscale",
            &["--all", "--action", "test", "--parallel", "3"],
            false,
        ),
        ("all-boot", &["--all", "--action", "boot"], true),
    ];
    let golden = common::repo().join("tests/golden");
    let update = std::env::var_os("FLEETNIX_UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for (name, args, tailscale) in cases {
        // Fixed tool names (never run: a dry run connects nowhere), so the text is the same on every machine.
        let mut cmd = Command::new(fleetnix_bin());
        cmd.arg("--root")
            .arg(&root_path)
            .arg("deploy")
            .args(args)
            .arg("--dry-run")
            .env("FLEETNIX_SSH", "ssh")
            .env("FLEETNIX_NIXOS_REBUILD", "nixos-rebuild")
            .env(
                "FLEETNIX_TAILSCALE",
                if tailscale { "tailscale" } else { "" },
            )
            .env("PATH", rec.path())
            .env("TAILSCALE_AUTHKEY", fake_authkey());
        let ran = Ran::of(&mut cmd);
        assert_eq!(ran.code, Some(0), "{name}: {}\n{}", ran.stdout, ran.stderr);
        assert!(!ran.stdout.contains(&fake_authkey()), "{name}");
        let text = ran
            .stdout
            .replace(&root_path.display().to_string(), "<root>");
        let file = golden.join(format!("dry-run-{name}.txt"));
        if update {
            std::fs::create_dir_all(&golden).expect("golden dir");
            std::fs::write(&file, &text).expect("golden file");
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (FLEETNIX_UPDATE_GOLDEN=1 writes it)",
                file.display()
            )
        });
        if text != want {
            let line = text
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(text.lines().count().min(want.lines().count()));
            mismatches.push(format!(
                "{}: first difference at line {}:\n  got:  {:?}\n  want: {:?}",
                file.display(),
                line + 1,
                text.lines().nth(line),
                want.lines().nth(line)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(
        !rec.path().join("called").exists(),
        "a tool ran during a dry run"
    );
}
