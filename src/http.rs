//! One place that builds HTTP clients (ntfy, Tailscale API).

/// A `reqwest` client builder with fleetnix's user agent. reqwest is built without a default
/// TLS crypto provider (aws-lc needs cmake); this installs ring's once per process.
pub fn client_builder() -> reqwest::ClientBuilder {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().user_agent(concat!("fleetnix/", env!("CARGO_PKG_VERSION")))
}
