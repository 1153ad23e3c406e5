//! Reboots: `plan` says which nodes need one and why (`/run/booted-system` against the target),
//! on hosts with a real systemd (`common::systemd_host`) whose generations carry `kernel` links.

mod common;

use common::plan::{override_args, pinned};
use common::systemd_host::{SystemdNet, HOST_STATE};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The test flake: each node's toplevel is a tiny derivation of its rendered module, and its
/// configuration names a kernel the way NixOS's `kernel.nix` links it into the top level
/// (`${boot.kernelPackages.kernel}/${system.boot.loader.kernelFile}`): version 6.6, a directory
/// on the test hosts' disks.
const FLAKE: &str = r#"{
  inputs.nixpkgs.url = "path:/nonexistent-overridden-by-the-tests";
  outputs = { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      names = map (lib.removeSuffix ".nix") (builtins.attrNames (builtins.readDir ./nix/nodes));
      system = name: derivation {
        name = "nixos-system-${name}";
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" "echo \"$module\" > $out" ];
        module = builtins.unsafeDiscardStringContext (builtins.readFile (./nix/nodes + "/${name}.nix"));
      };
    in {
      nixosConfigurations = lib.genAttrs names (name: { config = {
        system.build.toplevel = system name;
        boot.kernelPackages.kernel = "/var/lib/fleetnix-test/kernels/6.6";
        system.boot.loader.kernelFile = "bzImage";
      }; });
    };
}
"#;

fn git(root: &Path, args: &[&str]) {
    let r = Ran::of(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args),
    );
    assert_eq!(r.code, Some(0), "git {args:?}: {r}");
}

fn fleetnix(sys: &SystemdNet, root: &Path, args: &[&str]) -> Ran {
    let rec = root.join("rec");
    std::fs::create_dir_all(&rec).expect("rec");
    let mut c = sys.command(fleetnix_bin());
    c.arg("--root")
        .arg(root)
        .args(args)
        .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
        .env("FLEETNIX_TAILSCALE", "")
        .env("FAKE_RECORD_DIR", &rec)
        .env_remove("TAILSCALE_AUTHKEY");
    if matches!(args.first(), Some(&"plan") | Some(&"deploy")) {
        c.arg("--ssh-identity").arg(sys.client_key());
    }
    Ran::of(&mut c)
}

/// Gives generation `gen` of `host` the kernel `version` (`gens/<gen>/kernel ->
/// kernels/<version>/bzImage`, an existing file), making the generation first if needed.
fn set_kernel(sys: &SystemdNet, host: &common::netns::Host, gen: u32, version: &str) {
    sys.exec_ok(
        host,
        &format!(
            "set -e; S={HOST_STATE}; mkdir -p $S/kernels/{version} $S/gens/{gen}; : > $S/kernels/{version}/bzImage; \
             [ -e $S/gens/{gen}/bin ] || cp -a $S/gens/1/bin $S/gens/1/sw $S/gens/{gen}/; \
             ln -sfn $S/kernels/{version}/bzImage $S/gens/{gen}/kernel"
        ),
    );
}

fn node<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {v:#}"))
}

#[test]
fn plan_reports_a_reboot_where_the_booted_kernel_differs_from_the_target_and_only_there() {
    let Some(pinned) = pinned() else { return };
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("root");
    let root = tmp.path().canonicalize().expect("abs");
    let hosts = sys.nixos_fleet(&root, 3, 5);
    std::fs::write(root.join("flake.nix"), FLAKE).expect("flake.nix");
    let r = fleetnix(&sys, &root, &["render"]);
    assert_eq!(r.code, Some(0), "{r}");
    git(&root, &["init", "-q"]);
    git(&root, &["add", "flake.nix", "fleet", "nix"]);
    git(&root, &["commit", "-q", "-m", "fleet"]);
    // n1 booted the target's kernel (6.6); n2 booted 6.1; n3 booted 6.6 but an earlier switch
    // activated generation 2 with kernel 6.1 (a reboot is pending).
    set_kernel(&sys, &hosts[0], 1, "6.6");
    set_kernel(&sys, &hosts[1], 1, "6.1");
    set_kernel(&sys, &hosts[2], 1, "6.6");
    set_kernel(&sys, &hosts[2], 2, "6.1");
    sys.exec_ok(
        &hosts[2],
        &format!("ln -sfn {HOST_STATE}/gens/2 /run/current-system"),
    );
    let mut args = vec!["plan", "--all", "--json"];
    let ovr = override_args(&pinned);
    args.extend(ovr.iter().map(String::as_str));
    let r = fleetnix(&sys, &root, &args);
    assert_eq!(r.code, Some(2), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}\n{r}"));
    assert_eq!(node(&v, "n1")["reboot"]["needed"], false, "{v:#}");
    assert_eq!(node(&v, "n1")["reboot"]["reasons"], serde_json::json!([]));
    assert_eq!(node(&v, "n2")["reboot"]["needed"], true, "{v:#}");
    assert_eq!(
        node(&v, "n2")["reboot"]["reasons"],
        serde_json::json!(["kernel"])
    );
    assert_eq!(
        node(&v, "n3")["reboot"]["reasons"],
        serde_json::json!(["pending"]),
        "{v:#}"
    );
    // The table says it in words.
    args.retain(|a| *a != "--json");
    let r = fleetnix(&sys, &root, &args);
    assert!(r.row("n2").contains("reboot needed (kernel)"), "{r}");
    assert!(!r.row("n1").contains("reboot needed"), "{r}");
    assert!(r.row("n3").contains("reboot needed (pending)"), "{r}");
}

