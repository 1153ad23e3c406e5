//! A YAML tree in which every value keeps its position in the source file.
//!
//! `serde_yaml` stops at the first error and forgets where values came from; the
//! manifest needs both every error in one run and the line/column of every field,
//! so it is read into this small marked tree first.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in a source file: byte offset, 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Byte offset into the file.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl Pos {
    /// The start of a file: offset 0, line 1, column 1 (for problems of the whole file).
    pub const START: Pos = Pos {
        offset: 0,
        line: 1,
        col: 1,
    };
}

/// Converts yaml-rust2's character offsets into byte offsets in O(1) amortised time
/// (events arrive in file order, so a forward cursor suffices).
struct OffsetMap<'t> {
    text: &'t str,
    /// Bytes before `text` in the file (a byte order mark): added to every offset.
    base: usize,
    ascii: bool,
    chars: usize,
    bytes: usize,
}

impl<'t> OffsetMap<'t> {
    fn new(text: &'t str, base: usize) -> Self {
        OffsetMap {
            text,
            base,
            ascii: text.is_ascii(),
            chars: 0,
            bytes: 0,
        }
    }

    fn pos(&mut self, m: &Marker) -> Pos {
        let target = m.index();
        let offset = if self.ascii {
            target.min(self.text.len())
        } else {
            if target < self.chars {
                self.chars = 0;
                self.bytes = 0;
            }
            let mut it = self.text[self.bytes..].char_indices();
            while self.chars < target {
                match it.next() {
                    Some((_, c)) => {
                        self.bytes += c.len_utf8();
                        self.chars += 1;
                    }
                    None => break,
                }
            }
            self.bytes
        };
        Pos {
            offset: self.base + offset,
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub pos: Pos,
    /// Length in bytes of the value's first token (for underlining).
    pub len: usize,
    /// The value.
    pub value: Value,
}

/// The shape of a YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar; `plain` is true when it was written without quotes.
    Scalar {
        /// The scalar's text.
        text: String,
        /// Unquoted (so `null`, `true`, `12` keep their YAML meaning).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<(Node, Node)>),
    /// An alias (`*name`); fleet files do not use anchors.
    Alias,
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for an explicit or empty null.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if text.is_empty() || text == "~" || text == "null")
    }

    /// A short word for the kind of value, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "nothing (null)",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Alias => "an alias",
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// The parser's message.
    pub message: String,
}

struct Builder<'t> {
    offsets: OffsetMap<'t>,
    stack: Vec<(Node, Option<Node>)>,
    root: Option<Node>,
    documents: usize,
}

impl Builder<'_> {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, pending_key)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push((key, node)),
                },
                _ => {}
            },
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = self.offsets.pos(&mark);
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(text, style, _, _) => {
                let len = text.len().max(1);
                self.push_value(Node {
                    pos,
                    len,
                    value: Value::Scalar {
                        text,
                        plain: style == TScalarStyle::Plain,
                    },
                })
            }
            Event::Alias(_) => self.push_value(Node {
                pos,
                len: 1,
                value: Value::Alias,
            }),
            Event::SequenceStart(..) => self.stack.push((
                Node {
                    pos,
                    len: 1,
                    value: Value::Seq(Vec::new()),
                },
                None,
            )),
            Event::MappingStart(..) => self.stack.push((
                Node {
                    pos,
                    len: 1,
                    value: Value::Map(Vec::new()),
                },
                None,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            _ => {}
        }
    }
}

/// Parses `text` into a marked tree. An empty document gives `None`. A byte order mark at the
/// start is skipped (YAML allows one); offsets still count it, lines and columns do not.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let (text, base) = crate::fsutil::strip_bom(text);
    // yaml-rust2 stops at a NUL as if the file ended there (the rest would be silently
    // ignored), so characters YAML does not allow are refused first.
    if let Some((offset, c)) = text.char_indices().find(|&(_, c)| !is_yaml_printable(c)) {
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        return Err(SyntaxError {
            pos: Pos {
                offset: base + offset,
                line: before.matches('\n').count() + 1,
                col: before[line_start..].chars().count() + 1,
            },
            message: format!(
                "character U+{:04X} is not allowed in a YAML file (a control character); remove it",
                u32::from(c)
            ),
        });
    }
    let mut builder = Builder {
        offsets: OffsetMap::new(text, base),
        stack: Vec::new(),
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        pos: OffsetMap::new(text, base).pos(e.marker()),
        message: e.info().to_string(),
    })?;
    Ok(builder.root)
}

/// YAML 1.2's `c-printable`: tab, LF, CR, printable ASCII, NEL and the rest of Unicode but the
/// C1 controls, U+FFFE and U+FFFF (Rust strings hold no surrogates).
fn is_yaml_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}')
        || (c >= '\u{a0}' && c != '\u{fffe}' && c != '\u{ffff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let root = parse("a: 1\nlist:\n  - x\n  - \"y\"\n").unwrap().unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.as_str(), Some("a"));
        assert_eq!(entries[0].1.pos.line, 1);
        assert_eq!(entries[0].1.pos.col, 4);
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[1].pos.line, 4);
        assert_eq!(items[1].as_str(), Some("y"));
        assert!(matches!(items[1].value, Value::Scalar { plain: false, .. }));
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_positions_stay_right() {
        let text = "\u{feff}a: 1\nb: [x, \"y\"]\n";
        let root = parse(text).unwrap().unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("not a map: {root:?}")
        };
        assert_eq!(entries[0].0.as_str(), Some("a"));
        // Line 1's columns are an editor's (the mark is not a column); offsets are the file's.
        assert_eq!((entries[0].0.pos.line, entries[0].0.pos.col), (1, 1));
        assert_eq!(&text[entries[0].1.pos.offset..][..1], "1");
        assert_eq!((entries[0].1.pos.line, entries[0].1.pos.col), (1, 4));
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(&text[items[1].pos.offset..][..3], "\"y\"");
        assert_eq!((items[1].pos.line, items[1].pos.col), (2, 8));
        // A syntax error after the mark is still placed on its line and column.
        let err = parse("\u{feff}a: \u{1}\n").unwrap_err();
        assert_eq!((err.pos.line, err.pos.col, err.pos.offset), (1, 4, 6));
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1);
        assert!(!err.message.is_empty());
    }
}
