//! The fleet's flake as Nix sees it: `--override-input INPUT URL` pairs (passed to every Nix
//! evaluation and to `nixos-rebuild`), and the evaluation of every selected node's
//! `config.system.build.toplevel` store path in ONE `nix eval` process (nothing is built).

use crate::exec::process::{run_process, LocalCommand, NodeLog};
use crate::model::NodeName;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One `--override-input INPUT URL`: the flake input `INPUT` (e.g. `nixpkgs`, or a nested
/// `agenix/nixpkgs`) taken from `URL` instead of the lock file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OverrideInput {
    /// The input's path (`nixpkgs`, `agenix/nixpkgs`).
    pub input: String,
    /// The flake reference replacing it (`path:/…`, `file:///…/nixpkgs.tar.xz`, `github:…`).
    pub url: String,
}

impl OverrideInput {
    /// Checks `input` (letters, digits, `-`, `_`, `/`-separated, not starting with `-`) and
    /// `url` (non-empty, no whitespace or control characters, not starting with `-`).
    pub fn new(input: &str, url: &str) -> Result<Self, crate::model::InvalidValue> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        };
        if !input.split('/').all(segment_ok) {
            return Err(format!(
                "--override-input: invalid input name `{}`: expected a flake input such as `nixpkgs` or `agenix/nixpkgs`",
                input.escape_debug()
            ).into());
        }
        if url.is_empty()
            || url.starts_with('-')
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "--override-input {input}: invalid flake reference `{}`: expected a URL such as `path:/abs/dir` or `file:///abs/nixpkgs.tar.xz` (no spaces)",
                url.escape_debug()
            ).into());
        }
        Ok(OverrideInput {
            input: input.to_string(),
            url: url.to_string(),
        })
    }

    /// Pairs from a flat list `[INPUT, URL, INPUT, URL, …]` (what clap collects from a
    /// repeated two-value option).
    pub fn pairs(flat: &[String]) -> Result<Vec<Self>, crate::model::InvalidValue> {
        if flat.len() % 2 != 0 {
            return Err("--override-input takes two values: INPUT URL".into());
        }
        flat.chunks(2).map(|c| Self::new(&c[0], &c[1])).collect()
    }
}

/// `--override-input INPUT URL …`, as both `nix` and `nixos-rebuild` spell it.
pub fn override_args(inputs: &[OverrideInput]) -> Vec<String> {
    inputs
        .iter()
        .flat_map(|o| {
            [
                "--override-input".to_string(),
                o.input.clone(),
                o.url.clone(),
            ]
        })
        .collect()
}

/// The experimental features `nix eval` of a flake needs on Nix 2.8 (harmless on newer Nix).
pub const NIX_FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// The `--apply` function: for each selected node, `{ path = <toplevel outPath>; }`,
/// `{ failed = true; }` (a `throw` or failed assertion, caught with `tryEval`) or
/// `{ missing = true; }` (no such `nixosConfigurations` attribute).
pub fn apply_expr(nodes: &[NodeName]) -> String {
    let list: Vec<String> = nodes
        .iter()
        .map(|n| crate::nix::string(n.as_str()))
        .collect();
    format!(
        "cs: builtins.listToAttrs (map (n: {{ name = n; value = if cs ? ${{n}} then \
         (let r = builtins.tryEval cs.${{n}}.config.system.build.toplevel.outPath; in \
         if r.success then {{ path = r.value; boot = {boot}; }} else {{ failed = true; }}) \
         else {{ missing = true; }}; }}) [ {} ])",
        list.join(" "),
        boot = BOOT_EXPR,
    )
}

/// The target's boot components for [`super::reboot`], as `kernel.nix` links them into the top
/// level (`kernel` = `${boot.kernelPackages.kernel}/${system.boot.loader.kernelFile}`, `initrd`,
/// `kernel-modules` = `system.modulesTree`, `kernel-params` = `boot.kernelParams` joined by
/// spaces, `systemd` = `systemd.package`); `null` for what the configuration does not have
/// (a container has no kernel) or what throws.
const BOOT_EXPR: &str = "(let c = cs.${n}.config; t = x: let r = builtins.tryEval (builtins.seq x x); in \
     if r.success then r.value else null; kern = (c.boot.kernel.enable or true) && c ? boot.kernelPackages.kernel \
     && c ? system.boot.loader.kernelFile; in { \
     kernel = if kern then t \"${c.boot.kernelPackages.kernel}/${c.system.boot.loader.kernelFile}\" else null; \
     initrd = if kern && (c.boot.initrd.enable or false) && c ? system.build.initialRamdisk \
     && c ? system.boot.loader.initrdFile then t \"${c.system.build.initialRamdisk}/${c.system.boot.loader.initrdFile}\" else null; \
     kernel-modules = if kern && c ? system.modulesTree then t \"${c.system.modulesTree}\" else null; \
     kernel-params = if kern && c ? boot.kernelParams then t (builtins.concatStringsSep \" \" c.boot.kernelParams) else null; \
     systemd = if c ? systemd.package then t \"${c.systemd.package}\" else null; })";

