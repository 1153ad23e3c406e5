//! The real-systemd test hosts themselves (`tests/common/systemd_host.rs`, `tests/README.md`):
//! they boot a real systemd with NixOS's unit PATH, serve SSH with their per-test keys, and
//! reboot for real, keeping their disk and losing their `/run`.

mod common;

use common::systemd_host::{SystemdNet, HOST_STATE, SYSTEMD_ONLY_BIN};
use common::Ran;

/// `ssh root@<host> <script>` from the hub, pinned to the host's own key.
fn ssh(sys: &SystemdNet, host: &common::netns::Host, script: &str) -> Ran {
    let known = sys.dir().join(format!("known-{}", host.name));
    std::fs::write(&known, format!("{} {}\n", host.addr, host.host_key)).expect("known hosts");
    Ran::of(
        sys.command("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg("-i")
            .arg(sys.client_key())
            .arg(format!("root@{}", host.addr))
            .arg(script),
    )
}

#[test]
fn a_nixos_host_runs_a_real_systemd_whose_units_find_no_coreutils() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    assert_eq!(
        sys.system_state(&host),
        "running",
        "{}",
        sys.exec(&host, "systemctl --failed --no-legend")
    );

    // Over SSH, with its own host key (StrictHostKeyChecking=yes): PID 1 is systemd.
    let r = ssh(&sys, &host, "cat /proc/1/comm; . /etc/os-release; echo $ID");
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(r.stdout, "systemd\nnixos\n");

    // NixOS's unit PATH: transient units get systemd's programs only.
    let r = ssh(
        &sys,
        &host,
        "systemd-run --wait --pipe --quiet /bin/sh -c 'echo $PATH'",
    );
    assert_eq!(r.stdout.trim(), SYSTEMD_ONLY_BIN, "{r}");
    let r = ssh(
        &sys,
        &host,
        "systemd-run --wait --pipe --quiet /bin/sh -c 'touch /root/by-touch'",
    );
    assert_ne!(r.code, Some(0), "touch must not be found in a unit: {r}");
    assert!(
        r.stderr.contains("touch: not found") || r.stderr.contains("status=127"),
        "{r}"
    );
    assert!(!sys.root(&host).join("root/by-touch").exists());

    // The boot loader's default runs; the stand-in daemons of the health gate are active.
    let gen1 = format!("{HOST_STATE}/gens/1");
    assert_eq!(
        sys.readlink(&host, "/run/current-system").as_deref(),
        Some(gen1.as_str())
    );
    assert_eq!(
        sys.readlink(&host, "/run/booted-system").as_deref(),
        Some(gen1.as_str())
    );
    let r = ssh(
        &sys,
        &host,
        "systemctl is-active tailscaled.service omp-agent.service",
    );
    assert_eq!(r.stdout, "active\nactive\n", "{r}");
}

#[test]
fn a_reboot_is_real_keeps_the_disk_and_boots_the_boot_default() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    // A transient timer, a file in /run and one on the disk; then a second generation made
    // the boot default (as `switch-to-configuration boot` does).
    sys.exec_ok(
        &host,
        "systemd-run --unit=before-reboot --on-active=1h /bin/true && : > /run/marker && : > /root/on-disk\n\
         cp -a /var/lib/fleetnix-test/gens/1 /var/lib/fleetnix-test/gens/2 && echo 2 > /var/lib/fleetnix-test/boot-default",
    );
    let gen1 = format!("{HOST_STATE}/gens/1");
    assert_eq!(
        sys.readlink(&host, "/run/current-system").as_deref(),
        Some(gen1.as_str())
    );
    let leader = sys.leader(&host);

    sys.reboot(&host);
    assert_eq!(sys.boots(&host), 2);
    assert_ne!(sys.leader(&host), leader, "a new PID 1");
    eprintln!(
        "boots of n1 until sshd listens: {:?}",
        sys.boot_times(&host)
    );
    assert_eq!(sys.system_state(&host), "running");
    let out = sys.exec_ok(
        &host,
        "ls /run/marker 2>&1; ls /root/on-disk; systemctl is-active before-reboot.timer || true",
    );
    assert!(
        out.contains("No such file") && out.contains("/root/on-disk"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("inactive"),
        "the timer died with the reboot: {out}"
    );
    let gen2 = format!("{HOST_STATE}/gens/2");
    assert_eq!(
        sys.readlink(&host, "/run/current-system").as_deref(),
        Some(gen2.as_str())
    );
    assert_eq!(
        sys.readlink(&host, "/run/booted-system").as_deref(),
        Some(gen2.as_str())
    );
    let r = ssh(&sys, &host, "true");
    assert_eq!(r.code, Some(0), "SSH is back: {r}");
}

