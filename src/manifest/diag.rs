//! Problems found in the fleet files, each with file, line, column and field.

use super::yaml::Pos;
use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a fleet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the offending value.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The node it concerns, if any.
    pub node: Option<String>,
    /// The field path, e.g. `nodes[1].tailscale_ip`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What would be right.
    pub expected: Option<String>,
}

impl Problem {
    /// A problem at `pos`.
    pub fn at(file: &std::path::Path, pos: Pos, len: usize, field: &str, message: String) -> Self {
        Problem {
            file: file.to_path_buf(),
            offset: pos.offset,
            len,
            line: pos.line,
            col: pos.col,
            node: None,
            field: field.to_string(),
            message,
            expected: None,
        }
    }

    /// Adds what was expected.
    pub fn expected(mut self, e: impl Into<String>) -> Self {
        self.expected = Some(e.into());
        self
    }

    /// Names the node.
    pub fn node(mut self, n: Option<&str>) -> Self {
        self.node = n.map(str::to_string);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            clip_middle(&self.field, MESSAGE_CHARS)
        )?;
        if let Some(n) = &self.node {
            write!(f, " (node {})", clip_middle(n, MESSAGE_CHARS))?;
        }
        write!(f, ": {}", clip_middle(&self.message, MESSAGE_CHARS))?;
        if let Some(e) = &self.expected {
            write!(f, "; expected {}", clip_middle(e, MESSAGE_CHARS))?;
        }
        Ok(())
    }
}

/// Longest message, field or node name a problem prints, in characters (a message may quote a
/// value, which may be huge).
pub const MESSAGE_CHARS: usize = 400;

/// At most this many characters of source are shown on each side of a problem's span, and of
/// the span itself: a 1 MB line reports as a few hundred characters, not the whole line.
pub const CONTEXT_CHARS: usize = 200;

/// The part of a file shown under a problem: the line before, the problem's line and the line
/// after, each clipped to about [`CONTEXT_CHARS`] characters around the span (`…` marks a cut).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The clipped lines, joined by `\n`.
    pub text: String,
    /// 0-based line number in the file of the snippet's first line.
    pub first_line: usize,
    /// 0-based line of the problem within the snippet.
    pub problem_line: usize,
    /// The problem's span within `text` (byte offset, length).
    pub span: (usize, usize),
    /// Bytes of the problem's line cut at its start, minus the `…` put in their place: add it
    /// to a byte column in the snippet's problem line to get the file's.
    pub column_shift: isize,
}

const ELLIPSIS: &str = "…";

/// The largest char boundary of `s` at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The byte offset `n` characters before `i` in `s` (or 0).
fn chars_back(s: &str, i: usize, n: usize) -> usize {
    if n == 0 {
        return i;
    }
    s[..i].char_indices().rev().nth(n - 1).map_or(0, |(j, _)| j)
}

/// The byte offset `n` characters after `i` in `s` (or its end).
fn chars_fwd(s: &str, i: usize, n: usize) -> usize {
    s[i..].char_indices().nth(n).map_or(s.len(), |(j, _)| i + j)
}

/// A whole line other than the problem's, clipped to its first [`CONTEXT_CHARS`] characters.
fn clip_line(line: &str) -> String {
    let end = chars_fwd(line, 0, CONTEXT_CHARS);
    if end < line.len() {
        format!("{}{ELLIPSIS}", &line[..end])
    } else {
        line.to_string()
    }
}

