//! The reference worker: the agent side of the task contract (`docs/bus.md`, "Tasks").
//!
//! - It takes the tasks of its roles (`fleet.tasks.<role>` in the role's queue group and
//!   `fleet.tasks.<role>.<node>`), and **acknowledges** each at once on `fleet.results.<node>.ack`
//!   (header `Fleet-Task-Id`), before running it.
//! - It heart-beats every interval with the ids of the tasks it is running: that is its
//!   **progress** report — the router keeps waiting for a task as long as its node heart-beats,
//!   however long the task runs.
//! - **Duplicates**: the task id is the key. A task it is still running is acknowledged again and
//!   the new request waits for the same result; a task it finished is answered with the first
//!   result (kept for [`WorkerOptions::keep_results`]). A task id is never run twice here.
//! - The answer is the reply to the request (to every request of that id), with headers
//!   `Fleet-Node`, `Fleet-Task-Id` and `Fleet-Status` (`ok`, or `failed` with the reason as the
//!   body).
//! - **Drain** ([`WorkerHandle::drain`]): it stops taking tasks, says `draining` in its
//!   heartbeats, finishes what it runs (bounded), then stops.

use super::heartbeat::{self, Beat};
use super::{
    ack_subject, node_task_subject, queue_group, task_subject, BusError, ATTEMPT_HEADER,
    DEADLINE_HEADER, NODE_HEADER, STATUS_HEADER, TASK_ID_HEADER,
};
use crate::model::{NodeName, Role};
use async_nats::{Client, HeaderMap, Message, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One task, as the handler gets it.
#[derive(Debug, Clone)]
pub struct Task {
    /// The task id (the idempotency key).
    pub id: String,
    /// The role it was sent for.
    pub role: Role,
    /// The task's JSON, unchanged.
    pub payload: Bytes,
    /// The attempt number the router gave it (1 for the first node).
    pub attempt: u32,
    /// When the caller stops waiting, if the request said.
    pub deadline: Option<Instant>,
}

/// What a task came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The answer (JSON).
    Done(Bytes),
    /// It failed; why (sent as the body, `Fleet-Status: failed`).
    Failed(String),
}

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The node it runs on (its NATS user).
    pub node: NodeName,
    /// The roles whose tasks it takes.
    pub roles: Vec<Role>,
    /// Tasks it runs at once (more wait, acknowledged).
    pub capacity: u32,
    /// Models it reports in heartbeats.
    pub models: Vec<String>,
    /// Heartbeat period (at most a third of `node_timeout_seconds`).
    pub beat: Duration,
    /// How long a finished task's result is kept to answer a duplicate.
    pub keep_results: Duration,
    /// How long a drain waits for running tasks.
    pub drain_limit: Duration,
}

impl WorkerOptions {
    /// Options for `node` taking `roles`: capacity 4, a heartbeat every second, results kept
    /// 15 minutes, drains bounded by 5 minutes.
    pub fn new(node: NodeName, roles: Vec<Role>) -> Self {
        WorkerOptions {
            node,
            roles,
            capacity: 4,
            models: Vec::new(),
            beat: Duration::from_secs(1),
            keep_results: Duration::from_secs(15 * 60),
            drain_limit: Duration::from_secs(5 * 60),
        }
    }
}

/// What a worker did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Tasks it ran.
    pub ran: u64,
    /// Requests answered from a finished task's kept result.
    pub duplicates_answered: u64,
    /// Requests for a task it was still running (acknowledged again, answered at the end).
    pub duplicates_joined: u64,
    /// Tasks still running when the drain's limit passed.
    pub abandoned: u32,
}

enum Entry {
    Running(Vec<Subject>),
    Done {
        headers: HeaderMap,
        body: Bytes,
        at: Instant,
    },
}

struct State {
    entries: HashMap<String, Entry>,
    report: WorkerReport,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Plain maps and counters, usable after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running worker. Dropping it stops it at once (no drain).
#[derive(Debug)]
pub struct WorkerHandle {
    beat: Beat,
    stop: tokio::sync::watch::Sender<bool>,
    kill: tokio::sync::watch::Sender<bool>,
    serve: tokio::task::JoinHandle<WorkerReport>,
}

impl WorkerHandle {
    /// The heartbeat state (tasks running, draining).
    pub fn beat(&self) -> &Beat {
        &self.beat
    }

