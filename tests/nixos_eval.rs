//! Real NixOS in the loop: the example fleet and fleets made from the template, as the README
//! tells an operator to make them, pass `nix flake check --no-build` against the pinned nixpkgs
//! (`FLEETNIX_TEST_NIXPKGS`), and every node's complete evaluated system carries what its plan
//! says (tags, auth key, ports on tailscale0 only, the agent's arguments, nats-server only on the
//! control plane, the state version). Random valid fleets too (a seeded generator: set
//! `FLEETNIX_TEST_SEED` to replay one, `FLEETNIX_TEST_CASES` for more cases).

mod common;
mod nixos_support;

use common::{fleetnix_bin, repo, Ran};
use fleetnix::spec;
use nixos_support::{agent_warning, assert_follows_plan, copy_repo, pinned, vm_hardware, Pinned};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `fleetnix --root <root> <args>`, with HOME inside `root`'s parent (no operator identity of
/// the machine running the tests is read) and the demo auth key in the environment.
fn fleetnix(root: &Path, args: &[&str]) -> Ran {
    fleetnix_with_key(root, args, &nixos_support::demo_authkey())
}

/// [`fleetnix`] with `key` as `TAILSCALE_AUTHKEY`.
fn fleetnix_with_key(root: &Path, args: &[&str], key: &str) -> Ran {
    let home = root.parent().expect("root has a parent").join("home");
    std::fs::create_dir_all(&home).expect("home");
    let ran = Ran::of(
        Command::new(fleetnix_bin())
            .arg("--root")
            .arg(root)
            .args(args)
            .env("HOME", &home)
            .env("TAILSCALE_AUTHKEY", key)
            .env_remove("FLEETNIX_FLEET_DIR")
            .env_remove("FLEETNIX_ROOT"),
    );
    assert_eq!(ran.code, Some(0), "fleetnix {args:?}:\n{ran}");
    ran
}

/// The plans of the fleet under `root` that get a NixOS configuration.
fn nixos_plans(root: &Path) -> Vec<spec::NodeSpec> {
    let fleet = fleetnix::manifest::load(&root.join("fleet")).expect("valid fleet");
    spec::node_specs(&fleet)
        .into_iter()
        .filter(|p| p.access.os != fleetnix::model::Os::Linux)
        .collect()
}

#[test]
fn the_example_fleet_passes_nix_flake_check() {
    let Some(nix) = pinned() else { return };
    let dir = tempfile::tempdir().unwrap();
    copy_repo(dir.path());
    let (ran, took) = nix.flake_check(dir.path(), &[]);
    eprintln!("nix flake check --no-build of the example: {took:.1?}");
    assert_eq!(ran.code, Some(0), "{ran}");
    // No agent package in the example: each node says so instead of crash-looping.
    for node in ["control-01", "worker-01", "worker-02"] {
        assert!(ran.stderr.contains(&agent_warning(node)), "{ran}");
    }
}

#[test]
fn the_example_nodes_evaluate_to_their_plans() {
    let Some(nix) = pinned() else { return };
    let dir = tempfile::tempdir().unwrap();
    copy_repo(dir.path());
    let (values, took) = nix.eval_nodes(dir.path(), &[]);
    eprintln!(
        "nix eval of all {} example nodes in one evaluation: {took:.1?}",
        values.len()
    );
    let plans = nixos_plans(&repo());
    let names: BTreeSet<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        values.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        names
    );
    for p in &plans {
        assert_follows_plan(&values[p.name.as_str()], p);
    }
    assert_eq!(values["control-01"].state_version, "25.11");
    assert_eq!(
        values["control-01"].interfaces["tailscale0"].tcp,
        [3000, 4000, 4222, 5432, 6379, 7233, 8080, 8090]
    );
    assert!(values["control-01"]
        .age_secrets
        .contains_key("nats-server-env"));
    assert!(!values["worker-01"]
        .age_secrets
        .contains_key("nats-server-env"));
    // The supervisors' password is decrypted on the control plane for a supervisor's unit;
    // node sync's is not decrypted on any host (the operator runs it).
    assert!(values["control-01"]
        .age_secrets
        .contains_key("nats-supervisor-password"));
    assert!(!values["control-01"]
        .age_secrets
        .contains_key("nats-registry-password"));
}