impl Problem {
    /// The source `text` of this problem's file around its span, clipped ([`Snippet`]).
    pub fn snippet(&self, text: &str) -> Snippet {
        let offset = floor_char(text, self.offset);
        let end = floor_char(text, offset + self.len);
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        let line_end = line_end.max(offset);
        // The span itself, clipped too (a 1 MB scalar underlines its first characters).
        let end = end
            .min(chars_fwd(text, offset, CONTEXT_CHARS))
            .min(line_end.max(offset));
        let from = chars_back(text, offset, CONTEXT_CHARS).max(line_start);
        let to = chars_fwd(text, end, CONTEXT_CHARS).min(line_end);
        let mut line = String::new();
        if from > line_start {
            line.push_str(ELLIPSIS);
        }
        let span_start = line.len() + (offset - from);
        line.push_str(&text[from..to]);
        if to < line_end {
            line.push_str(ELLIPSIS);
        }
        let column_shift = (from - line_start) as isize
            - if from > line_start {
                ELLIPSIS.len() as isize
            } else {
                0
            };
        let line_no = text[..line_start].matches('\n').count();
        let mut out = String::new();
        let mut first_line = line_no;
        let mut problem_line = 0;
        if line_start > 0 {
            let prev_start = text[..line_start - 1].rfind('\n').map_or(0, |i| i + 1);
            out.push_str(&clip_line(
                text[prev_start..line_start - 1].trim_end_matches('\r'),
            ));
            out.push('\n');
            first_line -= 1;
            problem_line = 1;
        }
        let span = (out.len() + span_start, end - offset);
        out.push_str(&line);
        if line_end < text.len() {
            let next_end = text[line_end + 1..]
                .find('\n')
                .map_or(text.len(), |i| line_end + 1 + i);
            out.push('\n');
            out.push_str(&clip_line(
                text[line_end + 1..next_end].trim_end_matches('\r'),
            ));
        }
        Snippet {
            text: out,
            first_line,
            problem_line,
            span,
            column_shift,
        }
    }
}

/// `s` with its middle cut out if it is longer than `max` characters (messages quoting a huge
/// value stay short).
pub fn clip_middle(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.chars().count() <= max {
        return s.into();
    }
    let head = chars_fwd(s, 0, max / 2);
    let tail = chars_back(s, s.len(), max / 2);
    format!("{}{ELLIPSIS}{}", &s[..head], &s[tail..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(offset: usize, len: usize) -> Problem {
        Problem::at(
            std::path::Path::new("f.yml"),
            Pos {
                offset,
                line: 0,
                col: 0,
            },
            len,
            "x",
            "m".into(),
        )
    }

    #[test]
    fn a_short_file_is_shown_as_it_is() {
        let text = "a: 1\nb: 2\nc: 3\nd: 4\n";
        let s = problem(8, 1).snippet(text);
        assert_eq!(s.text, "a: 1\nb: 2\nc: 3");
        assert_eq!((s.first_line, s.problem_line, s.column_shift), (0, 1, 0));
        assert_eq!(&s.text[s.span.0..][..s.span.1], "2");
        let s = problem(0, 1).snippet(text);
        assert_eq!(s.text, "a: 1\nb: 2");
        assert_eq!((s.first_line, s.problem_line), (0, 0));
    }

    #[test]
    fn a_huge_line_is_clipped_around_the_span() {
        let pad = "é".repeat(1 << 19);
        let text = format!("first\n  - {{a: \"{pad}\", bogus: 1, b: \"{pad}\"}}\nlast\n");
        let offset = text.find("bogus").unwrap();
        let s = problem(offset, 5).snippet(&text);
        assert!(s.text.len() < 6 * CONTEXT_CHARS, "{} bytes", s.text.len());
        assert_eq!(&s.text[s.span.0..][..s.span.1], "bogus");
        assert_eq!(s.first_line, 0);
        let line = s.text.lines().nth(1).unwrap();
        assert!(
            line.starts_with(ELLIPSIS) && line.ends_with(ELLIPSIS),
            "{line}"
        );
        // The file's byte column of the span, from the snippet's.
        let line_start = s.text.find('\n').unwrap() + 1;
        let col = (s.span.0 - line_start) as isize + s.column_shift;
        assert_eq!(col as usize, offset - "first\n".len());
        assert_eq!(s.text.lines().last(), Some("last"));
        // A huge span underlines at most CONTEXT_CHARS characters.
        let s = problem(text.find('é').unwrap(), pad.len()).snippet(&text);
        assert!(s.span.1 <= CONTEXT_CHARS * 2, "{}", s.span.1);
        assert!(s.text.len() < 8 * CONTEXT_CHARS);
    }

    #[test]
    fn long_messages_are_clipped_in_the_middle() {
        assert_eq!(clip_middle("short", 10), "short");
        let long = "x".repeat(1000);
        let c = clip_middle(&long, 100);
        assert_eq!(c.chars().count(), 101);
    }
}
