//! An in-process fake of the Tailscale API v2 policy-file and auth-key endpoints, following
//! `shared/reference/tailscale-api.md`: bearer token (else 401 `{"message"}`), `GET /acl`
//! with a quoted `ETag` (HuJSON unless `Accept: application/json`), `POST /acl/validate` (200 even
//! on failure, `{"message", "data": [{"user", "errors"}]}`), `POST /acl` with `If-Match` (412 on a
//! stale ETag) and `POST /keys` (key returned once). It listens on 127.0.0.1 only. Devices and
//! key metadata (`GET /devices`, `DELETE /device/{id}`, `POST /device/{id}/tags`,
//! `GET /keys/{id}`) are in [`tailnet`].

#![allow(dead_code)]

pub mod tailnet;

use fleetnix::acl::eval::Evaluator;
use fleetnix::acl::policy;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub if_match: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    pub status: u16,
}

/// The fake's state, shared with the test.
#[derive(Debug)]
pub struct State {
    /// The token it accepts.
    pub token: String,
    /// The stored policy.
    pub policy: String,
    /// Version counter behind the ETag.
    pub version: u64,
    /// Every request.
    pub seen: Vec<Seen>,
    /// If set: on `POST /acl/validate`, someone else replaces the policy with this (a race).
    pub race_on_validate: Option<String>,
    /// If set: count the files in this directory when a policy is POSTed.
    pub watch_dir: Option<PathBuf>,
    /// Files in `watch_dir` at each `POST /acl`.
    pub files_at_post: Vec<Vec<String>>,
    /// The secret part of minted keys.
    pub key_secret: String,
    /// Bodies of `POST /keys`.
    pub key_requests: Vec<serde_json::Value>,
    /// The tailnet's devices and auth keys (see [`tailnet`]).
    pub tailnet: tailnet::Tailnet,
}

impl State {
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", 0xfeed_0000u64 + self.version)
    }
}

