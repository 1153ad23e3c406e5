//! What is on disk under `secrets/`: the agenix rules file `secrets.nix`, the record of
//! recipients each `.age` file was encrypted to (`recipients.json`), and the status of every
//! secret against the manifest.

use super::error::SecretsError;
use super::keys::{desired_recipients, Recipient};
use crate::model::{Fleet, NodeName};
use crate::spec::secrets::{wanted, SecretId, SecretKind, SECRETS_DIR};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// agenix's rules file, relative to the repository root.
pub const SECRETS_NIX: &str = "secrets/secrets.nix";
/// fleetnix's record of the recipients each `.age` file was encrypted to.
pub const RECIPIENTS_FILE: &str = "secrets/recipients.json";
/// The files a fleetnix run is writing, one per line, until `recipients.json` records them: if
/// it is there, a run was interrupted (killed) and those files may be unrecorded.
pub const PENDING_FILE: &str = "secrets/.pending";

/// What an interrupted run left to repair, for [`status`]'s hints.
const INTERRUPTED_HINT: &str = "an interrupted fleetnix run was writing it (secrets/.pending), so it holds the old or the new value: run that command again, or `fleetnix secrets rekey` to re-record it as it is";

/// A node's auth key as agenix names it in `secrets.nix` (`worker-01/tailscale-authkey.age`);
/// [`SecretId::rules_key`] for any secret.
pub fn rules_key(node: &NodeName) -> String {
    SecretId::new(node.clone(), SecretKind::TailscaleAuthkey).rules_key()
}

/// `wanted` only names nodes of the manifest; this error would be a bug.
fn unknown(node: &NodeName) -> SecretsError {
    SecretsError::UnknownNode {
        name: node.to_string(),
        suggestion: None,
    }
}

/// What fleetnix recorded about one `.age` file when it last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// SHA-256 of the file as written (hex), to notice edits by other tools (`agenix -e`).
    pub sha256: String,
    /// Who it was encrypted to, sorted by key.
    pub recipients: Vec<NamedKey>,
}

impl Record {
    /// The canonical keys it was encrypted to.
    pub fn keys(&self) -> BTreeSet<String> {
        self.recipients.iter().map(|k| k.key.clone()).collect()
    }
}

/// `secrets/recipients.json`: public information only (file hashes and public keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    /// Format version ([`RECORDS_VERSION`]).
    pub version: u32,
    /// By path relative to `secrets/`.
    pub files: BTreeMap<String, Record>,
}

/// Version of the `recipients.json` format.
pub const RECORDS_VERSION: u32 = 1;

impl Default for Records {
    fn default() -> Self {
        Records {
            version: RECORDS_VERSION,
            files: BTreeMap::new(),
        }
    }
}

impl Records {
    /// Reads the record file; a missing file is an empty record.
    pub fn load(root: &Path) -> Result<Self, SecretsError> {
        let path = root.join(RECIPIENTS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(SecretsError::Io { path, source }),
        }
    }

