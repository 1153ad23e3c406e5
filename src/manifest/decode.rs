//! The decoder: a YAML tree into values, with every problem recorded at its file, line and
//! field. [`Cx`] reads fields, scalars and lists; callers decide what each field means.

use super::yaml::{self, Node as Y, Value};
use super::Problem;
use crate::suggest::closest;
use std::collections::BTreeMap;
use std::path::Path;

pub(super) fn parse_yaml(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<Y> {
    match yaml::parse(text) {
        Ok(Some(root)) => Some(root),
        Ok(None) => {
            problems.push(
                Problem::at(
                    path,
                    yaml::Pos::START,
                    1,
                    "(file)",
                    "the file is empty".into(),
                )
                .expected("a YAML mapping"),
            );
            None
        }
        Err(e) => {
            problems.push(
                Problem::at(
                    path,
                    e.pos,
                    1,
                    "(syntax)",
                    format!("malformed YAML: {}", e.message),
                )
                .expected("valid YAML"),
            );
            None
        }
    }
}

/// Decoding context: the file being read and where problems go.
pub(super) struct Cx<'a> {
    pub(super) file: &'a Path,
    pub(super) problems: &'a mut Vec<Problem>,
    /// The node whose fields are being read, for messages.
    pub(super) node: Option<String>,
}

impl Cx<'_> {
    pub(super) fn err(
        &mut self,
        at: &Y,
        field: &str,
        message: impl Into<String>,
        expected: Option<String>,
    ) {
        let mut p = Problem::at(self.file, at.pos, at.len, field, message.into())
            .node(self.node.as_deref());
        p.expected = expected;
        self.problems.push(p);
    }

    /// Reads a mapping, reporting unknown (with the closest known name) and duplicate keys.
    pub(super) fn fields<'y>(
        &mut self,
        node: &'y Y,
        path: &str,
        known: &[&str],
    ) -> Option<Fields<'y>> {
        let Value::Map(entries) = &node.value else {
            self.err(
                node,
                path,
                format!("found {}", node.kind()),
                Some(format!("a mapping with fields {}", known.join(", "))),
            );
            return None;
        };
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            let Some(name) = k.as_str() else {
                self.err(k, path, "a key is not a plain string", None);
                continue;
            };
            let field = join(path, name);
            if !known.contains(&name) {
                let hint = closest(name, known)
                    .map(|c| format!("did you mean `{c}`? Known fields: {}", known.join(", ")))
                    .unwrap_or_else(|| format!("one of {}", known.join(", ")));
                self.err(k, &field, format!("unknown field `{name}`"), Some(hint));
                continue;
            }
            if map.insert(name, (k, v)).is_some() {
                self.err(k, &field, format!("field `{name}` is given twice"), None);
            }
        }
        Some(Fields {
            owner: node,
            path: path.to_string(),
            map,
        })
    }

    pub(super) fn required<'y>(
        &mut self,
        f: &Fields<'y>,
        name: &str,
        expected: &str,
    ) -> Option<&'y Y> {
        match f.get(name) {
            Some(v) => Some(v),
            None => {
                self.err(
                    f.owner,
                    &join(&f.path, name),
                    format!("missing required field `{name}`"),
                    Some(expected.to_string()),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, v: &Y, field: &str, expected: &str) -> Option<String> {
        match v.as_str() {
            Some(s) if !v.is_null() => Some(s.to_string()),
            _ => {
                self.err(
                    v,
                    field,
                    format!("found {}", v.kind()),
                    Some(expected.into()),
                );
                None
            }
        }
    }

    pub(super) fn int(&mut self, v: &Y, field: &str, expected: &str) -> Option<i64> {
        let parsed = match &v.value {
            Value::Scalar { text, plain: true } => text.parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let found = v
                .as_str()
                .map(|s| format!("`{s}`"))
                .unwrap_or(v.kind().into());
            self.err(v, field, format!("found {found}"), Some(expected.into()));
        }
        parsed
    }

    pub(super) fn positive(&mut self, v: &Y, field: &str) -> Option<u32> {
        let n = self.int(v, field, "a positive whole number")?;
        if n <= 0 || n > u32::MAX as i64 {
            self.err(
                v,
                field,
                format!("{n} is not positive"),
                Some("a number greater than 0".into()),
            );
            return None;
        }
        Some(n as u32)
    }

    pub(super) fn port(&mut self, v: &Y, field: &str) -> Option<u16> {
        let n = self.int(v, field, "a port number 1-65535")?;
        if !(1..=65535).contains(&n) {
            self.err(
                v,
                field,
                format!("{n} is not a port"),
                Some("a port number 1-65535".into()),
            );
            return None;
        }
        Some(n as u16)
    }

    pub(super) fn boolean(&mut self, v: &Y, field: &str) -> Option<bool> {
        match &v.value {
            Value::Scalar { text, plain: true } if text == "true" => Some(true),
            Value::Scalar { text, plain: true } if text == "false" => Some(false),
            _ => {
                let found = v
                    .as_str()
                    .map(|s| format!("`{s}`"))
                    .unwrap_or(v.kind().into());
                self.err(
                    v,
                    field,
                    format!("found {found}"),
                    Some("true or false".into()),
                );
                None
            }
        }
    }

    pub(super) fn list<'y>(&mut self, v: &'y Y, field: &str, expected: &str) -> Option<&'y [Y]> {
        match &v.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.err(
                    v,
                    field,
                    format!("found {}", v.kind()),
                    Some(format!("a list of {expected}")),
                );
                None
            }
        }
    }

    /// A string checked by `check`, which explains what is wrong.
    pub(super) fn checked<T, E: std::fmt::Display>(
        &mut self,
        v: &Y,
        field: &str,
        expected: &str,
        check: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let s = self.string(v, field, expected)?;
        match check(&s) {
            Ok(t) => Some(t),
            Err(why) => {
                self.err(
                    v,
                    field,
                    format!("`{}` is invalid: {why}", s.escape_debug()),
                    Some(expected.into()),
                );
                None
            }
        }
    }
}

/// The fields of one mapping.
pub(super) struct Fields<'y> {
    pub(super) owner: &'y Y,
    pub(super) path: String,
    pub(super) map: BTreeMap<&'y str, (&'y Y, &'y Y)>,
}

impl<'y> Fields<'y> {
    /// The value of `name`, treating an explicit null as absent.
    pub(super) fn get(&self, name: &str) -> Option<&'y Y> {
        self.map.get(name).map(|(_, v)| *v).filter(|v| !v.is_null())
    }
}

pub(super) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

impl Cx<'_> {
    /// The entries of a mapping whose keys are names (not a fixed field set).
    pub(super) fn fields_any<'y>(
        &mut self,
        node: &'y Y,
        path: &str,
    ) -> Option<Vec<(&'y Y, &'y Y)>> {
        match &node.value {
            Value::Map(entries) => Some(entries.iter().map(|(k, v)| (k, v)).collect()),
            _ => {
                self.err(
                    node,
                    path,
                    format!("found {}", node.kind()),
                    Some("a mapping".into()),
                );
                None
            }
        }
    }
}
