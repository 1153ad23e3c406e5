//! Properties over generated fleets (proptest; modest case counts for CI time):
//! - every valid manifest renders to Nix that rnix and `nix-instantiate --parse` accept, to a
//!   nats-server configuration that `nats-server -t` accepts, and (a sample) to cloud-init
//!   user-data that `cloud-init schema` accepts;
//! - the manifest editor keeps every comment and changes exactly the edited field;
//! - `acl render` of any valid fleet passes its own tests under the evaluator, and `acl check`
//!   finds no over-grant (nor anything else) in it.

mod common;

use fleetnix::acl::{check, eval, policy};
use fleetnix::manifest::{self, edit};
use fleetnix::model::Fleet;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::{Path, PathBuf};
use std::process::Command;

const HOST_KEYS: [&str; 2] = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICBqKe3Vya+Q+l2fbm10nCHe7I4hXKXs1sTqeHQuubof",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGYUcLbS/vcGfRqtpcVld33fFR5cjD2Ai9gXARYCEHEn",
];
const WORKER_ROLES: [&str; 5] = [
    "glm-worker",
    "kg-writer",
    "mnemopi-replica",
    "temporal",
    "langfuse",
];

/// One generated node.
#[derive(Debug, Clone)]
struct GenNode {
    name: String,
    ip: String,
    roles: Vec<&'static str>,
    cpu: u32,
    ram: u32,
    gpu: Option<u32>,
    os: Option<&'static str>,
    ssh_user: Option<&'static str>,
    host_key: Option<&'static str>,
    public_address: Option<String>,
    /// A comment line before the node, and a trailing comment on its address line.
    comment: Option<String>,
    trailing: Option<String>,
    flow_roles: bool,
}

/// Comment text: anything printable on one line, quotes, colons and hashes included.
fn comment_text() -> impl Strategy<Value = String> {
    "[ -~é→]{0,30}"
}

fn gen_node(i: usize, control: bool) -> impl Strategy<Value = GenNode> {
    let roles = if control {
        Just(vec![
            "control-plane",
            "litellm-proxy",
            "temporal",
            "langfuse",
        ])
        .boxed()
    } else {
        proptest::sample::subsequence(WORKER_ROLES.to_vec(), 1..=3).boxed()
    };
    (
        "[a-z][a-z0-9]{0,6}",
        roles,
        (1u32..=128, 1u32..=1024, proptest::option::of(0u32..=8)),
        (
            proptest::option::of(prop_oneof![Just("nixos"), Just("linux"), Just("auto")]),
            proptest::option::of(prop_oneof![Just("root"), Just("deploy"), Just("ops_1")]),
            proptest::option::of(proptest::sample::select(HOST_KEYS.to_vec())),
            proptest::option::of(prop_oneof![
                Just("203.0.113.7".to_string()),
                Just("vm-1.example.com".to_string()),
                Just("2001:db8::1".to_string())
            ]),
        ),
        (
            proptest::option::of(comment_text()),
            proptest::option::of(comment_text()),
            any::<bool>(),
            1u8..=254,
        ),
    )
        .prop_map(
            move |(
                stem,
                roles,
                (cpu, ram, gpu),
                (os, ssh_user, host_key, public_address),
                (comment, trailing, flow_roles, low),
            )| {
                GenNode {
                    name: if control {
                        "control-01".into()
                    } else {
                        format!("{stem}-{i}")
                    },
                    ip: if control {
                        "100.64.0.1".into()
                    } else {
                        format!("100.{}.{}.{low}", 64 + i / 200, 1 + i % 200)
                    },
                    roles,
                    cpu,
                    ram,
                    gpu,
                    os,
                    ssh_user,
                    host_key,
                    public_address,
                    comment,
                    trailing,
                    flow_roles,
                }
            },
        )
}

fn gen_nodes() -> impl Strategy<Value = Vec<GenNode>> {
    (0usize..=6).prop_flat_map(|n| {
        let mut v = vec![gen_node(0, true).boxed()];
        for i in 1..=n {
            v.push(gen_node(i, false).boxed());
        }
        v
    })
}

