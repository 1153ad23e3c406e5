//! `fleetnix plan` and deploy's skipping of unchanged nodes, end to end: a real `nix eval` of a
//! git flake whose `nixpkgs` input is overridden to the pinned nixpkgs
//! (`FLEETNIX_TEST_NIXPKGS`), and namespace hosts that look like NixOS (`/run/current-system`,
//! a system profile) behind real sshd.

mod common;

use common::netns::{HostOptions, Net};
use common::plan::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn git(root: &Path, args: &[&str]) {
    let r = Ran::of(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args([
                "-c",
                "user.name=fleetnix test",
                "-c",
                "user.email=test@example.com",
            ])
            .args(args),
    );
    assert_eq!(r.code, Some(0), "git {args:?}: {r}");
}

/// `nix eval --raw` of one node's toplevel, independently of fleetnix.
fn nix_target(root: &Path, pinned: &Path, node: &str) -> String {
    let r = Ran::of(
        Command::new("nix")
            .args([
                "--extra-experimental-features",
                "nix-command flakes",
                "eval",
                "--raw",
            ])
            .arg(format!(
                "{}#nixosConfigurations.{node}.config.system.build.toplevel.outPath",
                root.display()
            ))
            .args(override_args(pinned)),
    );
    assert_eq!(r.code, Some(0), "nix eval: {r}");
    r.stdout.trim().to_string()
}

/// `fleetnix --root <root> <args>` in the hub, with `nix` through a wrapper that counts
/// evaluations into `<root>/rec/nix-evals`.
fn fleetnix(net: &Net, root: &Path, args: &[&str], extra: &[String]) -> Command {
    let rec = root.join("rec");
    std::fs::create_dir_all(&rec).expect("rec");
    let wrapper = rec.join("nix");
    let real = which::which("nix").expect("nix");
    write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = eval ] && echo \"$*\" >> '{}/nix-evals' && break; done\nexec '{}' \"$@\"\n",
            rec.display(),
            real.display()
        ),
    );
    let mut c = net.command(fleetnix_bin());
    c.arg("--root")
        .arg(root)
        .args(args)
        .args(extra)
        .env("FLEETNIX_NIX", &wrapper)
        .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
        .env("FLEETNIX_TAILSCALE", "")
        .env("FAKE_RECORD_DIR", &rec)
        // A file:// install script fake: the test-only override.
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1")
        .env_remove("TAILSCALE_AUTHKEY");
    if matches!(args.first(), Some(&"plan") | Some(&"deploy")) {
        c.arg("--ssh-identity").arg(net.client_key());
    }
    c
}

