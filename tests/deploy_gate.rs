//! The post-activation health gate of a guarded `switch`, end to end: NixOS-like hosts with a
//! real systemd (`tests/common/systemd_host.rs`: `systemctl is-active` asks it about the
//! stand-in units of tailscaled and the agent; real TCP listeners in the hosts' namespaces for
//! their services), the fake nixos-rebuild, and the guard rolling a node back when its gate
//! fails.

mod common;

use common::systemd_host::SystemdNet;
use common::*;

/// `(running, profile, boot default)` all on generation 1.
fn untouched() -> (String, String, String) {
    ("1".into(), "1".into(), "1".into())
}

#[test]
fn a_canary_whose_agent_fails_its_gate_is_rolled_back_and_halts_the_rollout() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    // Five hosts, node timeout 3 s; n1 is the control plane (it hosts the catalog's TCP services).
    sys.nixos_fleet(root.path(), 5, 3);
    let host = sys.host("n1");
    let n1 = sys.state(&host);
    // The new generation stops the agent (the real unit); generation 1 starts it again.
    std::fs::write(n1.join("breaks-agent"), "").expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &[
            "--all",
            "--force",
            "--canary",
            "1",
            "--rollback-grace",
            "60",
        ],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("FAILED")
            && row.contains("[health-gate]")
            && row.contains("omp-agent.service is inactive")
            && row.contains("rolled back to"),
        "{row}"
    );
    // Activated with `test`, then rolled back at once (not after the 60 s grace), and the
    // new generation never became the profile or the boot default.
    assert_eq!(sys.activations(&host), ["2 test", "1 test"]);
    assert_eq!(sys.generations(&host), untouched());
    let agent = sys.exec(&host, "systemctl is-active omp-agent.service");
    assert_eq!(agent.stdout.trim(), "active", "agent back: {agent}");
    assert!(
        !sys.exists(&host, "/run/fleetnix/lock"),
        "the rollback released the lock"
    );
    let others = ["n2", "n3", "n4", "n5"];
    sys.assert_halted(&r, root.path(), &others, "canary");
    for n in others {
        assert_eq!(sys.generations(&sys.host(n)), untouched());
    }
}

#[test]
fn a_hosted_service_the_switch_stops_fails_the_gate_naming_it() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 2).remove(0);
    // n1 is the control plane: postgres (5432) is one of its services. It listens before the
    // switch; the activation is held while the test stops it, as a bad generation would.
    let state = sys.state(&host);
    std::fs::write(state.join("hold-activation"), "").expect("knob");
    let child = deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--json", "--rollback-grace", "60"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("deploy");
    wait_for(
        "the activation to be held",
        std::time::Duration::from_secs(60),
        || state.join("activation-held").exists(),
    );
    sys.stop_listening(&host, 5432);
    std::fs::remove_file(state.join("hold-activation")).expect("release");
    let r = Ran::from(child.wait_with_output().expect("deploy output"));
    assert_eq!(r.code, Some(1), "{r}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let node = &v["nodes"][0];
    assert_eq!(node["outcome"], "failed", "{r}");
    assert_eq!(node["step"], "health-gate", "{r}");
    let detail = node["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("postgres ({}:5432) refused", host.addr)),
        "{detail}"
    );
    // Only the missing service is named: the others answered.
    assert!(!detail.contains("4222"), "{detail}");
    assert_eq!(sys.generations(&sys.host("n1")), untouched());
}

#[test]
fn a_service_already_down_before_the_switch_is_a_warning_not_a_rollback() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 2).remove(0);
    // A fleet set up networking-first: nothing listens on postgres yet, before or after.
    sys.stop_listening(&host, 5432);
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("confirmed")
            && row.contains(&format!(
                "postgres ({}:5432) refused (already closed before the switch)",
                host.addr
            )),
        "{row}"
    );
    assert_eq!(
        sys.generations(&sys.host("n1")),
        ("2".into(), "2".into(), "2".into())
    );
}

#[test]
fn a_healthy_node_passes_its_gate_and_is_confirmed_as_before() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    sys.nixos_fleet(root.path(), 1, 2);
    let r = Ran::of(&mut deploy_cmd(&sys, root.path(), &["n1", "--force"]));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("n1").contains("confirmed"), "{r}");
    assert_eq!(
        sys.generations(&sys.host("n1")),
        ("2".into(), "2".into(), "2".into())
    );
    // The gate asked the real systemd for both units, and passed before the confirmation.
    let log = std::fs::read_to_string(root.path().join(".fleetnix/logs/n1.log")).expect("log");
    let passed = log
        .find("health gate passed")
        .expect("gate passed in the log");
    let confirmed = log.rfind("confirmed").expect("confirmation in the log");
    assert!(passed < confirmed, "{log}");
    assert!(log.contains("8 service port(s) open"), "{log}");
    let gate = &log[log.find("## health-gate").expect("gate section")..passed];
    assert!(
        gate.contains("systemctl is-active")
            && gate.contains("tailscaled.service")
            && gate.contains("omp-agent.service"),
        "{gate}"
    );
}

#[test]
fn no_health_gate_deploys_what_the_gate_would_have_stopped() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    sys.nixos_fleet(root.path(), 1, 2);
    std::fs::write(sys.state(&sys.host("n1")).join("breaks-agent"), "").expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--no-health-gate"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    let agent = sys.exec(&sys.host("n1"), "systemctl is-active omp-agent.service");
    assert_eq!(agent.stdout.trim(), "inactive", "{agent}");
    assert_eq!(
        sys.generations(&sys.host("n1")),
        ("2".into(), "2".into(), "2".into())
    );
}

