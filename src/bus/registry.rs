//! Registration (seed section 2): `fleetnix node sync` writes the fleet's nodes to the
//! JetStream key-value bucket `fleet-nodes` on the fleet's NATS, one key per node, so the
//! control plane (and its router) know what each node can do.
//!
//! A record holds the node's address, roles, resources, tags, models and `revision`: a
//! content hash of the record, which changes exactly when the node's entry in the manifest
//! changes in a way the record shows. Sync is idempotent: a record whose bytes are already
//! stored is left alone (no new bucket revision), nodes that left the manifest are deleted.

use super::{BusError, NODES_BUCKET};
use crate::model::{Fleet, Node, NodeName, Os, Resources, Role};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// One node as registered in `fleet-nodes` (the value is this as JSON; the key is the name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Tailnet address.
    pub address: IpAddr,
    /// Roles, in manifest order.
    pub roles: Vec<String>,
    /// Declared resources.
    pub resources: Resources,
    /// Tailscale tags, sorted.
    pub tags: Vec<String>,
    /// Models it serves, in manifest order.
    pub models: Vec<String>,
    /// Content hash of the record's other fields (16 hex digits of SHA-256).
    pub revision: String,
}

impl NodeRecord {
    /// The record of `node` in `fleet`.
    pub fn of(fleet: &Fleet, node: &Node) -> Self {
        let mut r = NodeRecord {
            name: node.name.to_string(),
            address: node.tailscale_ip,
            roles: node.roles.iter().map(|r| r.to_string()).collect(),
            resources: node.resources.clone(),
            tags: fleet.tags_of(node),
            models: node.models.clone(),
            revision: String::new(),
        };
        r.revision = r.content_hash();
        r
    }

    fn content_hash(&self) -> String {
        let mut unrevised = self.clone();
        unrevised.revision.clear();
        // Invariant: a struct of strings, numbers and lists always serialises.
        let bytes = serde_json::to_vec(&unrevised).unwrap_or_default();
        Sha256::digest(&bytes)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The stored value: compact JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Invariant: as above.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A record read back from the bucket under `key`; the key must be its name.
    pub fn from_bytes(key: &str, bytes: &[u8]) -> Result<Self, crate::model::InvalidValue> {
        let r: NodeRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.name != key {
            return Err(format!("the record under {key:?} names {:?}", r.name).into());
        }
        NodeName::parse(&r.name)?;
        for role in &r.roles {
            Role::parse(role)?;
        }
        if r.resources.cpu == 0 {
            return Err("cpu is 0".into());
        }
        for m in &r.models {
            crate::model::check_model(m)?;
        }
        Ok(r)
    }

    /// The record as a model node (for routing): SSH fields take their defaults.
    pub fn to_node(&self) -> Result<Node, crate::model::InvalidValue> {
        Ok(Node {
            name: NodeName::parse(&self.name)?,
            tailscale_ip: self.address,
            roles: self
                .roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<_, _>>()?,
            resources: self.resources.clone(),
            os: Os::default(),
            ssh_user: crate::model::SshLogin::root(),
            host_key: None,
            public_address: None,
            models: self.models.clone(),
        })
    }
}

/// What sync did to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncAction {
    /// New in the bucket.
    Registered,
    /// Its record changed.
    Updated,
    /// Already registered as it is.
    Unchanged,
    /// Not in the manifest any more: deleted from the bucket.
    Removed,
}

/// One line of `node sync`'s output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncLine {
    /// The node.
    pub node: String,
    /// What happened.
    pub action: SyncAction,
    /// Its roles (0 for a removed node).
    pub roles: usize,
}

impl fmt::Display for SyncLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.action {
            SyncAction::Registered => "Registered",
            SyncAction::Updated => "Updated",
            SyncAction::Unchanged => "Unchanged",
            SyncAction::Removed => return write!(f, "Removed: {}", self.node),
        };
        let s = if self.roles == 1 { "" } else { "s" };
        write!(f, "{what}: {} ({} role{s})", self.node, self.roles)
    }
}

/// What `node sync` did, by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// One line per node (registered or removed), sorted by name.
    pub lines: Vec<SyncLine>,
}

impl SyncReport {
    /// Did the sync change the bucket?
    pub fn changed(&self) -> bool {
        self.lines.iter().any(|l| l.action != SyncAction::Unchanged)
    }
}

fn kv_err<'a>(bucket: &'a str, op: &'static str) -> impl FnOnce(String) -> BusError + 'a {
    move |reason| BusError::Kv {
        bucket: bucket.to_string(),
        op,
        reason,
    }
}

