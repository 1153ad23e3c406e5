//! Values parsed once, in the manifest layer, and passed on typed: a node's SSH host key
//! ([`HostKey`]), a Tailscale tag ([`Tag`]), the NATS URL ([`NatsUrl`]) and the SSH login
//! ([`SshLogin`]). Each derefs to its text and serializes as it, so outputs stay as they were.

use serde::Serialize;
use std::fmt;
use std::ops::Deref;

/// Why a value is invalid, in a few words for an error message ("it does not start with
/// `tag:`"). The manifest adds the file, line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl From<&str> for InvalidValue {
    fn from(s: &str) -> Self {
        InvalidValue(s.to_string())
    }
}

impl From<String> for InvalidValue {
    fn from(s: String) -> Self {
        InvalidValue(s)
    }
}

impl From<InvalidValue> for String {
    fn from(e: InvalidValue) -> Self {
        e.0
    }
}

/// Text, comparison and serialization shared by the value types.
macro_rules! text_value {
    ($name:ident) => {
        impl $name {
            /// The value as written in the manifest.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

/// Checks a public key: `age1…` (if `allow_age`) or `ssh-ed25519|ssh-rsa <base64> [comment]`,
/// on one line; returns it trimmed.
pub fn check_public_key(s: &str, allow_age: bool) -> Result<String, InvalidValue> {
    let s = s.trim();
    if s.contains(['\n', '\r', '"', '\\', '$', '`']) {
        return Err("it contains a newline, quote, `\\`, `$` or backquote".into());
    }
    if allow_age && s.starts_with("age1") {
        if s.len() > 10
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Ok(s.to_string());
        }
        return Err("an age recipient is `age1` followed by lowercase bech32 characters".into());
    }
    let mut parts = s.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    if !HostKey::KINDS.contains(&kind) {
        return Err(
            format!("key type `{kind}` is not supported (use ssh-ed25519 or ssh-rsa)").into(),
        );
    }
    if body.len() < 16
        || !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
    {
        return Err("the key material is not base64".into());
    }
    let comment: Vec<&str> = parts.collect();
    if comment
        .iter()
        .any(|w| !w.chars().all(|c| c.is_ascii_graphic() && c != '\''))
    {
        return Err("the key comment has unsafe characters".into());
    }
    Ok(s.to_string())
}

/// A node's SSH host public key, `ssh-ed25519|ssh-rsa <base64> [comment]` on one line, with
/// nothing that needs quoting in a shell word, a Nix string or a known_hosts line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HostKey(String);

text_value!(HostKey);

impl HostKey {
    /// The key types fleetnix accepts.
    pub const KINDS: [&'static str; 2] = ["ssh-ed25519", "ssh-rsa"];

    /// Validates `s` (surrounding white space is dropped).
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        check_public_key(s, false).map(HostKey)
    }

    /// The key type, e.g. `ssh-ed25519`.
    pub fn kind(&self) -> &str {
        self.words().0
    }

    /// The base64 key material.
    pub fn material(&self) -> &str {
        self.words().1
    }

    /// `<type> <base64>` without the comment: what a known_hosts line pins.
    pub fn without_comment(&self) -> String {
        let (kind, material) = self.words();
        format!("{kind} {material}")
    }

    fn words(&self) -> (&str, &str) {
        // Invariant: `parse` checked there are at least two words.
        let mut w = self.0.split_whitespace();
        (w.next().unwrap_or(""), w.next().unwrap_or(""))
    }
}

/// A Tailscale tag, `tag:<label>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Tag(String);

text_value!(Tag);

impl Tag {
    /// Validates `s` as `tag:` followed by a hostname label.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let rest = s
            .strip_prefix("tag:")
            .ok_or("it does not start with `tag:`")?;
        super::check_label(rest).map(|()| Tag(s.to_string()))
    }

    /// The name after `tag:`.
    pub fn name(&self) -> &str {
        &self.0["tag:".len()..]
    }
}

/// Checks a host name or IP address (letters, digits, `.`, `-`, `:`, brackets).
pub fn check_host(s: &str) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err("a host name or IP address (letters, digits, `.`, `-`, `:`)".into())
    }
}

