//! The evaluation cache: each node's target system is kept with a record of exactly what its
//! evaluation depended on, and a node is evaluated again only when one of those changed.
//!
//! How the dependencies are learned: from the evaluator itself. Each node that must be
//! evaluated gets its own `nix eval` of its toplevel, run under `strace --seccomp-bpf -f -e
//! trace=%file`, which names every path the evaluator opens, stats or reads (whatever builtin
//! did it: `import`, `readFile`, `readDir`, `pathExists`, `builtins.path`, a path copied to the
//! store, `lib.cleanSource`). A flake is evaluated from its copy in the store
//! (`/nix/store/…-source`, from `nix flake metadata`): every access under that copy is a
//! dependency, recorded by its path inside the repository and what was there (a file's SHA-256,
//! a directory listing when it was read, a symlink's target and what it leads to, or that
//! nothing was there). Nix's own reports are not enough: on Nix 2.8 `-vvvv` names the files
//! `import` evaluates, but not `readFile`, `readDir`, `pathExists` or a path copied to the store.
//!
//! A record is valid when the locked inputs are the same (the lock graph `nix flake metadata`
//! resolves with every `--override-input`, each input with its `narHash`, plus the overrides
//! themselves and the `nix` binary) and every recorded path has the same content in the
//! flake's current copy (what Nix sees: in a git repository, tracked files only). Nix's own
//! evaluation cache is off in these runs (`--no-eval-cache`): with it on, a cached attribute
//! would be answered without reading any file.
//!
//! Not covered: values of the flake's `self` that are not file contents (`self.rev`,
//! `self.lastModified`, `self.narHash`, `"${self}"` as a string). `lib.mkFleet` passes none of
//! them to a node; a fleet whose own modules use them should run `plan --no-eval-cache`.
//!
//! The records live in `.fleetnix/eval-cache/<node>.json` (written atomically, never through a
//! symlink), outside git's view, so they survive checkouts: a checkout back to a known tree
//! finds its records valid again.

use super::flake::{self, check_store_path, nix_error, EvalError, Evaluated, OverrideInput};
use super::reboot::BootSet;
use crate::exec::process::{run_process, LocalCommand, NodeLog};
use crate::model::NodeName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The cache's folder under the repository root.
pub const CACHE_DIR: &str = ".fleetnix/eval-cache";

/// Bumped whenever the record's meaning changes (old records are then ignored).
const FORMAT: u32 = 2;

/// Peak resident memory of one evaluator of a full NixOS system with the pinned nixpkgs, as
/// measured (`/usr/bin/time -v`: 1 037 672 kB), rounded up: what [`default_jobs`] budgets.
pub const EVAL_RSS_BYTES: u64 = 1_100 * 1024 * 1024;

/// Where a node's target system came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetFrom {
    /// A `nix eval` of this run.
    Evaluation,
    /// A valid record of an earlier evaluation.
    Cache,
}

/// How targets are evaluated.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// `nix`, if found.
    pub nix: Option<PathBuf>,
    /// `strace`, if found (without it nothing is recorded: every node is evaluated).
    pub strace: Option<PathBuf>,
    /// Limit of one evaluator.
    pub timeout: Duration,
    /// Concurrent evaluators (0: [`default_jobs`]).
    pub jobs: usize,
    /// Use and keep records (`--no-eval-cache` turns it off).
    pub cache: bool,
}

/// Every node's target system, where it came from, and what went wrong that is no node's.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// One entry per node asked for.
    pub nodes: BTreeMap<NodeName, (Evaluated, TargetFrom)>,
    /// The boot components of the nodes whose evaluation (or record) gave them.
    pub boot: BTreeMap<NodeName, BootSet>,
    /// Why records could not be used or kept.
    pub warnings: Vec<String>,
}