fn json(r: &Ran) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("plan --json: {e}\n{r}"))
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
fn plan_sees_unchanged_changed_and_unreachable_nodes_and_deploy_skips_the_unchanged() {
    let Some(pinned) = pinned() else { return };
    if required_tool("nix", "Debian package nix-bin").is_none()
        || required_tool("git", "Debian package git").is_none()
    {
        return;
    }
    let Some(mut net) = Net::new() else { return };
    let (a, run_a) = nixos_host_with_run(&mut net, "a");
    let (b, run_b) = nixos_host_with_run(&mut net, "b");
    let (c, _run_c) = nixos_host_with_run(&mut net, "c");
    let tmp = tempfile::tempdir().expect("root");
    let root = tmp.path().canonicalize().expect("abs");
    let specs = [
        NodeSpec::for_host(&a),
        NodeSpec::for_host(&b),
        NodeSpec::for_host(&c),
    ];
    write_fleet(&root, &specs, 3, false);
    std::fs::write(root.join("flake.nix"), FLAKE).expect("flake.nix");
    let r = Ran::of(&mut fleetnix(&net, &root, &["render"], &[]));
    assert_eq!(r.code, Some(0), "{r}");
    git(&root, &["init", "-q"]);
    git(&root, &["add", "flake.nix", "fleet", "nix"]);
    git(&root, &["commit", "-q", "-m", "fleet"]);
    let ovr = override_args(&pinned);

    // a runs exactly its target system; b runs another one; c's link is down.
    let target_a = nix_target(&root, &pinned, "a");
    assert!(target_a.starts_with("/nix/store/") && target_a.ends_with("-nixos-system-a"));
    set_current(&run_a, &target_a);
    set_current(
        &run_b,
        "/nix/store/00000000000000000000000000000000-nixos-system-b",
    );
    net.link_down(&c);

    // Without the evaluation cache: all three targets in one evaluator.
    let started = Instant::now();
    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &[
            "plan",
            "--all",
            "--json",
            "--no-eval-cache",
            "--eval-jobs",
            "1",
        ],
        &ovr,
    ));
    let took = started.elapsed();
    assert_eq!(r.code, Some(1), "an unreachable node is an error:\n{r}");
    let v = json(&r);
    assert_eq!(node(&v, "a")["state"], "unchanged", "{v:#}");
    assert_eq!(node(&v, "a")["current_system"], target_a.as_str());
    assert_eq!(node(&v, "a")["target_system"], target_a.as_str());
    assert_eq!(node(&v, "b")["state"], "changed", "{v:#}");
    assert_eq!(
        node(&v, "b")["current_system"],
        "/nix/store/00000000000000000000000000000000-nixos-system-b"
    );
    assert_eq!(
        node(&v, "b")["target_system"].as_str(),
        Some(nix_target(&root, &pinned, "b").as_str())
    );
    // Neither closure is in the local store: nothing was built.
    assert_eq!(node(&v, "b")["closure"]["status"], "not-built", "{v:#}");
    assert_eq!(node(&v, "b")["committed"]["baseline"], "HEAD");
    assert_eq!(node(&v, "c")["state"], "unreachable", "{v:#}");
    assert!(
        node(&v, "c")["reason"]
            .as_str()
            .is_some_and(|s| s.contains("timed out")),
        "ssh's ConnectTimeout (node_timeout_seconds = 3) gave up: {v:#}"
    );
    assert!(
        took < Duration::from_secs(60),
        "plan took {took:?} with a node down"
    );
    // All three targets in ONE evaluator process.
    let evals = lines(&root.join("rec/nix-evals"));
    assert_eq!(evals.len(), 1, "{evals:?}");
    assert!(
        evals[0].contains("--override-input nixpkgs file://"),
        "{evals:?}"
    );
    // `--eval-jobs 2`: the same targets from two evaluator processes, a and b apart from c.
    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &[
            "plan",
            "--all",
            "--json",
            "--eval-jobs",
            "2",
            "--no-eval-cache",
        ],
        &ovr,
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let split = json(&r);
    for n in ["a", "b", "c"] {
        assert_eq!(
            node(&split, n)["target_system"],
            node(&v, n)["target_system"],
            "{split:#}"
        );
    }
    let evals = lines(&root.join("rec/nix-evals"));
    assert_eq!(
        evals.len(),
        3,
        "one more run, two more evaluators: {evals:?}"
    );
    let named = |line: &String, n: &str| line.contains(&format!("\"{n}\""));
    assert!(
        named(&evals[1], "a") != named(&evals[1], "c")
            && named(&evals[2], "a") != named(&evals[2], "c"),
        "a and c in different evaluators: {evals:?}"
    );
    assert_eq!(node(&v, "a")["target_from"], "evaluation", "{v:#}");
    // With the evaluation cache (the default): the first plan evaluates each node alone, the
    // second takes every target from the cache without an evaluator; same targets.
    for (from, evaluators) in [("evaluation", 3), ("cache", 0)] {
        let before = lines(&root.join("rec/nix-evals")).len();
        let r = Ran::of(&mut fleetnix(
            &net,
            &root,
            &["plan", "--all", "--json"],
            &ovr,
        ));
        assert_eq!(r.code, Some(1), "{r}");
        let c = json(&r);
        for n in ["a", "b", "c"] {
            assert_eq!(
                node(&c, n)["target_system"],
                node(&v, n)["target_system"],
                "{c:#}"
            );
            assert_eq!(node(&c, n)["target_from"], from, "{c:#}");
        }
        let evals = lines(&root.join("rec/nix-evals"));
        assert_eq!(evals.len() - before, evaluators, "{evals:?}");
    }
    // Nothing was deployed by plan.
    assert!(lines(&state_dir(&net, "a").join("activations")).is_empty());
    assert!(lines(&state_dir(&net, "b").join("activations")).is_empty());

    // Exit codes without the unreachable node: 2 (b would change), 0 (a alone).
    let r = Ran::of(&mut fleetnix(&net, &root, &["plan", "a", "b"], &ovr));
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stdout.contains("1 changed, 1 unchanged"), "{r}");
    let r = Ran::of(&mut fleetnix(&net, &root, &["plan", "a"], &ovr));
    assert_eq!(r.code, Some(0), "{r}");

    // deploy: a is skipped (no nixos-rebuild, no activation), b is rebuilt with the overrides.
    // Without a rollout, a's own connect step finds it unchanged: one SSH login, no probe before.
    let logins = |h: &common::netns::Host| sshd_logins(std::slice::from_ref(h));
    let (a_before, b_before) = (logins(&a), logins(&b));
    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &["deploy", "a", "b", "--action", "test"],
        &ovr,
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("a").contains("unchanged"), "{r}");
    assert!(r.row("b").contains(" ok "), "{r}");
    let rec = root.join("rec");
    assert!(!rec.join("nixos-rebuild.a.argv").exists(), "{r}");
    assert!(lines(&state_dir(&net, "a").join("activations")).is_empty());
    let argv = lines(&rec.join("nixos-rebuild.b.argv"));
    let url = format!("file://{}/nixpkgs.tar.xz", pinned.display());
    assert!(
        argv.windows(3)
            .any(|w| w == ["--override-input", "nixpkgs", url.as_str()]),
        "{argv:?}"
    );
    assert_eq!(lines(&state_dir(&net, "b").join("activations")), ["2 test"]);
    assert_eq!(logins(&a) - a_before, 1, "{r}");
    // b: its connect step and nixos-rebuild's activation, no probe before.
    assert_eq!(logins(&b) - b_before, 2, "{r}");

    // A rollout finds the unchanged nodes before it starts (its batches hold changed nodes).
    let a_before = logins(&a);
    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &["deploy", "a", "--action", "test", "--batch", "1"],
        &ovr,
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("a").contains("unchanged"), "{r}");
    assert!(!rec.join("nixos-rebuild.a.argv").exists(), "{r}");
    assert_eq!(logins(&a) - a_before, 1, "the probe only: {r}");

    // --force rebuilds the unchanged node.
    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &["deploy", "a", "--action", "test", "--force"],
        &ovr,
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(rec.join("nixos-rebuild.a.argv").exists(), "{r}");
    assert_eq!(lines(&state_dir(&net, "a").join("activations")), ["2 test"]);
    std::fs::remove_file(rec.join("nixos-rebuild.a.argv")).expect("rm");

    // A manifest change to a: plan says changed before rendering (its module is stale) and
    // after (a new target), with the port it closes against the committed render.
    // (langfuse moves from a to b: a closes its port.)
    let nodes_yml = root.join("fleet/nodes.yml");
    let text = std::fs::read_to_string(&nodes_yml).expect("nodes.yml");
    let moved = text.replacen(", langfuse]", "]", 1).replacen(
        "roles: [glm-worker]",
        "roles: [glm-worker, langfuse]",
        1,
    );
    assert_ne!(moved, text);
    std::fs::write(&nodes_yml, moved).expect("nodes.yml");
    let r = Ran::of(&mut fleetnix(&net, &root, &["plan", "a", "--json"], &ovr));
    assert_eq!(r.code, Some(2), "{r}");
    let v = json(&r);
    assert_eq!(node(&v, "a")["state"], "changed", "{v:#}");
    assert!(node(&v, "a")["rendered"][0]
        .as_str()
        .is_some_and(|s| s.contains("nix/nodes/a.nix")));
    let r = Ran::of(&mut fleetnix(&net, &root, &["render"], &[]));
    assert_eq!(r.code, Some(0), "{r}");
    let r = Ran::of(&mut fleetnix(&net, &root, &["plan", "a", "--json"], &ovr));
    assert_eq!(r.code, Some(2), "{r}");
    let v = json(&r);
    let new_target = nix_target(&root, &pinned, "a");
    assert_ne!(new_target, target_a);
    assert_eq!(node(&v, "a")["state"], "changed", "{v:#}");
    assert_eq!(node(&v, "a")["target_system"], new_target.as_str());
    assert!(
        node(&v, "a")["committed"]["ports_removed"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "a no longer opens langfuse's port, which the committed render did: {v:#}"
    );
    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &["deploy", "a", "--action", "test"],
        &ovr,
    ));
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("a").contains(" ok "), "{r}");
    assert!(rec.join("nixos-rebuild.a.argv").exists(), "{r}");
}