/// One node of a test fleet.
#[derive(Debug, Clone)]
struct TestNode {
    name: String,
    ip: String,
    os: &'static str,
    roles: Vec<String>,
    state_version: Option<String>,
}

/// A fleet made as the README says, from `nix/template`, under `<tmp>/fleet-repo`: fleet files,
/// host keys (ssh-keygen), hardware configurations, `secrets set-authkey --all`, `secrets
/// set-nats`, `render`, `acl render`; then what the `fleet-files` check would run.
fn template_fleet(
    tmp: &Path,
    nodes: &[TestNode],
    services_yml: &str,
    state_version: &str,
) -> PathBuf {
    template_fleet_with(tmp, nodes, services_yml, state_version, None)
}

/// [`template_fleet`] whose fleet.yml sets `tailscale_auth: <auth>` (and whose stored key is
/// of that kind) when `auth` is given.
fn template_fleet_with(
    tmp: &Path,
    nodes: &[TestNode],
    services_yml: &str,
    state_version: &str,
    auth: Option<&str>,
) -> PathBuf {
    let root = tmp.join("fleet-repo");
    let template = repo().join("nix/template");
    for f in ["flake.nix", "fleet/fleet.yml", "fleet/services.yml"] {
        let to = root.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(template.join(f), &to).unwrap();
    }
    std::fs::write(root.join("fleet/services.yml"), services_yml).unwrap();
    let fleet_yml = std::fs::read_to_string(root.join("fleet/fleet.yml"))
        .unwrap()
        .replace(
            "control_plane: control-01",
            &format!("control_plane: {}", nodes[0].name),
        )
        .replace(
            "nats_url: nats://100.64.0.1:4222",
            &format!("nats_url: nats://{}:4222", bracketed(&nodes[0].ip)),
        )
        .replace(
            "state_version: \"25.11\"",
            &format!("state_version: \"{state_version}\""),
        );
    assert!(fleet_yml.contains(&format!("state_version: \"{state_version}\"")));
    let fleet_yml = match auth {
        Some(a) => format!("{fleet_yml}tailscale_auth: {a}\n"),
        None => fleet_yml,
    };
    std::fs::write(root.join("fleet/fleet.yml"), fleet_yml).unwrap();
    let keys = tmp.join("host-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut yml = String::from("nodes:\n");
    for n in nodes {
        let key = keys.join(&n.name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &n.name, "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen runs");
        assert!(out.status.success(), "{out:?}");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        yml.push_str(&format!(
            "  - name: {}\n    tailscale_ip: \"{}\"\n    os: {}\n    roles: [{}]\n    resources: {{ cpu: 2, ram_gb: 4 }}\n    host_key: \"{}\"\n",
            n.name,
            n.ip,
            n.os,
            n.roles.join(", "),
            public.trim()
        ));
        if let Some(v) = &n.state_version {
            yml.push_str(&format!("    state_version: \"{v}\"\n"));
        }
        if n.os != "linux" {
            let hw = root
                .join("hosts")
                .join(&n.name)
                .join("hardware-configuration.nix");
            std::fs::create_dir_all(hw.parent().unwrap()).unwrap();
            std::fs::write(hw, vm_hardware(&n.name)).unwrap();
        }
    }
    std::fs::write(root.join("fleet/nodes.yml"), yml).unwrap();
    fleetnix(&root, &["validate"]);
    let key = match auth {
        Some("oauth-client") => demo_client_secret(),
        _ => nixos_support::demo_authkey(),
    };
    fleetnix_with_key(&root, &["secrets", "set-authkey", "--all"], &key);
    fleetnix(&root, &["secrets", "set-nats"]);
    fleetnix(&root, &["render"]);
    let policy = root.join("fleet/acl-policy.hujson");
    fleetnix(&root, &["acl", "render", "-o", policy.to_str().unwrap()]);
    // What the fleet-files check derivation runs (evaluated, not built, by --no-build).
    for args in [&["validate"][..], &["render", "--check"], &["acl", "check"]] {
        fleetnix(&root, args);
    }
    root
}

/// An obviously fake OAuth client secret.
fn demo_client_secret() -> String {
    format!("{}-{}-DEMO-not-a-real-secret", "tskey", "client")
}

fn bracketed(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The template fleet's own flake input `fleetnix`, pointed at a copy of this repository.
fn fleetnix_input(tmp: &Path) -> (&'static str, String) {
    let src = tmp.join("fleetnix-src");
    copy_repo(&src);
    ("fleetnix", format!("path:{}", src.display()))
}

fn node(name: &str, ip: &str, os: &'static str, roles: &[&str], sv: Option<&str>) -> TestNode {
    TestNode {
        name: name.into(),
        ip: ip.into(),
        os,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        state_version: sv.map(str::to_string),
    }
}

#[test]
fn a_fleet_made_from_the_template_passes_nix_flake_check() {
    let Some(nix) = pinned() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let services = std::fs::read_to_string(repo().join("nix/template/fleet/services.yml")).unwrap();
    let nodes = [
        node(
            "cp-1",
            "100.100.0.1",
            "nixos",
            &["control-plane", "litellm-proxy", "temporal", "langfuse"],
            None,
        ),
        node(
            "gpu-7",
            "fd7a:115c:a1e0::7",
            "auto",
            &["glm-worker"],
            Some("24.05"),
        ),
        node(
            "kg-2",
            "100.100.0.2",
            "nixos",
            &["kg-writer", "mnemopi-replica"],
            None,
        ),
    ];
    let root = template_fleet(tmp.path(), &nodes, &services, "25.05");
    let input = fleetnix_input(tmp.path());
    let (ran, took) = nix.flake_check(&root, std::slice::from_ref(&input));
    eprintln!("nix flake check --no-build of a 3-node template fleet: {took:.1?}");
    assert_eq!(ran.code, Some(0), "{ran}");
    let (values, took) = nix.eval_nodes(&root, &[input]);
    eprintln!("nix eval of its 3 nodes in one evaluation: {took:.1?}");
    let plans = nixos_plans(&root);
    assert_eq!(plans.len(), 3);
    for p in &plans {
        assert_follows_plan(&values[p.name.as_str()], p);
    }
    assert_eq!(values["gpu-7"].state_version, "24.05");
    assert_eq!(values["kg-2"].state_version, "25.05");
    assert_eq!(
        values["cp-1"].up_flags[3],
        "--advertise-tags=tag:control-plane"
    );
    assert!(values["cp-1"]
        .exec_start
        .contains("--nats-url nats://100.100.0.1:4222"));
}

/// Done-when of issue 23: a fleet that enrols with OAuth client secrets evaluates to nodes whose
/// autoconnect unit logs in with `ephemeral=false`, `preauthorized=true` and `--advertise-tags`
/// (never as an ephemeral or untagged node); the stored secret is refused in a `preauth` fleet
/// and an API token is refused as a key, naming what to use instead.
#[test]
fn an_oauth_client_fleet_enrols_permanent_tagged_nodes() {
    let Some(nix) = pinned() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let services = std::fs::read_to_string(repo().join("nix/template/fleet/services.yml")).unwrap();
    let nodes = [
        node(
            "cp-1",
            "100.100.0.1",
            "nixos",
            &["control-plane", "litellm-proxy", "temporal", "langfuse"],
            None,
        ),
        node("kg-2", "100.100.0.2", "nixos", &["kg-writer"], None),
    ];
    let root = template_fleet_with(tmp.path(), &nodes, &services, "25.05", Some("oauth-client"));
    let input = fleetnix_input(tmp.path());
    let (values, took) = nix.eval_nodes(&root, &[input]);
    eprintln!("nix eval of an oauth-client fleet's 2 nodes: {took:.1?}");
    let plans = nixos_plans(&root);
    assert_eq!(plans.len(), 2);
    for p in &plans {
        assert_eq!(
            p.tailscale_auth,
            fleetnix::model::TailscaleAuth::OauthClient
        );
        assert_follows_plan(&values[p.name.as_str()], p);
        let v = &values[p.name.as_str()];
        assert_eq!(v.auth_key_parameters.ephemeral, Some(false));
        assert_eq!(v.auth_key_parameters.preauthorized, Some(true));
        assert!(v
            .up_flags
            .contains(&format!("--advertise-tags={}", p.tags.join(","))));
    }
    // A pre-auth key is refused in this fleet, an API token in any.
    let home = tmp.path().join("home");
    for (key, want) in [
        (
            nixos_support::demo_authkey(),
            "tailscale_auth: oauth-client",
        ),
        (format!("{}-{}-FAKE", "tskey", "api"), "TS_API_KEY"),
    ] {
        let ran = Ran::of(
            Command::new(fleetnix_bin())
                .arg("--root")
                .arg(&root)
                .args(["secrets", "set-authkey", "--all"])
                .env("HOME", &home)
                .env("TAILSCALE_AUTHKEY", &key)
                .env_remove("FLEETNIX_FLEET_DIR")
                .env_remove("FLEETNIX_ROOT"),
        );
        assert_ne!(ran.code, Some(0), "{ran}");
        assert!(
            ran.stderr.contains(want) && !ran.to_string().contains(&key),
            "{ran}"
        );
    }
}

/// A random valid fleet: 2–4 nodes (the first the control plane), random roles (some setting
/// tags), services with random ports and protocols, IPv4 and IPv6 addresses, NixOS, `auto` and
/// now and then a `linux` node (which gets no NixOS configuration), state versions per fleet and
/// per node.
fn random_fleet(rng: &mut fastrand::Rng) -> (Vec<TestNode>, String, String) {
    const VERSIONS: [&str; 4] = ["23.11", "24.05", "24.11", "25.11"];
    let words = [
        "alpha", "bravo", "delta", "echo", "golf", "kilo", "lima", "oscar",
    ];
    let mut roles: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..rng.usize(1..=3) {
        let w = words[rng.usize(..words.len())];
        let name = format!("{w}-{}", rng.u16(1..999));
        if roles.iter().any(|(r, _)| *r == name) {
            continue;
        }
        let tag = rng.bool().then(|| format!("tag:{w}"));
        roles.push((name, tag));
    }
    let mut services = String::from(
        "default_tag: tag:worker\nroles:\n  control-plane: { tag: tag:control-plane }\n  litellm-proxy: {}\n",
    );
    for (r, tag) in &roles {
        match tag {
            Some(t) => services.push_str(&format!("  {r}: {{ tag: {t} }}\n")),
            None => services.push_str(&format!("  {r}: {{}}\n")),
        }
    }
    services.push_str("services:\n  - { name: litellm-proxy, port: 4000, role: litellm-proxy, allow: [tag:worker, tag:control-plane] }\n  - { name: nats, port: 4222, role: control-plane, allow: [tag:worker, tag:control-plane] }\n");
    for (i, (r, _)) in roles.iter().enumerate() {
        for j in 0..rng.usize(0..=2) {
            let proto = if rng.bool() { "tcp" } else { "udp" };
            services.push_str(&format!(
                "  - {{ name: svc-{i}-{j}, port: {}, protocol: {proto}, role: {r}, allow: [tag:control-plane] }}\n",
                rng.u16(1024..=65000)
            ));
        }
    }
    let count = rng.usize(2..=4);
    let mut nodes: Vec<TestNode> = Vec::new();
    let mut ips = BTreeSet::new();
    for i in 0..count {
        let name = format!("{}-{i}", words[rng.usize(..words.len())]);
        let ip = loop {
            let ip = if rng.u8(..4) == 0 {
                format!("fd7a:115c:a1e0::{:x}", rng.u16(1..))
            } else {
                format!("100.{}.{}.{}", rng.u8(64..128), rng.u8(..), rng.u8(1..255))
            };
            if ips.insert(ip.clone()) {
                break ip;
            }
        };
        let mut r: Vec<String> = if i == 0 {
            vec!["control-plane".into(), "litellm-proxy".into()]
        } else {
            Vec::new()
        };
        for (role, _) in &roles {
            if rng.bool() {
                r.push(role.clone());
            }
        }
        let os = match (i, rng.u8(..6)) {
            (0, _) | (_, 0..=3) => "nixos",
            (_, 4) => "auto",
            _ => "linux",
        };
        let sv = (rng.u8(..3) == 0).then(|| VERSIONS[rng.usize(..VERSIONS.len())].to_string());
        nodes.push(TestNode {
            name,
            ip,
            os,
            roles: r,
            state_version: sv,
        });
    }
    // Every role is some node's (a service's role must be hosted); no node without roles.
    for (role, _) in &roles {
        if !nodes.iter().any(|n| n.roles.contains(role)) {
            let k = rng.usize(..count);
            nodes[k].roles.push(role.clone());
        }
    }
    for n in nodes.iter_mut().filter(|n| n.roles.is_empty()) {
        n.roles.push(roles[0].0.clone());
    }
    let fleet_sv = VERSIONS[rng.usize(..VERSIONS.len())].to_string();
    (nodes, services, fleet_sv)
}

#[test]
fn random_valid_fleets_evaluate_to_their_plans() {
    let Some(nix) = pinned() else { return };
    let seed = std::env::var("FLEETNIX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases: usize = std::env::var("FLEETNIX_TEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    eprintln!("random fleets: FLEETNIX_TEST_SEED={seed} FLEETNIX_TEST_CASES={cases}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let input = fleetnix_input(tmp.path());
    for case in 0..cases {
        let (nodes, services, sv) = random_fleet(&mut rng);
        let dir = tmp.path().join(format!("case-{case}"));
        std::fs::create_dir_all(&dir).unwrap();
        let root = template_fleet(&dir, &nodes, &services, &sv);
        let (values, took) = eval_or_explain(&nix, &root, &input, seed, case);
        let plans = nixos_plans(&root);
        eprintln!(
            "case {case}: {} NixOS node(s) of {} evaluated in {took:.1?}",
            plans.len(),
            nodes.len()
        );
        assert_eq!(
            values.keys().cloned().collect::<BTreeSet<_>>(),
            plans.iter().map(|p| p.name.to_string()).collect(),
            "seed {seed} case {case}: a linux node has no NixOS configuration"
        );
        for p in &plans {
            assert_follows_plan(&values[p.name.as_str()], p);
        }
    }
}

fn eval_or_explain(
    nix: &Pinned,
    root: &Path,
    input: &(&str, String),
    seed: u64,
    case: usize,
) -> (
    std::collections::BTreeMap<String, nixos_support::NodeValues>,
    std::time::Duration,
) {
    let nodes = std::fs::read_to_string(root.join("fleet/nodes.yml")).unwrap();
    let services = std::fs::read_to_string(root.join("fleet/services.yml")).unwrap();
    eprintln!("seed {seed} case {case}:\n{nodes}{services}");
    nix.eval_nodes(root, std::slice::from_ref(input))
}