/// Concurrent evaluators by default: the cores, and as many evaluators of
/// [`EVAL_RSS_BYTES`] as the available memory holds (`MemAvailable`), at least one and at most
/// [`flake::MAX_EVAL_JOBS`].
pub fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let by_memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available(&m))
        .map_or(cores, |b| {
            usize::try_from(b / EVAL_RSS_BYTES).unwrap_or(usize::MAX)
        });
    cores.min(by_memory).clamp(1, flake::MAX_EVAL_JOBS)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What was at a path of the flake's copy when the evaluation looked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Seen {
    /// Nothing.
    Absent,
    /// A regular file with this SHA-256 (hex), and whether it is executable.
    File {
        /// SHA-256 of the content.
        sha256: String,
        /// Executable bit (a store copy keeps it).
        executable: bool,
    },
    /// A directory, only looked at (stat).
    Dir,
    /// A directory whose listing was read: SHA-256 of its sorted names and types.
    Listing {
        /// SHA-256 of `name\0type\n`….
        sha256: String,
    },
    /// A symlink: its target, and what following it finds.
    Link {
        /// `readlink`.
        target: String,
        /// What the followed path is.
        leads_to: Box<Seen>,
    },
    /// Something else (a socket, a device), or unreadable.
    Other,
}

/// One node's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `FORMAT`.
    pub format: u32,
    /// The node.
    pub node: String,
    /// [`inputs_key`] of the evaluation.
    pub inputs: String,
    /// The flake's store copy it was evaluated from (equal copy, equal content).
    pub source: String,
    /// Every path (relative to the repository root; `""` is the root) the evaluation touched.
    pub deps: BTreeMap<String, Seen>,
    /// The evaluated toplevel.
    pub target: String,
    /// Its boot components, as the same evaluation gave them (see `flake::BOOT_EXPR`).
    #[serde(default)]
    pub boot: BTreeMap<String, String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is at `path` now; `listing`: read a directory's entries (not only its kind).
pub fn seen(path: &Path, listing: bool) -> Seen {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return if path.exists() {
            Seen::Other
        } else {
            Seen::Absent
        };
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        let leads_to = match std::fs::canonicalize(path) {
            Ok(p) if p != path => seen(&p, listing),
            _ => Seen::Absent,
        };
        Seen::Link {
            target,
            leads_to: Box::new(leads_to),
        }
    } else if ft.is_file() {
        let mut h = Sha256::new();
        let ok = std::fs::File::open(path).and_then(|mut f| {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                h.update(&buf[..n]);
            }
        });
        match ok {
            Ok(()) => Seen::File {
                sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
                executable: meta.permissions().mode() & 0o111 != 0,
            },
            Err(_) => Seen::Other,
        }
    } else if ft.is_dir() {
        if !listing {
            return Seen::Dir;
        }
        let Ok(rd) = std::fs::read_dir(path) else {
            return Seen::Other;
        };
        let mut entries: Vec<String> = rd
            .filter_map(Result::ok)
            .map(|e| {
                let t = match e.file_type() {
                    Ok(t) if t.is_symlink() => "symlink",
                    Ok(t) if t.is_dir() => "directory",
                    Ok(t) if t.is_file() => "regular",
                    _ => "unknown",
                };
                format!("{}\0{t}\n", e.file_name().to_string_lossy())
            })
            .collect();
        entries.sort();
        Seen::Listing {
            sha256: sha256_hex(entries.concat().as_bytes()),
        }
    } else {
        Seen::Other
    }
}

/// The paths under `source` a trace names: relative path → was the directory listed. `None`
/// when a path cannot be read back exactly (escaped characters, `..`): nothing is recorded then.
pub fn trace_deps(trace: impl BufRead, source: &str) -> Option<BTreeMap<String, bool>> {
    let mut deps: BTreeMap<String, bool> = BTreeMap::new();
    for line in trace.lines() {
        let line = line.ok()?;
        // `PID syscall(ARGS) = R`, `PID <... syscall resumed>…`: the first quoted string is the path.
        let Some(open) = line.find('"') else { continue };
        let Some(len) = line[open + 1..].find('"') else {
            continue;
        };
        let path = &line[open + 1..open + 1 + len];
        let rest = match path.strip_prefix(source) {
            Some(r) if r.is_empty() || r.starts_with('/') => r,
            _ => continue,
        };
        if path.contains('\\') {
            return None;
        }
        let mut parts = Vec::new();
        for p in rest.split('/') {
            match p {
                "" | "." => {}
                ".." => return None,
                p => parts.push(p),
            }
        }
        let call = line[..open].split_whitespace().last().unwrap_or("");
        let listed = call.contains("open") && line.contains("O_DIRECTORY");
        *deps.entry(parts.join("/")).or_default() |= listed;
    }
    Some(deps)
}

