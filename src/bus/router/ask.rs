//! The caller's side: asking the router and reading its answer.

use super::*;

/// How a caller asks the router ([`ask_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskOptions {
    /// The task's deadline: the router answers before it (result, failure or `deadline`).
    pub timeout: Duration,
    /// Prefer nodes that list this model.
    pub model: Option<String>,
    /// The task id (the idempotency key); a fresh one when `None`. Asking again with the id of
    /// an earlier task gets that task's answer, not a second run.
    pub task_id: Option<String>,
    /// How long to wait for an answer before asking again with the same id (a router that died
    /// loses its callers' requests; another, or the restarted one, takes the retry). Keep it
    /// above `node_timeout_seconds`, so a first node has acknowledged or failed the task by then.
    pub reask: Duration,
    /// How long to keep asking while no router is subscribed at all (one restarting).
    pub no_router_wait: Duration,
}

impl AskOptions {
    /// A task with `timeout`, re-asked every `reask`; no router at all is an error after 6 s
    /// (a router restarted by its unit is back within that).
    pub fn new(timeout: Duration, reask: Duration) -> Self {
        AskOptions {
            timeout,
            model: None,
            task_id: None,
            reask,
            no_router_wait: Duration::from_secs(6),
        }
    }
}

/// Asks the router to run `payload` on a node with `role` (the client side of
/// `fleet.dispatch.<role>`), preferring nodes that list `model`; waits up to `timeout`, asking
/// again (same task id) every `timeout` / 4.
pub async fn ask(
    client: &Client,
    role: &Role,
    payload: Bytes,
    model: Option<&str>,
    timeout: Duration,
) -> Result<Answer, RouterError> {
    let mut o = AskOptions::new(timeout, (timeout / 4).max(Duration::from_millis(500)));
    o.model = model.map(str::to_string);
    ask_with(client, role, payload, &o).await
}

/// Asks the router as `options` say: the request carries the task id and its deadline; when no
/// answer comes within `options.reask`, it asks again with the same id (the router, or another,
/// joins the task where it runs). Returns the router's answer, or an error naming the task id
/// when none came before the deadline.
pub async fn ask_with(
    client: &Client,
    role: &Role,
    payload: Bytes,
    options: &AskOptions,
) -> Result<Answer, RouterError> {
    let subject = crate::bus::dispatch_subject(role.as_str());
    let id = options.task_id.clone().unwrap_or_else(task_id);
    let started = Instant::now();
    let deadline = started + options.timeout;
    let request_err = |reason: String| RouterError::Request {
        subject: subject.clone(),
        reason,
    };
    let headers = |n: u64, now: Instant| {
        let mut h = HeaderMap::new();
        h.insert(TASK_ID_HEADER, id.as_str());
        h.insert(
            DEADLINE_HEADER,
            (deadline - now).as_millis().max(1).to_string().as_str(),
        );
        if let Some(m) = &options.model {
            h.insert(MODEL_HEADER, m.as_str());
        }
        if n > 0 {
            h.insert(REASK_HEADER, n.to_string().as_str());
        }
        h
    };
    let mut no_router_since: Option<Instant> = None;
    // The first request on the client's shared reply subscription (no subscription of its own:
    // the common case, answered in time, costs what a plain request costs).
    let first = Request::new()
        .headers(headers(0, started))
        .payload(payload.clone())
        .timeout(Some(options.reask.min(options.timeout)));
    match client.send_request(subject.clone(), first).await {
        Ok(msg) => return Ok(read_answer(&msg)),
        Err(e) => match e.kind() {
            RequestErrorKind::TimedOut => {}
            RequestErrorKind::NoResponders => {
                no_router_since = Some(started);
                let pause = deadline.min(Instant::now() + Duration::from_millis(100));
                tokio::time::sleep_until(pause.into()).await;
            }
            RequestErrorKind::Other => return Err(request_err(e.to_string())),
        },
    }
    // Asking again, same id: a late answer to an earlier ask is as good as the latest's, so all
    // go to one subscription. (The first ask's answer, if it comes late, is lost; the router or
    // the node answers the repeat with the same result.)
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(format!("{inbox}.*"))
        .await
        .map_err(|e| request_err(e.to_string()))?;
    for n in 1u64.. {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let h = headers(n, now);
        client
            .publish_with_reply_and_headers(
                subject.clone(),
                format!("{inbox}.{n}"),
                h,
                payload.clone(),
            )
            .await
            .map_err(|e| request_err(e.to_string()))?;
        let wait_until = deadline.min(now + options.reask);
        match tokio::time::timeout_at(wait_until.into(), answers.next()).await {
            Err(_) => {} // no answer yet: ask again
            Ok(None) => return Err(request_err("the connection closed".into())),
            Ok(Some(msg)) if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) => {
                let since = *no_router_since.get_or_insert(now);
                if Instant::now().duration_since(since) >= options.no_router_wait {
                    return Err(RouterError::NoRouter {
                        subject,
                        task_id: id,
                    });
                }
                let pause = deadline.min(Instant::now() + Duration::from_millis(100));
                tokio::time::sleep_until(pause.into()).await;
            }
            Ok(Some(msg)) => return Ok(read_answer(&msg)),
        }
    }
    Err(match no_router_since {
        Some(_) => RouterError::NoRouter {
            subject,
            task_id: id,
        },
        None => RouterError::RouterTimeout {
            subject,
            timeout: options.timeout,
            task_id: id,
        },
    })
}

/// A router reply, as a client reads it.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The worker's answer.
    Done {
        /// The worker's payload, unchanged.
        payload: Bytes,
        /// The node the router sent the task to (vouched for by the server's permissions).
        node: String,
        /// What the worker claimed, when it named another node.
        claimed: Option<String>,
        /// Attempts it took.
        attempts: u32,
        /// The task id.
        task_id: String,
    },
    /// The router's error.
    Failed(ErrorReply),
}

/// Reads a router reply.
pub fn read_answer(msg: &Message) -> Answer {
    let h = |n: &str| header(msg, n).map(str::to_string);
    match h(STATUS_HEADER).as_deref() {
        Some("ok") => Answer::Done {
            payload: msg.payload.clone(),
            node: h(NODE_HEADER).unwrap_or_default(),
            claimed: h(CLAIMED_HEADER),
            attempts: h(ATTEMPTS_HEADER).and_then(|a| a.parse().ok()).unwrap_or(1),
            task_id: h(TASK_ID_HEADER).unwrap_or_default(),
        },
        status => {
            Answer::Failed(
                serde_json::from_slice(&msg.payload).unwrap_or_else(|_| ErrorReply {
                    code: status.unwrap_or("invalid-reply").to_string(),
                    error: "the router's reply could not be read".into(),
                    role: String::new(),
                    attempts: vec![],
                    task_id: h(TASK_ID_HEADER).unwrap_or_default(),
                }),
            )
        }
    }
}
