//! `fleetnix plan`: what a deploy would change, node by node, without changing anything.
//!
//! - `target_system`: every selected node's `config.system.build.toplevel` store path, from ONE
//!   `nix eval` process ([`super::flake::eval_targets`]); nothing is built;
//! - `current_system`: `readlink /run/current-system` over the same pinned SSH as deploy, all
//!   nodes at once, each bounded by `node_timeout_seconds`;
//! - `os: linux` nodes: what the installer would change (Tailscale installed and up as this node,
//!   the agent and firewall units), probed read-only;
//! - what else: stale rendered files, firewall ports and tags against the last committed render
//!   (`git show HEAD:nix/nodes/<node>.nix`), secrets whose recipients are out of date, and the
//!   package-level difference when both closures are in the local store.
//!
//! `deploy` uses [`skip_unchanged`] (the same code) to leave out nodes that already run their
//! target system.

use super::env;
use super::flake::{self, Evaluated, NIX_FEATURES};
use super::hostkeys;
use super::linux;
use super::probe::{self, Probe};
use super::report::{NodeReport, Outcome, Summary};
use super::schedule::tailnet_host_keys;
use super::DeployOptions;
use crate::exec::process::{locate, run_process, LocalCommand, NodeLog, ProcError};
use crate::exec::ssh::{SshTarget, Transport};
use crate::fsutil::write_atomic_in_repo;
use crate::model::{Fleet, NodeName, Os};
use crate::outputs::agent::AGENT_UNIT;
use crate::outputs::{self, Change};
use crate::spec::NodeSpec;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod committed;
mod running;
mod skip;
mod table;
pub use committed::*;
pub use running::*;
pub use skip::*;
pub use table::*;

/// Nodes probed over SSH at once.
pub const MAX_PROBES: usize = 64;

/// The local tools `plan` runs besides ssh.
#[derive(Debug, Clone)]
pub struct PlanTools {
    /// `nix`, if found.
    pub nix: Option<PathBuf>,
    /// `git`, if found.
    pub git: Option<PathBuf>,
    /// Limit of the one evaluation of all nodes.
    pub eval_timeout: Duration,
    /// Concurrent `nix eval` processes (0: bounded by cores and memory, see
    /// [`super::evalcache::default_jobs`]).
    pub eval_jobs: usize,
    /// `strace`, if found: what each evaluation read, for the evaluation cache.
    pub strace: Option<PathBuf>,
    /// Use the evaluation cache (`--no-eval-cache`: off).
    pub eval_cache: bool,
}

impl PlanTools {
    /// Tools through their `FLEETNIX_*` variables or `PATH`; evaluation bounded by `eval_timeout`.
    pub fn locate(eval_timeout: Duration) -> Self {
        PlanTools {
            nix: locate(env::NIX, "nix"),
            git: locate(env::GIT, "git"),
            eval_timeout,
            eval_jobs: 0,
            strace: locate(env::STRACE, "strace"),
            eval_cache: true,
        }
    }

    /// How [`super::evalcache::eval_targets`] evaluates.
    pub fn eval_settings(&self) -> super::evalcache::EvalSettings {
        super::evalcache::EvalSettings {
            nix: self.nix.clone(),
            strace: self.strace.clone(),
            timeout: self.eval_timeout,
            jobs: self.eval_jobs,
            cache: self.eval_cache,
        }
    }
}

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// It runs its target system (NixOS), or the installer would change nothing (linux).
    Unchanged,
    /// A deploy would change it.
    Changed,
    /// It could not be reached within `node_timeout_seconds`.
    Unreachable,
    /// Something else went wrong (see the reason).
    Error,
}

impl State {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unchanged => "unchanged",
            State::Changed => "changed",
            State::Unreachable => "unreachable",
            State::Error => "error",
        }
    }
}

