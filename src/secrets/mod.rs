//! Age-encrypted per-node secrets in agenix's layout: each node's Tailscale auth key and NATS
//! password, and the control plane's nats-server environment file (see [`crate::spec::secrets`]).
//!
//! `secrets/<node>/<secret>.age` is encrypted to the node's SSH host key (`host_key` in
//! nodes.yml) and the operators' keys (fleet.yml), never to another node. `secrets/secrets.nix`
//! is agenix's rules file for every wanted secret, regenerated from the manifest, so `agenix -e`
//! and `agenix -r` keep working. `secrets/recipients.json` records, for each `.age` file fleetnix
//! wrote, its SHA-256 and the public keys it was encrypted to; `rekey` rewrites exactly the files
//! whose recorded recipients differ from the manifest (or that another tool changed).
//!
//! One path serves every kind: [`write_secrets`] encrypts and records, [`rekey`] re-encrypts,
//! [`status`] reports, [`decrypt_secret`] reads back, all keyed by [`SecretId`] (node, kind).
//! [`set_authkey`] and [`set_nats`] only decide what to write.
//!
//! Plaintexts live in [`Secret`]s or [`Zeroizing`] buffers and are never written anywhere
//! but into age ciphertext: no temporary plaintext files, no argv, no logs, no error messages.
//!
//! Stage 3 (secrets). Imports: `model`, `spec` (which secrets exist), `bus` (the NATS
//! credentials), `tailscale` (minting a key), the foundations.

mod error;
mod keys;
pub mod mint;
mod nats;
pub mod secrets_nix;
pub mod source;
mod store;

pub use crate::spec::secrets::{wanted, SecretId, SecretKind, MAX_AUTHKEY_BYTES, SECRETS_DIR};
pub use error::SecretsError;
pub use keys::{
    authkey_from_env, authkey_from_file, desired_recipients, keyscan_hint, operator_recipients,
    parse_authkey, parse_recipient, read_authkey, Identities, Owner, Recipient,
};
pub use nats::{set_nats, NatsReport};
pub use source::identity_or_default;
pub use store::{
    rules_key, sha256_hex, status, NamedKey, Record, Records, SecretStatus, State, PENDING_FILE,
    RECIPIENTS_FILE, RECORDS_VERSION, SECRETS_NIX,
};

use crate::fsutil::write_atomic_in_repo;
use crate::model::{Fleet, Node, NodeName};
use crate::secret::Secret;
use crate::secrets::secrets_nix::render_secrets_nix;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Environment variable the CLI reads the auth key from.
pub const AUTHKEY_ENV: &str = crate::secret::env::AUTHKEY;

/// Mode of written files: ciphertext and public keys only.
const FILE_MODE: u32 = 0o644;

/// A node that was not written, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The node.
    pub node: String,
    /// Why.
    pub reason: String,
    /// The command or edit that fixes it.
    pub fix: String,
}

/// One `.age` file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    /// The node.
    pub node: String,
    /// The secret's name (`tailscale-authkey`, `nats-password`, `nats-server-env`).
    pub secret: String,
    /// Path relative to the repository root.
    pub file: String,
    /// Who can decrypt it.
    pub recipients: Vec<Recipient>,
}

/// What `set_authkey`, `set_nats`, `write_secrets` or `rekey` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Files written, sorted.
    pub written: Vec<Written>,
    /// Secrets already encrypted to the right recipients (and, for `set-nats`, holding the
    /// right content), left untouched, sorted.
    pub unchanged: Vec<String>,
    /// Nodes skipped (no host key, no secret yet).
    pub skipped: Vec<Skipped>,
    /// Existing secrets that could not be brought up to date (rekey: the node lost its host key).
    pub stuck: Vec<Skipped>,
    /// Was `secrets/secrets.nix` created or changed?
    pub secrets_nix_changed: bool,
    /// Things worth knowing that are not failures.
    pub warnings: Vec<String>,
}

fn io_err(path: PathBuf) -> impl FnOnce(std::io::Error) -> SecretsError {
    move |source| SecretsError::Io { path, source }
}

/// Checks node names given by a user against the manifest; the error suggests the closest name.
pub fn select_nodes(fleet: &Fleet, names: &[String]) -> Result<Vec<NodeName>, SecretsError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            // Never echo an argument that may be a secret pasted by mistake.
            if n.starts_with("tskey") {
                return Err(SecretsError::KeyAsArgument { position: i + 1 });
            }
            let name =
                NodeName::parse(n).map_err(|_| SecretsError::NotANodeName { position: i + 1 })?;
            find_node(fleet, &name).map(|node| node.name.clone())
        })
        .collect()
}