#[test]
fn two_hosts_boot_side_by_side_and_go_away_with_the_test() {
    let names;
    let disk;
    {
        let Some(mut sys) = SystemdNet::new() else {
            return;
        };
        let a = sys.nixos_host("a");
        let b = sys.nixos_host("b");
        let r = ssh(
            &sys,
            &a,
            &format!(
                "ssh -o BatchMode=yes -o ConnectTimeout=2 {} true 2>&1 || true; hostname",
                b.addr
            ),
        );
        assert!(r.stdout.ends_with("a\n"), "{r}");
        assert_ne!(sys.leader(&a), sys.leader(&b));
        names = (a.ns.clone(), b.ns.clone());
        disk = sys.disk(&a);
    }
    for ns in [names.0, names.1] {
        assert!(
            !std::path::Path::new("/run/netns").join(&ns).exists(),
            "{ns} left behind"
        );
        assert!(!std::path::Path::new("/run/systemd/nspawn/propagate")
            .join(&ns)
            .exists());
    }
    assert!(!disk.exists(), "{} left behind", disk.display());
}

#[test]
fn a_power_cut_keeps_the_disk_and_loses_run() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    sys.exec_ok(&host, ": > /run/marker && : > /root/on-disk && sync");
    let leader = sys.leader(&host);
    sys.power_cycle(&host);
    assert_eq!(sys.boots(&host), 2);
    assert_ne!(sys.leader(&host), leader);
    assert!(!sys.exists(&host, "/run/marker"));
    assert!(sys.exists(&host, "/root/on-disk"));
    assert_eq!(sys.system_state(&host), "running");
    let r = ssh(&sys, &host, "true");
    assert_eq!(r.code, Some(0), "SSH is back: {r}");
}

#[test]
fn the_systemd_run_stand_in_of_the_sshd_only_hosts_behaves_as_the_real_one_on_nixos() {
    // The deploy tests still on sshd-only namespace hosts use tests/fakes/host-bin/systemd-run:
    // it must give units what the real one gives them under NixOS's unit PATH.
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let host = sys.nixos_host("n1");
    let dir = tempfile::tempdir().expect("dir");
    let fake = |script: &str| {
        Ran::of(
            std::process::Command::new(common::fakes().join("host-bin/systemd-run"))
                .args(["--wait", "--pipe", "/bin/sh", "-c", script])
                .env("FAKE_HOST_DIR", dir.path()),
        )
    };
    let real = |script: &str| {
        sys.exec(
            &host,
            &format!(
                "systemd-run --wait --pipe --quiet /bin/sh -c '{}'",
                script.replace('\'', "'\\''")
            ),
        )
    };
    // A bare `touch` is not found (exit 127) in both, and nothing is made.
    let (f, r) = (
        fake("touch /tmp/fleetnix-made-by-touch"),
        real("touch /root/made-by-touch"),
    );
    assert_eq!(f.code, Some(127), "stand-in: {f}");
    assert_ne!(r.code, Some(0), "real: {r}");
    assert!(!std::path::Path::new("/tmp/fleetnix-made-by-touch").exists());
    assert!(!sys.exists(&host, "/root/made-by-touch"));
    // Both PATHs hold systemd's programs and nothing else; the caller's PATH does not leak in.
    let (f, r) = (fake("echo \"$PATH\""), real("echo \"$PATH\""));
    assert_eq!(
        f.stdout.trim(),
        common::fakes().join("host-bin").display().to_string()
    );
    assert_eq!(r.stdout.trim(), SYSTEMD_ONLY_BIN);
    for (what, out) in [("stand-in", &f), ("real", &r)] {
        let listing = if what == "real" {
            sys.exec_ok(&host, &format!("ls {SYSTEMD_ONLY_BIN}"))
        } else {
            std::fs::read_dir(common::fakes().join("host-bin"))
                .expect("host-bin")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned() + "\n")
                .collect()
        };
        for tool in ["touch", "ln", "mv", "cat", "mkdir", "rm"] {
            assert!(
                !listing.lines().any(|l| l == tool),
                "{what} PATH holds {tool}: {out}"
            );
        }
    }
    // Absolute paths work in both.
    let (f, r) = (fake("/usr/bin/true"), real("/usr/bin/true"));
    assert_eq!((f.code, r.code), (Some(0), Some(0)), "{f}\n{r}");
}