#[test]
fn a_host_without_current_system_is_an_error_that_suggests_os_auto() {
    let Some(pinned) = pinned() else { return };
    if required_tool("nix", "Debian package nix-bin").is_none() {
        return;
    }
    let Some(mut net) = Net::new() else { return };
    // A plain Debian host: no /run/current-system, no system profile.
    let d = net.add_host("d", HostOptions::default());
    let tmp = tempfile::tempdir().expect("root");
    let root = tmp.path().canonicalize().expect("abs");
    write_fleet(&root, &[NodeSpec::for_host(&d)], 3, false);
    std::fs::write(root.join("flake.nix"), FLAKE).expect("flake.nix");
    let r = Ran::of(&mut fleetnix(&net, &root, &["render"], &[]));
    assert_eq!(r.code, Some(0), "{r}");
    // No git repository: the flake is read as a path, the committed baseline is "no git".
    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &["plan", "d", "--json"],
        &override_args(&pinned),
    ));
    assert_eq!(r.code, Some(1), "{r}");
    let v = json(&r);
    let n = node(&v, "d");
    assert_eq!(n["state"], "error", "{v:#}");
    let reason = n["reason"].as_str().expect("reason");
    assert!(
        reason.contains("does not look like NixOS") && reason.contains("os: auto"),
        "{reason}"
    );
    assert!(n["target_system"]
        .as_str()
        .is_some_and(|t| t.ends_with("-nixos-system-d")));
    assert!(n["committed"]["baseline"]
        .as_str()
        .is_some_and(|b| b.starts_with("no git")));
}