fn suggest(fleet: &Fleet, name: &str) -> Option<String> {
    crate::suggest::closest_in(name, fleet.nodes.iter().map(|n| n.name.as_str()))
        .map(str::to_string)
}

/// The node called `name`, or an error with the closest name.
fn find_node<'a>(fleet: &'a Fleet, name: &NodeName) -> Result<&'a Node, SecretsError> {
    fleet
        .node(name.as_str())
        .ok_or_else(|| SecretsError::UnknownNode {
            name: name.to_string(),
            suggestion: suggest(fleet, name.as_str()),
        })
}

fn no_operator_warning(fleet: &Fleet) -> Option<String> {
    fleet.settings.operators.keys.is_empty().then(|| {
        format!(
            "no operator keys in {} (operators.keys): only each node can decrypt its own secrets, and `secrets rekey` needs that node's host key",
            fleet.sources.fleet.display()
        )
    })
}

fn no_host_key(fleet: &Fleet, node: &Node) -> Skipped {
    Skipped {
        node: node.name.to_string(),
        reason: format!("no host_key in {}", fleet.sources.nodes.display()),
        fix: keyscan_hint(node),
    }
}

/// Writes `secrets.nix` and `recipients.json` if their text changed; says whether secrets.nix did.
fn write_indexes(fleet: &Fleet, root: &Path, records: &Records) -> Result<bool, SecretsError> {
    let nix_text = render_secrets_nix(fleet)?;
    let nix_path = root.join(SECRETS_NIX);
    let nix_changed = store::read_optional(&nix_path)?.as_deref() != Some(nix_text.as_bytes());
    let rec_path = root.join(RECIPIENTS_FILE);
    let rec_text = records.to_text();
    if store::read_optional(&rec_path)?.as_deref() != Some(rec_text.as_bytes()) {
        write_atomic_in_repo(root, &rec_path, rec_text.as_bytes(), FILE_MODE)
            .map_err(io_err(rec_path))?;
    }
    if nix_changed {
        write_atomic_in_repo(root, &nix_path, nix_text.as_bytes(), FILE_MODE)
            .map_err(io_err(nix_path))?;
    }
    Ok(nix_changed)
}

/// A secret encrypted in memory, not yet written.
struct Sealed {
    id: SecretId,
    bytes: Vec<u8>,
    recipients: Vec<Recipient>,
}

fn seal(
    id: &SecretId,
    recipients: Vec<Recipient>,
    plaintext: &[u8],
) -> Result<Sealed, SecretsError> {
    let bytes = keys::encrypt(&recipients, plaintext).map_err(|reason| SecretsError::Encrypt {
        file: id.file(),
        reason,
    })?;
    Ok(Sealed {
        id: id.clone(),
        bytes,
        recipients,
    })
}

/// Writes sealed secrets (each atomically), records them, and regenerates the indexes.
fn commit(
    fleet: &Fleet,
    root: &Path,
    records: &mut Records,
    sealed: Vec<Sealed>,
    report: &mut Report,
) -> Result<(), SecretsError> {
    // Until recipients.json records them, the files about to be written are listed in
    // secrets/.pending: a run killed half-way leaves each one old or new (atomic writes), and
    // `secrets list` names the ones an interrupted run may have rewritten.
    let pending_path = root.join(PENDING_FILE);
    if !sealed.is_empty() {
        let mut list: Vec<String> = sealed.iter().map(|s| s.id.file()).collect();
        list.push(String::new());
        write_atomic_in_repo(root, &pending_path, list.join("\n").as_bytes(), FILE_MODE)
            .map_err(io_err(pending_path.clone()))?;
    }
    for s in sealed {
        let file = s.id.file();
        let path = root.join(&file);
        write_atomic_in_repo(root, &path, &s.bytes, FILE_MODE).map_err(io_err(path))?;
        records.set(s.id.rules_key(), &s.bytes, &s.recipients);
        report.written.push(Written {
            node: s.id.node.to_string(),
            secret: s.id.kind.name().to_string(),
            file,
            recipients: s.recipients,
        });
    }
    report.written.sort_by(|a, b| a.file.cmp(&b.file));
    report.secrets_nix_changed = write_indexes(fleet, root, records)?;
    match std::fs::remove_file(&pending_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SecretsError::Io {
            path: pending_path,
            source,
        }),
    }
}

