//! nats-server's configuration syntax.
//!
//! nats-server reads JSON, and more: a `$NAME` value that is *not* quoted refers to a variable of
//! the file or, failing that, to the environment variable `NAME`. A quoted `"$NAME"` is a literal
//! string. That is why the configuration is not rendered through NixOS's `services.nats.settings`
//! (JSON, so every value quoted): a password reference there would become the literal password
//! `$NAME`. This module writes JSON with unquoted variable references, and nothing else.

use super::ServerPlan;
use std::collections::BTreeMap;
use std::fmt::Write;

/// A value of a nats-server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conf {
    /// A string, written double-quoted and escaped.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A list.
    List(Vec<Conf>),
    /// A map; keys are written quoted, in sorted order.
    Map(BTreeMap<String, Conf>),
    /// An unquoted variable reference `$NAME`; `NAME` must match `[A-Z_][A-Z0-9_]*`.
    Var(String),
}

impl Conf {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Self {
        Conf::Str(s.into())
    }

    /// A list of strings.
    pub fn strs<S: AsRef<str>>(items: &[S]) -> Self {
        Conf::List(items.iter().map(|s| Conf::str(s.as_ref())).collect())
    }

    /// A map from pairs.
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Conf)>) -> Self {
        Conf::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The text, two-space indented, ending in a newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            Conf::Str(s) => quote(out, s),
            Conf::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Conf::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Conf::Var(name) => {
                // Invariant: callers build names with `is_var_name` names only (password_var);
                // anything else would change the meaning of the file, so refuse loudly in debug builds.
                debug_assert!(is_var_name(name), "bad variable name {name:?}");
                out.push('$');
                out.push_str(name);
            }
            Conf::List(items) if items.is_empty() => out.push_str("[]"),
            Conf::List(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&pad(depth + 1));
                    item.write(out, depth + 1);
                    if i + 1 < items.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&pad(depth));
                out.push(']');
            }
            Conf::Map(map) if map.is_empty() => out.push_str("{}"),
            Conf::Map(map) => {
                out.push_str("{\n");
                for (i, (k, v)) in map.iter().enumerate() {
                    out.push_str(&pad(depth + 1));
                    quote(out, k);
                    out.push_str(": ");
                    v.write(out, depth + 1);
                    if i + 1 < map.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&pad(depth));
                out.push('}');
            }
        }
    }
}

/// Is `s` a variable name nats-server and a systemd environment file both read unchanged?
pub fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Writes a double-quoted string with the escapes nats-server's lexer knows
/// (`\"`, `\\`, `\n`, `\r`, `\t`, `\xHH`); `$` inside quotes is literal.
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn user_conf(user: &str, password_var: &str, p: &super::Permissions) -> Conf {
    Conf::map([
        ("user", Conf::str(user)),
        ("password", Conf::Var(password_var.to_string())),
        (
            "permissions",
            Conf::map([
                ("publish", Conf::map([("allow", Conf::strs(&p.publish))])),
                (
                    "subscribe",
                    Conf::map([("allow", Conf::strs(&p.subscribe))]),
                ),
                ("allow_responses", Conf::Bool(p.allow_responses)),
            ]),
        ),
    ])
}

/// The server configuration of a plan: the node users (sorted by name), then the services'
/// (`_registry`, `_router`, `_supervisor`);
/// JetStream on, storing in the plan's `store_dir`.
pub fn server_conf(plan: &ServerPlan) -> Conf {
    let mut users: Vec<Conf> = plan
        .users
        .iter()
        .map(|u| user_conf(u.user.as_str(), &u.password_var, &u.permissions))
        .collect();
    users.extend(
        plan.services
            .iter()
            .map(|u| user_conf(&u.user, &u.password_var, &u.permissions)),
    );
    Conf::map([
        ("server_name", Conf::str(plan.server_name.as_str())),
        ("host", Conf::str(plan.host.to_string())),
        ("port", Conf::Int(i64::from(plan.port))),
        ("authorization", Conf::map([("users", Conf::List(users))])),
        (
            "jetstream",
            Conf::map([("store_dir", Conf::str(plan.store_dir.clone()))]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_vars_unquoted() {
        let c = Conf::map([
            ("a", Conf::str("x\"y\\z\n$HOME\u{1}")),
            ("b", Conf::Var("NATS_PASSWORD_A".into())),
            ("c", Conf::List(vec![])),
        ]);
        assert_eq!(
            c.render(),
            "{\n  \"a\": \"x\\\"y\\\\z\\n$HOME\\x01\",\n  \"b\": $NATS_PASSWORD_A,\n  \"c\": []\n}\n"
        );
    }

    #[test]
    fn variable_names() {
        assert!(is_var_name("NATS_PASSWORD_WORKER_01"));
        assert!(!is_var_name("1ABC"));
        assert!(!is_var_name("A-B"));
        assert!(!is_var_name(""));
    }
}
