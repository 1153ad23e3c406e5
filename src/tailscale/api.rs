//! A client of the Tailscale API v2: the policy file (get, validate, set with `If-Match`) and
//! auth keys.
//!
//! The token comes from `TS_API_KEY` or a file, never from argv; it is sent as a bearer token in a
//! header marked sensitive and never appears in errors or `Debug` output. The base URL is
//! `https://api.tailscale.com/api/v2/` unless `FLEETNIX_TS_API_URL` says otherwise (tests).

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.tailscale.com/api/v2/";
/// Environment variable overriding the base URL.
pub const BASE_URL_ENV: &str = "FLEETNIX_TS_API_URL";
/// Environment variable holding the API access token.
pub const TOKEN_ENV: &str = crate::secret::env::API_KEY;
/// Timeout of one API request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the API client. None of them contains the token.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token was given.
    #[error("no Tailscale API token: set {TOKEN_ENV} or pass --token-file FILE (a file holding the token)")]
    NoToken,
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token is empty or not a single line.
    #[error("the Tailscale API token from {from} is empty or spans several lines")]
    BadToken {
        /// Where it came from.
        from: String,
    },
    /// The base URL is not a URL.
    #[error("invalid Tailscale API base URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The request could not be sent or answered.
    #[error("cannot reach the Tailscale API at {url}: {reason}")]
    Transport {
        /// The URL (no credentials).
        url: String,
        /// Why.
        reason: String,
    },
    /// 401 (token invalid or expired) / 403 (the token may not use this endpoint).
    #[error("the Tailscale API refused the token ({status}): {}{}", unauthorized_fix(*.status), .message.as_deref().map(|m| format!(" (server: {m})")).unwrap_or_default())]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The server's message, if any.
        message: Option<String>,
    },
    /// 429: too many requests.
    #[error("the Tailscale API is rate-limiting this token (429 Too Many Requests){}: wait and re-run the command", .retry_after.as_deref().map(|r| format!(", retry after {r}s")).unwrap_or_default())]
    RateLimited {
        /// The `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// 5xx: the server failed.
    #[error("the Tailscale API failed ({status}) for {url}: a problem on Tailscale's side; re-run the command later (https://status.tailscale.com){}", .message.as_deref().map(|m| format!(" (server: {m})")).unwrap_or_default())]
    ServerError {
        /// HTTP status.
        status: u16,
        /// The URL.
        url: String,
        /// The server's message, if any.
        message: Option<String>,
    },
    /// 412: the policy changed since the ETag was read.
    #[error("the tailnet policy was changed by someone else since it was read (If-Match {etag} no longer matches); nothing was overwritten")]
    PreconditionFailed {
        /// The ETag sent.
        etag: String,
    },
    /// The server rejected the request (validation errors, failing tests, bad input).
    #[error("the Tailscale API rejected the request ({status}): {message}{}", details_text(.details))]
    Rejected {
        /// HTTP status (validation failures arrive as 200 with a message).
        status: u16,
        /// `message`.
        message: String,
        /// `data[].errors`, prefixed with their `user`.
        details: Vec<String>,
    },
    /// fleetnix refused before asking the API (e.g. minting a pre-auth key for a fleet that
    /// enrols with an OAuth client secret).
    #[error("{0}")]
    NotAsked(String),
    /// An unexpected answer.
    #[error("unexpected answer from the Tailscale API ({status}) for {url}: {message}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// What to fix for a 401 or 403.
fn unauthorized_fix(status: u16) -> String {
    if status == 403 {
        format!("the token in {TOKEN_ENV} or --token-file is valid but may not do this: use an API access token of an admin, or an OAuth client with the scope this needs (devices:core for devices, auth_keys for keys, policy_file for the policy)")
    } else {
        format!("check that {TOKEN_ENV} or --token-file holds a valid, unexpired API access token (tskey-api-…, at most 90 days); an expired one must be replaced in the admin console (Settings → Keys)")
    }
}

fn details_text(details: &[String]) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!("\n  {}", details.join("\n  "))
    }
}

/// The documented error body: `{"message": …, "data": [{"user": …, "errors": […]}]}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Vec<ErrorData>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorData {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
}

impl ErrorBody {
    fn details(&self) -> Vec<String> {
        self.data
            .iter()
            .flat_map(|d| {
                let who = d.user.clone().filter(|u| !u.is_empty());
                d.errors.iter().map(move |e| match &who {
                    Some(u) => format!("{u}: {e}"),
                    None => e.clone(),
                })
            })
            .collect()
    }
}

/// Reads the API token: from `file` if given, else from `TS_API_KEY`.
pub fn token_from(file: Option<&Path>) -> Result<Secret, ApiError> {
    let (raw, from) = match file {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| ApiError::TokenFile {
                path: p.display().to_string(),
                source,
            })?,
            p.display().to_string(),
        ),
        None => (
            std::env::var(TOKEN_ENV).map_err(|_| ApiError::NoToken)?,
            TOKEN_ENV.to_string(),
        ),
    };
    let raw = Secret::from(raw);
    let t = raw.expose().trim();
    if t.is_empty() || t.contains(['\n', '\r']) {
        return Err(ApiError::BadToken { from });
    }
    Ok(Secret::from(t.to_string()))
}

