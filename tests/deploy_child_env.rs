//! Child processes get no secret variables: while `deploy` runs against a real-systemd host with
//! `TAILSCALE_AUTHKEY`, `TS_API_KEY` and the NATS password variables set, no process it starts
//! (ssh, nixos-rebuild and everything they start) has them in `/proc/<pid>/environ`, while the
//! variables they need (here a marker set for the test) still reach them.

mod common;

use common::systemd_host::SystemdNet;
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// `NAME=value` entries of a process's environment, if readable.
fn environ(pid: &str) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect(),
    )
}

fn cmdline(pid: &str) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn no_child_of_deploy_sees_a_secret_variable() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 2).remove(0);
    let authkey = unique_fake_authkey();
    let api_key = format!("tskey-api-{}", unique_fake_authkey());
    let nats = format!("nats-{}", unique_fake_authkey());
    // Every child inherits this one: it tells the test which processes are fleetnix's.
    let marker = format!("FLEETNIX_TEST_CHILD={}", unique_fake_authkey());
    let secrets = [
        ("TAILSCALE_AUTHKEY", authkey.clone()),
        ("TS_API_KEY", api_key.clone()),
        ("FLEETNIX_NATS_PASSWORD", nats.clone()),
        ("NATS_PASSWORD_N1", nats.clone()),
    ];
    let mut cmd = deploy_cmd(&sys, root.path(), &["n1", "--rollback-grace", "30"]);
    for (k, v) in &secrets {
        cmd.env(k, v);
    }
    let (mk, mv) = marker.split_once('=').expect("marker");
    cmd.env(mk, mv)
        // nixos-rebuild (and its ssh) live long enough to be seen more than once.
        .env("FAKE_REBUILD_DELAY", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());

    let stop = Arc::new(AtomicBool::new(false));
    // The command lines of every child seen (by the marker; a pid may exec several), and the leaks.
    let children = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let leaks = Arc::new(Mutex::new(Vec::<String>::new()));
    let fleetnix_pid = Arc::new(Mutex::new(String::new()));
    let scanner = {
        let (stop, children, leaks, me) = (
            stop.clone(),
            children.clone(),
            leaks.clone(),
            fleetnix_pid.clone(),
        );
        let values: Vec<String> = secrets.iter().map(|(_, v)| v.clone()).collect();
        let marker = marker.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let me = me.lock().unwrap().clone();
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let pid = e.file_name().to_string_lossy().into_owned();
                    if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me || me.is_empty() {
                        continue;
                    }
                    // A fork of fleetnix that has not exec'd yet is still fleetnix (same
                    // program, same memory): what matters is what the programs it runs see.
                    let exe = |p: &str| std::fs::read_link(format!("/proc/{p}/exe")).ok();
                    if exe(&pid).is_some() && exe(&pid) == exe(&me) {
                        continue;
                    }
                    let Some(env) = environ(&pid) else { continue };
                    if !env.contains(&marker) {
                        continue;
                    }
                    let cmd = cmdline(&pid);
                    for v in &values {
                        if env.iter().any(|e| e.contains(v.as_str())) {
                            leaks
                                .lock()
                                .unwrap()
                                .push(format!("{pid} ({cmd}) holds a secret"));
                        }
                    }
                    children.lock().unwrap().insert(cmd);
                }
            }
        })
    };
    let child = cmd.spawn().expect("fleetnix starts");
    // `ip netns exec` execs fleetnix itself: same pid, the one process allowed to hold them.
    *fleetnix_pid.lock().unwrap() = child.id().to_string();
    let r = Ran::from(child.wait_with_output().expect("fleetnix finishes"));
    stop.store(true, Ordering::SeqCst);
    scanner.join().expect("scanner");

    assert_eq!(r.code, Some(0), "{r}");
    let children = children.lock().unwrap();
    let seen: Vec<&String> = children.iter().collect();
    // The scan saw the children that matter: nixos-rebuild and ssh to the node.
    assert!(
        seen.iter().any(|c| c.contains("fakes/nixos-rebuild build")),
        "nixos-rebuild never seen: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|c| c.contains("ssh") && c.contains(&host.addr.to_string())),
        "no ssh to the node seen: {seen:?}"
    );
    let leaks = leaks.lock().unwrap();
    assert!(leaks.is_empty(), "{leaks:?}");
    for (_, v) in &secrets {
        assert!(!r.stdout.contains(v.as_str()) && !r.stderr.contains(v.as_str()));
    }
}