/// The boot components [`eval_command`] reported per node (see `BOOT_EXPR`); a node whose
/// answer holds none is left out (not known).
pub fn parse_eval_boot(
    json: &str,
    nodes: &[NodeName],
) -> BTreeMap<NodeName, super::reboot::BootSet> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for n in nodes {
        let mut set = super::reboot::BootSet::default();
        for c in super::reboot::COMPONENTS {
            if let Some(s) = v[n.as_str()]["boot"][c].as_str() {
                set.parts.insert(c.to_string(), s.trim().to_string());
            }
        }
        if !set.is_empty() {
            out.insert(n.clone(), set);
        }
    }
    out
}

/// `nix eval --json <root>#nixosConfigurations --apply <apply_expr>`: every node of `nodes`
/// in one evaluator (nixpkgs is imported once). Writes no lock file.
pub fn eval_command(
    nix: &Path,
    root: &Path,
    nodes: &[NodeName],
    inputs: &[OverrideInput],
) -> LocalCommand {
    let mut args: Vec<String> = NIX_FEATURES.iter().map(|s| s.to_string()).collect();
    args.extend([
        "eval".to_string(),
        "--json".to_string(),
        "--no-write-lock-file".to_string(),
        format!("{}#nixosConfigurations", root.display()),
        "--apply".to_string(),
        apply_expr(nodes),
    ]);
    args.extend(override_args(inputs));
    LocalCommand {
        program: nix.to_path_buf(),
        args,
        env: Vec::new(),
    }
}

/// `nix eval --raw <root>#nixosConfigurations.<node>.config.system.build.toplevel.outPath`:
/// one node alone, to get the evaluator's own error message for it.
pub fn eval_one_command(
    nix: &Path,
    root: &Path,
    node: &NodeName,
    inputs: &[OverrideInput],
) -> LocalCommand {
    let mut args: Vec<String> = NIX_FEATURES.iter().map(|s| s.to_string()).collect();
    args.extend([
        "eval".to_string(),
        "--raw".to_string(),
        "--no-write-lock-file".to_string(),
        format!(
            "{}#nixosConfigurations.{}.config.system.build.toplevel.outPath",
            root.display(),
            // An RFC 1123 label: an attribute path element as it is (nixos-rebuild writes it so too).
            node
        ),
    ]);
    args.extend(override_args(inputs));
    LocalCommand {
        program: nix.to_path_buf(),
        args,
        env: Vec::new(),
    }
}

/// Why a node has no evaluated system: Nix's error, or what was wrong with its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

impl From<String> for EvalError {
    fn from(s: String) -> Self {
        EvalError(s)
    }
}

/// A node's evaluated system: its store path, or why there is none.
pub type Evaluated = Result<String, EvalError>;

/// Parses [`eval_command`]'s output. Nodes absent from the answer or with a malformed entry
/// get an error; `failed` entries are returned in the second list (to evaluate alone).
pub fn parse_eval(
    json: &str,
    nodes: &[NodeName],
) -> Result<(BTreeMap<NodeName, Evaluated>, Vec<NodeName>), EvalError> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .map_err(|e| format!("nix eval printed no JSON object ({e})"))?;
    let mut out = BTreeMap::new();
    let mut failed = Vec::new();
    for n in nodes {
        let e = &v[n.as_str()];
        let r = if let Some(p) = e["path"].as_str() {
            check_store_path(p)
        } else if e["missing"] == true {
            Err(EvalError(format!(
                "the flake has no nixosConfigurations.{n} (is nix/nodes/{n}.nix rendered and, in a git repository, added?)"
            )))
        } else if e["failed"] == true {
            failed.push(n.clone());
            continue;
        } else {
            Err(EvalError(format!("nix eval gave no answer for {n}")))
        };
        out.insert(n.clone(), r);
    }
    Ok((out, failed))
}

/// A store path as evaluation gives it: absolute, one component under the store, nothing odd.
pub fn check_store_path(p: &str) -> Evaluated {
    let p = p.trim();
    let ok = p.starts_with('/')
        && !p.contains("/../")
        && p.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'+' | b'=' | b'?')
        });
    if ok {
        Ok(p.to_string())
    } else {
        Err(format!("not a store path: {:?}", p).into())
    }
}

