//! Request/reply over the bus, with failover; and the worker side of the contract.
//!
//! A task goes first to `fleet.tasks.<role>`, where the role's nodes share a queue group (any free
//! node takes it). If no reply arrives within the node timeout — the node that took it hangs — and
//! retrying is on, the task goes to each candidate node in turn on `fleet.tasks.<role>.<node>`,
//! each bounded by the same timeout; a node that is not subscribed at all (down) answers "no
//! responders" at once, so only hung nodes cost a timeout. Every attempt carries the same
//! `Fleet-Task-Id` header, so a slow node that answers late can be recognised as a duplicate.

use super::{
    node_task_subject, queue_group, task_subject, BusError, ATTEMPT_HEADER, NODE_HEADER,
    TASK_ID_HEADER,
};
use crate::model::{NodeName, Role};
use crate::secret::Secret;
use async_nats::{Client, ConnectOptions, HeaderMap, Message, Request, RequestErrorKind};
use bytes::Bytes;
use rand::RngCore;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

/// Where an attempt sent the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The role's queue group: any node of the role.
    Queue,
    /// One node directly.
    Node(NodeName),
}

/// What an attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A reply.
    Replied,
    /// Nothing within the timeout.
    TimedOut,
    /// Nobody subscribed (the server said so at once).
    NoResponders,
    /// Another error (connection lost, permission denied…).
    Failed(String),
}

/// One try of a dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Where it went.
    pub target: Target,
    /// The subject.
    pub subject: String,
    /// What came back.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match &self.outcome {
            Outcome::Replied => "replied".to_string(),
            Outcome::TimedOut => format!("no reply within {:.1}s", self.elapsed.as_secs_f64()),
            Outcome::NoResponders => "no responders".to_string(),
            Outcome::Failed(e) => format!("failed: {e}"),
        };
        write!(f, "{} → {outcome}", self.subject)
    }
}

/// The attempts, `; `-separated, for messages.
pub fn describe_attempts(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// How a dispatch behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long one node gets to answer (`node_timeout_seconds`).
    pub attempt_timeout: Duration,
    /// Fail over to the candidates when the queue attempt gets no reply (`retry_on_node_failure`).
    pub retry: bool,
    /// Failover order: nodes of the role, tried one by one.
    pub candidates: Vec<NodeName>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempt_timeout: Duration::from_secs(30),
            retry: true,
            candidates: Vec::new(),
        }
    }
}

/// Who answered a task, and how far that can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Responder {
    /// The task went to `fleet.tasks.<role>.<node>`, which only that node's user may subscribe
    /// to, and only a user that received a request may answer it: the server vouches for it.
    Verified(NodeName),
    /// The task went to the role's queue group; the name is the worker's own `Fleet-Node`
    /// header, which any worker may set to any name.
    Claimed(String),
    /// Through the queue group, and the worker named nobody.
    Unnamed,
}

impl Responder {
    /// The node's name, verified or claimed.
    pub fn name(&self) -> Option<&str> {
        match self {
            Responder::Verified(n) => Some(n.as_str()),
            Responder::Claimed(n) => Some(n),
            Responder::Unnamed => None,
        }
    }

    /// Is the name vouched for by the server's permissions?
    pub fn verified(&self) -> bool {
        matches!(self, Responder::Verified(_))
    }
}

impl fmt::Display for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Responder::Verified(n) => write!(f, "{n}"),
            Responder::Claimed(n) => write!(f, "{n} (as claimed by the worker, unverified)"),
            Responder::Unnamed => f.write_str("an unnamed node"),
        }
    }
}

/// A successful dispatch.
#[derive(Debug, Clone)]
pub struct Dispatched {
    /// The reply's payload.
    pub reply: Bytes,
    /// Who answered.
    pub responder: Responder,
    /// The task id sent with every attempt.
    pub task_id: String,
    /// Every attempt, the last one the reply.
    pub attempts: Vec<Attempt>,
}

/// Checks `payload` is JSON; returns its bytes unchanged.
pub fn parse_payload(payload: &str) -> Result<Bytes, BusError> {
    serde_json::from_str::<serde_json::Value>(payload).map_err(BusError::BadPayload)?;
    Ok(Bytes::copy_from_slice(payload.as_bytes()))
}

