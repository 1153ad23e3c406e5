//! The NixOS path end to end: real sshd in namespace hosts, the fake nixos-rebuild using the real
//! ssh with fleetnix's NIX_SSHOPTS.

mod common;

use common::deploy::{pinned_sshopts, RealFleet};
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
                    pinned_sshopts(&net, &format!("root@{}", a.addr), kh, control),
                )
                .env("FAKE_RECORD_DIR", &rec),
        )
    };
    // A shared connection (ControlMaster=auto) is opened with the same pinning: refused too,
    // and no master is left listening.
    let control = fleetnix::exec::ssh::ControlDir::new().expect("control dir");
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

#[test]
fn a_repository_path_with_a_space_keeps_known_hosts_in_the_xdg_state_dir() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let base = tempfile::tempdir().expect("base");
    let root = base.path().join("My Fleet");
    write_fleet(&root, &[NodeSpec::for_host(&host)], 5, false);
    let xdg = tempfile::tempdir().expect("xdg state");
    // A guarded switch: fleetnix's own ssh (arm, activate, gate, confirm) and nixos-rebuild's
    // NIX_SSHOPTS both carry the known_hosts path.
    let r = Ran::of(deploy_cmd(&net, &root, &["n1", "--force"]).env("XDG_STATE_HOME", xdg.path()));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("n1").contains("confirmed"), "{r}");
    let kh = xdg.path().join("fleetnix/known_hosts/n1");
    assert_eq!(
        std::fs::read_to_string(&kh).expect("known_hosts in the state dir"),
        format!("{} {}\n", host.addr, host.host_key)
    );
    assert!(!root.join(".fleetnix/known_hosts").exists());
    let opts = std::fs::read_to_string(root.join("rec/nixos-rebuild.n1.sshopts")).expect("sshopts");
    assert!(
        opts.contains(&format!("-o UserKnownHostsFile={}", kh.display())),
        "{opts}"
    );
    assert!(!opts.contains("My Fleet"), "{opts}");
    assert_eq!(
        generations(&net, "n1"),
        ("2".into(), "2".into(), "2".into())
    );
}

#[test]
fn whitespace_that_cannot_move_is_refused_before_anything_runs() {
    let Some(mut net) = Net::new() else { return };
    let host = nixos_host(&mut net, "n1");
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 5, false);
    let keys = tempfile::tempdir().expect("keys");
    let spaced = keys.path().join("my keys");
    std::fs::create_dir_all(&spaced).expect("dir");
    let key = spaced.join("id");
    std::fs::copy(net.client_key(), &key).expect("key");
    std::fs::create_dir_all(root.path().join("rec")).expect("rec");
    let r = Ran::of(
        net.command(fleetnix_bin())
            .arg("--root")
            .arg(root.path())
            .args(["deploy", "n1", "--force", "--ssh-identity"])
            .arg(&key)
            .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
            .env("FLEETNIX_TAILSCALE", "")
            .env("FAKE_RECORD_DIR", root.path().join("rec")),
    );
    assert_ne!(r.code, Some(0), "{r}");
    assert!(
        r.stderr.contains("holds whitespace") && r.stderr.contains("NIX_SSHOPTS"),
        "{r}"
    );
    assert!(!root.path().join("rec/nixos-rebuild.n1.argv").exists());
    assert!(lines(&state_dir(&net, "n1").join("activations")).is_empty());
    // A repository with a space and no usable state directory: refused, saying why.
    let spaced_root = keys.path().join("My Fleet");
    write_fleet(&spaced_root, &[NodeSpec::for_host(&host)], 5, false);
    let r = Ran::of(
        deploy_cmd(&net, &spaced_root, &["n1", "--force"])
            .env_remove("XDG_STATE_HOME")
            .env("HOME", keys.path().join("my home")),
    );
    assert_ne!(r.code, Some(0), "{r}");
    assert!(
        r.stderr.contains("holds whitespace") && r.stderr.contains("XDG_STATE_HOME"),
        "{r}"
    );
    assert!(lines(&state_dir(&net, "n1").join("activations")).is_empty());
}

#[test]
fn a_host_that_is_not_nixos_is_named_as_such_at_connect() {
    let Some(mut net) = Net::new() else { return };
    // A Debian host (no /run/current-system, no system profile) listed as `os: nixos`.
    let host = net.add_host("deb", common::netns::HostOptions::default());
    let root = tempfile::tempdir().expect("root");
    write_fleet(root.path(), &[NodeSpec::for_host(&host)], 5, false);
    let r = Ran::of(&mut deploy_cmd(&net, root.path(), &["deb", "--force"]));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("deb");
    for part in [
        "[connect]",
        "this host does not look like NixOS",
        "no /run/current-system",
        "no /nix/var/nix/profiles/system",
        "`os: auto`",
        "`os: linux`",
        "for deb in nodes.yml",
    ] {
        assert!(row.contains(part), "{part}: {row}");
    }
    assert!(!root.path().join("rec/nixos-rebuild.deb.argv").exists());
}