/// Encrypts each plaintext to its secret's file under `root` (recipients: the node's host key
/// and the operators' keys), then regenerates `secrets/secrets.nix` and
/// `secrets/recipients.json`. The one write path of every kind of secret.
///
/// Secrets of nodes without a `host_key` are skipped and reported with the command that fetches
/// it; a secret given twice is written once (the first). Everything is checked (node names,
/// every key of the manifest) and encrypted in memory before the first file is written; each
/// file is written atomically.
pub fn write_secrets(
    fleet: &Fleet,
    root: &Path,
    items: &[(SecretId, &[u8])],
) -> Result<Report, SecretsError> {
    // Every key of the manifest must parse, since secrets.nix lists them all.
    render_secrets_nix(fleet)?;
    let mut records = Records::load(root)?;
    let mut report = Report::default();
    report.warnings.extend(no_operator_warning(fleet));
    let mut sealed = Vec::new();
    let mut seen = BTreeSet::new();
    for (id, plaintext) in items {
        let node = find_node(fleet, &id.node)?;
        if !seen.insert(id) {
            continue;
        }
        let Some(recipients) = desired_recipients(fleet, node)? else {
            if !report.skipped.iter().any(|s| s.node == node.name.as_str()) {
                report.skipped.push(no_host_key(fleet, node));
            }
            continue;
        };
        sealed.push(seal(id, recipients, plaintext)?);
    }
    commit(fleet, root, &mut records, sealed, &mut report)?;
    Ok(report)
}

/// Checks, without writing anything, that `id` could be written now: its node is in the manifest
/// and has a host key, every key of the manifest parses and `recipients.json` is readable. For
/// callers that must not obtain a secret they cannot store (`fleetnix authkey mint`).
pub fn check_writable(fleet: &Fleet, root: &Path, id: &SecretId) -> Result<(), SecretsError> {
    let node = find_node(fleet, &id.node)?;
    render_secrets_nix(fleet)?;
    Records::load(root)?;
    match desired_recipients(fleet, node)? {
        Some(_) => Ok(()),
        None => Err(no_host_key_error(fleet, node, id, String::new())),
    }
}

fn no_host_key_error(fleet: &Fleet, node: &Node, id: &SecretId, because: String) -> SecretsError {
    SecretsError::NoHostKey {
        node: node.name.to_string(),
        file: id.file(),
        nodes_file: fleet.sources.nodes.clone(),
        because,
        fix: keyscan_hint(node),
    }
}

/// Encrypts `key` for each of `nodes` to `secrets/<node>/tailscale-authkey.age` under `root`
/// (see [`write_secrets`]).
///
/// Nodes without a `host_key` are skipped and reported with the command that fetches it.
/// Everything is checked (node names, every key of the manifest, the auth key) and encrypted in
/// memory before the first file is written; each file is written atomically.
pub fn set_authkey(
    fleet: &Fleet,
    root: &Path,
    nodes: &[NodeName],
    key: &Secret,
) -> Result<Report, SecretsError> {
    for n in nodes {
        find_node(fleet, n)?;
    }
    // Re-check the key: library callers may build a Secret by hand.
    let key = parse_authkey(key.expose().as_bytes(), "the caller")?;
    // The fleet decides which kind its nodes enrol with.
    fleet
        .settings
        .tailscale_auth
        .check(key.expose())
        .map_err(|reason| SecretsError::WrongCredential {
            origin: "the caller".into(),
            reason,
        })?;
    let items: Vec<(SecretId, &[u8])> = nodes
        .iter()
        .map(|n| {
            (
                SecretId::new(n.clone(), SecretKind::TailscaleAuthkey),
                key.expose().as_bytes(),
            )
        })
        .collect();
    write_secrets(fleet, root, &items)
}

/// Options of [`rekey`].
#[derive(Debug, Clone, Default)]
pub struct RekeyOptions {
    /// Rewrite every secret, even those already encrypted to the right recipients.
    pub force: bool,
}

