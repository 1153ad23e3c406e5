//! The secret strings fleetnix hands around (auth keys, API tokens, NATS passwords): one
//! [`Secret`] type, zeroized on drop and never shown by `Debug` or `Display`, so they cannot end
//! up in logs or error messages. The environment variables secrets are read from are named
//! once, in [`env`](mod@env).

use std::fmt;
use zeroize::Zeroizing;

/// A secret string.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret as it is.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(Zeroizing::new(s.into()))
    }

    /// The secret itself: for a child's stdin or a wire protocol, never for argv, logs or errors.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

/// For code written against `secrecy`: `expose_secret()` is [`Secret::expose`].
impl secrecy::ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.expose()
    }
}

/// Deserialized from a JSON string (an API's answer); never serialized.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The environment variables secrets come from, each named here once.
pub mod env {
    /// A node's Tailscale auth key (deploy, bootstrap, cloud-init, `secrets set-authkey`).
    pub const AUTHKEY: &str = "TAILSCALE_AUTHKEY";
    /// The auth key variable `tailscale` itself reads.
    pub const TS_AUTHKEY: &str = "TS_AUTHKEY";
    /// The Tailscale API token.
    pub const API_KEY: &str = "TS_API_KEY";
    /// A NATS password (`node sync`, `dispatch`, the router).
    pub const NATS_PASSWORD: &str = "FLEETNIX_NATS_PASSWORD";
    /// The ntfy access token of alerts.
    pub const NTFY_TOKEN: &str = "FLEETNIX_NTFY_TOKEN";
}

/// Environment variables fleetnix (or a tool it drives) reads secrets from: every name in
/// [`env`](mod@env). No child process gets them (see [`child_env_removals`]).
pub const SECRET_ENV_VARS: &[&str] = &[
    env::AUTHKEY,
    env::TS_AUTHKEY,
    env::API_KEY,
    env::NATS_PASSWORD,
    env::NTFY_TOKEN,
];

/// Prefixes of secret variables: the nats-server environment's `NATS_PASSWORD_<NODE>`.
pub const SECRET_ENV_PREFIXES: &[&str] = &["NATS_PASSWORD_"];

/// Is `name` a variable that holds a secret?
pub fn is_secret_env(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    SECRET_ENV_VARS.contains(&name.as_ref())
        || SECRET_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The variables to `env_remove` from every child process: [`SECRET_ENV_VARS`] and the
/// variables of this process matching [`SECRET_ENV_PREFIXES`]. Children keep everything else
/// they need (`PATH`, `HOME`, `SSH_AUTH_SOCK`, `NIX_*`, …).
pub fn child_env_removals() -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = SECRET_ENV_VARS.iter().map(Into::into).collect();
    for (k, _) in std::env::vars_os() {
        if is_secret_env(&k) && !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// The operator identity used when none is given: `~/.ssh/id_ed25519` with `~` expanded from
/// `$HOME` (`None` when `$HOME` is unset or empty: there is nothing to expand it to).
pub fn default_identity() -> Option<std::path::PathBuf> {
    default_identity_in(std::env::var_os("HOME"))
}

/// [`default_identity`] for a given `$HOME`.
fn default_identity_in(home: Option<std::ffi::OsString>) -> Option<std::path::PathBuf> {
    home.filter(|h| !h.is_empty())
        .map(|h| std::path::PathBuf::from(h).join(".ssh/id_ed25519"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2-secret");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-secret");
    }

    #[test]
    fn secret_variables_are_recognised() {
        for v in ["TAILSCALE_AUTHKEY", "TS_API_KEY", "NATS_PASSWORD_WORKER_01"] {
            assert!(is_secret_env(std::ffi::OsStr::new(v)), "{v}");
        }
        for v in ["PATH", "HOME", "SSH_AUTH_SOCK", "NIX_SSHOPTS"] {
            assert!(!is_secret_env(std::ffi::OsStr::new(v)), "{v}");
        }
        assert!(child_env_removals().contains(&"TS_API_KEY".into()));
    }

    #[test]
    fn default_identity_expands_home() {
        assert_eq!(
            default_identity_in(Some("/home/op".into())),
            Some(std::path::PathBuf::from("/home/op/.ssh/id_ed25519"))
        );
        assert_eq!(default_identity_in(Some("".into())), None);
        assert_eq!(default_identity_in(None), None);
    }
}
