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
use crate::fsutil::write_atomic;
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
    /// Concurrent `nix eval` processes (1: all nodes in one; see [`flake::eval_targets`]).
    pub eval_jobs: usize,
}

impl PlanTools {
    /// Tools through their `FLEETNIX_*` variables or `PATH`; evaluation bounded by `eval_timeout`.
    pub fn locate(eval_timeout: Duration) -> Self {
        PlanTools {
            nix: locate(env::NIX, "nix"),
            git: locate(env::GIT, "git"),
            eval_timeout,
            eval_jobs: 1,
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
    /// What the installer would do (linux).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub installer: Vec<String>,
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

const MARK: &str = "@@fleetnix-plan@@";

/// The read-only script probing a node: `readlink /run/current-system`, and for nodes that may
/// not be NixOS (`linux`, `auto`) also the installer's probe (os-release, `tailscale status`)
/// and the installed agent and firewall units. Sections are separated by marker lines.
pub fn probe_script(os: Os) -> String {
    let mut s = format!(
        "echo\necho {MARK}current\nreadlink /run/current-system 2>/dev/null || true\n\
         echo\necho {MARK}profile\n[ -e /nix/var/nix/profiles/system ] && echo yes || echo no\n"
    );
    if os != Os::Nixos {
        let unit = |name: &str, extra: &str| {
            format!(
                "echo\necho {MARK}{name}\ncat {dir}/{name} 2>/dev/null || true\n\
                 echo\necho {MARK}{name}-enabled\n\
                 if systemctl is-enabled --quiet {name} 2>/dev/null{extra}; then echo yes; else echo no; fi\n",
                dir = linux::UNIT_DIR
            )
        };
        let _ = write!(
            s,
            "echo\necho {MARK}probe\n{}\n{}{}",
            probe::probe_script(),
            unit(AGENT_UNIT, ""),
            unit(
                linux::FIREWALL_UNIT,
                " && nft list table inet fleetnix >/dev/null 2>&1"
            ),
        );
    }
    let _ = write!(s, "echo\necho {MARK}end\n");
    s
}

/// The sections of [`probe_script`]'s output by name, each exactly as its command printed it.
pub fn probe_sections(out: &str) -> BTreeMap<String, String> {
    let text = format!("\n{out}");
    let mut sections = BTreeMap::new();
    for piece in text.split(&format!("\n{MARK}")).skip(1) {
        // The `echo` before each marker ends the previous section's last line, and the split
        // consumes exactly that newline: `body` is the output as it was.
        let (name, body) = piece.split_once('\n').unwrap_or((piece, ""));
        sections.insert(name.trim().to_string(), body.to_string());
    }
    sections
}

/// What the installer would change on a non-NixOS node, from the probe (empty: nothing).
pub fn installer_changes(
    plan: &NodeSpec,
    probe: &Probe,
    sections: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !probe.has_tailscale {
        out.push("install Tailscale (install script)".to_string());
    }
    if !probe.up_as_planned {
        out.push("tailscale up (not up as this node with its tags)".to_string());
    }
    let get = |k: &str| sections.get(k).map(String::as_str).unwrap_or("");
    let mut unit = |label: &str, name: &str, want: Result<String, String>| {
        let enabled = get(&format!("{name}-enabled")).trim() == "yes";
        match want {
            Err(e) => out.push(format!("{label}: cannot be written: {e}")),
            Ok(_) if get(name).is_empty() => out.push(format!("{label}: install {name}")),
            Ok(w) if get(name) != w => out.push(format!("{label}: update {name}")),
            Ok(_) if !enabled => out.push(format!("{label}: enable and start {name}")),
            Ok(_) => {}
        }
    };
    unit(
        "agent",
        AGENT_UNIT,
        linux::agent_unit(plan).map_err(|e| e.to_string()),
    );
    unit(
        "firewall",
        linux::FIREWALL_UNIT,
        Ok(linux::firewall_unit(plan)),
    );
    out
}

/// Writes the node's pinned known_hosts file (manifest key + the tailnet's keys for its
/// address) and returns its SSH target (a fresh connection per command).
pub fn pin(
    opts: &DeployOptions,
    plan: &NodeSpec,
    tailnet_keys: &BTreeMap<IpAddr, Vec<String>>,
) -> Result<SshTarget, crate::model::InvalidValue> {
    let mut keys: Vec<String> = plan.access.host_key.iter().map(|k| k.to_string()).collect();
    if let Some(k) = tailnet_keys.get(&plan.access.address) {
        keys.extend(k.iter().cloned());
    }
    let text = hostkeys::known_hosts(&plan.access.address, &keys);
    if text.is_empty() {
        return Err(format!(
            "no pinned host key (not in the manifest, not reported by tailscale status): check it out of band, e.g. `{}`, and set host_key in nodes.yml",
            hostkeys::keyscan_hint(&plan.access.address)
        ).into());
    }
    let path = opts.known_hosts_path(&plan.name);
    // The same pin as last time is left alone: an atomic write costs two fsyncs per node, on the
    // runtime's threads, and the file would come out byte-identical.
    if std::fs::read(&path).ok().as_deref() != Some(text.as_bytes()) {
        write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(SshTarget {
        destination: plan.access.ssh_target.clone(),
        known_hosts: path,
        sudo: plan.access.needs_sudo(),
        control: None,
    })
}

/// Runs the probe on one node: its sections, or the node's state and reason.
async fn probe<T: Transport>(
    transport: &T,
    opts: &DeployOptions,
    plan: &NodeSpec,
    tailnet_keys: &BTreeMap<IpAddr, Vec<String>>,
) -> Result<BTreeMap<String, String>, (State, String)> {
    let target = pin(opts, plan, tailnet_keys).map_err(|e| (State::Error, e.to_string()))?;
    let limit = opts.node_timeout + Duration::from_secs(5);
    let log = NodeLog::discard();
    match transport
        .run(&target, &probe_script(plan.access.os), None, limit, &log)
        .await
    {
        Ok(out) if out.success() => Ok(probe_sections(&out.stdout)),
        Ok(out) if out.code == Some(255) => {
            let err = out.stderr.to_ascii_lowercase();
            Err(
                if err.contains("host key verification failed")
                    || err.contains("remote host identification has changed")
                {
                    (
                        State::Error,
                        format!("host key verification failed: the node's key does not match the pinned host_key ({})", out.last_line()),
                    )
                } else if err.contains("permission denied") {
                    (
                        State::Error,
                        format!("SSH login refused ({})", out.last_line()),
                    )
                } else {
                    (State::Unreachable, out.last_line())
                },
            )
        }
        Ok(out) => Err((State::Error, format!("probe failed: {}", out.last_line()))),
        Err(e @ ProcError::Timeout { .. }) => Err((
            State::Unreachable,
            format!("no answer within {}s ({e})", limit.as_secs()),
        )),
        Err(e) => Err((State::Error, e.to_string())),
    }
}

/// The state of one node from its probe and its evaluated target.
fn node_state(
    plan: &NodeSpec,
    probed: Result<BTreeMap<String, String>, (State, String)>,
    target: Option<&Evaluated>,
) -> SystemState {
    let target_system = target.and_then(|t| t.as_ref().ok().cloned());
    let mut s = SystemState {
        name: plan.name.clone(),
        os: match plan.access.os {
            Os::Nixos => "nixos",
            Os::Linux => "linux",
            Os::Auto => "auto",
        }
        .to_string(),
        state: State::Error,
        reason: None,
        current_system: None,
        target_system: None,
        installer: Vec::new(),
    };
    let sections = match probed {
        Ok(s) => s,
        Err((state, reason)) => {
            s.state = state;
            s.reason = Some(reason);
            if plan.access.os == Os::Nixos {
                s.target_system = target_system;
            }
            return s;
        }
    };
    let nixos = match plan.access.os {
        Os::Nixos => true,
        Os::Linux => false,
        Os::Auto => {
            let probe = probe::parse_probe(
                sections.get("probe").map(String::as_str).unwrap_or(""),
                plan,
            );
            probe.os_id == "nixos"
        }
    };
    if !nixos {
        s.os = "linux".into();
        let probe = probe::parse_probe(
            sections.get("probe").map(String::as_str).unwrap_or(""),
            plan,
        );
        s.installer = installer_changes(plan, &probe, &sections);
        s.state = if s.installer.is_empty() {
            State::Unchanged
        } else {
            State::Changed
        };
        return s;
    }
    s.os = "nixos".into();
    s.target_system = target_system;
    let current = sections
        .get("current")
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .map(flake::check_store_path);
    let has_profile = sections.get("profile").map(|p| p.trim()) == Some("yes");
    match (current, target) {
        (None, _) => {
            s.reason = Some(format!(
                "no /run/current-system{}: the host does not look like NixOS; if it is not, set `os: auto` or `os: linux` for {} in nodes.yml",
                if has_profile { "" } else { " and no /nix/var/nix/profiles/system" },
                plan.name
            ));
        }
        (Some(Err(e)), _) => s.reason = Some(format!("/run/current-system: {e}")),
        (Some(Ok(cur)), t) => {
            s.current_system = Some(cur.clone());
            match t {
                None => s.reason = Some("the target system was not evaluated".into()),
                Some(Err(e)) => s.reason = Some(format!("evaluating the target system: {e}")),
                Some(Ok(t)) if *t == cur => s.state = State::Unchanged,
                Some(Ok(_)) => s.state = State::Changed,
            }
        }
    }
    s
}

/// Where every node of `plans` stands: the targets evaluated in one `nix eval` while all nodes
/// are probed over SSH (at most [`MAX_PROBES`] at once). Returned in `plans` order, with
/// warnings that concern no single node.
pub async fn systems<T: Transport + Clone>(
    plans: &[NodeSpec],
    opts: &DeployOptions,
    tools: &PlanTools,
    transport: T,
) -> (Vec<SystemState>, Vec<String>) {
    let mut warnings = Vec::new();
    let to_eval: Vec<NodeName> = plans
        .iter()
        .filter(|p| p.access.os != Os::Linux)
        .map(|p| p.name.clone())
        .collect();
    // The evaluation starts at once, while the tailnet's host keys are read and the probes
    // that need them run.
    let eval = flake::eval_targets(
        tools.nix.as_deref(),
        &opts.root,
        &to_eval,
        &opts.override_inputs,
        tools.eval_timeout,
        tools.eval_jobs,
    );
    let probes = async {
        let (tailnet_keys, w) = tailnet_host_keys(opts).await;
        if let Some(w) = w {
            warnings.push(format!("host keys from the tailnet unavailable: {w}"));
        }
        let keys = Arc::new(tailnet_keys);
        let sem = Arc::new(tokio::sync::Semaphore::new(MAX_PROBES));
        let mut set = tokio::task::JoinSet::new();
        for (i, plan) in plans.iter().enumerate() {
            let (t, o, p, k, sem) = (
                transport.clone(),
                opts.clone(),
                plan.clone(),
                keys.clone(),
                sem.clone(),
            );
            set.spawn(async move {
                // The semaphore is never closed, so acquiring only waits.
                let _permit = sem.acquire_owned().await.ok();
                (i, probe(&t, &o, &p, &k).await)
            });
        }
        let mut out: BTreeMap<usize, _> = BTreeMap::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((i, r)) => {
                    out.insert(i, r);
                }
                Err(e) => warnings.push(format!("a probe task failed: {e}")),
            }
        }
        out
    };
    let (targets, mut probed) = tokio::join!(eval, probes);
    let states = plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let r = probed
                .remove(&i)
                .unwrap_or_else(|| Err((State::Error, "the probe did not finish".into())));
            node_state(p, r, targets.get(&p.name))
        })
        .collect();
    (states, warnings)
}

