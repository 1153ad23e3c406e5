//! One request on `fleet.dispatch.<role>`: order the candidates, forward to each in turn, answer
//! the caller with the worker's reply or an error.

use super::tasks::{self, Flight};
use super::*;

/// What one forwarding attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptReport {
    /// The node it went to.
    pub node: String,
    /// `replied`, `timed out`, `no responders` or `failed: …`.
    pub outcome: String,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

/// A router error reply's body (`Fleet-Status` holds `code`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorReply {
    /// `bad-request`, `no-such-role`, `no-healthy-node`, `all-failed`, `task-failed` (the
    /// worker ran it and it failed) or `deadline` (retryable with the same task id).
    pub code: String,
    /// What went wrong, for people.
    pub error: String,
    /// The role asked for.
    pub role: String,
    /// The attempts made, if any.
    #[serde(default)]
    pub attempts: Vec<serde_json::Value>,
    /// The task's id (ask again with it to get the same task's answer).
    #[serde(default)]
    pub task_id: String,
}

pub(super) struct Shared {
    pub(super) view: Mutex<LiveView>,
    pub(super) config: RouterConfig,
    pub(super) flights: Flights,
    pub(super) tasks_kv: kv::Store,
}

pub(super) fn header<'m>(msg: &'m Message, name: &str) -> Option<&'m str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

pub(super) async fn respond_error(
    client: &Client,
    reply: async_nats::Subject,
    task: &str,
    e: ErrorReply,
) {
    let mut h = HeaderMap::new();
    h.insert(STATUS_HEADER, e.code.as_str());
    h.insert(TASK_ID_HEADER, task);
    // Invariant: a struct of strings and JSON values always serialises.
    let body = serde_json::to_vec(&e).unwrap_or_default();
    let _ = client.publish_with_headers(reply, h, body.into()).await;
}

/// Is `t` acceptable as a caller's task id (1 to 64 letters, digits, `-` or `_`: a key of
/// `fleet-tasks` and a subject token)?
pub fn valid_task_id(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Room left in a message for the headers the router adds when it forwards a task.
pub const FORWARD_HEADROOM: usize = 1024;

/// The longest `Fleet-Preferred-Model` header the router forwards.
const MAX_MODEL_LEN: usize = 256;

/// What one attempt came to.
enum Attempted {
    /// The worker answered.
    Answer(Message),
    /// The node failed the task (never acknowledged it, went silent, no agent…): try the next.
    Failed(String),
    /// The task's deadline came first.
    Deadline,
}

/// Sets the flight's answer (for requests that joined it) and answers the caller.
async fn finish(
    client: &Client,
    flight: &Flight,
    reply: async_nats::Subject,
    h: HeaderMap,
    body: Bytes,
) {
    flight
        .done
        .send_replace(Some(Arc::new((h.clone(), body.clone()))));
    if let Err(e) = client.publish_with_headers(reply, h, body).await {
        log(format!("answering a caller failed: {e}"));
    }
}

fn error_message(e: &ErrorReply) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(STATUS_HEADER, e.code.as_str());
    h.insert(TASK_ID_HEADER, e.task_id.as_str());
    // Invariant: a struct of strings and JSON values always serialises.
    (h, serde_json::to_vec(e).unwrap_or_default().into())
}