pub struct FakeApi {
    pub base: String,
    pub state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json(status: u16, body: serde_json::Value) -> (u16, Vec<(String, String)>, String) {
    (
        status,
        vec![("Content-Type".into(), "application/json".into())],
        body.to_string(),
    )
}

/// Validates a policy the way the fake server does: the library's parser (an unknown field is
/// HTTP 400 `json: unknown field "X"`, as the server decodes strictly; other problems 200 with a
/// `message`) and the policy's own tests (200 with `{"message": "test(s) failed", "data":
/// [{"user": <test src>, "errors": ["address \"…\": want: Accept, got: Drop"]}]}`).
fn validate(text: &str) -> Option<(u16, serde_json::Value)> {
    let parsed = match policy::parse(text) {
        Ok(p) => p,
        Err(e) => return Some((400, serde_json::json!({"message": e.to_string()}))),
    };
    if let Some(i) = parsed.issues.first() {
        if i.kind == policy::IssueKind::UnknownField {
            // `… "name" is not a field …`
            let field = i.message.split('"').nth(1).unwrap_or("");
            return Some((
                400,
                serde_json::json!({"message": format!("json: unknown field {field:?}")}),
            ));
        }
        return Some((200, serde_json::json!({"message": i.message})));
    }
    let failures = Evaluator::new(&parsed.policy).run_tests();
    if failures.is_empty() {
        return None;
    }
    let mut by_src: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for f in &failures {
        let prefix = format!("{}: ", f.src);
        let e = f.message.strip_prefix(&prefix).unwrap_or(&f.message);
        by_src.entry(&f.src).or_default().push(e.to_string());
    }
    let data: Vec<serde_json::Value> = by_src
        .into_iter()
        .map(|(user, errors)| serde_json::json!({"user": user, "errors": errors}))
        .collect();
    Some((
        200,
        serde_json::json!({"message": "test(s) failed", "data": data}),
    ))
}

fn handle(st: &mut State, req: &mut tiny_http::Request) -> (u16, Vec<(String, String)>, String) {
    fn header(req: &tiny_http::Request, name: &'static str) -> Option<String> {
        req.headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    }
    let mut body = String::new();
    let _ = req.as_reader().read_to_string(&mut body);
    let auth = header(req, "Authorization");
    let seen = Seen {
        method: req.method().as_str().to_string(),
        path: req.url().to_string(),
        if_match: header(req, "If-Match"),
        authorization: auth.clone(),
        content_type: header(req, "Content-Type"),
        body: body.clone(),
        status: 0,
    };
    st.seen.push(seen);
    let bearer = format!("Bearer {}", st.token);
    // The client sends the bearer form (the reference also allows HTTP Basic; not used here).
    let authorized = auth.as_deref() == Some(bearer.as_str());
    if !authorized {
        return json(401, serde_json::json!({"message": "API token invalid"}));
    }
    let accept = header(req, "Accept").unwrap_or_default();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/api/v2/tailnet/-/acl") => {
            if accept.contains("application/json") {
                match policy::to_json(&st.policy) {
                    Ok(v) => {
                        let (s, mut h, b) = json(200, v);
                        h.push(("ETag".into(), st.etag()));
                        (s, h, b)
                    }
                    Err(e) => json(500, serde_json::json!({"message": e.to_string()})),
                }
            } else {
                (
                    200,
                    vec![
                        ("Content-Type".into(), "application/hujson".into()),
                        ("ETag".into(), st.etag()),
                    ],
                    st.policy.clone(),
                )
            }
        }
        ("POST", "/api/v2/tailnet/-/acl/validate") => {
            if let Some(p) = st.race_on_validate.take() {
                st.policy = p;
                st.version += 1;
            }
            if body.trim_start().starts_with('[') {
                return (200, vec![], String::new());
            }
            match validate(&body) {
                None => (200, vec![], String::new()),
                Some((status, err)) => json(status, err),
            }
        }
        ("POST", "/api/v2/tailnet/-/acl") => {
            if let Some(dir) = &st.watch_dir {
                let mut files: Vec<String> = std::fs::read_dir(dir)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort();
                st.files_at_post.push(files);
            }
            if let Some(m) = header(req, "If-Match") {
                let ok = if m == "\"ts-default\"" {
                    st.version == 0
                } else {
                    m == st.etag()
                };
                if !ok {
                    return json(
                        412,
                        serde_json::json!({"message": "precondition failed, invalid old hash"}),
                    );
                }
            }
            if let Some((_, err)) = validate(&body) {
                return json(400, err);
            }
            st.policy = body;
            st.version += 1;
            (
                200,
                vec![
                    ("Content-Type".into(), "application/hujson".into()),
                    ("ETag".into(), st.etag()),
                ],
                st.policy.clone(),
            )
        }
        ("POST", "/api/v2/tailnet/-/keys") => {
            let v: serde_json::Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(e) => return json(400, serde_json::json!({"message": e.to_string()})),
            };
            if v.pointer("/capabilities/devices").is_none() {
                return json(
                    400,
                    serde_json::json!({"message": "capabilities.devices is required"}),
                );
            }
            st.key_requests.push(v.clone());
            let id = format!("k{}CNTRL", st.key_requests.len());
            // Default lifetime 90 days; the key's metadata is kept for `GET /keys/{id}`.
            let lifetime = v["expirySeconds"].as_u64().unwrap_or(90 * 24 * 3600);
            let meta = st.tailnet.add_key(&id, lifetime, v["capabilities"].clone());
            json(
                200,
                serde_json::json!({
                    "id": id,
                    "key": format!("tskey-auth-{id}-{}", st.key_secret),
                    "created": meta["created"],
                    "expires": meta["expires"],
                    "capabilities": v["capabilities"],
                    "description": v["description"],
                }),
            )
        }
        (method, path) => match tailnet::handle(&mut st.tailnet, method, path, &body) {
            Some((status, value)) => json(status, value),
            None => json(404, serde_json::json!({"message": "not found"})),
        },
    }
}

impl FakeApi {
    /// Starts the fake with `policy` stored and `token` accepted.
    pub fn start(token: &str, policy: &str) -> FakeApi {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            policy: policy.to_string(),
            version: 1,
            seen: Vec::new(),
            race_on_validate: None,
            watch_dir: None,
            files_at_post: Vec::new(),
            key_secret: format!("{}{}", "FAKE", "0123456789abcdef"),
            key_requests: Vec::new(),
            tailnet: tailnet::Tailnet::default(),
        }));
        let (srv, st) = (server.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            for mut req in srv.incoming_requests() {
                let (status, headers, body) = {
                    let mut s = st.lock().unwrap();
                    let r = handle(&mut s, &mut req);
                    if let Some(last) = s.seen.last_mut() {
                        last.status = r.0;
                    }
                    r
                };
                let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
                for (k, v) in headers {
                    if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                        resp.add_header(h);
                    }
                }
                let _ = req.respond(resp);
            }
        });
        FakeApi {
            base: format!("http://127.0.0.1:{port}/api/v2/"),
            state,
            server,
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}