#[test]
fn a_linux_node_is_planned_by_what_the_installer_would_change() {
    let Some(mut net) = Net::new() else { return };
    let u = ubuntu_host(&mut net, "u");
    let tmp = tempfile::tempdir().expect("root");
    let root = tmp.path().canonicalize().expect("abs");
    let mut spec = NodeSpec::for_host(&u);
    spec.os = "auto";
    write_fleet(&root, &[spec], 3, false);

    let r = Ran::of(&mut fleetnix(&net, &root, &["plan", "u", "--json"], &[]));
    assert_eq!(r.code, Some(2), "{r}");
    let v = json(&r);
    let n = node(&v, "u");
    assert_eq!(n["state"], "changed", "{v:#}");
    assert_eq!(
        n["os"], "linux",
        "os: auto resolved from /etc/os-release: {v:#}"
    );
    let installer: Vec<&str> = n["installer"]
        .as_array()
        .expect("installer")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(installer.len(), 4, "{installer:?}");
    assert!(
        installer[0].starts_with("install Tailscale"),
        "{installer:?}"
    );
    assert!(installer[1].starts_with("tailscale up"), "{installer:?}");
    assert!(
        installer[2].contains("install omp-agent.service"),
        "{installer:?}"
    );
    assert!(
        installer[3].contains("install fleetnix-firewall.service"),
        "{installer:?}"
    );
    // plan changed nothing on the host.
    assert!(!state_dir(&net, "u").join("install.runs").exists());

    let url = format!("file://{}", fakes().join("tailscale-install.sh").display());
    let r = Ran::of(
        fleetnix(&net, &root, &["deploy", "u", "--install-url", &url], &[])
            .env("TAILSCALE_AUTHKEY", fake_authkey()),
    );
    assert_eq!(r.code, Some(0), "{r}");

    // Installed as planned: nothing left to change.
    let r = Ran::of(&mut fleetnix(&net, &root, &["plan", "u", "--json"], &[]));
    assert_eq!(r.code, Some(0), "{r}");
    let v = json(&r);
    assert_eq!(node(&v, "u")["state"], "unchanged", "{v:#}");
    assert!(node(&v, "u").get("installer").is_none(), "{v:#}");

    // A changed unit on the node is seen.
    let unit = Path::new("/etc/netns")
        .join(&u.ns)
        .join("systemd/system/omp-agent.service");
    let text = std::fs::read_to_string(&unit).expect("agent unit installed");
    std::fs::write(&unit, format!("{text}# edited by hand\n")).expect("edit");
    let r = Ran::of(&mut fleetnix(&net, &root, &["plan", "u", "--json"], &[]));
    assert_eq!(r.code, Some(2), "{r}");
    assert_eq!(
        node(&json(&r), "u")["installer"][0],
        "agent: update omp-agent.service"
    );
}

/// Complete NixOS systems from the pinned nixpkgs: `good` has a root file system, a boot loader
/// and a state version; `broken` lacks the file system and boot loader, so NixOS's own
/// assertions fail.
const NIXOS_FLAKE: &str = r#"{
  inputs.nixpkgs.url = "path:/nonexistent-overridden-by-the-tests";
  outputs = { self, nixpkgs }:
    let
      base = name: { networking.hostName = name; system.stateVersion = "25.05"; };
      complete = {
        fileSystems."/" = { device = "/dev/vda1"; fsType = "ext4"; };
        boot.loader.grub.device = "/dev/vda";
      };
    in {
      nixosConfigurations.good = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [ (base "good") complete ];
      };
      nixosConfigurations.broken = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [ (base "broken") ];
      };
    };
}
"#;