/// The base URL: `FLEETNIX_TS_API_URL` or the public API.
pub fn base_url_from_env() -> String {
    std::env::var(BASE_URL_ENV).unwrap_or_else(|_| DEFAULT_BASE_URL.to_string())
}

/// A policy file as stored on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePolicy {
    /// The HuJSON text.
    pub text: String,
    /// Its ETag, quoted as the server sent it.
    pub etag: String,
}

/// What an auth key may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthKeyRequest {
    /// Usable for many devices.
    pub reusable: bool,
    /// Devices are removed when they go offline.
    pub ephemeral: bool,
    /// Devices skip approval.
    pub preauthorized: bool,
    /// Tags every device enrolled with it carries.
    pub tags: Vec<String>,
    /// Lifetime in seconds.
    pub expiry_seconds: u64,
    /// ≤ 50 characters: letters, digits, hyphens, spaces, underscores.
    pub description: String,
}

/// A freshly created auth key. `Debug` never shows the key.
#[derive(Debug)]
pub struct AuthKey {
    /// Key id (not secret).
    pub id: String,
    /// The key itself: returned once by the server, handed on, never printed.
    pub key: Secret,
    /// Expiry time as the server wrote it.
    pub expires: Option<String>,
}

/// The API client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    pub(super) base: url::Url,
    tailnet: String,
    token: Secret,
}

impl Client {
    /// A client for `tailnet` (`-` = the token's tailnet) at `base` (e.g. [`DEFAULT_BASE_URL`]).
    pub fn new(base: &str, tailnet: &str, token: Secret) -> Result<Self, ApiError> {
        let mut b = base.to_string();
        if !b.ends_with('/') {
            b.push('/');
        }
        let base = url::Url::parse(&b).map_err(|e| ApiError::BadUrl {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "https" | "http") || base.cannot_be_a_base() {
            return Err(ApiError::BadUrl {
                url: base.to_string(),
                reason: "expected an http(s) URL".into(),
            });
        }
        // The token goes to this address: https only, unless a test allows its local fake.
        crate::http::check_https(BASE_URL_ENV, base.as_str()).map_err(|reason| {
            ApiError::BadUrl {
                url: base.to_string(),
                reason,
            }
        })?;
        let http = crate::http::client_builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ApiError::Transport {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            base,
            tailnet: tailnet.to_string(),
            token,
        })
    }