/// Ports (`tcp/80`) and tags a committed node module opened and carried, read from the lines
/// fleetnix renders (`allowedTCPPorts = [ … ];`, `--advertise-tags=…`).
pub fn committed_ports_and_tags(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut ports = BTreeSet::new();
    let mut tags = BTreeSet::new();
    for line in text.lines() {
        for (key, proto) in [("allowedTCPPorts", "tcp"), ("allowedUDPPorts", "udp")] {
            if let Some(rest) = line.split_once(key).map(|(_, r)| r) {
                let list = rest
                    .split_once('[')
                    .and_then(|(_, r)| r.split_once(']'))
                    .map(|(l, _)| l)
                    .unwrap_or("");
                ports.extend(
                    list.split_whitespace()
                        .filter(|w| w.parse::<u16>().is_ok())
                        .map(|w| format!("{proto}/{w}")),
                );
            }
        }
        if let Some((_, rest)) = line.split_once("--advertise-tags=") {
            let list = rest.split('"').next().unwrap_or("");
            tags.extend(
                list.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            );
        }
    }
    (ports, tags)
}

/// The ports and tags of `plan` against the committed text (`None`: no baseline, named by `baseline`).
pub fn committed_diff(plan: &NodeSpec, baseline: &str, old: Option<&str>) -> Committed {
    let Some(old) = old else {
        return Committed {
            baseline: baseline.into(),
            ..Default::default()
        };
    };
    let (old_ports, old_tags) = committed_ports_and_tags(old);
    let new_ports: BTreeSet<String> = plan
        .tcp_ports
        .iter()
        .map(|p| format!("tcp/{p}"))
        .chain(plan.udp_ports.iter().map(|p| format!("udp/{p}")))
        .collect();
    let new_tags: BTreeSet<String> = plan.tags.iter().cloned().collect();
    Committed {
        baseline: baseline.into(),
        ports_added: new_ports.difference(&old_ports).cloned().collect(),
        ports_removed: old_ports.difference(&new_ports).cloned().collect(),
        tags_added: new_tags.difference(&old_tags).cloned().collect(),
        tags_removed: old_tags.difference(&new_tags).cloned().collect(),
    }
}