/// Parses a timeout: `500ms`, `5s`, `2m`, or plain seconds (`5`, `0.5`); must be positive.
pub fn parse_timeout(s: &str) -> Result<Duration, crate::model::InvalidValue> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("{s:?}: expected a duration like 500ms, 5s or 2m").into()),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 5s or 2m"))?;
    if !(v.is_finite() && v > 0.0 && v * scale <= 86_400.0) {
        return Err(format!("{s:?}: expected a positive duration of at most a day").into());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Refuses URLs with embedded credentials (`nats://user:pass@host`): they would end up in argv,
/// the repository or error messages.
pub fn check_url(url: &str) -> Result<(), BusError> {
    for part in url.split(',') {
        let rest = part.split_once("://").map_or(part, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        if authority.contains('@') {
            return Err(BusError::CredentialsInUrl);
        }
    }
    Ok(())
}

/// Connects as `user` (a node name) with its password, using the inbox `_INBOX.<user>` its
/// permissions allow. Connecting is bounded by `timeout`.
pub async fn connect(
    url: &str,
    user: &NodeName,
    password: &Secret,
    timeout: Duration,
) -> Result<Client, BusError> {
    connect_as(url, user.as_str(), password, timeout).await
}

/// Connects as NATS user `user` (a node name, or the router's user), with the inbox
/// `_INBOX.<user>` its permissions allow; the whole handshake within `timeout`.
pub async fn connect_as(
    url: &str,
    user: &str,
    password: &Secret,
    timeout: Duration,
) -> Result<Client, BusError> {
    check_url(url)?;
    let options =
        ConnectOptions::with_user_and_password(user.to_string(), password.expose().to_string())
            .custom_inbox_prefix(format!("_INBOX.{user}"));
    connect_bounded(options, url, user, timeout).await
}

/// Connects with `options` to `url` as `user`, the whole handshake within `timeout`:
/// async-nats' connection timeout covers the TCP connect only, so a server that accepts and
/// never answers (INFO, the handshake) is bounded here.
pub(crate) async fn connect_bounded(
    options: ConnectOptions,
    url: &str,
    user: &str,
    timeout: Duration,
) -> Result<Client, BusError> {
    let connect = options.connection_timeout(timeout).connect(url);
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r.map_err(|source| BusError::Connect {
            url: url.to_string(),
            user: user.to_string(),
            source,
        }),
        Err(_) => Err(BusError::ConnectTimeout {
            url: url.to_string(),
            user: user.to_string(),
            timeout,
        }),
    }
}

/// A fresh task id: 16 lowercase hex digits (64 bits) from the thread's CSPRNG, which the OS's
/// random source seeds (no system call per id).
pub fn task_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().fold(String::with_capacity(16), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Sends a task for `role` and waits for the reply, failing over under `policy`.
pub async fn dispatch(
    client: &Client,
    role: &Role,
    payload: Bytes,
    policy: &Policy,
) -> Result<Dispatched, BusError> {
    let id = task_id();
    let mut targets = vec![(Target::Queue, task_subject(role))];
    if policy.retry {
        targets.extend(
            policy
                .candidates
                .iter()
                .map(|n| (Target::Node(n.clone()), node_task_subject(role, n))),
        );
    }
    let mut attempts = Vec::new();
    for (i, (target, subject)) in targets.into_iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert(TASK_ID_HEADER, id.as_str());
        headers.insert(ATTEMPT_HEADER, (i + 1).to_string().as_str());
        let request = Request::new()
            .headers(headers)
            .payload(payload.clone())
            .timeout(Some(policy.attempt_timeout));
        let start = Instant::now();
        let result = client.send_request(subject.clone(), request).await;
        let elapsed = start.elapsed();
        let outcome = match &result {
            Ok(_) => Outcome::Replied,
            Err(e) => match e.kind() {
                RequestErrorKind::TimedOut => Outcome::TimedOut,
                RequestErrorKind::NoResponders => Outcome::NoResponders,
                RequestErrorKind::Other => Outcome::Failed(e.to_string()),
            },
        };
        attempts.push(Attempt {
            target,
            subject,
            outcome,
            elapsed,
        });
        if let Ok(msg) = result {
            let claimed = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(NODE_HEADER))
                .map(|v| {
                    v.as_str()
                        .chars()
                        .filter(|c| c.is_ascii_graphic())
                        .take(64)
                        .collect::<String>()
                });
            // Invariant: this attempt was pushed just above.
            let responder = match (&attempts[attempts.len() - 1].target, claimed) {
                (Target::Node(n), _) => Responder::Verified(n.clone()),
                (Target::Queue, Some(c)) => Responder::Claimed(c),
                (Target::Queue, None) => Responder::Unnamed,
            };
            return Ok(Dispatched {
                reply: msg.payload,
                responder,
                task_id: id,
                attempts,
            });
        }
    }
    Err(BusError::NoAnswer {
        role: role.clone(),
        attempts,
    })
}