/// The NATS URL agents connect to: `nats://<host>:<port>`, no credentials.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NatsUrl(String);

text_value!(NatsUrl);

impl NatsUrl {
    /// Validates `s` as `nats://<host>:<port>` (port 1–65535).
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let rest = s
            .strip_prefix("nats://")
            .ok_or("it does not start with `nats://`")?;
        let (host, port) = rest.rsplit_once(':').ok_or("it has no `:port`")?;
        check_host(host)?;
        port.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{port}` is not a port"))?;
        Ok(NatsUrl(s.to_string()))
    }

    /// The URL of the NATS server at `ip` and `port` (IPv6 in brackets).
    pub fn at(ip: std::net::IpAddr, port: u16) -> Self {
        NatsUrl(match ip {
            std::net::IpAddr::V4(ip) => format!("nats://{ip}:{port}"),
            std::net::IpAddr::V6(ip) => format!("nats://[{ip}]:{port}"),
        })
    }

    /// The host part (an IPv6 address keeps its brackets).
    pub fn host(&self) -> &str {
        self.split().0
    }

    /// The port.
    pub fn port(&self) -> u16 {
        // Invariant: `parse` and `at` only build URLs with a valid port.
        self.split().1.parse().unwrap_or(4222)
    }

    fn split(&self) -> (&str, &str) {
        let rest = self.0.strip_prefix("nats://").unwrap_or(&self.0);
        rest.rsplit_once(':').unwrap_or((rest, ""))
    }
}

/// The Unix user fleetnix logs in as over SSH to deploy a node (`ssh_user`, default `root`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SshLogin(String);

text_value!(SshLogin);

impl SshLogin {
    /// Validates `s` as a Unix user name: lowercase letters, digits, `_`, `-`, starting with a
    /// letter or `_`, at most 32 characters.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if first_ok
            && s.len() <= 32
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
        {
            Ok(SshLogin(s.to_string()))
        } else {
            Err("a Unix user name (lowercase letters, digits, `_`, `-`; at most 32)".into())
        }
    }

    /// `root`, the default.
    pub fn root() -> Self {
        SshLogin("root".into())
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.0
    }

    /// Does a deploy as this user need `sudo` for what needs root (everyone but `root`)?
    pub fn needs_sudo(&self) -> bool {
        self.0 != "root"
    }
}

impl Default for SshLogin {
    fn default() -> Self {
        Self::root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJQjeAs7RT6f33ippn demo";

    #[test]
    fn host_keys_are_split_once() {
        let k = HostKey::parse(&format!("  {KEY} ")).unwrap();
        assert_eq!(k.as_str(), KEY);
        assert_eq!(k.kind(), "ssh-ed25519");
        assert_eq!(k.material(), "AAAAC3NzaC1lZDI1NTE5AAAAIJQjeAs7RT6f33ippn");
        assert_eq!(k.without_comment(), KEY.trim_end_matches(" demo"));
        assert!(HostKey::parse("age1qqqqqqqqqqqqqqqq").is_err());
        assert!(HostKey::parse(&format!("{KEY} $(id)")).is_err());
    }

    #[test]
    fn tags_nats_urls_and_logins() {
        assert_eq!(Tag::parse("tag:worker").unwrap().name(), "worker");
        assert!(Tag::parse("worker").is_err());
        assert!(Tag::parse("tag:Worker").is_err());
        let u = NatsUrl::parse("nats://100.64.0.1:4222").unwrap();
        assert_eq!((u.host(), u.port()), ("100.64.0.1", 4222));
        let v6 = NatsUrl::at("fd7a:115c:a1e0::1".parse().unwrap(), 4223);
        assert_eq!(
            (v6.as_str(), v6.port()),
            ("nats://[fd7a:115c:a1e0::1]:4223", 4223)
        );
        assert_eq!(NatsUrl::parse(v6.as_str()).unwrap(), v6);
        assert!(NatsUrl::parse("nats://h:0").is_err());
        assert!(!SshLogin::root().needs_sudo());
        assert!(SshLogin::parse("deploy").unwrap().needs_sudo());
        assert!(SshLogin::parse("Deploy").is_err());
        assert!(SshLogin::parse("-rf").is_err());
    }
}
