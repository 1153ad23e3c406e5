//! Quoting for the POSIX shell (systemd unit files:
//! [`systemd_quote`](crate::outputs::agent::systemd_quote)): the one home of shell quoting for
//! deploy, bootstrap and health.
//!
//! Every value that reaches a remote shell goes through [`sh_quote`]; values that reach a
//! unit file's `ExecStart=` go through [`crate::outputs::agent::systemd_quote`]. Strings
//! containing NUL cannot be passed to a process at all: [`check_no_nul`] rejects them at the edges
//! (options, data read from a node).

/// Quotes `s` as one word for a POSIX shell. Words made only of safe characters are left bare;
/// everything else is single-quoted, with `'` written as `'\''`.
pub fn sh_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b'=' | b'@' | b',' | b'+' | b'%'
                )
        });
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Quotes words and joins them with spaces: a shell command line.
pub fn sh_join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| sh_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value that cannot be passed on: it holds a NUL or a line break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} contains a NUL or newline character: {value:?}")]
pub struct UnsafeValue {
    /// What the value is (for the message).
    pub what: String,
    /// The value.
    pub value: String,
}

/// Rejects strings that cannot be passed to a process (they contain NUL) or that would break a
/// line-oriented file (newlines). `what` names the value for the error message.
pub fn check_no_nul(what: &str, s: &str) -> Result<(), UnsafeValue> {
    if s.contains('\0') || s.contains('\n') || s.contains('\r') {
        Err(UnsafeValue {
            what: what.to_string(),
            value: s.to_string(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_through_sh() {
        for s in [
            "plain",
            "",
            "a b",
            "it's",
            "$(rm -rf /)",
            "`x`",
            "a\"b\\c",
            "tab\there",
            "new\nline",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .expect("sh runs");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                s,
                "quoted {s:?} as {}",
                sh_quote(s)
            );
        }
    }

    #[test]
    fn safe_words_stay_bare() {
        assert_eq!(sh_quote("root@100.64.0.2"), "root@100.64.0.2");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_join(&["echo", "x y"]), "echo 'x y'");
    }

    #[test]
    fn nul_and_newline_are_rejected() {
        assert!(check_no_nul("x", "a\0b").is_err());
        assert!(check_no_nul("x", "a\nb").is_err());
        assert!(check_no_nul("x", "/ok path").is_ok());
        assert_eq!(
            check_no_nul("the root", "a\rb").map_err(|e| e.to_string()),
            Err("the root contains a NUL or newline character: \"a\\rb\"".to_string())
        );
    }
}