/// The key of everything besides the repository's files: the lock graph Nix resolved (with
/// every override, each input's `narHash`), the overrides, Nix's version (`nix --version`) and
/// this format.
pub fn inputs_key(
    locks: &serde_json::Value,
    inputs: &[OverrideInput],
    nix_version: &str,
) -> String {
    let v = serde_json::json!({
        "format": FORMAT,
        "locks": locks,
        "overrides": inputs,
        "nix": nix_version,
    });
    sha256_hex(v.to_string().as_bytes())
}

/// `nix --version`.
async fn nix_version(nix: &Path, timeout: Duration) -> Result<String, String> {
    let cmd = LocalCommand {
        program: nix.to_path_buf(),
        args: vec!["--version".into()],
        env: Vec::new(),
    };
    match run_process(&cmd, None, timeout, &NodeLog::discard()).await {
        Ok(o) if o.success() && !o.stdout.trim().is_empty() => Ok(o.stdout.trim().to_string()),
        Ok(o) => Err(nix_error(&o.stderr)),
        Err(e) => Err(e.to_string()),
    }
}

/// Is `record` still right for the flake copy at `source` and these inputs?
pub fn still_valid(record: &Record, node: &NodeName, inputs: &str, source: &Path) -> bool {
    if record.format != FORMAT || record.node != node.as_str() || record.inputs != inputs {
        return false;
    }
    if Path::new(&record.source) == source {
        return true;
    }
    record.deps.iter().all(|(rel, was)| {
        let p = if rel.is_empty() {
            source.to_path_buf()
        } else {
            source.join(rel)
        };
        let listing = matches!(was, Seen::Listing { .. })
            || matches!(was, Seen::Link { leads_to, .. } if matches!(**leads_to, Seen::Listing { .. }));
        seen(&p, listing) == *was
    })
}

/// The cache folder of `root`, created if needed; an error if it (or `.fleetnix`) is a symlink
/// or not a directory.
pub fn cache_dir(root: &Path) -> Result<PathBuf, String> {
    let mut dir = root.to_path_buf();
    for part in CACHE_DIR.split('/') {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} is not a directory (or is a symlink)",
                    dir.display()
                ))
            }
            Err(_) => std::fs::create_dir(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?,
        }
    }
    Ok(dir)
}

fn record_path(dir: &Path, node: &NodeName) -> PathBuf {
    dir.join(format!("{node}.json"))
}

/// The record of `node`, if there is a readable one (never through a symlink).
pub fn read_record(dir: &Path, node: &NodeName) -> Option<Record> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        record_path(dir, node),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `record` atomically.
pub fn write_record(dir: &Path, record: &Record) -> Result<(), String> {
    let node = NodeName::parse(&record.node).map_err(|e| e.to_string())?;
    let path = record_path(dir, &node);
    let mut json = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    json.push(b'\n');
    crate::fsutil::write_atomic(&path, &json, 0o644)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `nix flake metadata --json` of `root` with the overrides: the flake's store copy and the
/// resolved lock graph.
async fn metadata(
    nix: &Path,
    root: &Path,
    inputs: &[OverrideInput],
    timeout: Duration,
) -> Result<(PathBuf, serde_json::Value), String> {
    let mut args: Vec<String> = flake::NIX_FEATURES.iter().map(|s| s.to_string()).collect();
    args.extend([
        "flake".into(),
        "metadata".into(),
        "--json".into(),
        "--no-write-lock-file".into(),
        root.display().to_string(),
    ]);
    args.extend(flake::override_args(inputs));
    let cmd = LocalCommand {
        program: nix.to_path_buf(),
        args,
        env: Vec::new(),
    };
    let o = run_process(&cmd, None, timeout, &NodeLog::discard())
        .await
        .map_err(|e| e.to_string())?;
    if !o.success() {
        return Err(nix_error(&o.stderr));
    }
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim())
        .map_err(|e| format!("nix flake metadata printed no JSON ({e})"))?;
    let path = v["path"]
        .as_str()
        .filter(|p| check_store_path(p).is_ok())
        .ok_or("nix flake metadata gave no store path")?;
    Ok((PathBuf::from(path), v["locks"].clone()))
}

