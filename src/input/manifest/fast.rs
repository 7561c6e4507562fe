//! A fast reader for the plain subset of YAML that manifests are usually written in: block
//! mappings and sequences, one-line plain or quoted scalars without escapes, one-line flow
//! collections, comments and `---` separators. It returns `None` as soon as it meets
//! anything else (anchors, tags, block scalars, multi-line scalars, escapes, tabs, odd
//! indentation, syntax errors, ...), and the full parser then reads the text. When it
//! returns documents, they are exactly those of the full parser, positions included (a
//! differential test checks this on many generated and mutated inputs).
use super::yaml::{Kind, Node, Pos};
use std::borrow::Cow;

#[derive(Clone, Copy)]
struct Line {
    /// 1-based line number.
    no: u64,
    /// Byte offset of the start of the line.
    start: usize,
    /// Byte offset of the content (after the indentation, or of a compact item's content).
    from: usize,
    /// Byte offset of the end of the content (comment and trailing blanks removed).
    to: usize,
    /// Column (0-based, in bytes) of the content: the structural indentation.
    indent: usize,
}

enum Item {
    Line(Line),
    /// `---` (a new document) or `...` (end of document).
    Boundary,
}

struct P<'a> {
    text: &'a str,
    lines: Vec<Line>,
    i: usize,
    /// Nesting depth, bounded (deeper documents go to the full parser).
    depth: usize,
}

const MAX_DEPTH: usize = 32;

pub(super) fn parse(text: &str) -> Option<Vec<Node<'_>>> {
    if !acceptable_chars(text) {
        return None;
    }
    let items = split(text)?;
    let mut docs = Vec::new();
    let mut current: Vec<Line> = Vec::new();
    for item in items {
        match item {
            Item::Line(l) => current.push(l),
            Item::Boundary => {
                if !current.is_empty() {
                    docs.push(document(text, std::mem::take(&mut current))?);
                }
            }
        }
    }
    if !current.is_empty() {
        docs.push(document(text, current)?);
    }
    Some(docs)
}

/// Only characters whose YAML meaning is simple here: no tabs, CR, control characters,
/// special Unicode line breaks or BOMs, no escape, anchor, alias, tag, block-scalar,
/// directive or reserved indicators anywhere.
fn acceptable_chars(text: &str) -> bool {
    let ascii_ok = |b: u8| {
        (0x20..0x7f).contains(&b)
            && !matches!(
                b,
                b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@' | b'`' | b'\\' | b'?'
            )
            || b == b'\n'
    };
    if text.is_ascii() {
        return text.bytes().all(ascii_ok);
    }
    text.chars().all(|c| {
        if c.is_ascii() {
            ascii_ok(c as u8)
        } else {
            let u = c as u32;
            (0xA0..=0xD7FF).contains(&u)
                || (0xE000..=0xFFFD).contains(&u) && u != 0xFEFF
                || u >= 0x10000
        }
    })
}

/// The non-blank, non-comment lines and document boundaries.
fn split(text: &str) -> Option<Vec<Item>> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for (n, raw) in text.split('\n').enumerate() {
        let line_start = start;
        start += raw.len() + 1;
        let indent = raw.len() - raw.trim_start_matches(' ').len();
        let body = &raw[indent..];
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let has_quote = body.contains(['"', '\'']);
        // Cut a comment: `#` after a blank. With quotes on the line, a `#` could be
        // inside a quoted scalar: leave such lines to the full parser.
        let mut end = body.len();
        if let Some(i) = body.find(" #") {
            if has_quote {
                return None;
            }
            end = i;
        }
        let content = body[..end].trim_end_matches(' ');
        if indent == 0 && (content == "---" || content == "...") {
            out.push(Item::Boundary);
            continue;
        }
        if content.starts_with("---") || content.starts_with("...") {
            return None;
        }
        out.push(Item::Line(Line {
            no: n as u64 + 1,
            start: line_start,
            from: line_start + indent,
            to: line_start + indent + content.len(),
            indent,
        }));
    }
    Some(out)
}

fn document(text: &str, lines: Vec<Line>) -> Option<Node<'_>> {
    let mut p = P {
        text,
        lines,
        i: 0,
        depth: 0,
    };
    let root = p.block_node(None)?;
    if p.i != p.lines.len() {
        return None;
    }
    Some(root)
}

/// Whether `s` (trimmed content) starts a sequence entry.
fn is_dash(s: &str) -> bool {
    s == "-" || s.starts_with("- ")
}

/// The `key: value` split of a block line: byte index of the `:` in `s`.
fn key_colon(s: &str) -> Option<usize> {
    let first = s.as_bytes().first()?;
    if matches!(
        first,
        b'"' | b'\'' | b'[' | b'{' | b']' | b'}' | b',' | b':' | b'#' | b'-'
    ) {
        return None;
    }
    let i = s
        .find(": ")
        .or_else(|| s.ends_with(':').then(|| s.len() - 1))?;
    if s[..i].ends_with(' ') || s[..i].is_empty() {
        return None;
    }
    Some(i)
}

