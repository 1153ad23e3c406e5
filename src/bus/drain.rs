//! Draining nodes: `fleetnix node drain NODE` / `node undrain NODE`.
//!
//! A drained node is a key in the bucket `fleet-drain` (written by the control plane's user). The
//! router follows the bucket and sends a drained node no new task; the tasks it runs finish. Its
//! in-flight count is in `fleet-health` (the router's view of its heartbeats).

use super::registry::open_bucket;
use super::router::HealthEntry;
use super::{BusError, DRAIN_BUCKET, HEALTH_BUCKET};
use crate::model::NodeName;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A `fleet-drain` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// When it was drained (RFC 3339).
    pub since: String,
    /// Why, for people.
    #[serde(default)]
    pub reason: String,
}

fn kv_err(op: &'static str) -> impl Fn(String) -> BusError {
    move |reason| BusError::Kv {
        bucket: DRAIN_BUCKET.into(),
        op,
        reason,
    }
}

/// Drains `node` (`draining`) or undrains it, as the control plane's user.
pub async fn set(
    js: &jetstream::Context,
    node: &NodeName,
    draining: bool,
    reason: &str,
) -> Result<(), BusError> {
    let kv = open_bucket(js, DRAIN_BUCKET, true).await?;
    if draining {
        let rec = DrainRecord {
            since: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            reason: reason.chars().take(200).collect(),
        };
        let body = serde_json::to_vec(&rec).map_err(|e| kv_err("put")(e.to_string()))?;
        kv.put(node.as_str(), body.into())
            .await
            .map_err(|e| kv_err("put")(e.to_string()))?;
    } else {
        kv.delete(node.as_str())
            .await
            .map_err(|e| kv_err("delete")(e.to_string()))?;
    }
    Ok(())
}

/// The router's `fleet-health` entry of `node`, if any.
pub async fn health(
    js: &jetstream::Context,
    node: &NodeName,
) -> Result<Option<HealthEntry>, BusError> {
    entry(&open_bucket(js, HEALTH_BUCKET, false).await?, node).await
}

/// `node`'s entry in the opened `fleet-health` bucket, if any.
async fn entry(kv: &kv::Store, node: &NodeName) -> Result<Option<HealthEntry>, BusError> {
    let got = kv.get(node.as_str()).await.map_err(|e| BusError::Kv {
        bucket: HEALTH_BUCKET.into(),
        op: "get",
        reason: e.to_string(),
    })?;
    Ok(got.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Every entry of `fleet-health`, read in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthEntries {
    /// The entries, sorted by node.
    pub entries: Vec<HealthEntry>,
    /// Keys whose value is no entry (reported, not fatal), sorted.
    pub unreadable: Vec<String>,
}

/// Does `e` say the bucket does not exist (its stream was never created)?
fn bucket_missing(e: &jetstream::context::KeyValueError) -> bool {
    use jetstream::context::{GetStreamError, GetStreamErrorKind};
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<GetStreamError>())
        .is_some_and(|g| {
            matches!(g.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
        })
}

/// Every node's `fleet-health` entry (the router's view), read as any user that may read the
/// bucket (the CLI: `_observer`), all within `limit`. No bucket means the router never ran: no
/// entries, not an error.
pub async fn health_all(
    js: &jetstream::Context,
    limit: Duration,
) -> Result<HealthEntries, BusError> {
    let err = |op: &'static str| {
        move |reason: String| BusError::Kv {
            bucket: HEALTH_BUCKET.into(),
            op,
            reason,
        }
    };
    let read = async {
        let kv = match js.get_key_value(HEALTH_BUCKET).await {
            Ok(kv) => kv,
            Err(e) if bucket_missing(&e) => return Ok(HealthEntries::default()),
            Err(e) => return Err(err("open")(e.to_string())),
        };
        // One pass whatever the fleet's size: a watch delivering the last value of every key
        // (then live changes, which are not waited for), not a request per node. An empty
        // bucket delivers nothing, so the stream's message count is asked first.
        let status = kv
            .status()
            .await
            .map_err(|e| err("status")(e.to_string()))?;
        let mut latest: BTreeMap<String, bytes::Bytes> = BTreeMap::new();
        if status.values() > 0 {
            let mut watch = kv
                .watch_with_history(">")
                .await
                .map_err(|e| err("watch")(e.to_string()))?;
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| err("watch")(e.to_string()))?;
                match entry.operation {
                    kv::Operation::Put => latest.insert(entry.key, entry.value),
                    // A deleted or purged key is gone.
                    kv::Operation::Delete | kv::Operation::Purge => latest.remove(&entry.key),
                };
                if entry.delta == 0 {
                    break;
                }
            }
        }
        let mut out = HealthEntries::default();
        for (k, v) in latest {
            match serde_json::from_slice::<HealthEntry>(&v) {
                Ok(e) => out.entries.push(e),
                Err(_) => out.unreadable.push(k),
            }
        }
        out.entries.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| err("read")(format!("no answer within {}s", limit.as_secs_f64())))?
}