/// What the node runs against what it would run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemState {
    /// The node.
    pub name: NodeName,
    /// `nixos` or `linux` (for `os: auto`, what the node reported; `auto` if it was not reached).
    pub os: String,
    /// Where it stands.
    pub state: State,
    /// Why it is unreachable or in error; what would change for a linux node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `readlink /run/current-system` (NixOS).
    pub current_system: Option<String>,
    /// The evaluated toplevel (NixOS).
    pub target_system: Option<String>,
    /// Whether the target came from an evaluation of this run or the evaluation cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_from: Option<super::evalcache::TargetFrom>,
    /// What the installer would do (linux).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub installer: Vec<String>,
    /// Whether the target needs a reboot to take full effect, and why (NixOS nodes reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot: Option<super::reboot::RebootNeed>,
}

/// Ports and tags against the last committed render of the node's module.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Committed {
    /// `HEAD`, `no git`, or `not in HEAD` (a new node).
    pub baseline: String,
    /// Ports opened now that the committed render did not open (`tcp/8080`).
    pub ports_added: Vec<String>,
    /// Ports the committed render opened that are closed now.
    pub ports_removed: Vec<String>,
    /// Tags the node gets now that it did not.
    pub tags_added: Vec<String>,
    /// Tags it loses.
    pub tags_removed: Vec<String>,
}

impl Committed {
    /// Does anything differ from the committed render?
    pub fn differs(&self) -> bool {
        !(self.ports_added.is_empty()
            && self.ports_removed.is_empty()
            && self.tags_added.is_empty()
            && self.tags_removed.is_empty())
    }
}

/// The package-level difference of a changed node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Closure {
    /// One of the two closures is not in the local store (the usual case before a build).
    NotBuilt,
    /// `nix store diff-closures current target`.
    Diff {
        /// Its output lines.
        lines: Vec<String>,
    },
    /// `nix store diff-closures` failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeChange {
    /// Systems and state.
    #[serde(flatten)]
    pub system: SystemState,
    /// Its rendered files that are stale or missing (`nix/nodes/<node>.nix: stale`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rendered: Vec<String>,
    /// Ports and tags against the committed render.
    pub committed: Committed,
    /// Its secrets whose recipients are out of date.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Package-level difference (changed NixOS nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closure: Option<Closure>,
    /// A deploy drains it on the bus before activating it and undrains it after the health
    /// gate (a changed NixOS node that runs an agent, see [`super::drain`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

/// Counts by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Unchanged nodes.
    pub unchanged: usize,
    /// Changed nodes.
    pub changed: usize,
    /// Unreachable nodes.
    pub unreachable: usize,
    /// Nodes in error.
    pub error: usize,
}

/// The whole plan, nodes in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanReport {
    /// One per selected node.
    pub nodes: Vec<NodeChange>,
    /// Every rendered file that is stale, missing or orphaned (deploy renders them first).
    pub rendered: Vec<String>,
    /// Counts by state.
    pub summary: Counts,
    /// Problems that are not one node's (tailnet host keys, the secrets records).
    pub warnings: Vec<String>,
}

impl PlanReport {
    /// 0: nothing would change; 2: something would (a node, or a rendered file); 1: a node is
    /// unreachable or in error (what it would change is unknown).
    pub fn exit_code(&self) -> u8 {
        if self.summary.error + self.summary.unreachable > 0 {
            1
        } else if self.summary.changed > 0 || !self.rendered.is_empty() {
            2
        } else {
            0
        }
    }
}