#[test]
fn the_dry_run_lists_the_gate_before_the_confirmation() {
    let root = tempfile::tempdir().expect("root");
    let specs = [
        NodeSpec {
            host_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS".into()),
            ..NodeSpec::new("cp", "100.64.0.1", &[])
        },
        NodeSpec {
            host_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbT".into()),
            ..NodeSpec::new("w", "100.64.0.2", &["glm-worker"])
        },
    ];
    write_fleet(root.path(), &specs, 4, false);
    let dry = |args: &[&str]| {
        Ran::of(
            std::process::Command::new(fleetnix_bin())
                .arg("--root")
                .arg(root.path())
                .args(["deploy", "--dry-run"])
                .args(args)
                .env("FLEETNIX_TAILSCALE", ""),
        )
    };
    let r = dry(&["cp"]);
    assert_eq!(r.code, Some(0), "{r}");
    let gate = r
        .stdout
        .find("health gate (before the confirmation, within 4s): tailscaled.service and omp-agent.service active, and TCP connects to ")
        .expect("gate listed");
    assert!(r.stdout[gate..].contains("postgres 100.64.0.1:5432"), "{r}");
    let confirm = r
        .stdout
        .find("confirm over a NEW connection")
        .expect("confirm");
    assert!(gate < confirm, "{r}");
    // A worker hosts no service: only the units.
    let r = dry(&["w"]);
    assert!(
        r.stdout.contains(
            "tailscaled.service and omp-agent.service active, and TCP connects to no service; each as healthy as before the switch"
        ),
        "{r}"
    );
    // Off with --no-health-gate.
    let r = dry(&["cp", "--no-health-gate"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(!r.stdout.contains("health gate"), "{r}");
}

/// Declares `gpus` GPUs for `node` in the fleet's nodes.yml (`resources.gpu`).
fn declare_gpus(root: &std::path::Path, node: &str, gpus: u32) {
    let path = root.join("fleet/nodes.yml");
    let text = std::fs::read_to_string(&path).expect("nodes.yml");
    let mut out = String::new();
    let mut mine = false;
    for l in text.lines() {
        if l.trim_start().starts_with("- name:") {
            mine = l.trim_end().ends_with(&format!(" {node}"));
        }
        if mine && l.trim_start().starts_with("resources:") {
            out.push_str(&l.replace(" }", &format!(", gpu: {gpus} }}")));
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    assert!(out.contains(&format!("gpu: {gpus}")), "{out}");
    std::fs::write(&path, out).expect("nodes.yml");
}

#[test]
fn a_gpu_node_passes_only_while_nvidia_smi_lists_its_gpus() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 2).remove(0);
    declare_gpus(root.path(), "n1", 2);
    // A fake nvidia-smi on the host's PATH: two GPUs while generation 1 runs; any other
    // generation brings a new driver library whose kernel module is not loaded (no reboot):
    // NVML's "Driver/library version mismatch", exit 18.
    sys.exec_ok(
        &host,
        "cat > /usr/local/bin/nvidia-smi <<'EOF'\n#!/bin/sh\n\
         case $(readlink /run/current-system) in\n\
         */gens/1) echo 'NVIDIA A100-SXM4-80GB'; echo 'NVIDIA A100-SXM4-80GB' ;;\n\
         *) echo 'Failed to initialize NVML: Driver/library version mismatch'; exit 18 ;;\n\
         esac\nEOF\nchmod 755 /usr/local/bin/nvidia-smi",
    );
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("[health-gate]")
            && row.contains(
                "GPUs: nvidia-smi failed (exit 18): Failed to initialize NVML: Driver/library version mismatch"
            )
            && row.contains("rolled back to"),
        "{row}"
    );
    assert_eq!(sys.generations(&host), untouched());
    // With the driver and its module in step (the fake answers for every generation), the
    // gate passes and names the check.
    sys.exec_ok(
        &host,
        "sed -i 's|\\*/gens/1)|*)|' /usr/local/bin/nvidia-smi && /usr/local/bin/nvidia-smi | grep -c A100",
    );
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("n1").contains("GPUs: nvidia-smi lists 2 of 2"), "{r}");
}

#[test]
fn the_agent_is_checked_only_where_the_new_generation_has_its_unit() {
    let Some(mut sys) = SystemdNet::new() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    let host = sys.nixos_fleet(root.path(), 1, 2).remove(0);
    // The new generation has tailscaled's unit and no agent (the example fleet without an
    // agent package), and activating it stops the agent that runs now.
    let state = sys.state(&host);
    let units = state.join("next-gen/etc/systemd/system");
    std::fs::create_dir_all(&units).expect("units");
    std::fs::write(units.join("tailscaled.service"), "[Service]\n").expect("unit");
    std::fs::write(state.join("breaks-agent"), "").expect("knob");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--rollback-grace", "60"],
    ));
    assert_eq!(r.code, Some(0), "{r}");
    let row = r.row("n1");
    assert!(
        row.contains("checked tailscaled.service active")
            && row.contains("not checked: omp-agent.service (not in the new generation)"),
        "{row}"
    );
    assert_eq!(sys.generations(&host), ("2".into(), "2".into(), "2".into()));
    // With the agent's unit in the new generation, the same stop of a running agent fails
    // the gate.
    std::fs::write(units.join("omp-agent.service"), "[Service]\n").expect("unit");
    sys.exec_ok(&host, "systemctl start omp-agent.service");
    let r = Ran::of(&mut deploy_cmd(
        &sys,
        root.path(),
        &["n1", "--force", "--rollback-grace", "60"],
    ));
    assert_eq!(
        r.code,
        Some(1),
        "{r}\n{}",
        sys.journal(&host, "-u omp-agent.service")
    );
    assert!(r.row("n1").contains("omp-agent.service is inactive"), "{r}");
}