    /// Drains: takes no new task, says so in its heartbeats, waits for the running tasks
    /// (bounded by `drain_limit`), then stops. Returns what it did.
    pub async fn drain(mut self) -> WorkerReport {
        let _ = self.stop.send(true);
        (&mut self.serve).await.unwrap_or_default()
    }
}

impl Drop for WorkerHandle {
    /// Stops at once, as a killed process would: no drain, running tasks abandoned unanswered,
    /// heartbeats stopped.
    fn drop(&mut self) {
        let _ = self.kill.send(true);
        self.serve.abort();
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a worker on `client` (connected as `options.node`): subscribes to its roles' tasks,
/// heart-beats, and runs `handler` once per task id. Returns once its subscriptions are in place.
pub async fn start<F, Fut>(
    client: Client,
    options: WorkerOptions,
    handler: F,
) -> Result<WorkerHandle, BusError>
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskOutcome> + Send + 'static,
{
    let mut subs = Vec::new();
    for role in &options.roles {
        for (subject, queue) in [
            (task_subject(role), Some(queue_group(role))),
            (node_task_subject(role, &options.node), None),
        ] {
            let sub = match queue {
                Some(q) => client.queue_subscribe(subject.clone(), q).await,
                None => client.subscribe(subject.clone()).await,
            }
            .map_err(|source| BusError::Subscribe { subject, source })?;
            let role = role.clone();
            subs.push(sub.map(move |m| (role.clone(), m)).boxed());
        }
    }
    client.flush().await.map_err(|e| BusError::Publish {
        subject: "flush".into(),
        source: async_nats::PublishError::with_source(
            async_nats::client::PublishErrorKind::Send,
            e,
        ),
    })?;
    let beat = Beat::new(
        options.node.clone(),
        options.capacity,
        options.models.clone(),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (kill, kill_rx) = tokio::sync::watch::channel(false);
    let serve = tokio::spawn(serve(
        client,
        options,
        beat.clone(),
        futures_util::stream::select_all(subs),
        (stop_rx, kill_rx),
        Arc::new(handler),
    ));
    Ok(WorkerHandle {
        beat,
        stop,
        kill,
        serve,
    })
}

fn header<'m>(msg: &'m Message, name: &str) -> Option<&'m str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

async fn serve<F, Fut>(
    client: Client,
    options: WorkerOptions,
    beat: Beat,
    mut tasks: futures_util::stream::SelectAll<
        futures_util::stream::BoxStream<'static, (Role, Message)>,
    >,
    (mut stop, kill): (
        tokio::sync::watch::Receiver<bool>,
        tokio::sync::watch::Receiver<bool>,
    ),
    handler: Arc<F>,
) -> WorkerReport
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskOutcome> + Send + 'static,
{
    let state = Arc::new(Mutex::new(State {
        entries: HashMap::new(),
        report: WorkerReport::default(),
    }));
    let slots = Arc::new(tokio::sync::Semaphore::new(options.capacity.max(1) as usize));
    let beats = AbortOnDrop(heartbeat::spawn_heartbeats(
        client.clone(),
        beat.clone(),
        options.beat,
    ));
    let mut last_prune = Instant::now();
    loop {
        let (role, msg) = tokio::select! {
            next = tasks.next() => match next {
                Some(t) => t,
                None => break,
            },
            _ = stop.changed() => break,
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Some(id) = header(&msg, TASK_ID_HEADER).map(str::to_string) else {
            // No id: nothing to de-duplicate on; run it under a fresh one.
            let id = super::dispatch::task_id();
            run(
                &client, &options, &beat, &state, &slots, &handler, &kill, role, msg, id, reply,
            );
            continue;
        };
        if last_prune.elapsed() >= Duration::from_secs(1) {
            last_prune = Instant::now();
            let keep = options.keep_results;
            lock(&state).entries.retain(|_, e| match e {
                Entry::Running(_) => true,
                Entry::Done { at, .. } => at.elapsed() < keep,
            });
        }
        enum Seen {
            Running,
            Done(HeaderMap, Bytes),
            New,
        }
        let seen = {
            let mut st = lock(&state);
            let seen = match st.entries.get_mut(&id) {
                Some(Entry::Running(waiters)) => {
                    waiters.push(reply.clone());
                    Seen::Running
                }
                Some(Entry::Done { headers, body, .. }) => {
                    Seen::Done(headers.clone(), body.clone())
                }
                None => Seen::New,
            };
            match seen {
                Seen::Running => st.report.duplicates_joined += 1,
                Seen::Done(..) => st.report.duplicates_answered += 1,
                Seen::New => {}
            }
            seen
        };
        match seen {
            // Still running: acknowledged again; this request gets the answer at the end.
            Seen::Running => ack(&client, &options.node, &id).await,
            Seen::Done(h, b) => {
                let _ = client.publish_with_headers(reply, h, b).await;
            }
            Seen::New => run(
                &client, &options, &beat, &state, &slots, &handler, &kill, role, msg, id, reply,
            ),
        }
    }
    // Drain: no new task; finish the running ones.
    beat.set_draining(true);
    let _ = heartbeat::publish(&client, &beat).await;
    drop(tasks);
    let _ = client.flush().await;
    let until = Instant::now() + options.drain_limit;
    while beat.in_flight() > 0 && Instant::now() < until {
        // Bounded wait for the running tasks; each ends by dropping its guard.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let abandoned = beat.in_flight();
    let _ = heartbeat::publish(&client, &beat).await;
    let _ = client.flush().await;
    drop(beats);
    let mut report = lock(&state).report;
    report.abandoned = abandoned;
    report
}

async fn ack(client: &Client, node: &NodeName, id: &str) {
    let mut h = HeaderMap::new();
    h.insert(TASK_ID_HEADER, id);
    let _ = client
        .publish_with_headers(ack_subject(node), h, Bytes::new())
        .await;
}

#[allow(clippy::too_many_arguments)]
fn run<F, Fut>(
    client: &Client,
    options: &WorkerOptions,
    beat: &Beat,
    state: &Arc<Mutex<State>>,
    slots: &Arc<tokio::sync::Semaphore>,
    handler: &Arc<F>,
    kill: &tokio::sync::watch::Receiver<bool>,
    role: Role,
    msg: Message,
    id: String,
    reply: Subject,
) where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskOutcome> + Send + 'static,
{
    // Counted (and listed in heartbeats) from now: taken.
    let guard = beat.run_task(&id);
    lock(state)
        .entries
        .insert(id.clone(), Entry::Running(vec![reply]));
    let task = Task {
        id: id.clone(),
        role,
        attempt: header(&msg, ATTEMPT_HEADER)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1),
        deadline: header(&msg, DEADLINE_HEADER)
            .and_then(|d| d.parse::<u64>().ok())
            .map(|ms| Instant::now() + Duration::from_millis(ms)),
        payload: msg.payload,
    };
    let (client, node, state, slots, handler, mut kill) = (
        client.clone(),
        options.node.clone(),
        Arc::clone(state),
        Arc::clone(slots),
        Arc::clone(handler),
        kill.clone(),
    );
    tokio::spawn(async move {
        ack(&client, &node, &id).await;
        let work = async {
            match slots.acquire_owned().await {
                Ok(_permit) => match task.deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), handler(task))
                        .await
                        .unwrap_or_else(|_| {
                            TaskOutcome::Failed("the task's deadline passed".into())
                        }),
                    None => handler(task).await,
                },
                Err(_) => TaskOutcome::Failed("the worker is stopping".into()),
            }
        };
        let outcome = tokio::select! {
            o = work => o,
            // Killed: the task dies with the worker, unanswered.
            _ = kill.wait_for(|k| *k) => return,
        };
        let mut h = HeaderMap::new();
        h.insert(NODE_HEADER, node.as_str());
        h.insert(TASK_ID_HEADER, id.as_str());
        let body = match outcome {
            TaskOutcome::Done(b) => {
                h.insert(STATUS_HEADER, "ok");
                b
            }
            TaskOutcome::Failed(why) => {
                h.insert(STATUS_HEADER, "failed");
                Bytes::from(why)
            }
        };
        let waiters = {
            let mut st = lock(&state);
            st.report.ran += 1;
            match st.entries.insert(
                id.clone(),
                Entry::Done {
                    headers: h.clone(),
                    body: body.clone(),
                    at: Instant::now(),
                },
            ) {
                Some(Entry::Running(w)) => w,
                _ => Vec::new(),
            }
        };
        for w in waiters {
            let _ = client
                .publish_with_headers(w, h.clone(), body.clone())
                .await;
        }
        let _ = client.flush().await;
        drop(guard);
    });
}