/// Gives every generation `nixos-rebuild` builds next on `host` the kernel `version` (the fake
/// rebuild copies `<state>/next-gen/` into it).
fn next_kernel(sys: &SystemdNet, host: &common::netns::Host, version: &str) {
    sys.exec_ok(
        host,
        &format!(
            "set -e; S={HOST_STATE}; mkdir -p $S/kernels/{version} $S/next-gen; : > $S/kernels/{version}/bzImage; \
             ln -sfn $S/kernels/{version}/bzImage $S/next-gen/kernel"
        ),
    );
}

/// The boot guard's units and state on a host's disk.
fn guard_units(sys: &SystemdNet, host: &common::netns::Host) -> String {
    sys.exec(
        host,
        "ls /etc/systemd/system.control /etc/systemd/system.control/timers.target.wants 2>/dev/null",
    )
    .stdout
}

#[test]
fn reboot_auto_reboots_the_node_whose_kernel_changes_gates_and_confirms_and_only_that_one() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let hosts = sys.nixos_fleet(root.path(), 2, 3);
    // Both booted kernel 6.1; n1's new generation has 6.6, n2's the same 6.1.
    for h in &hosts {
        set_kernel(&sys, h, 1, "6.1");
    }
    next_kernel(&sys, &hosts[0], "6.6");
    next_kernel(&sys, &hosts[1], "6.1");
    let boots = [sys.boots(&hosts[0]), sys.boots(&hosts[1])];
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &[
            "--all",
            "--force",
            "--reboot",
            "auto",
            "--rollback-grace",
            "60",
            "--reboot-timeout",
            "60",
        ],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("rebooted into the new generation (kernel); confirmed over a new connection")
            && row.contains("health gate checked tailscaled.service active"),
        "{row}"
    );
    // n1 really rebooted, into generation 2, now its profile and boot default; no guard left.
    assert_eq!(sys.boots(&hosts[0]), boots[0] + 1);
    assert_eq!(
        sys.generations(&hosts[0]),
        ("2".into(), "2".into(), "2".into())
    );
    assert_eq!(
        sys.readlink(&hosts[0], "/run/booted-system").as_deref(),
        Some(format!("{HOST_STATE}/gens/2").as_str())
    );
    assert!(
        !guard_units(&sys, &hosts[0]).contains("fleetnix-boot-guard"),
        "{}",
        guard_units(&sys, &hosts[0])
    );
    assert!(sys.exists(&hosts[0], "/var/lib/fleetnix/boot-guard/confirmed"));
    assert!(!sys.exists(&hosts[0], "/run/fleetnix/lock"));
    // n2 needed none: the guarded switch without a reboot.
    assert_eq!(sys.boots(&hosts[1]), boots[1]);
    assert!(
        r.row("n2").contains("switched; confirmed") && !r.row("n2").contains("reboot"),
        "{r}"
    );
    assert_eq!(
        sys.generations(&hosts[1]),
        ("2".into(), "2".into(), "2".into())
    );
    // Without --reboot nothing reboots, and the summary says which node needs one.
    next_kernel(&sys, &hosts[1], "6.7");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n2", "--force", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.row("n2").contains("switched; confirmed")
            && r.row("n2").contains("reboot needed (kernel)"),
        "{r}"
    );
    assert_eq!(sys.boots(&hosts[1]), boots[1]);
}

