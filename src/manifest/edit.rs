//! Small, comment-preserving edits of `nodes.yml`: set one scalar field of one node.
//!
//! The file is edited as text at the right place — the value after `field:` on its line is
//! replaced (a trailing comment stays), or a new `field: value` line is added at the end of the
//! node's block with the block's indentation — so comments, key order, quoting and blank lines
//! are kept. Before anything is written, the edited text is validated with [`super::parse`]: the
//! result must be exactly the old fleet with that one field changed. Otherwise nothing is written.
//! The file is replaced atomically, keeping its mode.

use super::yaml::{self, Node as Y, Value};
use super::{FleetTexts, ManifestError};
use crate::fsutil::write_atomic;
use crate::model::{Fleet, InvalidValue, Node};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A value to write, as YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    /// A double-quoted string (escaped as needed).
    Quoted(String),
    /// A plain scalar; only `[A-Za-z0-9._:-]` (addresses, numbers), checked when rendered.
    Plain(String),
}

impl Scalar {
    /// The string the YAML parser will read back.
    pub fn text(&self) -> &str {
        match self {
            Scalar::Quoted(s) | Scalar::Plain(s) => s,
        }
    }

    /// The YAML source text of the value.
    pub fn render(&self) -> Result<String, InvalidValue> {
        match self {
            Scalar::Quoted(s) => Ok(double_quoted(s)),
            Scalar::Plain(s) => {
                let ok = !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
                    && !s.starts_with(['-', ':']);
                if ok {
                    Ok(s.clone())
                } else {
                    Err(format!("{s:?} cannot be written as a plain YAML scalar").into())
                }
            }
        }
    }
}

/// `s` as a YAML double-quoted scalar.
pub fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Errors of [`update_node_field`]. Nothing was written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The fleet files could not be read or are invalid before the edit.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The text edit is not possible (unknown node, unusual layout).
    #[error("{}: cannot set `{field}` of node `{node}` automatically: {why}; edit the file by hand", file.display())]
    Unsupported {
        /// nodes.yml.
        file: PathBuf,
        /// Node name.
        node: String,
        /// Field name.
        field: String,
        /// Why.
        why: String,
    },
    /// The edited file would not be the intended fleet.
    #[error("{}: setting `{field}` of node `{node}` would make the manifest {why}; nothing was written", file.display())]
    Invalid {
        /// nodes.yml.
        file: PathBuf,
        /// Node name.
        node: String,
        /// Field name.
        field: String,
        /// What went wrong (validation problems, or other values changing).
        why: String,
    },
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Did an edit change the file?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edited {
    /// The field already had this value; the file was not touched.
    Unchanged,
    /// The file was rewritten.
    Changed,
}

/// Byte offsets of the start of each line (line 1 at index 0).
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .filter(|&i| i <= text.len())
        .collect()
}

/// End of the line containing `offset`, excluding `\r\n` / `\n`.
fn line_end(text: &str, offset: usize) -> usize {
    let end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    if end > offset && text.as_bytes()[end - 1] == b'\r' {
        end - 1
    } else {
        end
    }
}

/// Largest line number of any value in the subtree.
fn last_line(n: &Y) -> usize {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .map(last_line)
            .max()
            .unwrap_or(0)
            .max(n.pos.line),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| last_line(k).max(last_line(v)))
            .max()
            .unwrap_or(0)
            .max(n.pos.line),
        _ => n.pos.line,
    }
}

