//! The caller's side: asking the router and reading its answer.

use super::*;

/// Asks the router to run `payload` on a node with `role` (the client side of
/// `fleet.dispatch.<role>`), preferring nodes that list `model`; waits up to `timeout`.
pub async fn ask(
    client: &Client,
    role: &Role,
    payload: Bytes,
    model: Option<&str>,
    timeout: Duration,
) -> Result<Answer, RouterError> {
    let subject = crate::bus::dispatch_subject(role.as_str());
    let mut h = HeaderMap::new();
    h.insert(TASK_ID_HEADER, task_id().as_str());
    if let Some(m) = model {
        h.insert(MODEL_HEADER, m);
    }
    let request = Request::new()
        .headers(h)
        .payload(payload)
        .timeout(Some(timeout));
    match client.send_request(subject.clone(), request).await {
        Ok(msg) => Ok(read_answer(&msg)),
        Err(e) => Err(match e.kind() {
            RequestErrorKind::NoResponders => RouterError::NoRouter { subject },
            RequestErrorKind::TimedOut => RouterError::RouterTimeout { subject, timeout },
            RequestErrorKind::Other => RouterError::Request {
                subject,
                reason: e.to_string(),
            },
        }),
    }
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
                }),
            )
        }
    }
}
