//! Applying the policy through the API: `get` (backup + remembered ETag), `diff`, `set`
//! (local parse → lock-out guard → API validation → backup → POST with `If-Match`). Minting
//! auth keys moved to [`crate::tailscale::authkey`].

use super::check::principals::{deployer_principal, node_principals, NONROOT_PROBE};
use super::diff::{self, PolicyDiff};
use super::eval::Evaluator;
use super::policy::{self, PolicyError};
use crate::model::Fleet;
use crate::tailscale::api::{ApiError, Client, RemotePolicy};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the file (in the backup directory) remembering the ETag of the last policy read.
pub const ETAG_FILE: &str = "last-etag";

/// Errors of get/diff/set.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The new policy is not valid HuJSON.
    #[error("the new policy is not valid: {0}")]
    Policy(#[from] PolicyError),
    /// The new policy would lock the deployer or operators out.
    #[error("refusing to set a policy that cuts Tailscale SSH needed by the fleet:\n  {}\nnothing was changed; fix the policy, or pass --force to apply it anyway", .cut.join("\n  "))]
    LockOut {
        /// Each cut access, e.g. `deploys from control-01 to worker-01 as root`.
        cut: Vec<String>,
    },
    /// The new policy takes access away and `--yes` was not given.
    #[error("refusing to set a policy that takes access away from {}:\n{}nothing was changed; review the losses and pass --yes to apply it", .diff.losers().join(", "), .diff.text())]
    Losses {
        /// The blast radius, current policy → new.
        diff: Box<PolicyDiff>,
    },
    /// The current policy cannot be evaluated, so what the change takes away is unknown.
    #[error("cannot evaluate the current tailnet policy ({reason}), so what the new one takes away is unknown; nothing was changed; pass --yes to apply it anyway")]
    BlastUnknown {
        /// Why the current policy cannot be evaluated.
        reason: String,
    },
    /// The remote policy changed since it was read.
    #[error("someone changed the tailnet policy since you last read it (ETag then {remembered}, now {current}); nothing was overwritten. Review the change with `fleetnix acl diff` (which records the new ETag) and run `fleetnix acl set` again")]
    Changed {
        /// The ETag remembered by `get`/`diff`.
        remembered: String,
        /// The ETag now.
        current: String,
    },
    /// A local file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The Tailscale API client for `fleet`'s tailnet: the token from `token_file`, else
/// `TS_API_KEY`; the API's address from `FLEETNIX_TS_API_URL` (tests), else Tailscale's.
pub fn api_client(fleet: &Fleet, token_file: Option<&Path>) -> Result<Client, ApiError> {
    let token = crate::tailscale::api::token_from(token_file)?;
    Client::new(
        &crate::tailscale::api::base_url_from_env(),
        &fleet.settings.tailnet,
        token,
    )
}

/// Today's local date as `YYYY-MM-DD`.
pub fn today() -> String {
    jiff::ZonedDateTime::now().date().to_string()
}

/// Writes `text` to `dir/acl-backup-<date>.hujson`, or `…-<date>.1.hujson`, `.2`, … if taken.
/// Never overwrites a file.
pub fn write_backup(dir: &Path, date: &str, text: &str) -> Result<PathBuf, ApplyError> {
    // A symlink at the backup directory (a tracked `fleet/acl-backups -> /elsewhere`) is refused:
    // backups stay in the fleet directory.
    crate::fsutil::create_dir_in_repo(dir.parent().unwrap_or(dir), dir)
        .map_err(io("cannot create the backup directory", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".acl-backup-")
        .tempfile_in(dir)
        .map_err(io("cannot write a backup in", dir))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io("cannot write a backup in", dir))?;
    for n in 0u32..10_000 {
        let name = if n == 0 {
            format!("acl-backup-{date}.hujson")
        } else {
            format!("acl-backup-{date}.{n}.hujson")
        };
        let path = dir.join(name);
        match tmp.persist_noclobber(&path) {
            Ok(_) => return Ok(path),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => tmp = e.file,
            Err(e) => return Err(io("cannot write the backup", &path)(e.error)),
        }
    }
    Err(io("cannot find a free backup name in", dir)(
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

/// The ETag remembered by the last `get`/`diff`/`set`, if any.
pub fn remembered_etag(dir: &Path) -> Result<Option<String>, ApplyError> {
    let p = dir.join(ETAG_FILE);
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", &p)(e)),
    }
}

fn remember_etag(dir: &Path, etag: &str) -> Result<(), ApplyError> {
    let p = dir.join(ETAG_FILE);
    crate::fsutil::write_atomic_in_repo(
        dir.parent().unwrap_or(dir),
        &p,
        format!("{etag}\n").as_bytes(),
        0o644,
    )
    .map_err(io("cannot write", &p))
}

/// What `get` did.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The remote policy.
    pub remote: RemotePolicy,
    /// Where it was backed up.
    pub backup: PathBuf,
}

/// `acl get`: reads the remote policy, backs it up in `dir`, remembers its ETag.
pub async fn get(client: &Client, dir: &Path) -> Result<Fetched, ApplyError> {
    let remote = client.get_policy().await?;
    let backup = write_backup(dir, &today(), &remote.text)?;
    remember_etag(dir, &remote.etag)?;
    Ok(Fetched { remote, backup })
}

/// A unified diff from `old` to `new` (empty when equal).
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

/// The remote policy, for `acl diff`; remembers its ETag (it has now been seen).
pub async fn remote(client: &Client, dir: &Path) -> Result<RemotePolicy, ApplyError> {
    let remote = client.get_policy().await?;
    remember_etag(dir, &remote.etag)?;
    Ok(remote)
}

/// `acl diff`: the remote policy against `local`; remembers the remote ETag (it has now been seen).
pub async fn diff(
    client: &Client,
    dir: &Path,
    local: &str,
    local_name: &str,
) -> Result<String, ApplyError> {
    let remote = client.get_policy().await?;
    remember_etag(dir, &remote.etag)?;
    Ok(unified_diff(
        &remote.text,
        local,
        "tailnet (remote)",
        local_name,
    ))
}

/// The fleet SSH that `policy_text` would not allow: deploys from each deployer (fleet.yml
/// `deployers`) to every node as its SSH user (accept rule + port 22), and the operators' SSH to
/// every node (accept or check rule + port 22; as root when they deploy, else as a non-root user).
pub fn lock_out(fleet: &Fleet, policy_text: &str) -> Result<Vec<String>, PolicyError> {
    let parsed = policy::parse(policy_text)?;
    let nodes = node_principals(fleet);
    let ev = Evaluator::new(&parsed.policy).with_nodes(nodes.clone());
    let ops_group = &fleet.settings.operators.group;
    let ops = super::eval::Principal::group(ops_group);
    let ops_user = if fleet.settings.deployers.contains(ops_group) {
        "root"
    } else {
        NONROOT_PROBE
    };
    let mut cut = Vec::new();
    for (n, d) in fleet.nodes.iter().zip(nodes.iter()) {
        for dep in &fleet.settings.deployers {
            let p = deployer_principal(dep);
            if !ev.ssh_works(&p, d, &n.ssh_user) {
                cut.push(format!(
                    "deploys from {dep} to {} as {}",
                    n.name, n.ssh_user
                ));
            }
        }
        // Operators may be asked to re-authenticate (`check`); they are cut only when denied.
        let ops_ok = !matches!(ev.ssh(&ops, d, ops_user), super::eval::SshDecision::Deny)
            && ev.reach(&ops, d, 22, policy::TCP).is_some();
        if !ops_ok {
            let as_user = if ops_user == "root" {
                "root"
            } else {
                "a non-root user"
            };
            cut.push(format!("{} to {} as {as_user}", ops.name, n.name));
        }
    }
    Ok(cut)
}

/// Options of [`set`].
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    /// Apply even if the lock-out guard objects.
    pub force: bool,
    /// Apply even if some principal loses access ([`PolicyDiff::has_losses`]).
    pub yes: bool,
}

/// What `set` did.
#[derive(Debug, Clone)]
pub struct SetOutcome {
    /// Where the replaced policy was backed up.
    pub backup: PathBuf,
    /// The new ETag.
    pub etag: String,
    /// Lock-out guard objections overridden by `--force`.
    pub forced: Vec<String>,
    /// The remote policy was already identical: nothing was sent.
    pub unchanged: bool,
    /// The blast radius, current policy → new (`None`: the current one could not be evaluated).
    pub blast: Option<PolicyDiff>,
}

/// `acl set`: replaces the tailnet policy with `new_text`.
///
/// Order: parse locally; lock-out guard; read the current policy (ETag); if an ETag was remembered
/// and differs, stop ([`ApplyError::Changed`]); the blast radius (current → new): if anyone loses
/// access, stop unless `yes` ([`ApplyError::Losses`]); validate with the API; back the current
/// policy up; POST with `If-Match`. On 412 the backup just written is removed and nothing else is
/// written.
pub async fn set(
    client: &Client,
    fleet: &Fleet,
    dir: &Path,
    new_text: &str,
    opts: &SetOptions,
) -> Result<SetOutcome, ApplyError> {
    // The API is sent the policy without an editor's byte order mark.
    let (new_text, _) = crate::fsutil::strip_bom(new_text);
    policy::parse(new_text)?;
    let cut = lock_out(fleet, new_text)?;
    if !cut.is_empty() && !opts.force {
        return Err(ApplyError::LockOut { cut });
    }
    let current = client.get_policy().await?;
    let etag = match remembered_etag(dir)? {
        Some(r) if r.trim_matches('"') != current.etag.trim_matches('"') => {
            return Err(ApplyError::Changed {
                remembered: r,
                current: current.etag,
            })
        }
        _ => current.etag.clone(),
    };
    let blast = match diff::diff_texts(
        fleet,
        &current.text,
        new_text,
        "tailnet (remote)",
        "the new policy",
    ) {
        Ok(d) => {
            if d.has_losses() && !opts.yes {
                return Err(ApplyError::Losses { diff: Box::new(d) });
            }
            Some(d)
        }
        Err(e) if !opts.yes => {
            return Err(ApplyError::BlastUnknown {
                reason: e.to_string(),
            })
        }
        Err(_) => None,
    };
    client.validate_policy(new_text).await?;
    let backup = write_backup(dir, &today(), &current.text)?;
    if current.text == new_text {
        remember_etag(dir, &current.etag)?;
        return Ok(SetOutcome {
            backup,
            etag,
            forced: cut,
            unchanged: true,
            blast,
        });
    }
    match client.set_policy(new_text, &etag).await {
        Ok(stored) => {
            if !stored.etag.is_empty() {
                remember_etag(dir, &stored.etag)?;
            }
            Ok(SetOutcome {
                backup,
                etag: stored.etag,
                forced: cut,
                unchanged: false,
                blast,
            })
        }
        Err(e) => {
            if matches!(e, ApiError::PreconditionFailed { .. }) {
                // The backup is of a policy that was not replaced: take it back.
                let _ = std::fs::remove_file(&backup);
            }
            Err(e.into())
        }
    }
}
