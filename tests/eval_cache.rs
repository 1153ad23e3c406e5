//! The evaluation cache is sound: a differential test over a real fleet (this repository's
//! example: control-01, worker-01, worker-02, with a user's extra module) evaluated with the
//! pinned nixpkgs (`FLEETNIX_TEST_NIXPKGS`). Random edits (one node's entry in nodes.yml, a
//! hosts/ file, a shared module, services.yml, fleet.yml, flake.lock's inputs, an
//! `--override-input`, a file imported by the user's extra module, a git checkout) are applied
//! one after the other; after each, the targets of the cached evaluation equal a full fresh
//! evaluation's, every time, and nodes no edit can reach come from the cache. The edits' order
//! and values come from a seed (printed; `FLEETNIX_TEST_SEED` replays one), one or two edits a
//! step; `FLEETNIX_TEST_CASES` sets how many edits (default: one of each kind).

mod common;
mod nixos_support;

use common::{fleetnix_bin, required_tool, Ran};
use fleetnix::deploy::evalcache::{self, EvalSettings, TargetFrom};
use fleetnix::deploy::flake::{self, OverrideInput};
use fleetnix::model::NodeName;
use nixos_support::{copy_repo, pinned, Pinned};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["control-01", "worker-01", "worker-02"];
const TIMEOUT: Duration = Duration::from_secs(600);

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