/// The whole plan of `selected` (plans of the selected nodes; `all_plans`: the whole fleet's, to
/// compare every rendered file). Connects to the nodes read-only; writes only their pinned
/// known_hosts files.
pub async fn plan<T: Transport + Clone>(
    fleet: &Fleet,
    all_plans: &[NodeSpec],
    selected: &[NodeSpec],
    sources: &str,
    opts: &DeployOptions,
    tools: &PlanTools,
    transport: T,
) -> PlanReport {
    let root = &opts.root;
    let mut warnings = Vec::new();
    // Rendered files (render --check semantics).
    let mut stale: BTreeMap<PathBuf, &'static str> = BTreeMap::new();
    match outputs::render_fleet(fleet, all_plans, sources).and_then(|r| outputs::compare(root, &r))
    {
        Ok(changes) => {
            for (path, c) in changes {
                let what = match c {
                    Change::Unchanged => continue,
                    Change::Create => "missing",
                    Change::Update(_) => "stale",
                    Change::Orphan => "orphaned",
                };
                stale.insert(path, what);
            }
        }
        Err(e) => warnings.push(format!("cannot compare the rendered files: {e}")),
    }
    // Secrets whose recipients are out of date.
    let mut secrets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match crate::secrets::status(fleet, root) {
        Ok(list) => {
            for s in list {
                if matches!(
                    s.state,
                    crate::secrets::State::Stale | crate::secrets::State::Unrecorded
                ) {
                    secrets.entry(s.node.clone()).or_default().push(format!(
                        "{}: recipients {} ({})",
                        s.file,
                        if s.state == crate::secrets::State::Stale {
                            "out of date"
                        } else {
                            "unknown"
                        },
                        s.hint.unwrap_or_else(|| "fleetnix secrets rekey".into())
                    ));
                }
            }
        }
        Err(e) => warnings.push(format!("cannot read the secrets' recipients: {e}")),
    }
    // The committed renders are read while the nodes are probed and evaluated.
    let baselines = committed_all(tools.git.as_deref(), root, selected);
    let ((states, w), baselines) =
        tokio::join!(systems(selected, opts, tools, transport), baselines);
    warnings.extend(w);
    let bus = PathBuf::from(crate::outputs::nats::NIX_PATH);
    let mut nodes = Vec::new();
    for ((plan, system), committed) in selected.iter().zip(states).zip(baselines) {
        let mut rendered = Vec::new();
        let own = outputs::node_path(plan.name.as_str());
        if let Some(what) = stale.get(&own) {
            rendered.push(format!("{}: {what}", own.display()));
        }
        if plan.is_control_plane {
            if let Some(what) = stale.get(&bus) {
                rendered.push(format!("{}: {what}", bus.display()));
            }
        }
        let mut system = system;
        if system.state == State::Unchanged && system.os == "nixos" && stale.contains_key(&own) {
            system.state = State::Changed;
            system.reason = Some(format!(
                "{} is out of date: the target system was evaluated from the file on disk, and deploy renders it first",
                own.display()
            ));
        }
        let closure = match (&system.state, &system.current_system, &system.target_system) {
            (State::Changed, Some(c), Some(t)) => Some(closure(tools.nix.as_deref(), c, t).await),
            _ => None,
        };
        let drain = system.state == State::Changed
            && system.os == "nixos"
            && super::drain::applies(opts, plan);
        nodes.push(NodeChange {
            rendered,
            committed,
            secrets: secrets.remove(plan.name.as_str()).unwrap_or_default(),
            closure,
            drain,
            system,
        });
    }
    nodes.sort_by(|a, b| a.system.name.cmp(&b.system.name));
    let mut summary = Counts::default();
    for n in &nodes {
        match n.system.state {
            State::Unchanged => summary.unchanged += 1,
            State::Changed => summary.changed += 1,
            State::Unreachable => summary.unreachable += 1,
            State::Error => summary.error += 1,
        }
    }
    PlanReport {
        nodes,
        rendered: stale
            .iter()
            .map(|(p, w)| format!("{}: {w}", p.display()))
            .collect(),
        summary,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sections_survive_files_without_a_final_newline() {
        let out = format!(
            "\n{MARK}current\n/nix/store/abc-x\n\n{MARK}omp-agent.service\n[Unit]\nX=1\n{MARK}omp-agent.service-enabled\nyes\n\n{MARK}end\n"
        );
        let s = probe_sections(&out);
        assert_eq!(s["current"], "/nix/store/abc-x\n");
        assert_eq!(s["omp-agent.service"], "[Unit]\nX=1");
        assert_eq!(s["omp-agent.service-enabled"], "yes\n");
        assert_eq!(s["end"], "");
    }

    #[test]
    fn cat_file_batch_output_is_split_by_byte_counts() {
        // Content with a newline inside, invalid UTF-8, a missing object, an empty blob.
        let mut out = b"0123abcd commit 5\ntree\n\n".to_vec();
        out.extend_from_slice(b"89ab blob 6\na\n\xff b\n\n");
        out.extend_from_slice(b"HEAD:nix/nodes/c.nix missing\n");
        out.extend_from_slice(b"cdef blob 0\n\n");
        let e = cat_file_batch(&out, 4).expect("complete");
        assert_eq!(e[0], Some(("commit".into(), b"tree\n".to_vec())));
        assert_eq!(e[1], Some(("blob".into(), b"a\n\xff b\n".to_vec())));
        assert_eq!(e[2], None);
        assert_eq!(e[3], Some(("blob".into(), Vec::new())));
        // Cut short: no answer rather than a wrong one.
        assert!(cat_file_batch(&out[..out.len() - 1], 4).is_none());
        assert!(cat_file_batch(&out, 5).is_none());
    }

    #[test]
    fn probe_scripts_are_valid_sh() {
        for os in [Os::Nixos, Os::Linux, Os::Auto] {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &probe_script(os)])
                .status()
                .expect("sh");
            assert!(st.success());
        }
    }

    #[test]
    fn committed_ports_and_tags_are_read_from_the_rendered_lines() {
        let text =
            "extraUpFlags = [ \"--ssh\" \"--advertise-tags=tag:control-plane,tag:worker\" ];\n\
                    interfaces.\"tailscale0\".allowedTCPPorts = [ 4000 4222 ];\n\
                    interfaces.\"tailscale0\".allowedUDPPorts = [ ];\n";
        let (ports, tags) = committed_ports_and_tags(text);
        assert_eq!(
            ports.into_iter().collect::<Vec<_>>(),
            ["tcp/4000", "tcp/4222"]
        );
        assert_eq!(
            tags.into_iter().collect::<Vec<_>>(),
            ["tag:control-plane", "tag:worker"]
        );
    }

    #[test]
    fn the_table_has_a_row_per_node_with_short_systems_and_what_else() {
        let name = NodeName::parse("worker-01").expect("name");
        let r = PlanReport {
            nodes: vec![NodeChange {
                system: SystemState {
                    name,
                    os: "nixos".into(),
                    state: State::Changed,
                    reason: None,
                    current_system: Some("/nix/store/aaaaaaaaaaaa-nixos-system-worker-01".into()),
                    target_system: Some("/nix/store/bbbbbbbbbbbb-nixos-system-worker-01".into()),
                    target_from: None,
                    installer: Vec::new(),
                    reboot: Some(crate::deploy::reboot::RebootNeed {
                        needed: true,
                        reasons: vec!["kernel".into()],
                        unknown: None,
                    }),
                },
                rendered: Vec::new(),
                committed: Committed {
                    baseline: "HEAD".into(),
                    ports_added: vec!["tcp/8080".into()],
                    tags_removed: vec!["tag:old".into()],
                    ..Default::default()
                },
                secrets: Vec::new(),
                closure: Some(Closure::NotBuilt),
                drain: true,
            }],
            rendered: Vec::new(),
            summary: Counts {
                changed: 1,
                ..Default::default()
            },
            warnings: Vec::new(),
        };
        let t = table(&r);
        let row = t.lines().nth(1).expect("row");
        assert!(
            row.starts_with("worker-01  nixos  changed  aaaaaaaa  bbbbbbbb  "),
            "{t}"
        );
        assert!(
            row.ends_with(
                "reboot needed (kernel); vs HEAD: +tcp/8080 -tag:old; closure: not built; deploy drains its tasks first (agent), undrains after the gate"
            ),
            "{t}"
        );
        assert!(
            t.ends_with("1 node(s): 1 changed, 0 unchanged, 0 unreachable, 0 error\n"),
            "{t}"
        );
    }

    #[test]
    fn exit_codes() {
        let mut r = PlanReport {
            nodes: Vec::new(),
            rendered: Vec::new(),
            summary: Counts::default(),
            warnings: Vec::new(),
        };
        assert_eq!(r.exit_code(), 0);
        r.rendered.push("nix/nodes/a.nix: stale".into());
        assert_eq!(r.exit_code(), 2);
        r.rendered.clear();
        r.summary.changed = 1;
        assert_eq!(r.exit_code(), 2);
        r.summary.unreachable = 1;
        assert_eq!(r.exit_code(), 1);
    }
}