/// Re-encrypts every existing secret, of every kind, whose recipients differ from the manifest
/// (or whose recipients are unknown because another tool wrote it), decrypting with `identity`.
///
/// All those files are decrypted in memory first: if the identity cannot decrypt one of them,
/// the error names it and nothing is written. Untouched files keep their exact bytes.
pub fn rekey(
    fleet: &Fleet,
    root: &Path,
    identity: &Path,
    opts: &RekeyOptions,
) -> Result<Report, SecretsError> {
    render_secrets_nix(fleet)?;
    let identities = Identities::read(identity)?;
    let statuses = status(fleet, root)?;
    let mut records = Records::load(root)?;
    let mut report = Report::default();
    report.warnings.extend(no_operator_warning(fleet));
    let mut todo = Vec::new();
    for st in &statuses {
        match st.state {
            State::UpToDate if !opts.force => report.unchanged.push(st.file.clone()),
            State::UpToDate | State::Stale | State::Unrecorded => todo.push(st),
            State::Missing => report.skipped.push(Skipped {
                node: st.node.clone(),
                reason: format!("{} does not exist", st.file),
                fix: st.hint.clone().unwrap_or_default(),
            }),
            State::NoHostKey => {
                if st.exists {
                    report.stuck.push(Skipped {
                        node: st.node.clone(),
                        reason: format!(
                            "{} exists but the node has no host_key in {}",
                            st.file,
                            fleet.sources.nodes.display()
                        ),
                        fix: st.hint.clone().unwrap_or_default(),
                    });
                }
            }
            State::Orphan => report.warnings.push(format!(
                "{}: {}",
                st.file,
                st.hint.clone().unwrap_or_default()
            )),
        }
    }
    // Decrypt everything first: a wrong identity fails before anything is touched.
    let mut plain = Vec::new();
    for st in todo {
        // Invariant: status() gives these states only for wanted secrets of manifest nodes.
        let id = st.id().ok_or_else(|| SecretsError::UnknownNode {
            name: st.node.clone(),
            suggestion: None,
        })?;
        let text = decrypt_with(&identities, root, &id, identity)?;
        let recipients =
            desired_recipients(fleet, find_node(fleet, &id.node)?)?.ok_or_else(|| {
                SecretsError::NoSecret {
                    node: st.node.clone(),
                    file: st.file.clone(),
                    fix: id.kind.set_command(&id.node),
                }
            })?;
        plain.push((id, text, recipients));
    }
    let mut sealed = Vec::new();
    for (id, text, recipients) in plain {
        sealed.push(seal(&id, recipients, &text)?);
    }
    // Forget records of files that no longer exist.
    records
        .files
        .retain(|k, _| root.join(SECRETS_DIR).join(k).is_file());
    commit(fleet, root, &mut records, sealed, &mut report)?;
    Ok(report)
}

/// Decrypts `id`'s file under `root` with already-read identities.
fn decrypt_with(
    identities: &Identities,
    root: &Path,
    id: &SecretId,
    identity: &Path,
) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
    let file = id.file();
    let Some(bytes) = store::read_optional(&root.join(&file))? else {
        return Err(SecretsError::NoSecret {
            node: id.node.to_string(),
            fix: id.kind.set_command(&id.node),
            file,
        });
    };
    identities
        .decrypt(&bytes, id.kind.max_bytes())
        .map_err(|reason| SecretsError::Decrypt {
            file,
            identity: identity.to_path_buf(),
            reason,
        })
}

/// Decrypts the secret `id` under `root` with the identity file `identity` (an operator's age
/// or SSH private key, or the node's host key), into zeroized memory.
pub fn decrypt_secret(
    root: &Path,
    id: &SecretId,
    identity: &Path,
) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
    let file = id.file();
    if store::read_optional(&root.join(&file))?.is_none() {
        // Say the file is missing before asking for a passphrase.
        return Err(SecretsError::NoSecret {
            node: id.node.to_string(),
            fix: id.kind.set_command(&id.node),
            file,
        });
    }
    decrypt_with(&Identities::read(identity)?, root, id, identity)
}

/// Decrypts `secrets/<node>/tailscale-authkey.age` under `root` with the identity file
/// `identity` (an operator's age or SSH private key, or the node's host key).
pub fn decrypt_authkey(
    root: &Path,
    node: &NodeName,
    identity: &Path,
) -> Result<Secret, SecretsError> {
    let id = SecretId::new(node.clone(), SecretKind::TailscaleAuthkey);
    let text = decrypt_secret(root, &id, identity)?;
    parse_authkey(&text, &id.file())
}
