//! The policy files of `fleetnix acl`: where they live in the fleet directory, which policy a
//! command works on (a file, or the one rendered from the fleet), checking a policy file
//! against the fleet, and the report `acl check` prints.

use super::check::{self, Finding};
use super::diff::{self, PolicyDiff};
use super::matrix::{self, Matrix};
use super::policy::{self, PolicyError};
use crate::model::Fleet;
use std::path::{Path, PathBuf};

/// The policy file, relative to the fleet directory.
pub const POLICY_FILE: &str = "acl-policy.hujson";
/// The backups of replaced tailnet policies (and the remembered ETag), relative to the fleet
/// directory.
pub const BACKUP_DIR: &str = "acl-backups";

/// Errors of reading, checking and writing policy files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The policy file to check does not exist.
    #[error("no policy file {}: pass one (`fleetnix acl check FILE`) or write the rendered one with `fleetnix acl render -o {}`", path.display(), path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The policy is not HuJSON (or not an object).
    #[error("{name}: {source}")]
    Policy {
        /// The policy's name (its file, or "rendered from the fleet").
        name: String,
        /// Why.
        source: PolicyError,
    },
}

/// The backup directory under `fleet_dir`.
pub fn backup_dir(fleet_dir: &Path) -> PathBuf {
    fleet_dir.join(BACKUP_DIR)
}

/// The file `acl check` reads: `file`, or the fleet directory's [`POLICY_FILE`].
pub fn policy_path(fleet_dir: &Path, file: Option<&Path>) -> PathBuf {
    file.map_or_else(|| fleet_dir.join(POLICY_FILE), Path::to_path_buf)
}

fn read(path: &Path) -> Result<String, FilesError> {
    std::fs::read_to_string(path).map_err(|source| FilesError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A policy text and what to call it in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyText {
    /// The HuJSON text.
    pub text: String,
    /// Its file as given, or `rendered from the fleet`.
    pub name: String,
}

/// The policy `acl matrix|diff|set` work on: `file`, or the one rendered from the fleet
/// (`sources` names the fleet files in its header).
pub fn policy_text(
    fleet: &Fleet,
    sources: &str,
    file: Option<&Path>,
) -> Result<PolicyText, FilesError> {
    Ok(match file {
        Some(p) => PolicyText {
            text: read(p)?,
            name: p.display().to_string(),
        },
        None => PolicyText {
            text: crate::acl::render::render(fleet, sources).text,
            name: "rendered from the fleet".to_string(),
        },
    })
}

/// `acl matrix`: who can reach what under `policy`.
pub fn matrix_of(fleet: &Fleet, policy: &PolicyText) -> Result<Matrix, FilesError> {
    let parsed = policy::parse(&policy.text).map_err(|source| FilesError::Policy {
        name: policy.name.clone(),
        source,
    })?;
    Ok(matrix::matrix(fleet, &parsed.policy))
}

/// `acl diff`: the blast radius of replacing `old` with `new` (see [`crate::acl::diff`]).
pub fn blast_radius(
    fleet: &Fleet,
    old: &PolicyText,
    new: &PolicyText,
) -> Result<PolicyDiff, FilesError> {
    let parse = |p: &PolicyText| {
        policy::parse(&p.text)
            .map(|x| x.policy)
            .map_err(|source| FilesError::Policy {
                name: p.name.clone(),
                source,
            })
    };
    let (o, n) = (parse(old)?, parse(new)?);
    Ok(diff::diff(fleet, &o, &n, &old.name, &new.name))
}

/// `acl render -o FILE`: the rendered policy written atomically (mode 0644).
pub fn write_rendered(fleet: &Fleet, sources: &str, path: &Path) -> Result<(), FilesError> {
    let r = crate::acl::render::render(fleet, sources);
    crate::fsutil::write_atomic(path, r.text.as_bytes(), 0o644).map_err(|source| {
        FilesError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// What `acl check` found in one policy file.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The file, as given.
    pub path: PathBuf,
    /// The findings (none: the policy agrees with the fleet).
    pub findings: Vec<Finding>,
}

/// `acl check`: the policy file at `path` against the fleet.
pub fn check_file(fleet: &Fleet, path: &Path) -> Result<CheckReport, FilesError> {
    if !path.exists() {
        return Err(FilesError::Missing {
            path: path.to_path_buf(),
        });
    }
    let text = read(path)?;
    let findings = check::check(fleet, &text).map_err(|source| FilesError::Policy {
        name: path.display().to_string(),
        source,
    })?;
    Ok(CheckReport {
        path: path.to_path_buf(),
        findings,
    })
}

impl CheckReport {
    /// Did the policy agree with the fleet?
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// The report as JSON: `policy`, `ok`, `findings`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "policy": self.path.display().to_string(),
            "ok": self.ok(),
            "findings": self.findings,
        })
    }

    /// The report as text lines (for stdout): `file:line:col: kind: message`, each followed by
    /// its hint if it has one, or one `ok: …` line.
    pub fn lines(&self) -> Vec<String> {
        let path = self.path.display();
        let mut out = Vec::new();
        for f in &self.findings {
            let kind = serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            out.push(format!(
                "{path}:{}:{}: {kind}: {}",
                f.line, f.column, f.message
            ));
            if let Some(h) = &f.hint {
                out.push(format!("    hint: {h}"));
            }
        }
        if self.ok() {
            out.push(format!("ok: {path} agrees with the fleet"));
        }
        out
    }

    /// The closing line for stderr when something was found.
    pub fn summary(&self) -> Option<String> {
        (!self.ok()).then(|| {
            format!(
                "{} finding(s) in {}",
                self.findings.len(),
                self.path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_default_to_the_fleet_directory() {
        let d = Path::new("/f/fleet");
        assert_eq!(policy_path(d, None), d.join("acl-policy.hujson"));
        assert_eq!(
            policy_path(d, Some(Path::new("x.hujson"))),
            Path::new("x.hujson")
        );
        assert_eq!(backup_dir(d), d.join("acl-backups"));
    }
}
