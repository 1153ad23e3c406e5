//! ntfy alerts on node state transitions.
//!
//! A node going down sends one urgent notification; the same node coming back sends one
//! recovery notice. Nothing is sent while a state holds, so a flapping watch never
//! storms. Sending is `POST <base>/<topic>` with the message as body and the `X-Title`,
//! `X-Priority` and `X-Tags` headers. A failed send stays queued and is retried on the
//! next [`Alerter::flush`]; errors are returned for logging, never raised.

use crate::health::{NodeState, Transition};
use crate::model::{Fleet, NodeName};
use crate::secret::Secret;
use crate::spec::host_port;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

/// Env var overriding the ntfy base URL (default `http://<control plane>:<ntfy port>`).
pub const NTFY_URL_ENV: &str = "FLEETNIX_NTFY_URL";
/// Env var holding an ntfy access token (sent as `Authorization: Bearer …`, never logged).
pub const NTFY_TOKEN_ENV: &str = crate::secret::env::NTFY_TOKEN;

/// At most this many notifications wait for a retry; older ones are dropped first.
pub const MAX_PENDING: usize = 100;

/// Why an alert was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The topic does not match ntfy's `^[-_A-Za-z0-9]{1,64}$`.
    #[error("ntfy topic {0:?} is invalid: expected 1-64 characters of A-Z, a-z, 0-9, '-' or '_'")]
    Topic(String),
    /// The base URL is not `http://…` or `https://…`.
    #[error("ntfy URL {0:?} is invalid: expected http://host[:port] or https://host[:port]")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The request failed (connection, timeout).
    #[error("ntfy alert {title:?} to {url} failed: {error}")]
    Send {
        /// Notification title.
        title: String,
        /// Where it went.
        url: String,
        /// Why.
        error: String,
    },
    /// ntfy answered with an error status.
    #[error("ntfy alert {title:?} to {url} was refused: HTTP {status}: {body}")]
    Status {
        /// Notification title.
        title: String,
        /// Where it went.
        url: String,
        /// HTTP status.
        status: u16,
        /// Response body (ntfy's JSON error), truncated.
        body: String,
    },
}

/// One ntfy message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// The node it is about.
    pub node: NodeName,
    /// `X-Title`.
    pub title: String,
    /// Body.
    pub message: String,
    /// `X-Priority`: `urgent` or `default`.
    pub priority: &'static str,
    /// `X-Tags`.
    pub tags: Vec<&'static str>,
}

/// The notification a transition warrants: down (from anything else, including the first
/// sweep) is urgent; leaving down is a recovery notice; anything else sends nothing.
pub fn notification_for(t: &Transition) -> Option<Notification> {
    let was_down = t.from == Some(NodeState::Down);
    if t.to == NodeState::Down && !was_down {
        let why = t.reason.as_deref().unwrap_or("unreachable");
        Some(Notification {
            node: t.node.clone(),
            title: format!("fleetnix: {} is down", t.node),
            message: format!("Node {} is down: {why}.", t.node),
            priority: "urgent",
            tags: vec!["rotating_light"],
        })
    } else if was_down && t.to != NodeState::Down {
        Some(Notification {
            node: t.node.clone(),
            title: format!("fleetnix: {} recovered", t.node),
            message: format!("Node {} is back: {}.", t.node, t.to),
            priority: "default",
            tags: vec!["white_check_mark"],
        })
    } else {
        None
    }
}

fn valid_topic(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An ntfy topic on a server.
#[derive(Debug, Clone)]
pub struct Ntfy {
    base: String,
    topic: String,
    token: Option<Secret>,
    client: reqwest::Client,
}

impl Ntfy {
    /// `base` like `http://100.64.0.1:8090`; `token` from the environment or a file, if the server needs one.
    pub fn new(
        base: &str,
        topic: &str,
        token: Option<Secret>,
        timeout: Duration,
    ) -> Result<Self, AlertError> {
        if !valid_topic(topic) {
            return Err(AlertError::Topic(topic.to_string()));
        }
        let base = base.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', '@', ' '])) {
            return Err(AlertError::Url(base.to_string()));
        }
        let client = crate::http::client_builder()
            .timeout(timeout)
            .build()
            .map_err(|e| AlertError::Client(e.to_string()))?;
        Ok(Ntfy {
            base: base.to_string(),
            topic: topic.to_string(),
            token,
            client,
        })
    }

    /// The control plane's ntfy (`http://<cp address>:<ntfy.port>`, or `$FLEETNIX_NTFY_URL`),
    /// the fleet's topic, a token from `$FLEETNIX_NTFY_TOKEN`.
    pub fn for_fleet(fleet: &Fleet, timeout: Duration) -> Result<Self, AlertError> {
        let base = std::env::var(NTFY_URL_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "http://{}",
                    host_port(
                        &fleet.control_plane().tailscale_ip,
                        fleet.settings.ntfy.port
                    )
                )
            });
        let token = std::env::var(NTFY_TOKEN_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .map(Secret::new);
        Self::new(&base, &fleet.settings.ntfy.topic, token, timeout)
    }

    /// `<base>/<topic>`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.base, self.topic)
    }

    /// Publishes one notification.
    pub async fn send(&self, n: &Notification) -> Result<(), AlertError> {
        let url = self.url();
        let mut req = self
            .client
            .post(&url)
            .header("X-Title", &n.title)
            .header("X-Priority", n.priority)
            .header("X-Tags", n.tags.join(","))
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(n.message.clone());
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        let resp = req.send().await.map_err(|e| AlertError::Send {
            title: n.title.clone(),
            url: url.clone(),
            error: e.without_url().to_string(),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(AlertError::Status {
            title: n.title.clone(),
            url,
            status: status.as_u16(),
            body: body.trim().to_string(),
        })
    }
}

/// Turns transitions into notifications and delivers them in order, keeping failed ones for later.
#[derive(Debug)]
pub struct Alerter {
    ntfy: Ntfy,
    pending: VecDeque<Notification>,
    dropped: usize,
}

impl Alerter {
    /// Alerts through `ntfy`.
    pub fn new(ntfy: Ntfy) -> Self {
        Alerter {
            ntfy,
            pending: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Queues the notifications `transitions` warrant.
    pub fn observe(&mut self, transitions: &[Transition]) {
        for n in transitions.iter().filter_map(notification_for) {
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
                self.dropped += 1;
            }
            self.pending.push_back(n);
        }
    }

    /// Notifications waiting to be delivered.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Sends queued notifications in order; stops at the first failure (the server is
    /// likely unreachable) and keeps it and the rest for the next call.
    /// Returns what was sent and the error that stopped it, if any.
    pub async fn flush(&mut self) -> (Vec<Notification>, Option<AlertError>) {
        let mut sent = Vec::new();
        while let Some(n) = self.pending.front() {
            match self.ntfy.send(n).await {
                Ok(()) => {
                    if let Some(n) = self.pending.pop_front() {
                        sent.push(n);
                    }
                }
                Err(e) => return (sent, Some(e)),
            }
        }
        (sent, None)
    }
}