// ---------------------------------------------------------------------------------------------
// The real nixos-rebuild-ng of the pinned nixpkgs (tests/common/rebuild_ng.rs) against
// namespace hosts: real `nix build`, real `nix-copy-closure` over ssh with fleetnix's
// NIX_SSHOPTS, real `nix-env --set` on the target, and the flake's own switch-to-configuration.

use common::rebuild_ng::{self, activations, systems};

/// `(running, profile, boot default)` as [`systems`] names them.
fn on(running: &str, profile: &str, boot: &str) -> (String, String, String) {
    (running.into(), profile.into(), boot.into())
}

#[test]
fn real_nixos_rebuild_passes_a_pinned_key_and_a_wrong_one_changes_nothing() {
    // bad is pinned to good's key.
    let Some(f) = RealFleet::with(&["good", "bad"], |hosts, specs| {
        specs[1].host_key = Some(hosts[0].host_key.clone())
    }) else {
        return;
    };
    let (net, good, bad) = (&f.net, &f.hosts[0], &f.hosts[1]);
    let r = f.deploy(&["--all", "--force", "--action", "test"]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.row("good").contains(" ok "), "{r}");
    assert_eq!(activations(net, "good"), ["v1 test"]);
    assert_eq!(systems(net, "good"), on("v1", "gen1", "gen1"));
    let row = r.row("bad");
    assert!(row.contains("host key verification failed"), "{row}");
    assert!(activations(net, "bad").is_empty());
    assert_eq!(systems(net, "bad"), on("gen1", "gen1", "gen1"));
    // The real tool itself, given fleetnix's NIX_SSHOPTS pinning the wrong key, refuses at
    // its copy (before anything changes on the host).
    let kh = net.dir().join("known_hosts_wrong");
    std::fs::write(&kh, format!("{} {}\n", bad.addr, good.host_key)).expect("kh");
    let destination = format!("root@{}", bad.addr);
    let r = Ran::of(
        net.command(&f.rebuild)
            .args(["switch", "--flake"])
            .arg(format!("{}#bad", f.root().display()))
            .args(["--target-host", &destination])
            .env("NIX_SSHOPTS", pinned_sshopts(net, &destination, &kh, None)),
    );
    assert_ne!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains("Host key verification failed"), "{r}");
    assert!(activations(net, "bad").is_empty());
    assert_eq!(systems(net, "bad"), on("gen1", "gen1", "gen1"));
}

#[test]
fn real_nixos_rebuild_boot_and_guarded_switch() {
    let Some(f) = RealFleet::new(&["a", "b"]) else {
        return;
    };
    let net = &f.net;
    // boot: profile and boot default move, the running system does not.
    let r = f.deploy(&["a", "--force", "--action", "boot"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(activations(net, "a"), ["v1 boot"]);
    assert_eq!(systems(net, "a"), on("gen1", "v1", "v1"));
    // A guarded switch: built and copied by the real tool (`build`), activated with `test`,
    // health-gated, confirmed over a new connection, then profile and boot default.
    rebuild_ng::set_generation(f.root(), "2");
    let r = f.deploy(&["b", "--force"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("b").contains("confirmed"), "{r}");
    assert_eq!(activations(net, "b"), ["v2 test", "v2 boot"]);
    assert_eq!(systems(net, "b"), on("v2", "v2", "v2"));
    // The built system is kept from the local garbage collector.
    let result = f.root().join(".fleetnix/build/b/result");
    assert_eq!(
        rebuild_ng::system_name(
            &std::fs::read_link(&result)
                .expect("result link")
                .to_string_lossy()
        ),
        "v2"
    );
}

#[test]
fn real_nixos_rebuild_rollout_halts_after_a_failed_canary() {
    let Some(f) = RealFleet::new(&["n1", "n2", "n3", "n4", "n5"]) else {
        return;
    };
    let net = &f.net;
    // Activating system 1 fails on the canary.
    std::fs::write(state_dir(net, "n1").join("fail-v1"), "").expect("knob");
    let r = f.deploy(&["--all", "--force", "--canary", "1"]);
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("[activate]") && row.contains("rolled back"),
        "{row}"
    );
    assert_eq!(activations(net, "n1"), ["v1 test", "gen1 test"]);
    assert_eq!(systems(net, "n1"), on("gen1", "gen1", "gen1"));
    for n in ["n2", "n3", "n4", "n5"] {
        assert!(r.row(n).contains("skipped (halted)"), "{r}");
        assert!(activations(net, n).is_empty(), "{n} was touched");
        assert_eq!(systems(net, n), on("gen1", "gen1", "gen1"));
    }
}
