//! Checks of single values (tags, groups, logins, keys, host names, users, URLs): each says
//! what is wrong in a few words, for the decoder's messages.

use crate::model::*;

pub(super) fn check_tag(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("tag:")
        .ok_or("it does not start with `tag:`")?;
    check_label(rest).map(|()| s.to_string())
}

pub(super) fn check_group(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("group:")
        .ok_or("it does not start with `group:`")?;
    check_label(rest).map(|()| s.to_string())
}

/// Autogroups that may be used as a source of access.
pub const SOURCE_AUTOGROUPS: [&str; 8] = [
    "autogroup:member",
    "autogroup:tagged",
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:network-admin",
    "autogroup:it-admin",
    "autogroup:billing-admin",
    "autogroup:auditor",
];

pub(super) fn check_login(s: &str) -> Result<String, String> {
    let ok = s.contains('@')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._+-".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a Tailscale login looks like `alice@example.com` (letters, digits, `@._+-`)".into())
    }
}

/// Checks a public key: `age1…` or `ssh-ed25519|ssh-rsa <base64> [comment]`, on one line.
pub fn check_public_key(s: &str, allow_age: bool) -> Result<String, String> {
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
    if !["ssh-ed25519", "ssh-rsa"].contains(&kind) {
        return Err(format!(
            "key type `{kind}` is not supported (use ssh-ed25519 or ssh-rsa)"
        ));
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

pub(super) fn check_host(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        && !s.starts_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err("a host name or IP address (letters, digits, `.`, `-`, `:`)".into())
    }
}

pub(super) fn check_user(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
    {
        Ok(s.to_string())
    } else {
        Err("a Unix user name (lowercase letters, digits, `_`, `-`; at most 32)".into())
    }
}

pub(super) fn check_nats_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("nats://")
        .ok_or("it does not start with `nats://`")?;
    let (host, port) = rest.rsplit_once(':').ok_or("it has no `:port`")?;
    check_host(host)?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{port}` is not a port"))?;
    Ok(s.to_string())
}