/// Handles one `fleet.dispatch.<role>` request that arrived on `client` (its lane), forwarding
/// and answering on the same connection.
pub(super) async fn handle(
    shared: &Shared,
    client: &Client,
    counters: &LaneCounters,
    msg: Message,
) {
    let Some(reply) = msg.reply.clone() else {
        return; // nobody waits for an answer
    };
    let received = Instant::now();
    let role_str = msg
        .subject
        .as_str()
        .strip_prefix("fleet.dispatch.")
        .unwrap_or("");
    let given_id = header(&msg, TASK_ID_HEADER);
    let task = match given_id {
        Some(t) if valid_task_id(t) => t.to_string(),
        _ => task_id(),
    };
    let err = |code: &str, error: String, attempts: Vec<serde_json::Value>| ErrorReply {
        code: code.into(),
        error,
        role: role_str.chars().take(64).collect(),
        attempts,
        task_id: task.clone(),
    };
    let bad = |error: String| err("bad-request", error, vec![]);
    if let Some(t) = given_id.filter(|t| !valid_task_id(t)) {
        let shown: String = t.chars().take(64).collect();
        let e = bad(format!(
            "task id {shown:?} is not 1 to 64 letters, digits, '-' or '_'"
        ));
        return respond_error(client, reply, &task, e).await;
    }
    let budget = match header(&msg, DEADLINE_HEADER) {
        None => shared.config.task_timeout,
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if (1..=86_400_000).contains(&ms) => Duration::from_millis(ms),
            _ => {
                let e = bad(format!("{DEADLINE_HEADER} {ms:?} is not a whole number of milliseconds from 1 to 86400000"));
                return respond_error(client, reply, &task, e).await;
            }
        },
    };
    // Answer a little before the caller's deadline, so the answer reaches it in time.
    let deadline = received + budget;
    let answer_by = deadline - (budget / 20).min(Duration::from_millis(250));
    let Ok(role) = Role::parse(role_str) else {
        let e = bad(format!(
            "{:?} is not a role (lowercase letters, digits, '-')",
            role_str.chars().take(64).collect::<String>()
        ));
        return respond_error(client, reply, &task, e).await;
    };
    let model = header(&msg, MODEL_HEADER);
    if model.is_some_and(|m| m.len() > MAX_MODEL_LEN) {
        let e = bad(format!(
            "{MODEL_HEADER} is longer than {MAX_MODEL_LEN} bytes"
        ));
        return respond_error(client, reply, &task, e).await;
    }
    let limit = client.server_info().max_payload;
    if msg.payload.len().saturating_add(FORWARD_HEADROOM) > limit {
        let e = bad(format!(
            "the payload is {} bytes; the server takes at most {limit} bytes per message, {FORWARD_HEADROOM} of which the router keeps for its headers",
            msg.payload.len()
        ));
        log(format!("task {task}: refused: {}", e.error));
        return respond_error(client, reply, &task, e).await;
    }
    if let Err(je) = serde_json::from_slice::<serde::de::IgnoredAny>(&msg.payload) {
        let e = bad(format!("the payload is not JSON: {je}"));
        return respond_error(client, reply, &task, e).await;
    }

    // One flight per task id: a request for a task already in flight here waits for its answer.
    let (flight, _guard) = match shared.flights.begin(&task) {
        Ok(f) => f,
        Err(existing) => {
            let mut rx = existing.done.subscribe();
            let done = tokio::time::timeout_at(answer_by.into(), rx.wait_for(|d| d.is_some()))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|d| d.clone()));
            let (h, body) = match done {
                Some(d) => (d.0.clone(), d.1.clone()),
                None => {
                    let running = existing.attempt.borrow().clone();
                    error_message(&deadline_error(&err, budget, running.as_ref()))
                }
            };
            let _ = client.publish_with_headers(reply, h, body).await;
            return;
        }
    };

    // A task some node already took (a retry after a lost router, or a request to another
    // router) goes back to that node, which answers from its own record.
    let mut pinned = lock(&shared.view).running(&task);
    if pinned.is_none() && header(&msg, REASK_HEADER).is_some() {
        pinned = tasks::lookup(&shared.tasks_kv, &task)
            .await
            .and_then(|r| NodeName::parse(&r.node).ok());
    }
    let order = loop {
        let routed = {
            let view = lock(&shared.view);
            view.route(role.as_str(), model, Instant::now())
        };
        match routed {
            Ok(r) => break Ok(r.order),
            // Just started: the first heartbeats are on their way.
            Err(RouteError::NoHealthyNode { .. })
                if Instant::now()
                    < (lock(&shared.view).started() + shared.config.node_timeout)
                        .min(answer_by) =>
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => break Err(e),
        }
    };
    // The node known to have taken the task (it acknowledged it): like an acknowledged
    // attempt, it is failed over only when it stops heart-beating, not because a repeat finds
    // it unsubscribed for a moment (it reconnects after a nats-server restart) — else a task it
    // already ran would run again elsewhere while it lives.
    let took = pinned.clone();
    let order = match (order, pinned) {
        (Ok(o), Some(p)) => {
            let mut v = vec![p.clone()];
            v.extend(o.into_iter().filter(|n| *n != p));
            v
        }
        (Err(_), Some(p)) => vec![p],
        (Ok(o), None) => o,
        (Err(e @ RouteError::UnknownRole { .. }), None) => {
            let (h, b) = error_message(&err("no-such-role", e.to_string(), vec![]));
            return finish(client, &flight, reply, h, b).await;
        }
        (Err(e), None) => {
            let (h, b) = error_message(&err("no-healthy-node", e.to_string(), vec![]));
            return finish(client, &flight, reply, h, b).await;
        }
    };
    let tries = if shared.config.retry { order.len() } else { 1 };
    let node_timeout = shared.config.node_timeout;
    let check = (node_timeout / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
    // Failed attempts only: a task that is answered needs no report.
    let mut failed: Vec<AttemptReport> = Vec::new();
    for (i, node) in order.into_iter().take(tries).enumerate() {
        let now = Instant::now();
        if now >= answer_by {
            break;
        }
        if i > 0 {
            counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        flight.attempt.send_replace(Some((node.clone(), false)));
        let mut attempt = flight.attempt.subscribe();
        let subject = node_task_subject(&role, &node);
        let mut h = HeaderMap::new();
        h.insert(TASK_ID_HEADER, task.as_str());
        h.insert(ATTEMPT_HEADER, (i + 1).to_string().as_str());
        // The worker gets the caller's deadline; the router answers a little before it.
        h.insert(
            DEADLINE_HEADER,
            (deadline - now).as_millis().max(1).to_string().as_str(),
        );
        if let Some(m) = model {
            h.insert(MODEL_HEADER, m);
        }
        let request = Request::new()
            .headers(h)
            .payload(msg.payload.clone())
            .timeout(Some(answer_by - now));
        let lease = lock(&shared.view).lease(&node);
        let start = Instant::now();
        let mut forwards = FuturesUnordered::new();
        forwards.push(client.send_request(subject.clone(), request));
        let mut acked = took.as_ref() == Some(&node);
        let mut last_sent = start;
        let result = loop {
            tokio::select! {
                Some(r) = forwards.next() => match r {
                    Ok(answer) => break Attempted::Answer(answer),
                    Err(e) => match e.kind() {
                        RequestErrorKind::TimedOut => break Attempted::Deadline,
                        // A repeat found the agent gone (draining, or its connection dropped):
                        // its heartbeats decide whether the task is lost.
                        _ if acked || !forwards.is_empty() => {}
                        RequestErrorKind::NoResponders => {
                            break Attempted::Failed("found no agent subscribed (no responders)".into())
                        }
                        RequestErrorKind::Other => break Attempted::Failed(format!("failed: {e}")),
                    },
                },
                Ok(()) = attempt.changed(), if !acked => {
                    let now_acked = attempt
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|(n, a)| *n == node && *a);
                    if now_acked {
                        acked = true;
                    }
                }
                _ = tokio::time::sleep(check) => {
                    let now = Instant::now();
                    // Every forward of an acknowledged task may have ended (no responders while
                    // the node reconnects) with none left to time out: the deadline ends it.
                    if now >= answer_by {
                        break Attempted::Deadline;
                    }
                    if !acked && now.duration_since(start) >= node_timeout {
                        break Attempted::Failed(format!(
                            "did not acknowledge the task within {:.1}s",
                            node_timeout.as_secs_f64()
                        ));
                    }
                    if acked && lock(&shared.view).silent(&node, now) {
                        break Attempted::Failed(format!(
                            "stopped heart-beating for {:.1}s while running the task",
                            node_timeout.as_secs_f64()
                        ));
                    }
                    // A long task is asked for again every node timeout: the node answers every
                    // request of the id at the end, so an answer lost with a connection (a
                    // nats-server restart forgets which replies a worker may send) is not lost.
                    if acked && now.duration_since(last_sent) >= node_timeout && now < answer_by {
                        last_sent = now;
                        let mut h = HeaderMap::new();
                        h.insert(TASK_ID_HEADER, task.as_str());
                        h.insert(ATTEMPT_HEADER, (i + 1).to_string().as_str());
                        h.insert(DEADLINE_HEADER, (deadline - now).as_millis().max(1).to_string().as_str());
                        if let Some(m) = model {
                            h.insert(MODEL_HEADER, m);
                        }
                        let again = Request::new()
                            .headers(h)
                            .payload(msg.payload.clone())
                            .timeout(Some(answer_by - now));
                        forwards.push(client.send_request(subject.clone(), again));
                    }
                }
            }
        };
        let elapsed = start.elapsed();
        drop(lease);
        let outcome = match result {
            Attempted::Answer(answer) => {
                let mut h = HeaderMap::new();
                h.insert(NODE_HEADER, node.as_str());
                h.insert(TASK_ID_HEADER, task.as_str());
                h.insert(ATTEMPTS_HEADER, (failed.len() + 1).to_string().as_str());
                if let Some(claimed) = header(&answer, NODE_HEADER) {
                    if claimed != node.as_str() {
                        let shown: String = claimed
                            .chars()
                            .filter(|c| c.is_ascii_graphic())
                            .take(64)
                            .collect();
                        log(format!(
                            "task {task}: {node} answered claiming to be {shown:?}; reported as {node}"
                        ));
                        h.insert(CLAIMED_HEADER, shown.as_str());
                    }
                }
                let body = if header(&answer, STATUS_HEADER) == Some("failed") {
                    // The task ran and failed: a result, not a node failure.
                    h.insert(STATUS_HEADER, "task-failed");
                    let why = String::from_utf8_lossy(&answer.payload);
                    let e = err(
                        "task-failed",
                        format!(
                            "task {task} failed on {node}: {}",
                            why.chars().take(4096).collect::<String>()
                        ),
                        vec![],
                    );
                    serde_json::to_vec(&e).unwrap_or_default().into()
                } else {
                    h.insert(STATUS_HEADER, "ok");
                    answer.payload
                };
                return finish(client, &flight, reply, h, body).await;
            }
            Attempted::Deadline => break,
            Attempted::Failed(why) => why,
        };
        log(format!("task {task}: {node} {outcome}"));
        lock(&shared.view).attempt_failed(&node, outcome.clone());
        failed.push(AttemptReport {
            node: node.to_string(),
            outcome,
            elapsed_ms: elapsed.as_millis() as u64,
        });
    }
    let attempts: Vec<serde_json::Value> = failed
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .collect();
    let e = if Instant::now() >= answer_by {
        let running = flight.attempt.borrow().clone();
        let mut e = deadline_error(&err, budget, running.as_ref());
        e.attempts = attempts;
        e
    } else {
        let described: Vec<String> = failed
            .iter()
            .map(|a| format!("{} {}", a.node, a.outcome))
            .collect();
        err(
            "all-failed",
            format!(
                "task {task}: no node answered the `{role}` task after {} attempt(s): {}",
                failed.len(),
                described.join("; ")
            ),
            attempts,
        )
    };
    let (h, b) = error_message(&e);
    finish(client, &flight, reply, h, b).await;
}