fn fleetnix(root: &Path, args: &[&str]) {
    let home = root.parent().expect("parent").join("home");
    std::fs::create_dir_all(&home).expect("home");
    let r = Ran::of(
        Command::new(fleetnix_bin())
            .arg("--root")
            .arg(root)
            .args(args)
            .env("HOME", &home)
            .env("TAILSCALE_AUTHKEY", nixos_support::demo_authkey())
            .env_remove("FLEETNIX_FLEET_DIR")
            .env_remove("FLEETNIX_ROOT"),
    );
    assert_eq!(r.code, Some(0), "fleetnix {args:?}: {r}");
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

fn nodes() -> Vec<NodeName> {
    NODES
        .iter()
        .map(|n| NodeName::parse(n).expect("name"))
        .collect()
}

/// The fleet: the example repository, a user's extra module (importing another file) given to
/// `mkFleet`, and a flake.lock locking the pinned inputs; a git repository.
fn make_fleet(tmp: &Path, pinned: &Pinned) -> PathBuf {
    let root = tmp.join("fleet-repo");
    copy_repo(&root);
    std::fs::create_dir_all(root.join("extra")).expect("mkdir");
    std::fs::write(
        root.join("extra/module.nix"),
        "{ pkgs, ... }: {\n  imports = [ ./motd.nix ];\n  # the router's package: a stand-in, as an operator's input would give it\n  services.fleet-router.package = pkgs.hello;\n}\n",
    )
    .expect("write");
    std::fs::write(
        root.join("extra/motd.nix"),
        "{ users.motd = \"motd 0\"; }\n",
    )
    .expect("write");
    edit(
        &root.join("flake.nix"),
        "dir = ./.;\n      };",
        "dir = ./.;\n        modules = [ ./extra/module.nix ];\n      };",
    );
    git(&root, &["init", "-q"]);
    git(&root, &["add", "-A"]);
    // flake.lock: nixpkgs and agenix locked to the pinned copies.
    let r = Ran::of(
        Command::new(&pinned.nix)
            .args([
                "--extra-experimental-features",
                "nix-command flakes",
                "flake",
                "lock",
            ])
            .args(pinned.overrides(&[]))
            .arg(&root),
    );
    assert_eq!(r.code, Some(0), "nix flake lock: {r}");
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-qm", "fleet"]);
    root
}

/// A copy of the pinned agenix whose module differs by a comment (another narHash).
fn agenix_copy(pinned: &Pinned, tmp: &Path, tag: &str) -> PathBuf {
    let to = tmp.join(format!("agenix-{tag}"));
    let r = Ran::of(
        Command::new("cp")
            .arg("-r")
            .arg(pinned.dir.join("agenix"))
            .arg(&to),
    );
    assert_eq!(r.code, Some(0), "{r}");
    let m = to.join("modules/age.nix");
    let mut text = std::fs::read_to_string(&m).expect("age.nix");
    text.push_str(&format!("# {tag}\n"));
    std::fs::write(&m, text).expect("write");
    to
}

struct Run {
    targets: BTreeMap<NodeName, (String, TargetFrom)>,
}

fn cached(
    rt: &tokio::runtime::Runtime,
    nix: &Path,
    strace: &Path,
    root: &Path,
    inputs: &[OverrideInput],
) -> Run {
    let s = EvalSettings {
        nix: Some(nix.to_path_buf()),
        strace: Some(strace.to_path_buf()),
        timeout: TIMEOUT,
        jobs: 0,
        cache: true,
    };
    let t = rt.block_on(evalcache::eval_targets(&s, root, &nodes(), inputs));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    Run {
        targets: t
            .nodes
            .into_iter()
            .map(|(n, (r, from))| {
                let p = r.unwrap_or_else(|e| panic!("cached evaluation of {n}: {e}"));
                (n, (p, from))
            })
            .collect(),
    }
}

fn fresh(
    rt: &tokio::runtime::Runtime,
    nix: &Path,
    root: &Path,
    inputs: &[OverrideInput],
) -> BTreeMap<NodeName, String> {
    rt.block_on(flake::eval_targets(
        Some(nix),
        root,
        &nodes(),
        inputs,
        TIMEOUT,
        evalcache::default_jobs(),
    ))
    .into_iter()
    .map(|(n, r)| {
        let p = r.unwrap_or_else(|e| panic!("fresh evaluation of {n}: {e}"));
        (n, p)
    })
    .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NodesYml,
    HostsFile,
    SharedModule,
    ServicesYml,
    FleetYml,
    FlakeLock,
    OverrideInput,
    ExtraImport,
    Checkout,
}

const KINDS: [Kind; 9] = [
    Kind::NodesYml,
    Kind::HostsFile,
    Kind::SharedModule,
    Kind::ServicesYml,
    Kind::FleetYml,
    Kind::FlakeLock,
    Kind::OverrideInput,
    Kind::ExtraImport,
    Kind::Checkout,
];

#[test]
fn cached_targets_equal_fresh_evaluations_after_random_edits() {
    let Some(pinned) = pinned() else { return };
    let Some(strace) = required_tool("strace", "Debian package strace") else {
        return;
    };
    let seed = std::env::var("FLEETNIX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("FLEETNIX_TEST_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let cases: usize = std::env::var("FLEETNIX_TEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KINDS.len());
    let mut kinds = KINDS.to_vec();
    rng.shuffle(&mut kinds);
    let kinds: Vec<Kind> = (0..cases).map(|i| kinds[i % kinds.len()]).collect();

    let tmp = tempfile::tempdir().expect("tmp");
    let root = make_fleet(tmp.path(), &pinned);
    let first_commit = {
        let o = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "HEAD"])
            .output()
            .expect("git");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut inputs: Vec<OverrideInput> = Vec::new();
    let started = Instant::now();

    // Cold: everything evaluated; then nothing changed: everything from the cache.
    let cold = cached(&rt, &pinned.nix, &strace, &root, &inputs);
    assert!(cold
        .targets
        .values()
        .all(|(_, f)| *f == TargetFrom::Evaluation));
    let again = cached(&rt, &pinned.nix, &strace, &root, &inputs);
    assert!(again.targets.values().all(|(_, f)| *f == TargetFrom::Cache));
    assert_eq!(
        cold.targets.values().map(|(p, _)| p).collect::<Vec<_>>(),
        again.targets.values().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let mut previous = fresh(&rt, &pinned.nix, &root, &inputs);
    assert_eq!(
        previous,
        cold.targets
            .iter()
            .map(|(n, (p, _))| (n.clone(), p.clone()))
            .collect()
    );

    // Steps of one or two edits each.
    let mut steps: Vec<Vec<Kind>> = Vec::new();
    let mut i = 0;
    while i < kinds.len() {
        let n = rng.usize(1..=2).min(kinds.len() - i);
        steps.push(kinds[i..i + n].to_vec());
        i += n;
    }
    for (step, edits) in steps.iter().enumerate() {
        // Nodes no edit of the step can reach (they must come from the cache).
        let mut untouched: Option<Vec<&str>> = None;
        for kind in edits {
            let v = rng.u32(1..1000);
            let mut this: Vec<&str> = Vec::new();
            match kind {
                Kind::NodesYml => {
                    // worker-02's own entry: its state version (rendered into its module only).
                    let sv = ["23.11", "24.05", "24.11"][rng.usize(..3)];
                    let p = root.join("fleet/nodes.yml");
                    let text = std::fs::read_to_string(&p).expect("nodes.yml");
                    let text = match text.find("    state_version: ") {
                        Some(i) => {
                            let end = i + text[i..].find('\n').expect("line");
                            format!("{}    state_version: \"{sv}\"{}", &text[..i], &text[end..])
                        }
                        None => text.replacen(
                            "  - name: worker-02\n",
                            &format!("  - name: worker-02\n    state_version: \"{sv}\"\n"),
                            1,
                        ),
                    };
                    std::fs::write(&p, text).expect("write");
                    fleetnix(&root, &["render"]);
                    this = vec!["worker-01"];
                }
                Kind::HostsFile => {
                    // A new file in hosts/worker-01/: a new module of that node (its listing changed).
                    std::fs::write(
                        root.join("hosts/worker-01/extra.nix"),
                        format!("{{ networking.domain = \"d{v}.example\"; }}\n"),
                    )
                    .expect("write");
                    this = vec!["worker-02"];
                }
                Kind::SharedModule => {
                    let p = root.join("nix/modules/hardening.nix");
                    let text = std::fs::read_to_string(&p).expect("read");
                    let text = match text.find("  TimeoutStopSec = ") {
                        Some(i) => {
                            let end = i + text[i..].find('\n').expect("line");
                            format!("{}  TimeoutStopSec = {v};{}", &text[..i], &text[end..])
                        }
                        None => text.replacen(
                            "  NoNewPrivileges = true;\n",
                            &format!("  NoNewPrivileges = true;\n  TimeoutStopSec = {v};\n"),
                            1,
                        ),
                    };
                    std::fs::write(&p, text).expect("write");
                }
                Kind::ServicesYml => {
                    let p = root.join("fleet/services.yml");
                    let text = std::fs::read_to_string(&p).expect("read");
                    let i = text.find("role: control-plane").expect("redis");
                    let port_at = text[..i].rfind("port: ").expect("port") + "port: ".len();
                    let end = port_at + text[port_at..].find('\n').expect("line");
                    let text = format!("{}{}{}", &text[..port_at], 20000 + v, &text[end..]);
                    std::fs::write(&p, text).expect("write");
                    fleetnix(&root, &["render"]);
                }
                Kind::FleetYml => {
                    let p = root.join("fleet/fleet.yml");
                    let text = std::fs::read_to_string(&p).expect("read");
                    let i = text.find("\n  port: ").expect("ntfy port") + "\n  port: ".len();
                    let end = i + text[i..].find('\n').expect("line");
                    let text = format!("{}{}{}", &text[..i], 30000 + v, &text[end..]);
                    std::fs::write(&p, text).expect("write");
                    fleetnix(&root, &["render"]);
                }
                Kind::FlakeLock => {
                    let copy = agenix_copy(&pinned, tmp.path(), &format!("lock{step}"));
                    let r = Ran::of(
                        Command::new(&pinned.nix)
                            .args([
                                "--extra-experimental-features",
                                "nix-command flakes",
                                "flake",
                                "lock",
                            ])
                            .args(["--override-input", "agenix"])
                            .arg(format!("path:{}", copy.display()))
                            .arg(&root),
                    );
                    assert_eq!(r.code, Some(0), "nix flake lock: {r}");
                }
                Kind::OverrideInput => {
                    let copy = agenix_copy(&pinned, tmp.path(), &format!("override{step}"));
                    inputs =
                        vec![
                            OverrideInput::new("agenix", &format!("path:{}", copy.display()))
                                .expect("valid"),
                        ];
                }
                Kind::ExtraImport => {
                    std::fs::write(
                        root.join("extra/motd.nix"),
                        format!("{{ users.motd = \"motd {v}\"; }}\n"),
                    )
                    .expect("write");
                }
                Kind::Checkout => {
                    git(&root, &["add", "-A"]);
                    git(
                        &root,
                        &["commit", "-qm", &format!("step {step}"), "--allow-empty"],
                    );
                    git(&root, &["checkout", "-q", &first_commit]);
                    inputs.clear();
                }
            }
            untouched = Some(match untouched {
                None => this,
                Some(u) => u.into_iter().filter(|n| this.contains(n)).collect(),
            });
        }
        // Nix sees tracked files: the edits are added (sometimes committed).
        git(&root, &["add", "-A"]);
        if rng.bool() {
            git(
                &root,
                &["commit", "-qm", &format!("edit {step}"), "--allow-empty"],
            );
        }
        let t = Instant::now();
        let got = cached(&rt, &pinned.nix, &strace, &root, &inputs);
        let took_cached = t.elapsed();
        let want = fresh(&rt, &pinned.nix, &root, &inputs);
        let from: Vec<String> = got
            .targets
            .iter()
            .map(|(n, (_, f))| format!("{n}: {f:?}"))
            .collect();
        eprintln!("step {step} {edits:?} (seed {seed}): cached {took_cached:.1?}; {from:?}");
        let got_paths: BTreeMap<NodeName, String> = got
            .targets
            .iter()
            .map(|(n, (p, _))| (n.clone(), p.clone()))
            .collect();
        assert_eq!(got_paths, want, "step {step} {edits:?} (seed {seed})");
        for n in untouched.unwrap_or_default() {
            let n = NodeName::parse(n).expect("name");
            assert_eq!(
                got.targets[&n].1,
                TargetFrom::Cache,
                "step {step} {edits:?}: {n} cannot be affected (seed {seed})"
            );
        }
        // An edit that changes a node's system re-evaluates that node.
        for (n, p) in &want {
            if previous.get(n) != Some(p) {
                assert_eq!(
                    got.targets[n].1,
                    TargetFrom::Evaluation,
                    "{n} at step {step}"
                );
            }
        }
        previous = want;
    }
    eprintln!(
        "{} edits in {} steps: {:.1?}",
        kinds.len(),
        steps.len(),
        started.elapsed()
    );
}