/// A node's task subscriptions for one role: the shared queue and its own subject.
#[derive(Debug)]
pub struct TaskSubscription {
    queue: async_nats::Subscriber,
    direct: async_nats::Subscriber,
}

impl TaskSubscription {
    /// The next task from either subscription; `None` once both are closed.
    pub async fn next(&mut self) -> Option<Message> {
        use futures_util::StreamExt;
        tokio::select! {
            Some(m) = self.queue.next() => Some(m),
            Some(m) = self.direct.next() => Some(m),
            else => None,
        }
    }

    /// Stops both subscriptions.
    pub async fn unsubscribe(mut self) -> Result<(), async_nats::UnsubscribeError> {
        self.queue.unsubscribe().await?;
        self.direct.unsubscribe().await
    }
}

/// Subscribes `node` to the tasks of `role` as the contract says: `fleet.tasks.<role>` in queue
/// group `<role>`, and `fleet.tasks.<role>.<node>`.
pub async fn subscribe_tasks(
    client: &Client,
    node: &NodeName,
    role: &Role,
) -> Result<TaskSubscription, BusError> {
    let subject = task_subject(role);
    let queue = client
        .queue_subscribe(subject.clone(), queue_group(role))
        .await
        .map_err(|source| BusError::Subscribe { subject, source })?;
    let subject = node_task_subject(role, node);
    let direct = client
        .subscribe(subject.clone())
        .await
        .map_err(|source| BusError::Subscribe { subject, source })?;
    Ok(TaskSubscription { queue, direct })
}

/// Answers a task with `payload`, saying who answered (`Fleet-Node` header).
pub async fn reply(
    client: &Client,
    task: &Message,
    node: &NodeName,
    payload: Bytes,
) -> Result<(), BusError> {
    let Some(subject) = task.reply.clone() else {
        return Ok(()); // published without a reply subject: nothing to answer
    };
    let mut headers = HeaderMap::new();
    headers.insert(NODE_HEADER, node.as_str());
    client
        .publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|source| BusError::Publish {
            subject: subject.to_string(),
            source,
        })?;
    client.flush().await.map_err(|e| BusError::Publish {
        subject: subject.to_string(),
        source: async_nats::PublishError::with_source(
            async_nats::client::PublishErrorKind::Send,
            e,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_are_refused() {
        assert!(check_url("nats://100.64.0.1:4222").is_ok());
        assert!(check_url("127.0.0.1:4222").is_ok());
        assert!(matches!(
            check_url("nats://control-01:hunter2hunter2@100.64.0.1:4222"),
            Err(BusError::CredentialsInUrl)
        ));
        assert!(check_url("nats://a:4222,nats://tok@b:4222").is_err());
        // The message never repeats the URL (it holds the password).
        let e = check_url("nats://u:s3cr3tvalue@h").unwrap_err().to_string();
        assert!(!e.contains("s3cr3tvalue"));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1m"), Ok(Duration::from_secs(60)));
        for bad in ["0", "-1s", "5h", "x", "", "1e9"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_must_be_json() {
        assert!(parse_payload(r#"{"task":"x"}"#).is_ok());
        assert!(matches!(
            parse_payload("{task"),
            Err(BusError::BadPayload(_))
        ));
    }
}
