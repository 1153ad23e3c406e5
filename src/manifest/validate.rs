//! Checks of single values the model keeps as text (groups, logins): each says what is wrong
//! in a few words, for the decoder's messages. Host keys, tags, NATS URLs and SSH logins are
//! typed values with their own `parse` in [`crate::model`].

use crate::model::*;

pub(super) fn check_group(s: &str) -> Result<String, InvalidValue> {
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

pub(super) fn check_login(s: &str) -> Result<String, InvalidValue> {
    let ok = s.contains('@')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._+-".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a Tailscale login looks like `alice@example.com` (letters, digits, `@._+-`)".into())
    }
}