/// Waits until the router reports `node` draining with no task in flight, at most `limit`.
/// Returns the last entry seen (`None`: the router has none).
pub async fn wait_idle(
    js: &jetstream::Context,
    node: &NodeName,
    limit: Duration,
) -> Result<Option<HealthEntry>, BusError> {
    let until = Instant::now() + limit;
    let kv = open_bucket(js, HEALTH_BUCKET, false).await?;
    loop {
        let e = entry(&kv, node).await?;
        let idle = e.as_ref().is_some_and(|e| e.draining && e.in_flight == 0);
        if idle || Instant::now() >= until {
            return Ok(e);
        }
        // Bounded polling of the router's published view (it refreshes every quarter timeout).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What [`drain_owned`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDrain {
    /// The node was drained already by someone else (another `reason`): left as it was.
    pub already: bool,
    /// The router's entry of the node when the wait ended (`None`: the router has none).
    pub entry: Option<HealthEntry>,
}

/// Drains `node` on behalf of `owner` (the record's `reason`, e.g. `fleetnix deploy`) unless
/// someone else drained it already, then waits (at most `limit`) until the router reports it
/// idle. A node the router has no entry for, or considers down, has no task routed to it to
/// wait for.
pub async fn drain_owned(
    js: &jetstream::Context,
    node: &NodeName,
    owner: &str,
    limit: Duration,
) -> Result<OwnedDrain, BusError> {
    let already = match record(js, node).await? {
        None => false,
        Some(r) => r.is_none_or(|r| r.reason != owner),
    };
    if !already {
        set(js, node, true, owner).await?;
    }
    let entry = match health(js, node).await {
        Ok(Some(e)) if e.state != "down" => wait_idle(js, node, limit).await?,
        Ok(e) => e,
        // No router view (the bucket's absence included): nothing to wait for.
        Err(_) => None,
    };
    Ok(OwnedDrain { already, entry })
}

/// What [`undrain_owned`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undrained {
    /// The node was not drained (any more): nothing to undo.
    NotDrained,
    /// `owner`'s drain was removed.
    Undrained,
    /// Someone else drained it meanwhile (their reason, or `None` for an unreadable record):
    /// left as it is.
    DrainedByOther(Option<String>),
}

/// Undrains `node` if the drain it holds is `owner`'s.
pub async fn undrain_owned(
    js: &jetstream::Context,
    node: &NodeName,
    owner: &str,
) -> Result<Undrained, BusError> {
    Ok(match record(js, node).await? {
        None => Undrained::NotDrained,
        Some(Some(r)) if r.reason == owner => {
            set(js, node, false, "").await?;
            Undrained::Undrained
        }
        Some(r) => Undrained::DrainedByOther(r.map(|r| r.reason)),
    })
}

/// `node`'s `fleet-drain` record: `None` when not drained, `Some(None)` when unreadable.
async fn record(
    js: &jetstream::Context,
    node: &NodeName,
) -> Result<Option<Option<DrainRecord>>, BusError> {
    let kv = open_bucket(js, DRAIN_BUCKET, true).await?;
    let got = kv
        .get(node.as_str())
        .await
        .map_err(|e| kv_err("get")(e.to_string()))?;
    Ok(got.map(|v| serde_json::from_slice(&v).ok()))
}
