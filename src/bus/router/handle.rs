//! One request on `fleet.dispatch.<role>`: order the candidates, forward to each in turn, answer
//! the caller with the worker's reply or an error.

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
    /// `bad-request`, `no-such-role`, `no-healthy-node` or `all-failed`.
    pub code: String,
    /// What went wrong, for people.
    pub error: String,
    /// The role asked for.
    pub role: String,
    /// The attempts made, if any.
    #[serde(default)]
    pub attempts: Vec<serde_json::Value>,
}

pub(super) struct Shared {
    pub(super) view: Mutex<LiveView>,
    pub(super) config: RouterConfig,
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

/// Is `t` acceptable as a caller's task id (1 to 64 printable ASCII characters)?
pub(super) fn valid_task_id(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_graphic())
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
    let task = match header(&msg, TASK_ID_HEADER) {
        Some(t) if valid_task_id(t) => t.to_string(),
        _ => task_id(),
    };
    let role_str = msg
        .subject
        .as_str()
        .strip_prefix("fleet.dispatch.")
        .unwrap_or("");
    let err = |code: &str, error: String, attempts: Vec<serde_json::Value>| ErrorReply {
        code: code.into(),
        error,
        role: role_str.chars().take(64).collect(),
        attempts,
    };
    let Ok(role) = Role::parse(role_str) else {
        let e = err(
            "bad-request",
            format!(
                "{:?} is not a role (lowercase letters, digits, '-')",
                role_str.chars().take(64).collect::<String>()
            ),
            vec![],
        );
        return respond_error(client, reply, &task, e).await;
    };
    let model = header(&msg, MODEL_HEADER);
    // One lock: the order, and the first node's lease (for `least_loaded`).
    let routed = {
        let view = lock(&shared.view);
        view.route(role.as_str(), model, Instant::now()).map(|r| {
            let lease = r.order.first().map(|n| view.lease(n));
            (r.order, lease)
        })
    };
    let (order, mut first_lease) = match routed {
        Ok(r) => r,
        Err(e @ RouteError::UnknownRole { .. }) => {
            return respond_error(
                client,
                reply,
                &task,
                err("no-such-role", e.to_string(), vec![]),
            )
            .await
        }
        Err(e) => {
            return respond_error(
                client,
                reply,
                &task,
                err("no-healthy-node", e.to_string(), vec![]),
            )
            .await
        }
    };
    let tries = if shared.config.retry { order.len() } else { 1 };
    // Failed attempts only: a task that is answered needs no report.
    let mut failed: Vec<AttemptReport> = Vec::new();
    for (i, node) in order.into_iter().take(tries).enumerate() {
        if i > 0 {
            counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let subject = node_task_subject(&role, &node);
        let mut h = HeaderMap::new();
        h.insert(TASK_ID_HEADER, task.as_str());
        h.insert(ATTEMPT_HEADER, (i + 1).to_string().as_str());
        if let Some(m) = model {
            h.insert(MODEL_HEADER, m);
        }
        let request = Request::new()
            .headers(h)
            .payload(msg.payload.clone())
            .timeout(Some(shared.config.node_timeout));
        let lease = match first_lease.take() {
            Some(l) => l,
            None => lock(&shared.view).lease(&node),
        };
        let start = Instant::now();
        let result = client.send_request(subject, request).await;
        let elapsed = start.elapsed();
        drop(lease);
        let outcome = match result {
            Ok(answer) => {
                let mut h = HeaderMap::new();
                h.insert(STATUS_HEADER, "ok");
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
                        eprintln!(
                            "router: task {task}: {node} answered claiming to be {shown:?}; reported as {node}"
                        );
                        h.insert(CLAIMED_HEADER, shown.as_str());
                    }
                }
                let _ = client.publish_with_headers(reply, h, answer.payload).await;
                return;
            }
            Err(e) => match e.kind() {
                RequestErrorKind::TimedOut => format!(
                    "got no reply within {:.1}s",
                    shared.config.node_timeout.as_secs_f64()
                ),
                RequestErrorKind::NoResponders => {
                    "found no agent subscribed (no responders)".to_string()
                }
                RequestErrorKind::Other => format!("failed: {e}"),
            },
        };
        lock(&shared.view).attempt_failed(&node, outcome.clone());
        failed.push(AttemptReport {
            node: node.to_string(),
            outcome,
            elapsed_ms: elapsed.as_millis() as u64,
        });
    }
    let described: Vec<String> = failed
        .iter()
        .map(|a| format!("{} {}", a.node, a.outcome))
        .collect();
    let e = err(
        "all-failed",
        format!(
            "no node answered the `{role}` task after {} attempt(s): {}",
            failed.len(),
            described.join("; ")
        ),
        failed
            .iter()
            .filter_map(|a| serde_json::to_value(a).ok())
            .collect(),
    );
    respond_error(client, reply, &task, e).await;
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