/// The baseline named by a failed git's stderr.
fn git_baseline(stderr: &str) -> &'static str {
    let err = stderr.to_ascii_lowercase();
    if err.contains("not a git repository") {
        "no git"
    } else if err.contains("invalid object name 'head'")
        || err.contains("unknown revision")
        || err.contains("bad revision")
    {
        "no git (no commit yet)"
    } else {
        "not in HEAD"
    }
}

/// Runs `git` with `args` in its own process group, feeding `stdin`, within `timeout`: exit
/// code, stdout as bytes (`cat-file --batch` counts bytes), stderr. Secret variables are not
/// passed on, as in [`run_process`].
async fn git_bytes(
    git: &Path,
    args: &[String],
    stdin: &[u8],
    timeout: Duration,
) -> Result<(Option<i32>, Vec<u8>, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::process::Command::new(git);
    c.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for var in crate::secret::child_env_removals() {
        c.env_remove(var);
    }
    let mut child = c
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", git.display()))?;
    let (mut w, mut out, mut err) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let work = async {
        let feed = async {
            if let Some(w) = w.as_mut() {
                // A git that exits early is reported by its status.
                let _ = w.write_all(stdin).await;
                let _ = w.shutdown().await;
            }
            drop(w.take());
        };
        let read = |r: Option<tokio::process::ChildStdout>| async move {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                r.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(r) = err.as_mut() {
                r.read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let ((), o, e) = tokio::join!(feed, read(out.take()), read_err);
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status.code(), o?, String::from_utf8_lossy(&e?).into_owned()))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("reading the output of {}: {e}", git.display())),
        // The child is killed when dropped (kill_on_drop).
        Err(_) => Err(format!(
            "{} did not finish within {}s and was stopped",
            git.display(),
            timeout.as_secs()
        )),
    }
}