fn nodes_yaml(nodes: &[GenNode]) -> String {
    let mut s = String::from("# generated fleet\nnodes:\n");
    for n in nodes {
        if let Some(c) = &n.comment {
            s.push_str(&format!("  # {c}\n"));
        }
        s.push_str(&format!("  - name: {}\n", n.name));
        match &n.trailing {
            Some(c) => s.push_str(&format!("    tailscale_ip: {} # {c}\n", n.ip)),
            None => s.push_str(&format!("    tailscale_ip: {}\n", n.ip)),
        }
        if n.flow_roles {
            s.push_str(&format!("    roles: [{}]\n", n.roles.join(", ")));
        } else {
            s.push_str("    roles:\n");
            for r in &n.roles {
                s.push_str(&format!("      - {r}\n"));
            }
        }
        s.push_str(&format!(
            "    resources:\n      cpu: {}\n      ram_gb: {}\n",
            n.cpu, n.ram
        ));
        if let Some(g) = n.gpu {
            s.push_str(&format!("      gpu: {g}\n"));
        }
        if let Some(o) = n.os {
            s.push_str(&format!("    os: {o}\n"));
        }
        if let Some(u) = n.ssh_user {
            s.push_str(&format!("    ssh_user: {u}\n"));
        }
        if let Some(k) = n.host_key {
            s.push_str(&format!("    host_key: \"{k}\"\n"));
        }
        if let Some(a) = &n.public_address {
            s.push_str(&format!("    public_address: \"{a}\"\n"));
        }
    }
    s
}

/// A fleet directory: generated nodes.yml, the example's fleet.yml and services.yml.
fn write_fleet(dir: &Path, nodes: &[GenNode]) -> PathBuf {
    let fleet_dir = dir.join("fleet");
    common::copy_example_fleet(&fleet_dir);
    std::fs::write(fleet_dir.join("nodes.yml"), nodes_yaml(nodes)).unwrap();
    fleet_dir
}

