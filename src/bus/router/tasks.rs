//! The tasks a router is working on ("flights"), and the task table `fleet-tasks` that lets a
//! restarted router, or another one, find the node that took a task.

use super::*;
use crate::bus::TASKS_BUCKET;
use tokio::sync::watch;

/// A task's final answer to its callers: headers and body.
pub(super) type Reply = Arc<(HeaderMap, Bytes)>;

/// One task this router is working on.
#[derive(Debug)]
pub(super) struct Flight {
    /// The node of the current attempt, and whether it acknowledged.
    pub(super) attempt: watch::Sender<Option<(NodeName, bool)>>,
    /// The answer, once there is one.
    pub(super) done: watch::Sender<Option<Reply>>,
}

/// The tasks in flight on this router, by id: a second request for an id in flight waits for
/// the first one's answer instead of running the task again.
#[derive(Debug, Default)]
pub(super) struct Flights(Mutex<HashMap<String, Arc<Flight>>>);

/// Removes its flight when dropped.
pub(super) struct FlightGuard<'a> {
    flights: &'a Flights,
    id: String,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.flights.0).remove(&self.id);
    }
}

impl Flights {
    /// Starts a flight for `id`, or returns the one already in flight (`Err`).
    pub(super) fn begin(&self, id: &str) -> Result<(Arc<Flight>, FlightGuard<'_>), Arc<Flight>> {
        let mut m = lock(&self.0);
        if let Some(f) = m.get(id) {
            return Err(Arc::clone(f));
        }
        let f = Arc::new(Flight {
            attempt: watch::channel(None).0,
            done: watch::channel(None).0,
        });
        m.insert(id.to_string(), Arc::clone(&f));
        Ok((
            f,
            FlightGuard {
                flights: self,
                id: id.to_string(),
            },
        ))
    }

    /// `node` acknowledged task `id`: counts when it is the node of the task's current attempt.
    pub(super) fn acked(&self, id: &str, node: &NodeName) {
        let f = lock(&self.0).get(id).cloned();
        if let Some(f) = f {
            f.attempt.send_if_modified(|a| match a {
                Some((n, acked)) if n == node && !*acked => {
                    *acked = true;
                    true
                }
                _ => false,
            });
        }
    }
}

/// A `fleet-tasks` record: who took a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TaskRecord {
    /// The node that acknowledged it. (Records from before also carried the role; it is
    /// ignored.)
    pub node: String,
}

/// How long `fleet-tasks` keeps a record.
pub const TASK_RECORD_AGE: Duration = Duration::from_secs(24 * 3600);

/// Opens (creating if needed) `fleet-tasks`: one record per key, kept [`TASK_RECORD_AGE`].
pub(super) async fn open_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    let err = |op: &'static str| {
        move |e: String| BusError::Kv {
            bucket: TASKS_BUCKET.into(),
            op,
            reason: e,
        }
    };
    if let Ok(s) = js.get_key_value(TASKS_BUCKET).await {
        return Ok(s);
    }
    let mut config = registry::bucket_stream_config(TASKS_BUCKET);
    config.max_age = TASK_RECORD_AGE;
    js.create_stream(config)
        .await
        .map_err(|e| err("create")(e.to_string()))?;
    js.get_key_value(TASKS_BUCKET)
        .await
        .map_err(|e| err("open")(e.to_string()))
}

/// Records that `node` took task `id` (it acknowledged it): the record is what lets a restarted
/// router, or another one, send a repeat of the task back to the node that runs it rather than
/// start it anew elsewhere. Every router hears every acknowledgement and records it, so the
/// record does not depend on the router that sent the task living on. A plain publish into the
/// bucket's stream: the client buffers it while disconnected (a nats-server restart) and sends
/// it on reconnecting; waiting for JetStream's acknowledgement would double the router's CPU
/// per task (measured) and still not make the record survive a SIGKILL of nats-server.
pub(super) async fn record(client: &Client, id: &str, node: &NodeName) {
    let body = serde_json::to_vec(&TaskRecord {
        node: node.to_string(),
    })
    .unwrap_or_default();
    if let Err(e) = client
        .publish(format!("$KV.{TASKS_BUCKET}.{id}"), body.into())
        .await
    {
        log(format!("task {id}: {TASKS_BUCKET} record failed: {e}"));
    }
}

/// The node that took task `id`, from `fleet-tasks` (bounded to one second).
pub(super) async fn lookup(kv: &kv::Store, id: &str) -> Option<TaskRecord> {
    let got = tokio::time::timeout(Duration::from_secs(1), kv.get(id))
        .await
        .ok()?
        .ok()??;
    serde_json::from_slice(&got).ok()
}