#[test]
fn a_node_that_comes_back_without_network_is_restored_by_its_own_boot_guard() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 2).remove(0);
    set_kernel(&sys, &host, 1, "6.1");
    next_kernel(&sys, &host, "6.6");
    // Any generation but the first comes back unreachable: its sshd does not start (the
    // stand-in for a generation that cannot reach the tailnet; a container here cannot take its
    // own link down, it lacks CAP_NET_ADMIN). Nothing on the network can fix it.
    sys.exec_ok(
        &host,
        &format!(
            "set -e; mkdir -p /etc/systemd/system/ssh.service.d; cat > /etc/systemd/system/ssh.service.d/fleetnix-test.conf <<'EOF'\n\
             [Service]\nExecStartPre=/bin/sh -c 'test \"$$(/usr/bin/readlink /run/booted-system)\" = {HOST_STATE}/gens/1'\nEOF\n\
             systemctl daemon-reload"
        ),
    );
    let before = sys.boots(&host);
    let started = std::time::Instant::now();
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &[
            "n1",
            "--force",
            "--reboot",
            "auto",
            "--rollback-grace",
            "20",
            "--reboot-timeout",
            "8",
        ],
    ));
    assert_eq!(
        r.code,
        Some(1),
        "{r}\n{}",
        sys.exec(&host, "systemctl status ssh.service")
    );
    let row = r.row("n1");
    assert!(
        row.contains("FAILED")
            && row.contains("[reboot]")
            && row.contains("did not answer over SSH within 8s")
            && row.contains(&format!(
                "makes {HOST_STATE}/gens/1 the boot default again and reboots into it 20s after a boot of {HOST_STATE}/gens/2"
            )),
        "{row}"
    );
    // It did reboot into generation 2, which has no network; then, with nobody reaching it,
    // its own guard made generation 1 the boot default again and rebooted into it.
    sys.wait_for_reboot(&host, before + 1, started);
    assert_eq!(sys.boots(&host), before + 2);
    assert_eq!(sys.generations(&host), ("1".into(), "1".into(), "1".into()));
    assert!(sys.exists(&host, "/var/lib/fleetnix/boot-guard/restored"));
    assert!(
        !guard_units(&sys, &host).contains("fleetnix-boot-guard"),
        "the guard removed itself: {}",
        guard_units(&sys, &host)
    );
    // What ran where: generation 2 was made the boot default, then generation 1 again.
    assert_eq!(sys.activations(&host), ["2 boot", "1 boot"]);
}

#[test]
fn a_full_boot_is_refused_before_anything_is_copied_naming_node_file_system_and_numbers() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 2).remove(0);
    // /boot is a 1 MiB file system; the running kernel is 2 MiB.
    sys.exec_ok(
        &host,
        &format!(
            "set -e; mount -t tmpfs -o size=1m fleetnix-test-boot /boot; S={HOST_STATE}; mkdir -p $S/kernels/6.1; \
             head -c 2097152 /dev/zero > $S/kernels/6.1/bzImage; ln -sfn $S/kernels/6.1/bzImage $S/gens/1/kernel"
        ),
    );
    let r = Ran::of(&mut deploy_cmd(&sys, root.path(), &["n1", "--force"]));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("[preflight]")
            && row.contains("not enough space on n1, nothing copied")
            && row.contains("/boot (file system mounted at /boot) has 1.0 MiB free, one more kernel+initrd needs 2.0 MiB"),
        "{row}"
    );
    // Nothing was built, copied or activated.
    assert!(!root.path().join("rec/nixos-rebuild.n1.argv").exists());
    assert!(sys.activations(&host).is_empty());
    // `--action test` makes no boot entry: /boot is not asked.
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--action", "test"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
}

#[test]
fn the_dry_run_lists_both_paths_and_reboot_needs_the_guarded_switch() {
    let root = tempfile::tempdir().expect("root");
    let specs = [NodeSpec {
        host_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS".into()),
        ..NodeSpec::new("cp", "100.64.0.1", &[])
    }];
    write_fleet(root.path(), &specs, 4, false);
    let dry = |args: &[&str]| {
        Ran::of(
            Command::new(fleetnix_bin())
                .arg("--root")
                .arg(root.path())
                .args(["deploy", "--dry-run", "cp"])
                .args(args)
                .env("FLEETNIX_TAILSCALE", ""),
        )
    };
    let r = dry(&["--reboot", "auto"]);
    assert_eq!(r.code, Some(0), "{r}");
    let check = r
        .stdout
        .find("does NEW_SYSTEM need a reboot?")
        .expect("check");
    // Either path is drained first (the node runs an agent), after the check.
    let drain = r.stdout.find("drain cp's tasks").expect("drain");
    let arm = r
        .stdout
        .find("if it reboots: take the node's lock")
        .expect("boot guard");
    let reboot = r
        .stdout
        .find("if it reboots: reboot into NEW_SYSTEM")
        .expect("reboot");
    let confirm = r
        .stdout
        .find("if it rebooted: confirm the reboot over a NEW connection")
        .expect("confirm");
    assert!(
        check < drain && drain < arm && arm < reboot && reboot < confirm,
        "{r}"
    );
    assert!(r.stdout.contains("OnBootSec=120s"), "{r}");
    assert!(
        r.stdout.contains("if it does not reboot: activate without"),
        "{r}"
    );
    // Without --reboot the steps are the guarded switch's, unlabelled.
    let r = dry(&[]);
    assert!(!r.stdout.contains("if it reboots"), "{r}");
    for bad in [
        &["--reboot", "always", "--no-rollback"][..],
        &["--reboot", "auto", "--action", "test"],
    ] {
        let r = dry(bad);
        assert_eq!(r.code, Some(1), "{bad:?}: {r}");
        assert!(r.stderr.contains("needs the guarded switch"), "{r}");
    }
}