fn load(dir: &Path) -> Result<Fleet, TestCaseError> {
    manifest::load(dir).map_err(|e| TestCaseError::fail(format!("generated fleet invalid: {e}")))
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn tool(name: &str, extra: &str) -> Option<PathBuf> {
    let path = format!("{}:{extra}", std::env::var("PATH").unwrap_or_default());
    match which::which_in(name, Some(path), ".") {
        Ok(p) => Some(p),
        Err(_) if std::env::var_os("CI").is_some() => panic!("{name} is missing in CI"),
        Err(_) => {
            eprintln!(
                "SKIPPED: {name} is not installed; that part of the property was not checked"
            );
            None
        }
    }
}

#[test]
fn every_valid_manifest_renders_to_nix_nats_and_cloud_init_that_their_tools_accept() {
    let nix = common::nix_instantiate();
    let nats = tool("nats-server", "/usr/sbin");
    let cloud_init = tool("cloud-init", "/usr/bin");
    let cloud_init_samples = std::cell::Cell::new(0);
    runner(16)
        .run(&gen_nodes(), |nodes| {
            let dir = tempfile::tempdir().unwrap();
            let fleet = load(&write_fleet(dir.path(), &nodes))?;
            let plans = fleetnix::spec::node_specs(&fleet);
            let files = fleetnix::outputs::render_fleet(&fleet, &plans, "generated")
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let out = dir.path().join("out");
            let mut paths = Vec::new();
            for (rel, text) in &files {
                if let Err(e) = fleetnix::nix::check_syntax(text) {
                    return Err(TestCaseError::fail(format!(
                        "rnix: {}: {e:?}",
                        rel.display()
                    )));
                }
                let p = out.join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, text).unwrap();
                paths.push(p);
            }
            // Byte-identical re-render.
            let again = fleetnix::outputs::render_fleet(&fleet, &plans, "generated").unwrap();
            prop_assert_eq!(&again, &files);
            if let Some(nix) = &nix {
                for p in &paths {
                    let o = Command::new(nix).arg("--parse").arg(p).output().unwrap();
                    prop_assert!(
                        o.status.success(),
                        "nix-instantiate --parse {}: {}",
                        p.display(),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
            let server = fleetnix::bus::server_plan(&fleet).unwrap();
            if let Some(nats) = &nats {
                let conf = dir.path().join("nats.conf");
                std::fs::write(&conf, server.to_conf()).unwrap();
                let mut cmd = Command::new(nats);
                cmd.arg("-c").arg(&conf).arg("-t").env_clear();
                for v in server.password_vars() {
                    cmd.env(v, "placeholder");
                }
                let o = cmd.output().unwrap();
                prop_assert!(
                    o.status.success(),
                    "nats-server -t: {}\n{}",
                    String::from_utf8_lossy(&o.stderr),
                    server.to_conf()
                );
            }
            // cloud-init's checker takes about a second: a sample of one node in four cases.
            if let (Some(ci), true) = (&cloud_init, cloud_init_samples.get() < 4) {
                cloud_init_samples.set(cloud_init_samples.get() + 1);
                let node = fleet.nodes.last().unwrap();
                let plan = fleetnix::spec::node_spec(&fleet, node);
                let key =
                    fleetnix::outputs::cloudinit::AuthKey::parse(&common::fake_authkey()).unwrap();
                let text = fleetnix::outputs::cloudinit::user_data(
                    &plan,
                    &key,
                    &fleetnix::outputs::cloudinit::Options {
                        with_agent: true,
                        ..Default::default()
                    },
                )
                .unwrap();
                let f = dir.path().join("user-data.yaml");
                std::fs::write(&f, &text).unwrap();
                let o = Command::new(ci)
                    .args(["schema", "--config-file"])
                    .arg(&f)
                    .output()
                    .unwrap();
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                prop_assert!(
                    o.status.success() && all.contains("Valid cloud-config"),
                    "{all}"
                );
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn editing_any_valid_nodes_file_keeps_comments_and_changes_exactly_one_field() {
    let cases = (gen_nodes(), any::<prop::sample::Index>(), 0u8..3, 1u8..=254);
    runner(64)
        .run(&cases, |(nodes, pick, what, low)| {
            let dir = tempfile::tempdir().unwrap();
            let fleet_dir = write_fleet(dir.path(), &nodes);
            let before = load(&fleet_dir)?;
            let old_text = std::fs::read_to_string(fleet_dir.join("nodes.yml")).unwrap();
            let node = &nodes[pick.index(nodes.len())];
            let mut expected = before.clone();
            let target = expected
                .nodes
                .iter_mut()
                .find(|n| n.name.as_str() == node.name)
                .unwrap();
            let result = match what {
                0 => {
                    let key = HOST_KEYS[usize::from(low) % 2];
                    target.host_key = Some(key.parse().unwrap());
                    edit::set_host_key(&fleet_dir, &node.name, key)
                }
                1 => {
                    // An address no other node has.
                    let ip: std::net::IpAddr = format!("100.127.255.{low}").parse().unwrap();
                    target.tailscale_ip = ip;
                    edit::set_tailscale_ip(&fleet_dir, &node.name, ip)
                }
                _ => {
                    target.ssh_user = "deploy".parse().unwrap();
                    edit::update_node_field(
                        &fleet_dir,
                        &node.name,
                        "ssh_user",
                        &edit::Scalar::Quoted("deploy".into()),
                        |n| n.ssh_user = "deploy".parse().unwrap(),
                    )
                }
            };
            let (_, after) = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&after, &expected);
            prop_assert_eq!(&load(&fleet_dir)?, &expected);
            let new_text = std::fs::read_to_string(fleet_dir.join("nodes.yml")).unwrap();
            // Every comment, and every other line, is still there in order: at most one line
            // replaced or one added.
            for c in old_text.lines().filter(|l| l.contains('#')) {
                prop_assert!(
                    new_text.contains(c) || c.contains("tailscale_ip"),
                    "lost {c:?}"
                );
            }
            if let Some(c) = &node.trailing {
                prop_assert!(
                    new_text.contains(&format!(" # {c}\n")),
                    "lost trailing {c:?}"
                );
            }
            let (a, b): (Vec<&str>, Vec<&str>) =
                (old_text.lines().collect(), new_text.lines().collect());
            let common_prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            let common_suffix = a[common_prefix..]
                .iter()
                .rev()
                .zip(b[common_prefix..].iter().rev())
                .take_while(|(x, y)| x == y)
                .count();
            prop_assert!(a.len() - common_prefix - common_suffix <= 1);
            prop_assert!(b.len() - common_prefix - common_suffix <= 1);
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_rendered_policy_of_any_valid_fleet_passes_its_tests_and_its_check() {
    runner(48)
        .run(&gen_nodes(), |nodes| {
            let dir = tempfile::tempdir().unwrap();
            let fleet = load(&write_fleet(dir.path(), &nodes))?;
            let rendered = fleetnix::acl::render::render(&fleet, "generated");
            let parsed = policy::parse(&rendered.text)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{}", rendered.text)))?;
            prop_assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
            prop_assert!(!parsed.policy.tests.is_empty(), "the policy has tests");
            let ev = eval::Evaluator::new(&parsed.policy)
                .with_nodes(check::principals::node_principals(&fleet));
            let failures = ev.run_tests();
            prop_assert!(failures.is_empty(), "{failures:?}");
            let findings = check::check(&fleet, &rendered.text)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                !findings
                    .iter()
                    .any(|f| f.kind == check::FindingKind::OverGrant),
                "over-grant: {findings:?}"
            );
            prop_assert!(findings.is_empty(), "{findings:?}");
            Ok(())
        })
        .unwrap();
}