/// One node evaluated alone (its toplevel and boot components, the one expression `plan` uses for
/// every node: [`flake::eval_command`]), traced when `strace` is given (strace, its output file).
async fn eval_node(
    nix: &Path,
    strace: Option<(&Path, &Path)>,
    root: &Path,
    node: &NodeName,
    inputs: &[OverrideInput],
    timeout: Duration,
) -> (Evaluated, Option<BootSet>) {
    let one = std::slice::from_ref(node);
    let mut cmd = flake::eval_command(nix, root, one, inputs);
    // Nix's own evaluation cache would answer without reading the files.
    cmd.args.insert(3, "--no-eval-cache".into());
    if let Some((strace, out)) = strace {
        let mut args: Vec<String> = ["--seccomp-bpf", "-f", "-qq", "-e", "trace=%file", "-o"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(out.display().to_string());
        args.push(cmd.program.display().to_string());
        args.append(&mut cmd.args);
        cmd = LocalCommand {
            program: strace.to_path_buf(),
            args,
            env: Vec::new(),
        };
    }
    let o = match run_process(&cmd, None, timeout, &NodeLog::discard()).await {
        Ok(o) => o,
        Err(e) => return (Err(EvalError(e.to_string())), None),
    };
    if !o.success() {
        return (Err(EvalError(nix_error(&o.stderr))), None);
    }
    match flake::parse_eval(&o.stdout, one) {
        Ok((mut systems, failed)) if failed.is_empty() => {
            let target = systems
                .remove(node)
                .unwrap_or_else(|| Err(EvalError(format!("nix eval gave no answer for {node}"))));
            let boot = flake::parse_eval_boot(&o.stdout, one).remove(node);
            (target, boot)
        }
        // Its evaluation threw: the evaluator's own message comes from the node alone.
        Ok(_) => {
            let cmd = flake::eval_one_command(nix, root, node, inputs);
            let r = match run_process(&cmd, None, timeout, &NodeLog::discard()).await {
                Ok(o) if o.success() => check_store_path(&o.stdout),
                Ok(o) => Err(EvalError(nix_error(&o.stderr))),
                Err(e) => Err(EvalError(e.to_string())),
            };
            (r, None)
        }
        Err(e) => (Err(e), None),
    }
}

/// Evaluates `node` (traced) and returns its target and, when it could be learned, its record.
async fn eval_and_record(
    s: &EvalSettings,
    nix: &Path,
    root: &Path,
    node: &NodeName,
    inputs: &[OverrideInput],
    key: &(String, PathBuf),
) -> (Evaluated, Option<BootSet>, Result<Option<Record>, String>) {
    let Some(strace) = s.strace.as_deref() else {
        let (r, boot) = eval_node(nix, None, root, node, inputs, s.timeout).await;
        return (r, boot, Ok(None));
    };
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            let (r, boot) = eval_node(nix, None, root, node, inputs, s.timeout).await;
            return (
                r,
                boot,
                Err(format!("no temporary folder for the trace: {e}")),
            );
        }
    };
    let out = tmp.path().join("trace");
    let (r, boot) = eval_node(nix, Some((strace, &out)), root, node, inputs, s.timeout).await;
    let Ok(target) = &r else {
        return (r, boot, Ok(None));
    };
    let (inputs_key, source) = key;
    let source_str = source.display().to_string();
    let deps = std::fs::File::open(&out)
        .ok()
        .and_then(|f| trace_deps(std::io::BufReader::new(f), &source_str));
    let Some(deps) = deps else {
        return (
            r.clone(),
            boot,
            Err(format!(
                "the trace of {node}'s evaluation could not be read back: not cached"
            )),
        );
    };
    // The flake may have changed while it was evaluated: then this run read another copy.
    if !deps.contains_key("flake.nix") {
        return (r.clone(), boot, Ok(None));
    }
    let record = Record {
        format: FORMAT,
        node: node.to_string(),
        inputs: inputs_key.clone(),
        source: source_str,
        deps: deps
            .into_iter()
            .map(|(rel, listed)| {
                let p = if rel.is_empty() {
                    source.clone()
                } else {
                    source.join(&rel)
                };
                let seen = seen(&p, listed);
                (rel, seen)
            })
            .collect(),
        target: target.clone(),
        boot: boot.as_ref().map(|b| b.parts.clone()).unwrap_or_default(),
    };
    (r, boot, Ok(Some(record)))
}