/// Where a trailing comment starts in `rest` (the text after `key:` on its line), if any.
fn comment_start(rest: &str) -> Option<usize> {
    let b = rest.as_bytes();
    let (mut dq, mut sq) = (false, false);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if dq => i += 1,
            b'"' if !sq => dq = !dq,
            b'\'' if !dq => sq = !sq,
            b'#' if !dq && !sq && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') => {
                return Some(i)
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Sets `field` of the node named `node` in the text of a nodes.yml to `value`. Returns the new
/// text (equal to `text` if the field already had this value), or why the edit cannot be made.
/// The result is not validated here; [`update_node_field`] does that.
pub fn set_node_field(
    text: &str,
    node: &str,
    field: &str,
    value: &Scalar,
) -> Result<String, InvalidValue> {
    set_node_field_text(text, node, field, value).map_err(InvalidValue)
}

fn set_node_field_text(
    text: &str,
    node: &str,
    field: &str,
    value: &Scalar,
) -> Result<String, String> {
    let rendered = value.render()?;
    // A CR not followed by LF ends a line for YAML but not for the line arithmetic below.
    if let Some(i) = text
        .match_indices('\r')
        .map(|(i, _)| i)
        .find(|&i| !text[i + 1..].starts_with('\n'))
    {
        return Err(format!(
            "line {} has a bare carriage return (a CR without LF); use \\n or \\r\\n line ends",
            text[..i].matches('\n').count() + 1
        ));
    }
    let root = yaml::parse(text)
        .map_err(|e| format!("line {}: {}", e.pos.line, e.message))?
        .ok_or("the file is empty")?;
    let Value::Map(top) = &root.value else {
        return Err("the file is not a mapping with `nodes:`".into());
    };
    let nodes = top
        .iter()
        .find(|(k, _)| k.as_str() == Some("nodes"))
        .map(|(_, v)| v)
        .ok_or("there is no `nodes:` list")?;
    let Value::Seq(items) = &nodes.value else {
        return Err("`nodes:` is not a list".into());
    };
    let item = items
        .iter()
        .find(|it| match &it.value {
            Value::Map(e) => e
                .iter()
                .any(|(k, v)| k.as_str() == Some("name") && v.as_str() == Some(node)),
            _ => false,
        })
        .ok_or_else(|| format!("there is no node named `{node}`"))?;
    let Value::Map(entries) = &item.value else {
        return Err("the node is not a mapping".into());
    };
    let Some((first_key, _)) = entries.first() else {
        return Err("the node is an empty mapping".into());
    };
    if text[item.pos.offset..].starts_with('{') || text[first_key.pos.offset..].starts_with('{') {
        return Err("the node is written as a flow mapping (`{ … }`)".into());
    }
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };

    if let Some((k, v)) = entries.iter().find(|(k, _)| k.as_str() == Some(field)) {
        if !matches!(v.value, Value::Scalar { .. }) {
            return Err(format!("its current value is {}", v.kind()));
        }
        if !v.is_null() && v.as_str() == Some(value.text()) {
            return Ok(text.to_string());
        }
        let end = line_end(text, k.pos.offset);
        // The key is a plain or quoted label, so the first `:` after it ends it.
        let colon = text[k.pos.offset..end]
            .find(':')
            .map(|i| k.pos.offset + i)
            .ok_or("its key has no `:` on its line")?;
        if !v.is_null() && v.pos.line != k.pos.line {
            return Err("its current value does not start on the key's line".into());
        }
        let rest = &text[colon + 1..end];
        let value_len = comment_start(rest).unwrap_or(rest.len());
        let old = rest[..value_len].trim();
        if old.starts_with(['|', '>']) {
            return Err("its current value is a block scalar".into());
        }
        let keep_from = colon + 1 + rest[..value_len].trim_end().len();
        let mut out = String::with_capacity(text.len() + rendered.len());
        out.push_str(&text[..=colon]);
        out.push(' ');
        out.push_str(&rendered);
        out.push_str(&text[keep_from..]);
        return Ok(out);
    }

    // Insert `field: value` after the node's last line (and any continuation lines).
    let indent = first_key.pos.col.saturating_sub(1);
    let starts = line_starts(text);
    let mut line = last_line(item).max(1); // 1-based
    while line < starts.len() {
        let s = starts[line];
        let l = &text[s..line_end(text, s)];
        let trimmed = l.trim_start();
        let ind = l.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') || ind <= indent {
            break;
        }
        line += 1;
    }
    let at = starts.get(line).copied().unwrap_or(text.len());
    let mut out = String::with_capacity(text.len() + rendered.len() + indent + field.len() + 4);
    out.push_str(&text[..at]);
    if at == text.len() && !text.is_empty() && !text.ends_with('\n') {
        out.push_str(eol);
    }
    out.push_str(&" ".repeat(indent));
    out.push_str(field);
    out.push_str(": ");
    out.push_str(&rendered);
    out.push_str(eol);
    out.push_str(&text[at..]);
    Ok(out)
}

/// Sets `field` of `node` in `<dir>/nodes.yml` to `value`, keeping comments and order.
/// `apply` makes the same change on the model: the edited file must parse to exactly the current
/// fleet with `apply` applied to the node, else nothing is written. Returns the new fleet.
pub fn update_node_field(
    dir: &Path,
    node: &str,
    field: &str,
    value: &Scalar,
    apply: impl FnOnce(&mut Node),
) -> Result<(Edited, Fleet), EditError> {
    let texts = FleetTexts::read(dir)?;
    let before = super::parse(&texts)?;
    let file = texts.paths.nodes.clone();
    let unsupported = |why: String| EditError::Unsupported {
        file: file.clone(),
        node: node.to_string(),
        field: field.to_string(),
        why,
    };
    let invalid = |why: String| EditError::Invalid {
        file: file.clone(),
        node: node.to_string(),
        field: field.to_string(),
        why,
    };
    let mut expected = before.clone();
    let target = expected
        .nodes
        .iter_mut()
        .find(|n| n.name.as_str() == node)
        .ok_or_else(|| unsupported(format!("there is no node named `{node}`")))?;
    apply(target);
    let new_text =
        set_node_field(&texts.nodes, node, field, value).map_err(|e| unsupported(e.0))?;
    if new_text == texts.nodes {
        if expected == before {
            return Ok((Edited::Unchanged, before));
        }
        return Err(invalid(
            "differ from the intended value although the text already holds it".into(),
        ));
    }
    let edited = FleetTexts {
        nodes: new_text,
        ..texts.clone()
    };
    let after = super::parse(&edited).map_err(|e| invalid(format!("invalid: {e}")))?;
    if after != expected {
        return Err(invalid("change more than this one field".into()));
    }
    let mode = std::fs::metadata(&file)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic(&file, edited.nodes.as_bytes(), mode).map_err(|source| EditError::Write {
        path: file.clone(),
        source,
    })?;
    Ok((Edited::Changed, after))
}