/// One object `git cat-file --batch` printed: its type (`blob`, `commit`, …) and content.
pub type CatFileEntry = Option<(String, Vec<u8>)>;

/// Splits `git cat-file --batch` output into one entry per request: the object's type and
/// content, or `None` (missing, ambiguous). `None` overall when the output is cut short.
pub fn cat_file_batch(out: &[u8], requests: usize) -> Option<Vec<CatFileEntry>> {
    let mut rest = out;
    let mut entries = Vec::with_capacity(requests);
    for _ in 0..requests {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let header = String::from_utf8_lossy(&rest[..nl]).into_owned();
        rest = &rest[nl + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        match fields.as_slice() {
            [_, kind, size] if size.parse::<usize>().is_ok() => {
                let size: usize = size.parse().ok()?;
                // The content, then one newline.
                if rest.len() < size + 1 {
                    return None;
                }
                let content = rest[..size].to_vec();
                rest = &rest[size + 1..];
                entries.push(Some((kind.to_string(), content)));
            }
            _ => entries.push(None),
        }
    }
    Some(entries)
}

/// The selected nodes' modules as committed (`HEAD:nix/nodes/<node>.nix`), read by ONE
/// `git -C <root> cat-file --batch` for all of them (not a `git show` per node).
async fn committed_all(git: Option<&Path>, root: &Path, plans: &[NodeSpec]) -> Vec<Committed> {
    let all = |baseline: &str| {
        plans
            .iter()
            .map(|p| committed_diff(p, baseline, None))
            .collect::<Vec<_>>()
    };
    let Some(git) = git else {
        return all("no git");
    };
    if plans.is_empty() {
        return Vec::new();
    }
    // First `HEAD` itself (missing: no commit yet), then each node's module. Node names are
    // RFC 1123 labels, so every request is one plain line.
    let mut requests = String::from("HEAD\n");
    for p in plans {
        let _ = writeln!(
            requests,
            "HEAD:{}",
            outputs::node_path(p.name.as_str()).display()
        );
    }
    let args = vec![
        "-C".to_string(),
        root.display().to_string(),
        "cat-file".into(),
        "--batch".into(),
    ];
    let (code, out, err) =
        match git_bytes(git, &args, requests.as_bytes(), Duration::from_secs(30)).await {
            Ok(r) => r,
            Err(e) => return all(&format!("no git ({e})")),
        };
    if code != Some(0) {
        return all(git_baseline(&err));
    }
    let Some(entries) = cat_file_batch(&out, plans.len() + 1) else {
        return all("not in HEAD");
    };
    if entries[0].is_none() {
        return all("no git (no commit yet)");
    }
    plans
        .iter()
        .zip(&entries[1..])
        .map(|(p, e)| match e {
            Some((kind, text)) if kind == "blob" => {
                committed_diff(p, "HEAD", Some(&String::from_utf8_lossy(text)))
            }
            _ => committed_diff(p, "not in HEAD", None),
        })
        .collect()
}

/// `nix store diff-closures current target` when both are in the local store.
async fn closure(nix: Option<&Path>, current: &str, target: &str) -> Closure {
    let Some(nix) = nix else {
        return Closure::NotBuilt;
    };
    if !Path::new(current).exists() || !Path::new(target).exists() {
        return Closure::NotBuilt;
    }
    let mut args: Vec<String> = NIX_FEATURES.iter().map(|s| s.to_string()).collect();
    args.extend([
        "store".into(),
        "diff-closures".into(),
        current.into(),
        target.into(),
    ]);
    let cmd = LocalCommand {
        program: nix.to_path_buf(),
        args,
        env: Vec::new(),
    };
    match run_process(&cmd, None, Duration::from_secs(120), &NodeLog::discard()).await {
        Ok(o) if o.success() => Closure::Diff {
            lines: o.stdout.lines().map(|l| l.trim_end().to_string()).collect(),
        },
        Ok(o) => Closure::Failed {
            reason: o.last_line(),
        },
        Err(e) => Closure::Failed {
            reason: e.to_string(),
        },
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
        nodes.push(NodeChange {
            rendered,
            committed,
            secrets: secrets.remove(plan.name.as_str()).unwrap_or_default(),
            closure,
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

/// The first 8 characters of a store path's hash (`66c1gy7w`), for tables.
fn short(path: &Option<String>) -> String {
    match path {
        None => "-".into(),
        Some(p) => Path::new(p)
            .file_name()
            .map(|f| f.to_string_lossy().chars().take(8).collect())
            .unwrap_or_else(|| p.clone()),
    }
}

/// The plan as a table (one row per node, then details), for a terminal.
pub fn table(r: &PlanReport) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "OS".into(),
        "STATE".into(),
        "CURRENT".into(),
        "TARGET".into(),
        "WHAT ELSE".into(),
    ]];
    for n in &r.nodes {
        let s = &n.system;
        let mut what = Vec::new();
        if let Some(reason) = &s.reason {
            what.push(reason.clone());
        }
        what.extend(s.installer.iter().cloned());
        what.extend(n.rendered.iter().cloned());
        let c = &n.committed;
        if c.differs() {
            let mut d = Vec::new();
            for (sign, list) in [("+", &c.ports_added), ("-", &c.ports_removed)] {
                d.extend(list.iter().map(|p| format!("{sign}{p}")));
            }
            for (sign, list) in [("+", &c.tags_added), ("-", &c.tags_removed)] {
                d.extend(list.iter().map(|t| format!("{sign}{t}")));
            }
            what.push(format!("vs {}: {}", c.baseline, d.join(" ")));
        } else if c.baseline != "HEAD" {
            what.push(format!("ports/tags: {}", c.baseline));
        }
        what.extend(n.secrets.iter().cloned());
        match &n.closure {
            Some(Closure::NotBuilt) => what.push("closure: not built".into()),
            Some(Closure::Diff { lines }) => {
                what.push(format!("closure: {} package change(s)", lines.len()))
            }
            Some(Closure::Failed { reason }) => what.push(format!("closure: {reason}")),
            None => {}
        }
        rows.push([
            s.name.to_string(),
            s.os.clone(),
            s.state.as_str().to_string(),
            short(&s.current_system),
            short(&s.target_system),
            if what.is_empty() {
                "-".into()
            } else {
                what.join("; ")
            },
        ]);
    }
    let mut w = [0usize; 5];
    for row in &rows {
        for (i, cell) in row.iter().take(5).enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        );
    }
    for n in &r.nodes {
        if let Some(Closure::Diff { lines }) = &n.closure {
            let _ = writeln!(out, "\n{} (nix store diff-closures):", n.system.name);
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
        }
    }
    let orphans: Vec<&String> = r
        .rendered
        .iter()
        .filter(|f| f.ends_with("orphaned"))
        .collect();
    if !r.rendered.is_empty() {
        let _ = writeln!(
            out,
            "\nrendered files out of date ({}): deploy renders them first{}",
            r.rendered.len(),
            if orphans.is_empty() {
                ""
            } else {
                "; orphans are removed"
            }
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "\n{} node(s): {} changed, {} unchanged, {} unreachable, {} error",
        r.nodes.len(),
        s.changed,
        s.unchanged,
        s.unreachable,
        s.error
    );
    out
}

/// `deploy`'s pre-step: the nodes that already run their target system (NixOS, state
/// `unchanged`, computed by [`systems`] exactly as `plan` does) are left out of `plans` and
/// reported `unchanged`; every other node (changed, unreachable, in error, linux) is deployed as
/// before (the runner reports its own failures; the installer is idempotent). Returns the
/// nodes to deploy, the reports of the skipped ones, and warnings.
pub async fn skip_unchanged<T: Transport + Clone>(
    plans: Vec<NodeSpec>,
    opts: &DeployOptions,
    tools: &PlanTools,
    transport: T,
) -> (Vec<NodeSpec>, Vec<NodeReport>, Vec<String>) {
    let start = Instant::now();
    let (states, warnings) = systems(&plans, opts, tools, transport).await;
    let mut deploy = Vec::new();
    let mut skipped = Vec::new();
    for (plan, s) in plans.into_iter().zip(states) {
        if s.state == State::Unchanged && s.os == "nixos" {
            skipped.push(NodeReport {
                node: plan.name.to_string(),
                action: opts.action.as_str().to_string(),
                outcome: Outcome::Unchanged,
                step: None,
                detail: super::report::unchanged_detail(s.target_system.as_deref().unwrap_or("-")),
                duration: start.elapsed(),
                attempts: 1,
            });
        } else {
            deploy.push(plan);
        }
    }
    (deploy, skipped, warnings)
}

/// `deploy`'s cheaper pre-step when no rollout is planned: the target systems of the nodes that
/// may be NixOS, from one evaluation and no connection. Each node's connect step, which reads the
/// running system anyway, compares it with its target ([`super::DeployOptions::skip_if_running`]),
/// so an unchanged node costs one SSH connection and a changed one no extra. (A rollout keeps
/// [`skip_unchanged`]: its canary and batches must be drawn from the nodes that change.) Nodes
/// whose evaluation fails are left out: nixos-rebuild reports their error.
pub async fn targets_to_skip(
    plans: &[NodeSpec],
    opts: &DeployOptions,
    tools: &PlanTools,
) -> BTreeMap<NodeName, String> {
    let nodes: Vec<NodeName> = plans
        .iter()
        .filter(|p| p.access.os != Os::Linux)
        .map(|p| p.name.clone())
        .collect();
    flake::eval_targets(
        tools.nix.as_deref(),
        &opts.root,
        &nodes,
        &opts.override_inputs,
        tools.eval_timeout,
        tools.eval_jobs,
    )
    .await
    .into_iter()
    .filter_map(|(n, r)| r.ok().map(|t| (n, t)))
    .collect()
}

/// Adds the reports of nodes [`skip_unchanged`] left out to the runner's summary (node-name order).
pub fn merge_skipped(summary: &mut Summary, skipped: Vec<NodeReport>) {
    summary.nodes.extend(skipped);
    summary.nodes.sort_by(|a, b| a.node.cmp(&b.node));
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
                    installer: Vec::new(),
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
            row.ends_with("vs HEAD: +tcp/8080 -tag:old; closure: not built"),
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