/// The stream behind key-value `bucket`, as the client libraries create it (history 1, file
/// storage, direct gets, rollups, no deletes of messages).
///
/// fleetnix creates it itself rather than through `create_key_value`: that asks for the
/// account's JetStream information first and cannot read the answer of a nats-server 2.9
/// (Debian 12's), which lacks the `reserved_*` fields. The result is the same bucket.
pub fn bucket_stream_config(bucket: &str) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: 1,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Opens key-value `bucket`; with `create`, creates it ([`bucket_stream_config`]) if it does
/// not exist. A user without the permissions gets the server's refusal.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    create: bool,
) -> Result<kv::Store, BusError> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        Err(e) if !create => Err(kv_err(bucket, "open")(e.to_string())),
        Err(_) => {
            js.create_stream(bucket_stream_config(bucket))
                .await
                .map_err(|e| kv_err(bucket, "create")(e.to_string()))?;
            js.get_key_value(bucket)
                .await
                .map_err(|e| kv_err(bucket, "open")(e.to_string()))
        }
    }
}

/// Every record in the bucket, by key. Values that are not records are reported, not fatal.
pub async fn load(
    store: &kv::Store,
) -> Result<(BTreeMap<String, NodeRecord>, Vec<String>), BusError> {
    let bucket = NODES_BUCKET;
    let mut keys: Vec<String> = Vec::new();
    let mut stream = store
        .keys()
        .await
        .map_err(|e| kv_err(bucket, "list")(e.to_string()))?;
    while let Some(k) = stream.next().await {
        keys.push(k.map_err(|e| kv_err(bucket, "list")(e.to_string()))?);
    }
    keys.sort();
    let mut out = BTreeMap::new();
    let mut bad = Vec::new();
    for k in keys {
        let Some(v) = store
            .get(k.clone())
            .await
            .map_err(|e| kv_err(bucket, "get")(e.to_string()))?
        else {
            continue; // deleted between listing and reading
        };
        match NodeRecord::from_bytes(&k, &v) {
            Ok(r) => {
                out.insert(k, r);
            }
            Err(e) => bad.push(format!("{bucket}/{k}: {e}")),
        }
    }
    Ok((out, bad))
}

/// Writes every node of `fleet` to `fleet-nodes` (created if missing), deletes nodes that left.
pub async fn sync(js: &jetstream::Context, fleet: &Fleet) -> Result<SyncReport, BusError> {
    let bucket = NODES_BUCKET;
    let store = open_bucket(js, bucket, true).await?;
    let mut existing: BTreeMap<String, bytes::Bytes> = BTreeMap::new();
    let mut stream = store
        .keys()
        .await
        .map_err(|e| kv_err(bucket, "list")(e.to_string()))?;
    let mut keys = Vec::new();
    while let Some(k) = stream.next().await {
        keys.push(k.map_err(|e| kv_err(bucket, "list")(e.to_string()))?);
    }
    for k in keys {
        if let Some(v) = store
            .get(k.clone())
            .await
            .map_err(|e| kv_err(bucket, "get")(e.to_string()))?
        {
            existing.insert(k, v);
        }
    }
    let mut lines = Vec::new();
    for node in &fleet.nodes {
        let record = NodeRecord::of(fleet, node);
        let bytes = record.to_bytes();
        let key = node.name.to_string();
        let action = match existing.remove(&key) {
            Some(old) if old.as_ref() == bytes.as_slice() => SyncAction::Unchanged,
            Some(_) => SyncAction::Updated,
            None => SyncAction::Registered,
        };
        if action != SyncAction::Unchanged {
            store
                .put(&key, bytes.into())
                .await
                .map_err(|e| kv_err(bucket, "put")(e.to_string()))?;
        }
        lines.push(SyncLine {
            node: key,
            action,
            roles: node.roles.len(),
        });
    }
    for key in existing.into_keys() {
        store
            .delete(&key)
            .await
            .map_err(|e| kv_err(bucket, "delete")(e.to_string()))?;
        lines.push(SyncLine {
            node: key,
            action: SyncAction::Removed,
            roles: 0,
        });
    }
    lines.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(SyncReport { lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_like_the_seed() {
        let l = |action, roles| SyncLine {
            node: "control-01".into(),
            action,
            roles,
        };
        assert_eq!(
            l(SyncAction::Registered, 4).to_string(),
            "Registered: control-01 (4 roles)"
        );
        assert_eq!(
            l(SyncAction::Unchanged, 1).to_string(),
            "Unchanged: control-01 (1 role)"
        );
        assert_eq!(l(SyncAction::Removed, 0).to_string(), "Removed: control-01");
    }
}
