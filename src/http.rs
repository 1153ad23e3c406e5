//! One place that builds HTTP clients (ntfy, Tailscale API).

/// A `reqwest` client builder with fleetnix's user agent. reqwest is built without a default
/// TLS crypto provider (aws-lc needs cmake); this installs ring's once per process.
pub fn client_builder() -> reqwest::ClientBuilder {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().user_agent(concat!("fleetnix/", env!("CARGO_PKG_VERSION")))
}

/// Test-only: set to `1` to let [`check_https`] accept `http://` and `file://` URLs (the
/// tests' local fakes). Never set it for a real fleet: an install script is run as root and
/// the Tailscale API gets the API token.
pub const ALLOW_INSECURE_URLS_ENV: &str = "FLEETNIX_ALLOW_INSECURE_URLS";

/// Whether [`ALLOW_INSECURE_URLS_ENV`] is `1`.
pub fn insecure_urls_allowed() -> bool {
    std::env::var(ALLOW_INSECURE_URLS_ENV).is_ok_and(|v| v == "1")
}

/// A URL fleetnix fetches code or sends a credential to must be `https://` (with a host);
/// `http://` and `file://` only with [`ALLOW_INSECURE_URLS_ENV`]`=1` (tests). `what` names the
/// URL's source for the error, e.g. `--install-url / FLEETNIX_TAILSCALE_INSTALL_URL`.
pub fn check_https(what: &str, url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    {
        return Ok(());
    }
    if insecure_urls_allowed() && (lower.starts_with("http://") || lower.starts_with("file://")) {
        return Ok(());
    }
    Err(format!(
        "{what} is {url:?}: expected an https:// URL (http:// would let anyone on the path change what runs as root or read the credential sent to it; {ALLOW_INSECURE_URLS_ENV}=1 allows it for tests only)"
    ))
}