/// The evaluator's error for a one-line report: from the first `error:` line on, traces and
/// blank lines dropped, at most 400 characters.
pub fn nix_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("error:"))
        .filter(|l| !l.is_empty() && !l.starts_with("…") && !l.starts_with("at "))
        .collect();
    let text = if lines.is_empty() {
        stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("nix eval failed")
            .trim()
            .to_string()
    } else {
        lines.join(" ")
    };
    let mut t: String = text.chars().take(400).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    t
}

/// The largest `--eval-jobs`: each evaluator of a full NixOS system holds about 1 GB.
pub const MAX_EVAL_JOBS: usize = 16;

/// `nodes` split into at most `jobs` contiguous runs of nearly equal length (the first ones one
/// longer), none empty; order kept.
pub fn eval_chunks(nodes: &[NodeName], jobs: usize) -> Vec<&[NodeName]> {
    let jobs = jobs.clamp(1, MAX_EVAL_JOBS).min(nodes.len().max(1));
    let (base, extra) = (nodes.len() / jobs, nodes.len() % jobs);
    let mut out = Vec::with_capacity(jobs);
    let mut start = 0;
    for i in 0..jobs {
        let len = base + usize::from(i < extra);
        if len > 0 {
            out.push(&nodes[start..start + len]);
        }
        start += len;
    }
    out
}

/// Evaluates the toplevel of every node of `nodes` in `jobs` concurrent `nix eval` processes
/// (one with `jobs` = 1, the default: nixpkgs is imported once; a full NixOS system's own module
/// evaluation costs seconds per node, which more processes spread over more cores), each within
/// `timeout`. A node whose evaluation fails is evaluated again alone, to report its own error;
/// when an evaluation fails without naming any node (no flake, a syntax error in `flake.nix`),
/// every node of it gets that error.
pub async fn eval_targets(
    nix: Option<&Path>,
    root: &Path,
    nodes: &[NodeName],
    inputs: &[OverrideInput],
    timeout: Duration,
    jobs: usize,
) -> BTreeMap<NodeName, Evaluated> {
    eval_targets_with_boot(nix, root, nodes, inputs, timeout, jobs)
        .await
        .0
}

/// [`eval_targets`], and each node's boot components (see `BOOT_EXPR`) where the one
/// evaluation gave them.
pub async fn eval_targets_with_boot(
    nix: Option<&Path>,
    root: &Path,
    nodes: &[NodeName],
    inputs: &[OverrideInput],
    timeout: Duration,
    jobs: usize,
) -> (
    BTreeMap<NodeName, Evaluated>,
    BTreeMap<NodeName, super::reboot::BootSet>,
) {
    let runs = eval_chunks(nodes, jobs)
        .into_iter()
        .map(|chunk| eval_together(nix, root, chunk, inputs, timeout));
    let mut systems = BTreeMap::new();
    let mut boot = BTreeMap::new();
    for (s, b) in futures_util::future::join_all(runs).await {
        systems.extend(s);
        boot.extend(b);
    }
    (systems, boot)
}