#[test]
fn complete_nixos_systems_are_evaluated_in_one_process_and_assertion_failures_are_named() {
    let Some(pinned) = pinned() else { return };
    if required_tool("nix", "Debian package nix-bin").is_none() {
        return;
    }
    let Some(mut net) = Net::new() else { return };
    let (good, run_good) = nixos_host_with_run(&mut net, "good");
    let (broken, run_broken) = nixos_host_with_run(&mut net, "broken");
    let tmp = tempfile::tempdir().expect("root");
    let root = tmp.path().canonicalize().expect("abs");
    write_fleet(
        &root,
        &[NodeSpec::for_host(&good), NodeSpec::for_host(&broken)],
        3,
        false,
    );
    std::fs::write(root.join("flake.nix"), NIXOS_FLAKE).expect("flake.nix");
    let old = "/nix/store/00000000000000000000000000000000-nixos-system-old";
    set_current(&run_good, old);
    set_current(&run_broken, old);

    let r = Ran::of(&mut fleetnix(
        &net,
        &root,
        &[
            "plan",
            "--all",
            "--json",
            "--no-eval-cache",
            "--eval-jobs",
            "1",
        ],
        &override_args(&pinned),
    ));
    assert_eq!(r.code, Some(1), "broken is an error:\n{r}");
    let v = json(&r);
    let g = node(&v, "good");
    assert_eq!(g["state"], "changed", "{v:#}");
    assert_eq!(g["current_system"], old);
    let target = g["target_system"].as_str().expect("target");
    assert!(
        target.starts_with("/nix/store/") && target.contains("-nixos-system-good-"),
        "{target}"
    );
    assert!(
        !Path::new(target).exists(),
        "evaluated, not built: {target}"
    );
    let b = node(&v, "broken");
    assert_eq!(b["state"], "error", "{v:#}");
    let reason = b["reason"].as_str().expect("reason");
    assert!(
        reason.contains("fileSystems") || reason.contains("boot.loader"),
        "NixOS's failed assertion, from evaluating broken alone: {reason}"
    );
    // One evaluation of both, then broken alone for its message.
    let evals = lines(&root.join("rec/nix-evals"));
    assert_eq!(evals.len(), 2, "{evals:?}");
    assert!(evals[0].contains("--apply"), "{evals:?}");
    assert!(
        evals[1].contains("nixosConfigurations.broken.config.system.build.toplevel"),
        "{evals:?}"
    );
}

#[test]
fn override_inputs_reach_the_dry_run_rebuild_command_and_bad_ones_are_refused() {
    let tmp = tempfile::tempdir().expect("root");
    let root = tmp.path().canonicalize().expect("abs");
    write_fleet(
        &root,
        &[NodeSpec::new("w", "100.64.0.2", &["glm-worker"])],
        5,
        false,
    );
    let run = |extra: &[&str]| {
        Ran::of(
            Command::new(fleetnix_bin())
                .arg("--root")
                .arg(&root)
                .args(["deploy", "w", "--dry-run"])
                .args(extra)
                .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
                .env("FLEETNIX_TAILSCALE", ""),
        )
    };
    let r = run(&[
        "--override-input",
        "nixpkgs",
        "path:/src/nixpkgs",
        "--override-input",
        "agenix/nixpkgs",
        "path:/src/nixpkgs",
    ]);
    assert_eq!(r.code, Some(0), "{r}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("nixos-rebuild") && l.contains("--flake"))
        .unwrap_or_else(|| panic!("no rebuild command:\n{r}"));
    assert!(
        line.ends_with(" --override-input nixpkgs path:/src/nixpkgs --override-input agenix/nixpkgs path:/src/nixpkgs"),
        "{line}"
    );
    for bad in [
        &["--override-input", "nixpkgs", "path:/My Fleet"][..],
        &["--override-input", "nix;pkgs", "path:/y"][..],
    ] {
        let r = run(bad);
        assert_eq!(r.code, Some(1), "{r}");
        assert!(r.stderr.contains("--override-input"), "{r}");
        assert!(r.stdout.is_empty(), "{r}");
    }
}