/// The `deadline` error: the task's time ran out; says where it runs, if a node took it.
fn deadline_error(
    err: &dyn Fn(&str, String, Vec<serde_json::Value>) -> ErrorReply,
    budget: Duration,
    running: Option<&(NodeName, bool)>,
) -> ErrorReply {
    let e = err("deadline", String::new(), vec![]);
    let state = match running {
        Some((n, true)) => {
            format!("it is still running on {n}; ask again with the same task id to get its result")
        }
        Some((n, false)) => format!("{n} has not acknowledged it"),
        None => "no node took it".into(),
    };
    ErrorReply {
        error: format!(
            "task {} got no answer within its deadline of {:.1}s: {state}",
            e.task_id,
            budget.as_secs_f64()
        ),
        ..e
    }
}

/// Serves one lane: takes requests from `requests` and handles up to `max` of them at once,
/// all in this one task (no task spawned per request), counting them in `counters`.
pub(super) async fn serve_lane(
    shared: Arc<Shared>,
    client: Client,
    mut requests: async_nats::Subscriber,
    max: usize,
    counters: Arc<LaneCounters>,
) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            msg = requests.next(), if running.len() < max => match msg {
                Some(msg) => {
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    running.push(handle(&shared, &client, &counters, msg));
                }
                // The subscription is closed: the connection is gone for good.
                None => break,
            },
            else => break,
        }
    }
}
