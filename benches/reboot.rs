//! A reboot-needed rollout: 10 hosts with a real systemd (`tests/common/systemd_host.rs`), each
//! new generation with a new kernel, `deploy --all --reboot auto --batch 5`. Prints its wall
//! time against the slowest host's own deploy (build, boot guard, reboot, gate, confirm, one
//! host at a time) as a ratio: two waves of 5 cannot beat 2×. Needs root and the base image
//! (`FLEETNIX_TEST_SYSTEMD_BASE`); run with `cargo bench --bench reboot`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::netns::Host;
use common::systemd_host::{SystemdNet, HOST_STATE};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const HOSTS: usize = 10;

/// Every generation built next on `host` gets kernel `version`; generation 1 booted 6.1.
fn next_kernel(sys: &SystemdNet, host: &Host, version: &str) {
    sys.exec_ok(
        host,
        &format!(
            "set -e; S={HOST_STATE}; for v in 6.1 {version}; do mkdir -p $S/kernels/$v; : > $S/kernels/$v/bzImage; done; \
             ln -sfn $S/kernels/6.1/bzImage $S/gens/1/kernel; mkdir -p $S/next-gen; \
             ln -sfn $S/kernels/{version}/bzImage $S/next-gen/kernel"
        ),
    );
}

/// One deploy with `--reboot auto`: wall time; every selected node must have rebooted.
fn timed(sys: &SystemdNet, hosts: &[Host], root: &Path, args: &[&str]) -> Duration {
    let boots: Vec<u32> = hosts.iter().map(|h| sys.boots(h)).collect();
    let mut all = vec!["--force", "--reboot", "auto", "--rollback-grace", "120"];
    all.extend(args);
    let start = Instant::now();
    let r = Ran::of(&mut deploy_cmd(sys, root, &all));
    let t = start.elapsed();
    assert_eq!(r.code, Some(0), "deploy {all:?}:\n{r}");
    for (h, b) in hosts.iter().zip(boots) {
        assert_eq!(sys.boots(h), b + 1, "{} did not reboot:\n{r}", h.name);
    }
    t
}

fn main() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let hosts = sys.nixos_fleet(root.path(), HOSTS, 10);
    let r = root.path();
    // Each host alone (the first run also renders the modules).
    for h in &hosts {
        next_kernel(&sys, h, "6.6");
    }
    let mut single = Vec::new();
    for h in &hosts {
        single.push((
            h.name.clone(),
            timed(&sys, std::slice::from_ref(h), r, &[&h.name]),
        ));
    }
    let (slowest_name, slowest) = single
        .iter()
        .max_by_key(|(_, t)| *t)
        .cloned()
        .expect("hosts");
    // The rollout: a new kernel again for every host.
    for h in &hosts {
        next_kernel(&sys, h, "6.7");
    }
    let rollout = timed(&sys, &hosts, r, &["--all", "--batch", "5"]);
    println!("reboot-needed rollout, {HOSTS} real-systemd hosts, --reboot auto --batch 5");
    for (n, t) in &single {
        println!("  {n} alone: {:.2}s", t.as_secs_f64());
    }
    println!(
        "slowest host alone ({slowest_name}: build, boot guard, reboot, gate, confirm): {:.2}s",
        slowest.as_secs_f64()
    );
    println!("rollout --batch 5: {:.2}s", rollout.as_secs_f64());
    println!(
        "ratio rollout / slowest host: {:.2} (two waves of 5: at best 2.0)",
        rollout.as_secs_f64() / slowest.as_secs_f64()
    );
}
