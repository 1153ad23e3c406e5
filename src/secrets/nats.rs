//! `fleetnix secrets set-nats`: the bus's passwords ([`crate::bus::creds`]) as age secrets.
//!
//! The control plane's `nats-server-env.age` is the record of every node's password: existing
//! passwords are read back from it (decrypted with the operator's identity) and kept, nodes
//! without one get a fresh one, nodes that left the fleet are dropped. Then every file whose
//! content or recipients would change is written through [`super::write_secrets`]; the others
//! keep their exact bytes, so re-running changes nothing.

use super::error::SecretsError;
use super::keys::{desired_recipients, Identities};
use super::store::{read_optional, status, State};
use super::{decrypt_with, find_node, no_host_key_error, write_secrets, Report};
use crate::bus::creds::BusCredentials;
use crate::bus::server_plan;
use crate::model::Fleet;
use crate::secrets::secrets_nix::render_secrets_nix;
use crate::spec::secrets::{SecretId, SecretKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use zeroize::Zeroizing;

/// What [`set_nats`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NatsReport {
    /// Files written, left alone, nodes skipped.
    pub report: Report,
    /// Nodes that got a new password, sorted.
    pub generated: Vec<String>,
    /// Nodes whose password was kept, sorted.
    pub kept: Vec<String>,
    /// Service users that got a new password (none was in the server environment file):
    /// `_registry`, `_router`, `_supervisor`; on a fleet from before those users, the first two
    /// of them and not the router.
    pub services_generated: Vec<String>,
}

/// The identity file, read the first time it is needed (a first `set-nats` needs none).
struct LazyIdentities<'a> {
    path: &'a Path,
    read: Option<Identities>,
}

impl LazyIdentities<'_> {
    fn get(&mut self) -> Result<&Identities, SecretsError> {
        if self.read.is_none() {
            self.read = Some(Identities::read(self.path)?);
        }
        // Invariant: set just above.
        self.read
            .as_ref()
            .ok_or_else(|| SecretsError::IdentityInvalid {
                path: self.path.to_path_buf(),
                reason: "it could not be read".into(),
            })
    }
}

/// Generates NATS passwords for the nodes that have none and encrypts them: each node's
/// password to `secrets/<node>/nats-password.age` (the node + operators), and all of them as
/// `secrets/<control-plane>/nats-server-env.age` (the control plane + operators).
///
/// Existing passwords are kept: the server environment file is decrypted with `identity`
/// (only read if that file exists). A file is rewritten only if it is missing, not recorded,
/// encrypted to other recipients than the manifest's, or holds other content than it should;
/// every decryption happens before the first write, so a wrong identity writes nothing.
pub fn set_nats(fleet: &Fleet, root: &Path, identity: &Path) -> Result<NatsReport, SecretsError> {
    let plan = server_plan(fleet)?;
    render_secrets_nix(fleet)?;
    let cp = find_node(fleet, &plan.server_name)?;
    let env_id = SecretId::new(plan.server_name.clone(), SecretKind::NatsServerEnv);
    if desired_recipients(fleet, cp)?.is_none() {
        return Err(no_host_key_error(
            fleet,
            cp,
            &env_id,
            "; it is the control plane, and its nats-server environment file keeps every node's NATS password".into(),
        ));
    }
    let states: BTreeMap<String, State> = status(fleet, root)?
        .into_iter()
        .map(|s| (s.file, s.state))
        .collect();
    let mut ids = LazyIdentities {
        path: identity,
        read: None,
    };

    let old_env: Option<Zeroizing<Vec<u8>>> = match read_optional(&root.join(env_id.file()))? {
        Some(_) => Some(decrypt_with(ids.get()?, root, &env_id, identity)?),
        None => None,
    };
    let mut creds = match &old_env {
        Some(bytes) => {
            let bad = |reason: String| SecretsError::ServerEnv {
                file: env_id.file(),
                reason,
            };
            let text =
                std::str::from_utf8(bytes).map_err(|_| bad("it is not UTF-8 text".into()))?;
            BusCredentials::parse_server_env(&plan, text).map_err(|e| bad(e.into()))?
        }
        None => BusCredentials::default(),
    };
    let generated = creds.fill(&plan);
    let services_generated = creds.fill_services();
    let files = creds.files(&plan)?;

    let mut items = Vec::new();
    let mut unchanged = Vec::new();
    for f in &files {
        let Some(kind) = SecretKind::from_name(f.secret) else {
            // Invariant: BusCredentials::files only makes files of known kinds.
            return Err(SecretsError::ServerEnv {
                file: f.file.clone(),
                reason: format!("unexpected secret `{}` (a fleetnix bug)", f.secret),
            });
        };
        let id = SecretId::new(f.reader.clone(), kind);
        let want = f.plaintext.expose().as_bytes();
        let same = states.get(&id.file()) == Some(&State::UpToDate)
            && match kind {
                SecretKind::NatsServerEnv => old_env.as_deref().map(Vec::as_slice) == Some(want),
                k if services_generated.iter().any(|s| s.secret_kind() == k) => false,
                SecretKind::NatsPassword if generated.contains(&f.reader) => false,
                _ => decrypt_with(ids.get()?, root, &id, identity)?.as_slice() == want,
            };
        if same {
            unchanged.push(id.file());
        } else {
            items.push((id, want));
        }
    }
    // The server environment first: it is the record of every password, so a run killed
    // half-way leaves no node file holding a password the server does not know (a re-run keeps
    // the recorded ones and writes the missing node files).
    items.sort_by_key(|(id, _)| id.kind != SecretKind::NatsServerEnv);
    let mut report = write_secrets(fleet, root, &items)?;
    unchanged.sort();
    report.unchanged = unchanged;
    let mut kept: Vec<String> = plan
        .users
        .iter()
        .filter(|u| !generated.contains(&u.user))
        .map(|u| u.user.to_string())
        .collect();
    kept.sort();
    let mut generated: Vec<String> = generated.iter().map(|n| n.to_string()).collect();
    generated.sort();
    Ok(NatsReport {
        report,
        generated,
        kept,
        services_generated: services_generated
            .iter()
            .map(|s| s.user().to_string())
            .collect(),
    })
}