    /// `…/tailnet/{tailnet}/{rest…}`, each segment percent-encoded.
    pub(super) fn url(&self, rest: &[&str]) -> url::Url {
        let mut u = self.base.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.pop_if_empty().push("tailnet").push(&self.tailnet);
            for s in rest {
                segs.push(s);
            }
        }
        u
    }

    pub(super) fn request(
        &self,
        method: reqwest::Method,
        url: url::Url,
    ) -> reqwest::RequestBuilder {
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer invalid"));
        auth.set_sensitive(true);
        self.http
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, auth)
    }

    pub(super) async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &url::Url,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), ApiError> {
        let transport = |e: reqwest::Error| ApiError::Transport {
            url: url.to_string(),
            reason: e.without_url().to_string(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.map_err(transport)?;
        if status == 401 || status == 403 {
            return Err(decode_unauthorized(status, &body));
        }
        if status == 429 {
            return Err(ApiError::RateLimited {
                retry_after: headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.chars().take(20).collect()),
            });
        }
        if status >= 500 {
            let b: ErrorBody = serde_json::from_str(&body).unwrap_or_default();
            return Err(ApiError::ServerError {
                status,
                url: url.to_string(),
                message: b.message,
            });
        }
        Ok((status, headers, body))
    }

    pub(super) fn rejected(status: u16, body: &str) -> ApiError {
        decode_rejection(status, body)
    }

    /// `GET /tailnet/{t}/acl` as HuJSON, with its ETag.
    pub async fn get_policy(&self) -> Result<RemotePolicy, ApiError> {
        let url = self.url(&["acl"]);
        let req = self
            .request(reqwest::Method::GET, url.clone())
            .header(reqwest::header::ACCEPT, "application/hujson");
        let (status, headers, body) = self.send(req, &url).await?;
        if status != 200 {
            return Err(Self::rejected(status, &body));
        }
        let etag = headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| ApiError::Unexpected {
                status,
                url: url.to_string(),
                message: "the policy came without an ETag header".into(),
            })?;
        Ok(RemotePolicy { text: body, etag })
    }

    /// `POST /tailnet/{t}/acl/validate` with a whole policy: parse errors and failing tests
    /// come back as [`ApiError::Rejected`]. Never saves anything.
    pub async fn validate_policy(&self, hujson: &str) -> Result<(), ApiError> {
        let url = self.url(&["acl", "validate"]);
        let req = self
            .request(reqwest::Method::POST, url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/hujson")
            .body(hujson.to_string());
        let (status, _, body) = self.send(req, &url).await?;
        if status != 200 {
            return Err(Self::rejected(status, &body));
        }
        decode_validation(status, url.as_str(), &body)
    }

    /// `POST /tailnet/{t}/acl` with `If-Match: etag`; returns the stored policy and its new ETag.
    /// A changed policy gives [`ApiError::PreconditionFailed`] and nothing is written.
    pub async fn set_policy(&self, hujson: &str, etag: &str) -> Result<RemotePolicy, ApiError> {
        let url = self.url(&["acl"]);
        let quoted = format!("\"{}\"", etag.trim_matches('"'));
        let req = self
            .request(reqwest::Method::POST, url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/hujson")
            .header(reqwest::header::ACCEPT, "application/hujson")
            .header(reqwest::header::IF_MATCH, quoted.clone())
            .body(hujson.to_string());
        let (status, headers, body) = self.send(req, &url).await?;
        if status == 412 {
            return Err(ApiError::PreconditionFailed { etag: quoted });
        }
        if status != 200 {
            return Err(Self::rejected(status, &body));
        }
        let etag = headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(RemotePolicy { text: body, etag })
    }

    /// `POST /device/{id}/ip` with `{"ipv4": …}`: gives a device a specific Tailscale IPv4 address
    /// (inside 100.64.0.0/10 and not used by another device). `id` is the `nodeId` (`n…CNTRL`).
    pub async fn set_device_ipv4(
        &self,
        device_id: &str,
        ip: std::net::Ipv4Addr,
    ) -> Result<(), ApiError> {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty()
                .push("device")
                .push(device_id)
                .push("ip");
        }
        let body = serde_json::json!({ "ipv4": ip.to_string() });
        let r = self
            .request(reqwest::Method::POST, url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, _, text) = self.send(r, &url).await?;
        if !(200..300).contains(&status) {
            return Err(Self::rejected(status, &text));
        }
        Ok(())
    }

    /// `POST /tailnet/{t}/keys`: creates an auth key. The key is returned once, as a secret.
    pub async fn create_auth_key(&self, req: &AuthKeyRequest) -> Result<AuthKey, ApiError> {
        let url = self.url(&["keys"]);
        let body = serde_json::json!({
            "capabilities": {"devices": {"create": {
                "reusable": req.reusable,
                "ephemeral": req.ephemeral,
                "preauthorized": req.preauthorized,
                "tags": req.tags,
            }}},
            "expirySeconds": req.expiry_seconds,
            "description": req.description,
        });
        let r = self
            .request(reqwest::Method::POST, url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, _, text) = self.send(r, &url).await?;
        if status != 200 {
            return Err(Self::rejected(status, &text));
        }
        decode_created_key(status, url.as_str(), &text)
    }
}

/// Decodes a 401/403 answer's body (any body: the message is taken if it is there).
pub fn decode_unauthorized(status: u16, body: &str) -> ApiError {
    let b: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    ApiError::Unauthorized {
        status,
        message: b.message,
    }
}

/// Decodes a rejection (`{"message": …, "data": [{"user": …, "errors": […]}]}`); a body that
/// is not that JSON becomes the message, cut to 500 characters.
pub fn decode_rejection(status: u16, body: &str) -> ApiError {
    let b: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let details = b.details();
    ApiError::Rejected {
        status,
        message: b
            .message
            .unwrap_or_else(|| body.trim().chars().take(500).collect()),
        details,
    }
}

/// Decodes the 200 answer of `POST …/acl/validate` to `url`: success is an empty body or one
/// without a message; a message is a rejection.
pub fn decode_validation(status: u16, url: &str, body: &str) -> Result<(), ApiError> {
    if body.trim().is_empty() {
        return Ok(());
    }
    let b: ErrorBody = serde_json::from_str(body).map_err(|e| ApiError::Unexpected {
        status,
        url: url.to_string(),
        message: format!("validation answer is not JSON: {e}"),
    })?;
    match b.message.as_deref() {
        None | Some("") => Ok(()),
        Some(_) => Err(decode_rejection(status, body)),
    }
}

/// Decodes the 200 answer of `POST …/keys` to `url`: the new key's id, key and expiry.
pub fn decode_created_key(status: u16, url: &str, text: &str) -> Result<AuthKey, ApiError> {
    #[derive(Deserialize)]
    struct Created {
        id: String,
        key: Secret,
        #[serde(default)]
        expires: Option<String>,
    }
    let c: Created = serde_json::from_str(text).map_err(|_| ApiError::Unexpected {
        status,
        url: url.to_string(),
        // serde's message could quote the key; say only what is missing.
        message: "the answer lacks the expected \"id\" and \"key\" strings".into(),
    })?;
    Ok(AuthKey {
        id: c.id,
        key: c.key,
        expires: c.expires,
    })
}