/// Records `node`'s SSH host public key (`ssh-ed25519 AAAA…`) as `host_key` in `<dir>/nodes.yml`.
pub fn set_host_key(dir: &Path, node: &str, key: &str) -> Result<(Edited, Fleet), EditError> {
    let key = key.trim().to_string();
    // An invalid key is reported by validating the edited file, with its line.
    let k = crate::model::HostKey::parse(&key).ok();
    update_node_field(dir, node, "host_key", &Scalar::Quoted(key), |n| {
        n.host_key = k
    })
}

/// Sets `tailscale_ip` of `node` in `<dir>/nodes.yml`.
pub fn set_tailscale_ip(dir: &Path, node: &str, ip: IpAddr) -> Result<(Edited, Fleet), EditError> {
    update_node_field(
        dir,
        node,
        "tailscale_ip",
        &Scalar::Plain(ip.to_string()),
        |n| n.tailscale_ip = ip,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# fleet nodes\nnodes:\n  # the control plane\n  - name: a\n    tailscale_ip: 100.64.0.1 # pinned\n    roles: [x,\n      y]\n    resources:\n      cpu: 1\n\n  # next one\n  - name: b\n    tailscale_ip: 100.64.0.2\n    host_key: \"ssh-ed25519 OLD\"  # old key\n";

    #[test]
    fn inserts_at_the_end_of_the_block_with_its_indentation() {
        let out = set_node_field(TEXT, "a", "host_key", &Scalar::Quoted("k 1".into())).unwrap();
        assert_eq!(
            out,
            TEXT.replace("      cpu: 1\n", "      cpu: 1\n    host_key: \"k 1\"\n")
        );
    }

    #[test]
    fn continuation_lines_belong_to_the_block() {
        let t = "nodes:\n  - name: a\n    roles: [x,\n      y]\n# end\n";
        let out = set_node_field(t, "a", "os", &Scalar::Plain("linux".into())).unwrap();
        assert_eq!(
            out,
            "nodes:\n  - name: a\n    roles: [x,\n      y]\n    os: linux\n# end\n"
        );
    }

    #[test]
    fn replaces_a_value_keeping_its_comment() {
        let out = set_node_field(TEXT, "b", "host_key", &Scalar::Quoted("new".into())).unwrap();
        assert_eq!(
            out,
            TEXT.replace("\"ssh-ed25519 OLD\"  # old key", "\"new\"  # old key")
        );
        let out = set_node_field(
            TEXT,
            "a",
            "tailscale_ip",
            &Scalar::Plain("100.64.0.9".into()),
        )
        .unwrap();
        assert_eq!(
            out,
            TEXT.replace("100.64.0.1 # pinned", "100.64.0.9 # pinned")
        );
    }

    #[test]
    fn same_value_is_no_change() {
        let out = set_node_field(
            TEXT,
            "b",
            "host_key",
            &Scalar::Quoted("ssh-ed25519 OLD".into()),
        )
        .unwrap();
        assert_eq!(out, TEXT);
    }

    #[test]
    fn no_trailing_newline_and_crlf() {
        let out = set_node_field(
            "nodes:\n  - name: a",
            "a",
            "os",
            &Scalar::Plain("nixos".into()),
        )
        .unwrap();
        assert_eq!(out, "nodes:\n  - name: a\n    os: nixos\n");
        let out = set_node_field(
            "nodes:\r\n  - name: a\r\n    os: linux\r\n",
            "a",
            "host_key",
            &Scalar::Quoted("k".into()),
        )
        .unwrap();
        assert_eq!(
            out,
            "nodes:\r\n  - name: a\r\n    os: linux\r\n    host_key: \"k\"\r\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        let flow = "nodes:\n  - {name: a, os: linux}\n";
        assert!(
            set_node_field(flow, "a", "os", &Scalar::Plain("auto".into()))
                .unwrap_err()
                .0
                .contains("flow")
        );
        assert!(
            set_node_field(TEXT, "zz", "os", &Scalar::Plain("auto".into()))
                .unwrap_err()
                .0
                .contains("no node")
        );
        let block = "nodes:\n  - name: a\n    host_key: |\n      ssh-ed25519 X\n";
        assert!(set_node_field(block, "a", "host_key", &Scalar::Quoted("k".into())).is_err());
        assert!(Scalar::Plain("a b".into()).render().is_err());
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(double_quoted("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
