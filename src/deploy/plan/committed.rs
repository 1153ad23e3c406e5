//! What changed since the last commit: the rendered files, firewall ports and tags against
//! `git show HEAD:nix/nodes/<node>.nix`, and the package-level closure difference.

use super::*;

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
pub(super) fn git_baseline(stderr: &str) -> &'static str {
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
pub(super) async fn git_bytes(
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
pub(super) async fn committed_all(
    git: Option<&Path>,
    root: &Path,
    plans: &[NodeSpec],
) -> Vec<Committed> {
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
pub(super) async fn closure(nix: Option<&Path>, current: &str, target: &str) -> Closure {
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