impl<'a> P<'a> {
    fn pos(&self, line: &Line, at: usize) -> Pos {
        let prefix = &self.text[line.start..at];
        let col = if prefix.is_ascii() {
            prefix.len()
        } else {
            prefix.chars().count()
        };
        Pos {
            line: line.no,
            col: col as u64 + 1,
        }
    }

    fn content(&self, line: &Line) -> &'a str {
        &self.text[line.from..line.to]
    }

    fn peek(&self) -> Option<Line> {
        self.lines.get(self.i).copied()
    }

    /// A block node starting at the current line, which must be deeper than `parent`.
    fn block_node(&mut self, parent: Option<usize>) -> Option<Node<'a>> {
        let line = self.peek()?;
        if parent.is_some_and(|p| line.indent <= p) || self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let node = if is_dash(self.content(&line)) {
            self.block_seq(line.indent, false)
        } else {
            self.block_map(line.indent)
        };
        self.depth -= 1;
        node
    }

    fn block_map(&mut self, indent: usize) -> Option<Node<'a>> {
        let first = self.peek()?;
        let pos = self.pos(&first, first.from);
        let mut entries = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let s = self.content(&line);
            let colon = key_colon(s)?;
            let key_text = &s[..colon];
            if !plain_ok(key_text, false) {
                return None;
            }
            let key = Node {
                pos: self.pos(&line, line.from),
                kind: Kind::Scalar {
                    text: Cow::Borrowed(key_text),
                    plain: true,
                },
            };
            let colon_at = line.from + colon;
            let rest = s[colon + 1..].trim_start_matches(' ');
            self.i += 1;
            let value = if rest.is_empty() {
                match self.peek() {
                    Some(next) if next.indent > indent => self.block_node(Some(indent))?,
                    Some(next) if next.indent == indent && is_dash(self.content(&next)) => {
                        self.block_seq(indent, true)?
                    }
                    _ => Node {
                        pos: self.pos(&line, colon_at),
                        kind: Kind::Scalar {
                            text: Cow::Borrowed("~"),
                            plain: true,
                        },
                    },
                }
            } else {
                let at = line.to - rest.len();
                let v = self.inline(&line, at)?;
                if self.peek().is_some_and(|n| n.indent > indent) {
                    return None;
                }
                v
            };
            entries.push((key, value));
        }
        Some(Node {
            pos,
            kind: Kind::Map(entries),
        })
    }

    /// A block sequence whose `-` are at `indent`; `indentless` when it is the value
    /// of a mapping key at the same indentation.
    fn block_seq(&mut self, indent: usize, indentless: bool) -> Option<Node<'a>> {
        let first = self.peek()?;
        let dash_pos = self.pos(&first, first.from);
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let s = self.content(&line);
            if !is_dash(s) {
                if indentless {
                    break;
                }
                return None;
            }
            let rest = s[1..].trim_start_matches(' ');
            if rest.is_empty() {
                if indentless && items.is_empty() {
                    return None;
                }
                self.i += 1;
                items.push(self.block_node(Some(indent))?);
                continue;
            }
            if is_dash(rest) {
                return None;
            }
            let at = line.to - rest.len();
            if key_colon(rest).is_some() {
                // A compact mapping: continues on the lines indented like its first key.
                let col = at - line.start;
                self.lines[self.i] = Line {
                    from: at,
                    indent: col,
                    ..line
                };
                items.push(self.block_map(col)?);
            } else {
                self.i += 1;
                items.push(self.inline(&line, at)?);
                if self.peek().is_some_and(|n| n.indent > indent) {
                    return None;
                }
            }
        }
        let pos = if indentless {
            items.first()?.pos
        } else {
            dash_pos
        };
        Some(Node {
            pos,
            kind: Kind::Seq(items),
        })
    }

    /// A value on the rest of a line from byte `at`: a scalar or a flow collection.
    fn inline(&self, line: &Line, at: usize) -> Option<Node<'a>> {
        let s = &self.text[at..line.to];
        match s.as_bytes()[0] {
            b'[' | b'{' => {
                let mut j = at;
                let node = self.flow(line, &mut j, 0)?;
                if j != line.to {
                    return None;
                }
                Some(node)
            }
            b'"' | b'\'' => {
                let mut j = at;
                let node = self.quoted(line, &mut j)?;
                if j != line.to {
                    return None;
                }
                Some(node)
            }
            _ => {
                if !plain_ok(s, false) || s.contains(": ") || s.ends_with(':') {
                    return None;
                }
                Some(Node {
                    pos: self.pos(line, at),
                    kind: Kind::Scalar {
                        text: Cow::Borrowed(s),
                        plain: true,
                    },
                })
            }
        }
    }

    fn byte(&self, j: usize, line: &Line) -> Option<u8> {
        if j < line.to {
            Some(self.text.as_bytes()[j])
        } else {
            None
        }
    }

    fn skip_spaces(&self, line: &Line, j: &mut usize) {
        while self.byte(*j, line) == Some(b' ') {
            *j += 1;
        }
    }

    fn quoted(&self, line: &Line, j: &mut usize) -> Option<Node<'a>> {
        let q = self.byte(*j, line)?;
        let open = *j;
        let close = open + 1 + self.text[open + 1..line.to].find(q as char)?;
        if q == b'\'' && self.byte(close + 1, line) == Some(b'\'') {
            return None;
        }
        *j = close + 1;
        Some(Node {
            pos: self.pos(line, open),
            kind: Kind::Scalar {
                text: Cow::Borrowed(&self.text[open + 1..close]),
                plain: false,
            },
        })
    }

    /// A flow node at `*j` (inside a flow collection or starting one).
    /// After an item of a flow collection: `,` followed by another item (`Some(false)`),
    /// or the closing bracket `close` (`Some(true)`); `None` leaves it to the full parser.
    fn flow_next(&self, line: &Line, j: &mut usize, close: u8) -> Option<bool> {
        self.skip_spaces(line, j);
        match self.byte(*j, line)? {
            b',' => {
                *j += 1;
                self.skip_spaces(line, j);
                let next = self.byte(*j, line)?;
                if next == close || next == b',' {
                    return None;
                }
                Some(false)
            }
            b if b == close => {
                *j += 1;
                Some(true)
            }
            _ => None,
        }
    }

    fn flow(&self, line: &Line, j: &mut usize, depth: usize) -> Option<Node<'a>> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.skip_spaces(line, j);
        let start = *j;
        match self.byte(*j, line)? {
            b'[' => {
                *j += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_spaces(line, j);
                    if self.byte(*j, line)? == b']' && items.is_empty() {
                        *j += 1;
                        break;
                    }
                    items.push(self.flow(line, j, depth + 1)?);
                    if self.flow_next(line, j, b']')? {
                        break;
                    }
                }
                Some(Node {
                    pos: self.pos(line, start),
                    kind: Kind::Seq(items),
                })
            }
            b'{' => {
                *j += 1;
                let mut entries = Vec::new();
                loop {
                    self.skip_spaces(line, j);
                    if self.byte(*j, line)? == b'}' && entries.is_empty() {
                        *j += 1;
                        break;
                    }
                    let key = self.flow_scalar(line, j)?;
                    let quoted_key = matches!(key.kind, Kind::Scalar { plain: false, .. });
                    if !quoted_key && self.byte(*j, line)? != b':' {
                        return None;
                    }
                    self.skip_spaces(line, j);
                    if self.byte(*j, line)? != b':' {
                        return None;
                    }
                    *j += 1;
                    if self.byte(*j, line)? != b' ' {
                        return None;
                    }
                    self.skip_spaces(line, j);
                    if matches!(self.byte(*j, line)?, b',' | b'}' | b':') {
                        return None;
                    }
                    let value = self.flow(line, j, depth + 1)?;
                    entries.push((key, value));
                    if self.flow_next(line, j, b'}')? {
                        break;
                    }
                }
                Some(Node {
                    pos: self.pos(line, start),
                    kind: Kind::Map(entries),
                })
            }
            _ => {
                let node = self.flow_scalar(line, j)?;
                // `[a: b]` (a single-pair mapping in a sequence) is left to the full parser.
                let mut k = *j;
                self.skip_spaces(line, &mut k);
                if self.byte(k, line) == Some(b':') {
                    return None;
                }
                Some(node)
            }
        }
    }

    /// A quoted or plain scalar inside a flow collection.
    fn flow_scalar(&self, line: &Line, j: &mut usize) -> Option<Node<'a>> {
        self.skip_spaces(line, j);
        let start = *j;
        if matches!(self.byte(start, line)?, b'"' | b'\'') {
            return self.quoted(line, j);
        }
        let bytes = self.text.as_bytes();
        let mut k = start;
        while k < line.to {
            let b = bytes[k];
            if matches!(b, b',' | b'[' | b']' | b'{' | b'}') {
                break;
            }
            if b == b':'
                && (k + 1 >= line.to
                    || matches!(bytes[k + 1], b' ' | b',' | b'[' | b']' | b'{' | b'}'))
            {
                break;
            }
            k += 1;
        }
        let s = self.text[start..k].trim_end_matches(' ');
        if s.is_empty() || !plain_ok(s, true) {
            return None;
        }
        *j = start + s.len();
        Some(Node {
            pos: self.pos(line, start),
            kind: Kind::Scalar {
                text: Cow::Borrowed(s),
                plain: true,
            },
        })
    }
}

/// Whether `s` may be a one-line plain scalar with exactly this text.
fn plain_ok(s: &str, in_flow: bool) -> bool {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return false;
    };
    if matches!(
        first,
        b'[' | b']' | b'{' | b'}' | b',' | b'#' | b'\'' | b'"' | b':'
    ) {
        return false;
    }
    if first == b'-' && (b.len() == 1 || b[1] == b' ') {
        return false;
    }
    if s.contains(" #") || s.ends_with(' ') {
        return false;
    }
    !(in_flow && s.contains([',', '[', ']', '{', '}']))
}