/// Every node's target system: from a valid record, or evaluated (each node alone, at most
/// `jobs` at once, traced, its record kept). With the cache off (or no way to key it), the
/// nodes are evaluated as [`flake::eval_targets`] does.
pub async fn eval_targets(
    s: &EvalSettings,
    root: &Path,
    nodes: &[NodeName],
    inputs: &[OverrideInput],
) -> Targets {
    let jobs = if s.jobs == 0 { default_jobs() } else { s.jobs };
    let fresh = |warnings: Vec<String>| async move {
        let (systems, boot) =
            flake::eval_targets_with_boot(s.nix.as_deref(), root, nodes, inputs, s.timeout, jobs)
                .await;
        let nodes = systems
            .into_iter()
            .map(|(n, r)| (n, (r, TargetFrom::Evaluation)))
            .collect();
        Targets {
            nodes,
            boot,
            warnings,
        }
    };
    let nix = match (&s.nix, s.cache, nodes.is_empty()) {
        (Some(nix), true, false) => nix.clone(),
        _ => return fresh(Vec::new()).await,
    };
    let dir = match cache_dir(root) {
        Ok(d) => d,
        Err(e) => return fresh(vec![format!("evaluation cache off: {e}")]).await,
    };
    let (meta, version) = tokio::join!(
        metadata(&nix, root, inputs, s.timeout),
        nix_version(&nix, s.timeout)
    );
    let ((source, locks), version) = match (meta, version) {
        (Ok(m), Ok(v)) => (m, v),
        // The evaluations report what is wrong with the flake (or nix), node by node.
        _ => return fresh(Vec::new()).await,
    };
    let key = Arc::new((inputs_key(&locks, inputs, &version), source));
    let mut out = Targets::default();
    if s.strace.is_none() {
        out.warnings.push(format!(
            "strace not found (or set {}): every node is evaluated and nothing is cached",
            super::env::STRACE
        ));
    }
    let mut todo = Vec::new();
    for n in nodes {
        match read_record(&dir, n) {
            Some(r) if still_valid(&r, n, &key.0, &key.1) => {
                if !r.boot.is_empty() {
                    out.boot.insert(n.clone(), BootSet { parts: r.boot });
                }
                out.nodes
                    .insert(n.clone(), (Ok(r.target), TargetFrom::Cache));
            }
            _ => todo.push(n.clone()),
        }
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let nix: &Path = &nix;
    let runs = todo.iter().map(|n| {
        let (sem, key) = (sem.clone(), key.clone());
        async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = sem.acquire_owned().await.ok();
            let (r, boot, rec) = eval_and_record(s, nix, root, n, inputs, &key).await;
            (n.clone(), r, boot, rec)
        }
    });
    for (n, r, boot, rec) in futures_util::future::join_all(runs).await {
        if let Some(b) = boot {
            out.boot.insert(n.clone(), b);
        }
        match rec {
            Ok(Some(rec)) => {
                if let Err(e) = write_record(&dir, &rec) {
                    out.warnings.push(format!("evaluation cache: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => out.warnings.push(format!("evaluation cache: {e}")),
        }
        out.nodes.insert(n, (r, TargetFrom::Evaluation));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_give_paths_inside_the_flake_copy_and_listed_directories() {
        let src = "/nix/store/89pmy2ask0z5r7hda50wyg6r1l8and4x-source";
        let trace = format!(
            "101 newfstatat(AT_FDCWD, \"{src}\", {{st_mode=S_IFDIR|0555}}, AT_SYMLINK_NOFOLLOW) = 0\n\
             101 newfstatat(AT_FDCWD, \"{src}//flake.lock\", 0x7ffe, AT_SYMLINK_NOFOLLOW) = -1 ENOENT (No such file or directory)\n\
             101 openat(AT_FDCWD, \"{src}/flake.nix\", O_RDONLY|O_CLOEXEC) = 12\n\
             102 openat(AT_FDCWD, \"{src}/nix/nodes\", O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY <unfinished ...>\n\
             101 newfstatat(AT_FDCWD, \"{src}/hosts/a\", {{st_mode=S_IFDIR|0555}}, 0) = 0\n\
             101 openat(AT_FDCWD, \"/nix/store/zzzz-source/lib/default.nix\", O_RDONLY) = 3\n\
             101 openat(AT_FDCWD, \"{src}-other/x\", O_RDONLY) = 3\n\
             101 +++ exited with 0 +++\n"
        );
        let deps = trace_deps(trace.as_bytes(), src).expect("readable");
        assert_eq!(
            deps.into_iter().collect::<Vec<_>>(),
            [
                ("".to_string(), false),
                ("flake.lock".into(), false),
                ("flake.nix".into(), false),
                ("hosts/a".into(), false),
                ("nix/nodes".into(), true),
            ]
        );
        let odd = format!("1 openat(AT_FDCWD, \"{src}/a\\nb\", O_RDONLY) = 3\n");
        assert!(trace_deps(odd.as_bytes(), src).is_none());
        let up = format!("1 openat(AT_FDCWD, \"{src}/a/../b\", O_RDONLY) = 3\n");
        assert!(trace_deps(up.as_bytes(), src).is_none());
    }

    #[test]
    fn what_was_seen_changes_with_content_listing_kind_and_links() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("f.nix");
        assert_eq!(seen(&f, false), Seen::Absent);
        std::fs::write(&f, "{ }").expect("write");
        let a = seen(&f, false);
        std::fs::write(&f, "{ x = 1; }").expect("write");
        assert_ne!(seen(&f, false), a);
        assert_eq!(seen(d.path(), false), Seen::Dir);
        let l1 = seen(d.path(), true);
        std::fs::write(d.path().join("g"), "").expect("write");
        assert_ne!(seen(d.path(), true), l1);
        std::os::unix::fs::symlink("f.nix", d.path().join("l")).expect("symlink");
        let l = seen(&d.path().join("l"), false);
        assert!(
            matches!(&l, Seen::Link { target, leads_to } if target == "f.nix" && matches!(**leads_to, Seen::File { .. }))
        );
        std::fs::write(&f, "{ y = 1; }").expect("write");
        assert_ne!(seen(&d.path().join("l"), false), l);
    }

    #[test]
    fn records_are_checked_path_by_path_and_keyed_by_inputs() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("a.nix"), "1").expect("write");
        let node = NodeName::parse("a").expect("name");
        let rec = Record {
            format: FORMAT,
            node: "a".into(),
            inputs: "k".into(),
            source: "/nix/store/other-source".into(),
            deps: [
                ("a.nix".to_string(), seen(&d.path().join("a.nix"), false)),
                ("b.nix".to_string(), Seen::Absent),
            ]
            .into(),
            target: "/nix/store/x-nixos-system-a".into(),
            boot: BTreeMap::new(),
        };
        assert!(still_valid(&rec, &node, "k", d.path()));
        assert!(!still_valid(&rec, &node, "other", d.path()));
        assert!(!still_valid(
            &rec,
            &NodeName::parse("b").expect("name"),
            "k",
            d.path()
        ));
        std::fs::write(d.path().join("b.nix"), "").expect("write");
        assert!(!still_valid(&rec, &node, "k", d.path()));
        std::fs::remove_file(d.path().join("b.nix")).expect("rm");
        std::fs::write(d.path().join("a.nix"), "2").expect("write");
        assert!(!still_valid(&rec, &node, "k", d.path()));
    }

    #[test]
    fn records_round_trip_and_symlinks_are_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = cache_dir(d.path()).expect("dir");
        let rec = Record {
            format: FORMAT,
            node: "a".into(),
            inputs: "k".into(),
            source: "/nix/store/s-source".into(),
            deps: BTreeMap::new(),
            target: "/nix/store/x-nixos-system-a".into(),
            boot: BTreeMap::new(),
        };
        write_record(&dir, &rec).expect("write");
        let a = NodeName::parse("a").expect("name");
        assert_eq!(read_record(&dir, &a), Some(rec.clone()));
        std::fs::rename(dir.join("a.json"), dir.join("real.json")).expect("mv");
        std::os::unix::fs::symlink("real.json", dir.join("a.json")).expect("symlink");
        assert_eq!(read_record(&dir, &a), None);
        let e = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink(d.path(), e.path().join(".fleetnix")).expect("symlink");
        assert!(cache_dir(e.path()).is_err());
    }

    #[test]
    fn default_jobs_are_bounded_by_memory() {
        assert_eq!(
            mem_available("MemTotal: 8 kB\nMemAvailable:    2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(mem_available("MemTotal: 8 kB\n"), None);
        let j = default_jobs();
        assert!((1..=flake::MAX_EVAL_JOBS).contains(&j));
    }
}