/// [`eval_targets`] of one run of nodes, in one process.
async fn eval_together(
    nix: Option<&Path>,
    root: &Path,
    nodes: &[NodeName],
    inputs: &[OverrideInput],
    timeout: Duration,
) -> (
    BTreeMap<NodeName, Evaluated>,
    BTreeMap<NodeName, super::reboot::BootSet>,
) {
    let all = |why: String| {
        (
            nodes
                .iter()
                .map(|n| (n.clone(), Err(EvalError(why.clone()))))
                .collect(),
            BTreeMap::new(),
        )
    };
    if nodes.is_empty() {
        return (BTreeMap::new(), BTreeMap::new());
    }
    let Some(nix) = nix else {
        return all(format!(
            "nix not found on PATH (or set {}): cannot evaluate the target system",
            super::env::NIX
        ));
    };
    let log = NodeLog::discard();
    let cmd = eval_command(nix, root, nodes, inputs);
    let mut boot = BTreeMap::new();
    let (mut out, alone) = match run_process(&cmd, None, timeout, &log).await {
        Err(e) => return all(e.to_string()),
        Ok(o) if o.success() => match parse_eval(&o.stdout, nodes) {
            Ok(x) => {
                boot = parse_eval_boot(&o.stdout, nodes);
                x
            }
            Err(e) => return all(e.to_string()),
        },
        Ok(o) => {
            let err = nix_error(&o.stderr);
            if !nodes.iter().any(|n| o.stderr.contains(n.as_str())) || nodes.len() == 1 {
                return all(err);
            }
            (BTreeMap::new(), nodes.to_vec())
        }
    };
    for n in alone {
        let cmd = eval_one_command(nix, root, &n, inputs);
        let r = match run_process(&cmd, None, timeout, &log).await {
            Ok(o) if o.success() => check_store_path(&o.stdout),
            Ok(o) => Err(EvalError(nix_error(&o.stderr))),
            Err(e) => Err(EvalError(e.to_string())),
        };
        out.insert(n, r);
    }
    (out, boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_chunks_split_evenly_in_order_and_never_empty() {
        let nodes: Vec<NodeName> = (1..=7).map(|i| n(&format!("n{i}"))).collect();
        let sizes = |j| {
            eval_chunks(&nodes, j)
                .iter()
                .map(|c| c.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(1), [7]);
        assert_eq!(sizes(3), [3, 2, 2]);
        assert_eq!(sizes(0), [7]);
        assert_eq!(sizes(20), [1; 7]);
        assert_eq!(eval_chunks(&nodes, 3).concat(), nodes);
        assert!(eval_chunks(&[], 4).is_empty());
    }

    fn n(s: &str) -> NodeName {
        NodeName::parse(s).expect("valid name")
    }

    #[test]
    fn override_inputs_are_checked_and_spelled_like_nix() {
        let o = OverrideInput::pairs(&[
            "nixpkgs".into(),
            "file:///x/nixpkgs.tar.xz".into(),
            "agenix/nixpkgs".into(),
            "path:/y".into(),
        ])
        .expect("valid");
        assert_eq!(
            override_args(&o),
            [
                "--override-input",
                "nixpkgs",
                "file:///x/nixpkgs.tar.xz",
                "--override-input",
                "agenix/nixpkgs",
                "path:/y"
            ]
        );
        for (i, u) in [
            ("", "path:/x"),
            ("-f", "path:/x"),
            ("a b", "path:/x"),
            ("nixpkgs", ""),
            ("nixpkgs", "--impure"),
            ("nixpkgs", "path:/My Fleet"),
            ("nixpkgs", "path:/x\n"),
            ("a//b", "path:/x"),
        ] {
            assert!(OverrideInput::new(i, u).is_err(), "{i:?} {u:?}");
        }
        assert!(OverrideInput::pairs(&["nixpkgs".into()]).is_err());
    }

    #[test]
    fn eval_answers_are_sorted_into_paths_missing_and_failed() {
        let json = r#"{"a":{"path":"/nix/store/abc-nixos-system-a"},"b":{"missing":true},"c":{"failed":true},"d":{"path":"/nix/store/x y"}}"#;
        let (out, failed) =
            parse_eval(json, &[n("a"), n("b"), n("c"), n("d"), n("e")]).expect("json");
        assert_eq!(out[&n("a")], Ok("/nix/store/abc-nixos-system-a".into()));
        assert!(out[&n("b")]
            .as_ref()
            .expect_err("missing")
            .0
            .contains("no nixosConfigurations.b"));
        assert_eq!(failed, [n("c")]);
        assert!(out[&n("d")].is_err());
        assert!(out[&n("e")].is_err());
        assert!(parse_eval("warning: x", &[n("a")]).is_err());
    }

    #[test]
    fn boot_components_are_read_where_given() {
        let json = r#"{"a":{"path":"/nix/store/a","boot":{"kernel":"/nix/store/k/bzImage","initrd":null,"kernel-params":"loglevel=4","systemd":"/nix/store/s"}},"b":{"path":"/nix/store/b","boot":{"kernel":null}}}"#;
        let b = parse_eval_boot(json, &[n("a"), n("b")]);
        assert_eq!(b[&n("a")].parts["kernel"], "/nix/store/k/bzImage");
        assert_eq!(b[&n("a")].parts["kernel-params"], "loglevel=4");
        assert!(!b[&n("a")].parts.contains_key("initrd"));
        assert!(!b.contains_key(&n("b")), "nothing known");
    }

    #[test]
    fn the_apply_function_is_valid_nix_and_quotes_names() {
        let e = apply_expr(&[n("worker-01"), n("b")]);
        assert!(crate::nix::check_syntax(&e).is_ok(), "{e}");
        assert!(e.contains(r#"[ "worker-01" "b" ]"#), "{e}");
    }

    #[test]
    fn nix_errors_are_one_line() {
        let s = "warning: Git tree is dirty\nerror: attribute 'x' missing\n\n       at /a/flake.nix:3:5:\n       … while evaluating\n       more detail\n";
        assert_eq!(nix_error(s), "error: attribute 'x' missing more detail");
        assert_eq!(nix_error("boom\n"), "boom");
    }
}
