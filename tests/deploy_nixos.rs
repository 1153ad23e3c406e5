//! The NixOS path end to end: real sshd in namespace hosts, the fake nixos-rebuild using the real
//! ssh with fleetnix's NIX_SSHOPTS.

mod common;

use common::netns::Net;
use common::*;

#[test]
fn pinned_host_key_passes_and_a_wrong_one_fails() {
    let Some(mut net) = Net::new() else { return };
    let good = nixos_host(&mut net, "good");
    let bad = nixos_host(&mut net, "bad");
    let root = tempfile::tempdir().expect("root");
    let mut bad_spec = NodeSpec::for_host(&bad);
    // A real key, but not this host's.
    bad_spec.host_key = Some(good.host_key.clone());
    write_fleet(
        root.path(),
        &[NodeSpec::for_host(&good), bad_spec],
        5,
        false,
    );

    let r = Ran::of(&mut deploy_cmd(
        &net,
        root.path(),
        &["--all", "--action", "test"],
    ));
    assert_eq!(r.code, Some(1), "one node fails:\n{r}");

    // good: the fake ran with exactly these arguments and the pinning options, and its ssh reached the host.
    let rec = root.path().join("rec");
    let argv = lines(&rec.join("nixos-rebuild.good.argv"));
    let flake = format!(
        "{}#good",
        root.path().canonicalize().expect("abs").display()
    );
    assert_eq!(
        argv,
        [
            "test",
            "--flake",
            &flake,
            "--target-host",
            &format!("root@{}", good.addr)
        ],
        "{r}"
    );
    let opts = std::fs::read_to_string(rec.join("nixos-rebuild.good.sshopts")).expect("sshopts");
    let kh = root
        .path()
        .canonicalize()
        .expect("abs")
        .join(".fleetnix/known_hosts/good");
    for o in [
        format!("-o UserKnownHostsFile={}", kh.display()),
        "-o StrictHostKeyChecking=yes".into(),
        "-o BatchMode=yes".into(),
        "-o ConnectTimeout=5".into(),
    ] {
        assert!(opts.contains(&o), "NIX_SSHOPTS lacks {o}: {opts}");
    }
    assert_eq!(
        std::fs::read_to_string(&kh).expect("known_hosts"),
        format!("{} {}\n", good.addr, good.host_key)
    );
    assert_eq!(
        lines(&state_dir(&net, "good").join("activations")),
        ["2 test"]
    );

    // bad: refused at the first connection, nixos-rebuild never ran, nothing activated.
    assert!(!rec.join("nixos-rebuild.bad.argv").exists());
    assert!(lines(&state_dir(&net, "bad").join("activations")).is_empty());
    let row = r.row("bad");
    assert!(
        row.contains("FAILED") && row.contains("host key verification failed"),
        "{row}"
    );
    assert!(r.row("good").contains(" ok "), "{r}");
    // Per-node logs.
    let log = std::fs::read_to_string(root.path().join(".fleetnix/logs/good.log")).expect("log");
    assert!(log.contains("activated generation 2"), "{log}");
}

#[test]
fn nix_sshopts_pinning_rejects_a_wrong_key_in_nixos_rebuild_itself() {
    // The fake nixos-rebuild connects with exactly the NIX_SSHOPTS fleetnix builds; with a
    // known_hosts file pinning another key, ssh must refuse.
    let Some(mut net) = Net::new() else { return };
    let a = nixos_host(&mut net, "a");
    let b = nixos_host(&mut net, "b");
    let dir = net.dir().to_path_buf();
    let kh = dir.join("known_hosts_wrong");
    std::fs::write(&kh, format!("{} {}\n", a.addr, b.host_key)).expect("kh");
    let ssh = fleetnix::deploy::transport::SshConfig {
        program: "ssh".into(),
        identity: Some(net.client_key().to_path_buf()),
        connect_timeout: 5,
    };
    let run = |kh: &std::path::Path, control: Option<std::path::PathBuf>| {
        let rec = dir.join("rec-direct");
        std::fs::create_dir_all(&rec).expect("rec");
        Ran::of(
            net.command(fakes().join("nixos-rebuild"))
                .args([
                    "test",
                    "--flake",
                    "/x#a",
                    "--target-host",
                    &format!("root@{}", a.addr),
                ])
                .env(
                    "NIX_SSHOPTS",
                    fleetnix::deploy::nixos::nix_sshopts(
                        &ssh,
                        &fleetnix::deploy::transport::SshTarget {
                            destination: format!("root@{}", a.addr),
                            known_hosts: kh.to_path_buf(),
                            sudo: false,
                            control,
                        },
                    ),
                )
                .env("FAKE_RECORD_DIR", &rec),
        )
    };
    // A shared connection (ControlMaster=auto) is opened with the same pinning: refused too,
    // and no master is left listening.
    let control = fleetnix::deploy::transport::ControlDir::new().expect("control dir");
    let socket = control.socket(0).expect("short socket path");
    let r = run(&kh, Some(socket.clone()));
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("Host key verification failed"), "{r}");
    assert!(!socket.exists(), "a master was started with a wrong key");
    let r = run(&kh, None);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("Host key verification failed"), "{r}");
    assert!(lines(&state_dir(&net, "a").join("activations")).is_empty());
    let good = dir.join("known_hosts_good");
    std::fs::write(&good, format!("{} {}\n", a.addr, a.host_key)).expect("kh");
    let r = run(&good, None);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(lines(&state_dir(&net, "a").join("activations")), ["2 test"]);
}