    /// Parses the text of a record file read from `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, SecretsError> {
        let r: Records = serde_json::from_str(text).map_err(|e| SecretsError::Records {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if r.version != RECORDS_VERSION {
            return Err(SecretsError::Records {
                path: path.to_path_buf(),
                reason: format!("format version {} is not {RECORDS_VERSION}", r.version),
            });
        }
        Ok(r)
    }

    /// The JSON text, with a trailing newline.
    pub fn to_text(&self) -> String {
        // Invariant: maps of strings always serialize.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Records that `key` now holds `bytes`, encrypted to `recipients`.
    pub fn set(&mut self, key: String, bytes: &[u8], recipients: &[Recipient]) {
        self.files.insert(
            key,
            Record {
                sha256: sha256_hex(bytes),
                recipients: {
                    let mut v: Vec<NamedKey> = recipients
                        .iter()
                        .map(|r| NamedKey {
                            owner: r.owner.to_string(),
                            key: r.key.clone(),
                        })
                        .collect();
                    v.sort_by(|a, b| a.key.cmp(&b.key));
                    v.dedup_by(|a, b| a.key == b.key);
                    v
                },
            },
        );
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The set of canonical keys.
pub fn key_set(recipients: &[Recipient]) -> BTreeSet<String> {
    recipients.iter().map(|r| r.key.clone()).collect()
}

/// Where a secret stands against the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Encrypted to exactly the manifest's recipients.
    UpToDate,
    /// Recipients changed since it was written: `rekey` rewrites it.
    Stale,
    /// Written or changed by another tool (e.g. `agenix -e`), so its recipients are not known:
    /// `rekey` rewrites it.
    Unrecorded,
    /// The node has a host key but no secret yet: `set-authkey` or `set-nats`.
    Missing,
    /// The node has no `host_key`: nothing can be encrypted to it.
    NoHostKey,
    /// No node of the manifest has this secret (a node that left, a control plane that moved).
    Orphan,
}

impl State {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            State::UpToDate => "up to date",
            State::Stale => "stale",
            State::Unrecorded => "unrecorded",
            State::Missing => "missing",
            State::NoHostKey => "no host key",
            State::Orphan => "orphan",
        }
    }
}

/// A recipient key with a human name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedKey {
    /// Owner (`worker-01`, `operator alice`) or `unknown key`.
    pub owner: String,
    /// Canonical public key.
    pub key: String,
}

/// One secret and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretStatus {
    /// The node it is for (for an orphan: the directory it is in).
    pub node: String,
    /// The secret's name (`tailscale-authkey`, `nats-password`, `nats-server-env`; for an
    /// orphan, the file's stem).
    pub secret: String,
    /// Path relative to the repository root.
    pub file: String,
    /// Does the file exist?
    pub exists: bool,
    /// Where it stands.
    pub state: State,
    /// Recipients it was encrypted to, if known.
    pub recipients: Vec<NamedKey>,
    /// Recipients the manifest wants.
    pub desired: Vec<NamedKey>,
    /// What to do about it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl SecretStatus {
    /// The secret, unless it is an orphan of no known kind or directory.
    pub fn id(&self) -> Option<SecretId> {
        Some(SecretId::new(
            NodeName::parse(&self.node).ok()?,
            SecretKind::from_name(&self.secret)?,
        ))
    }
}

/// The recorded entry of `key` if it still describes `bytes`.
fn recorded<'a>(records: &'a Records, key: &str, bytes: Option<&[u8]>) -> Option<&'a Record> {
    match (bytes, records.files.get(key)) {
        (Some(b), Some(r)) if r.sha256 == sha256_hex(b) => Some(r),
        _ => None,
    }
}

/// The state of every secret the manifest wants (every kind, see [`crate::spec::secrets::wanted`]), plus
/// orphaned `.age` files; sorted by node, then kind (auth key, NATS password, server
/// environment), then file.
pub fn status(fleet: &Fleet, root: &Path) -> Result<Vec<SecretStatus>, SecretsError> {
    let records = Records::load(root)?;
    let pending: BTreeSet<String> = read_optional(&root.join(PENDING_FILE))?
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let ids = wanted(fleet);
    let mut out = Vec::new();
    let mut desired_of: BTreeMap<NodeName, Option<Vec<Recipient>>> = BTreeMap::new();
    for id in &ids {
        let node = fleet
            .node(id.node.as_str())
            .ok_or_else(|| unknown(&id.node))?;
        if !desired_of.contains_key(&id.node) {
            desired_of.insert(id.node.clone(), desired_recipients(fleet, node)?);
        }
        let desired = desired_of.get(&id.node).cloned().flatten();
        let file = id.file();
        let bytes = read_optional(&root.join(&file))?;
        let recorded = recorded(&records, &id.rules_key(), bytes.as_deref());
        let (state, hint) = match (&desired, &bytes, recorded) {
            (None, _, _) => (
                State::NoHostKey,
                Some(format!(
                    "add host_key for {} to {}: {}",
                    node.name,
                    fleet.sources.nodes.display(),
                    super::keys::keyscan_hint(node)
                )),
            ),
            (Some(_), None, _) => (State::Missing, Some(id.kind.set_command(&id.node))),
            (Some(_), Some(_), None) if pending.contains(&file) => {
                (State::Unrecorded, Some(INTERRUPTED_HINT.into()))
            }
            (Some(_), Some(_), None) => (State::Unrecorded, Some("fleetnix secrets rekey".into())),
            (Some(d), Some(_), Some(r)) => {
                if r.keys() == key_set(d) {
                    (State::UpToDate, None)
                } else {
                    (State::Stale, Some("fleetnix secrets rekey".into()))
                }
            }
        };
        out.push(SecretStatus {
            node: node.name.to_string(),
            secret: id.kind.name().to_string(),
            file,
            exists: bytes.is_some(),
            state,
            recipients: recorded
                .map(|r| in_order_of(&r.recipients, desired.as_deref().unwrap_or_default()))
                .unwrap_or_default(),
            desired: desired
                .unwrap_or_default()
                .into_iter()
                .map(|r| NamedKey {
                    owner: r.owner.to_string(),
                    key: r.key,
                })
                .collect(),
            hint,
        });
    }
    let wanted_keys: BTreeSet<String> = ids.iter().map(SecretId::rules_key).collect();
    for (dir, name) in age_files(root)? {
        let key = format!("{dir}/{name}.age");
        if wanted_keys.contains(&key) {
            continue;
        }
        let file = format!("{SECRETS_DIR}/{key}");
        let bytes = read_optional(&root.join(&file))?;
        let hint = if fleet.node(&dir).is_some() {
            format!(
                "{dir} has no secret `{name}` (the control plane is {}); delete {file} if nothing uses it",
                fleet.settings.control_plane
            )
        } else {
            format!("no node `{dir}` in the manifest; delete {file} if it is gone")
        };
        out.push(SecretStatus {
            node: dir,
            secret: name,
            file,
            exists: true,
            state: State::Orphan,
            recipients: recorded(&records, &key, bytes.as_deref())
                .map(|r| r.recipients.clone())
                .unwrap_or_default(),
            desired: vec![],
            hint: Some(hint),
        });
    }
    out.sort_by(|a, b| {
        let rank = |s: &SecretStatus| SecretKind::from_name(&s.secret).map(|k| k as u8);
        // Known kinds first (None sorts before Some: reverse it), then the file name.
        (&a.node, rank(a).is_none(), rank(a), &a.file).cmp(&(
            &b.node,
            rank(b).is_none(),
            rank(b),
            &b.file,
        ))
    });
    Ok(out)
}

/// Recorded recipients, those the manifest still wants first in its order, then the others.
fn in_order_of(recorded: &[NamedKey], desired: &[Recipient]) -> Vec<NamedKey> {
    let mut out: Vec<NamedKey> = desired
        .iter()
        .filter_map(|d| recorded.iter().find(|r| r.key == d.key).cloned())
        .collect();
    out.extend(
        recorded
            .iter()
            .filter(|r| !desired.iter().any(|d| d.key == r.key))
            .cloned(),
    );
    out
}

/// Every `secrets/<dir>/<name>.age` file as `(dir, name)`, sorted.
fn age_files(root: &Path) -> Result<Vec<(String, String)>, SecretsError> {
    let dir = root.join(SECRETS_DIR);
    let mut out = Vec::new();
    for sub in read_dir_names(&dir)? {
        let path = dir.join(&sub);
        if !path.is_dir() {
            continue;
        }
        for name in read_dir_names(&path)? {
            if let Some(stem) = name.strip_suffix(".age") {
                if path.join(&name).is_file() {
                    out.push((sub.clone(), stem.to_string()));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Names of the entries of `dir` (none if it does not exist).
fn read_dir_names(dir: &Path) -> Result<Vec<String>, SecretsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(SecretsError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SecretsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        out.push(entry.file_name().to_string_lossy().to_string());
    }
    Ok(out)
}

/// The file's bytes, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SecretsError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
