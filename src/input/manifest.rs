//! The manifest format (`apiVersion: clawfarm/v1`, `kind: Claw`): parse and validate YAML
//! into [`Claw`]s, no effects. Every problem is a [`Diagnostic`] with `FILE:LINE:COL`; all
//! files are checked in one run. See `rfc/002-manifest.md`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

/// Where something is in a manifest file (1-based line and column; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceLoc {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub col: u64,
}

impl fmt::Display for SourceLoc {
    /// `FILE:LINE:COL`, or just `FILE` when the line is unknown (0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
}

/// One problem found in the input, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Where.
    pub loc: SourceLoc,
    /// What (never contains a secret value).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Desired run state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// The VM should be running (default).
    #[default]
    Running,
    /// The VM should exist but be stopped.
    Stopped,
}

/// Where the bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClawboxRef {
    /// A local `.clawbox` file (absolute: resolved against the manifest's folder).
    Path(PathBuf),
    /// A remote bundle, pinned by digest.
    Url {
        /// `http(s)://` or `file://` URL.
        url: String,
        /// Lowercase 64-hex SHA-256 of the bundle bytes.
        sha256: String,
    },
}

/// A host port forward (always bound to 127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    /// Host port on 127.0.0.1.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
    /// Optional name; `gateway` marks the port whose answer is part of readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A named persistent volume shared into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Volume {
    /// Volume name (DNS-label style), unique within the manifest.
    pub name: String,
    /// Absolute mount point in the guest.
    pub guest_path: String,
}

/// How a param gets its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamSource {
    /// A literal value in the manifest (refused for secret params).
    Literal(String),
    /// `{env: NAME}`: read from the applier's environment.
    Env(String),
    /// `{file: PATH}`: read from a file (absolute: resolved against the manifest's folder);
    /// one trailing newline is stripped.
    File(PathBuf),
    /// A value given out of band (`clawfarm run --param`/`--param-file`); never produced by
    /// the YAML parser, so a manifest in git can still not carry a secret literal.
    Given(crate::util::secret::Secret),
}

/// One validated manifest document (`kind: Claw`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claw {
    /// Where the document starts.
    pub loc: SourceLoc,
    /// `metadata.name` (DNS label, unique across the applied set).
    pub name: String,
    /// `spec.clawbox`.
    pub clawbox: ClawboxRef,
    /// Location of `spec.clawbox` (for errors found later, e.g. a bundle that will not load).
    pub clawbox_loc: SourceLoc,
    /// `spec.state`.
    pub state: DesiredState,
    /// `spec.replicas` (1 = a single instance named `name`; N > 1 = `name-0`..`name-(N-1)`).
    pub replicas: u32,
    /// `spec.cpus`.
    pub cpus: u32,
    /// `spec.memory` in MiB.
    pub memory_mib: u64,
    /// `spec.ports`.
    pub ports: Vec<Port>,
    /// `spec.params`, by key.
    pub params: BTreeMap<String, ParamSource>,
    /// Location of each `spec.params` entry (for errors found against the clawspec).
    pub param_locs: BTreeMap<String, SourceLoc>,
    /// `spec.volumes`.
    pub volumes: Vec<Volume>,
}

impl Claw {
    /// Instance names this document expands to (`replicas`).
    pub fn instance_names(&self) -> Vec<String> {
        if self.replicas <= 1 {
            vec![self.name.clone()]
        } else {
            (0..self.replicas)
                .map(|i| format!("{}-{}", self.name, i))
                .collect()
        }
    }
}

/// Default `spec.cpus`.
pub const DEFAULT_CPUS: u32 = 1;
/// Default `spec.memory` in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;

/// The only `apiVersion` this build reads.
pub const API_VERSION: &str = "clawfarm/v1";
/// The only `kind` this build reads.
pub const KIND: &str = "Claw";
/// Longest `metadata.name` (room is left for `-<replica>-<suffix>` in CLAWIDs).
pub const MAX_NAME_LEN: usize = 40;
/// Longest port or volume name.
pub const MAX_LABEL_LEN: usize = 63;
/// Range of `spec.replicas`.
pub const REPLICAS_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
/// Range of `spec.cpus`.
pub const CPUS_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
/// Range of `spec.memory` in MiB (128 MiB to 256 GiB).
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<u64> = 128..=262_144;
/// Lowest host port a manifest may forward (privileged ports are refused).
pub const MIN_HOST_PORT: u16 = 1024;
/// File extensions [`load`] reads from folders.
pub const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_FIELDS: &[&str] = &["name"];
const SPEC_FIELDS: &[&str] = &[
    "clawbox", "state", "replicas", "cpus", "memory", "ports", "params", "volumes",
];
const CLAWBOX_FIELDS: &[&str] = &["url", "sha256"];
const PORT_FIELDS: &[&str] = &["host", "guest", "name"];
const VOLUME_FIELDS: &[&str] = &["name", "guestPath"];
const PARAM_REF_FIELDS: &[&str] = &["env", "file"];

/// Everything [`load`] found.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Valid documents of files without any error, in file order then document order.
    pub claws: Vec<Claw>,
    /// Every problem of every file, sorted by location.
    pub diagnostics: Vec<Diagnostic>,
    /// Every manifest file considered (sorted, deduplicated).
    pub files: Vec<PathBuf>,
    /// Files (or given paths) with at least one problem. None of their documents are in
    /// `claws`: the engine must keep whatever they used to describe as it is.
    pub bad_files: BTreeSet<PathBuf>,
}

impl LoadResult {
    /// Whether any problem was found.
    pub fn has_errors(&self) -> bool {
        !self.diagnostics.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// YAML tree with positions, built from the event stream of serde-saphyr's parser.

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Pos {
    line: u64,
    col: u64,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line() as u64,
            col: span.start.col() as u64 + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Node<'a> {
    pos: Pos,
    kind: Kind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind<'a> {
    /// `plain` is false for quoted, block and `!!str` scalars (always strings).
    Scalar {
        text: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

impl<'a> Node<'a> {
    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
    }

    fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// What the node is, for "expected X, found Y" messages (never the value itself).
    fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Scalar { .. } if self.is_null() => "nothing (null)",
            Kind::Scalar { text, plain: true } => {
                if matches!(
                    text.as_ref(),
                    "true" | "false" | "True" | "False" | "TRUE" | "FALSE"
                ) {
                    "a boolean"
                } else if text.parse::<f64>().is_ok() {
                    "a number"
                } else {
                    "a string"
                }
            }
            Kind::Scalar { .. } => "a string",
        }
    }
}

/// Node budget per file: a manifest has a few dozen nodes; this stops alias bombs.
const MAX_NODES: usize = 100_000;

enum Frame<'a> {
    Seq(Pos, usize, Vec<Node<'a>>),
    Map(Pos, usize, Vec<(Node<'a>, Node<'a>)>, Option<Node<'a>>),
}

/// The documents of a YAML text (empty documents skipped), problems found while building
/// them (unsupported tags), and the syntax error that stopped the parse, if any. Documents
/// completed before a syntax error are returned.
struct Docs<'a> {
    docs: Vec<Node<'a>>,
    problems: Vec<(Pos, String)>,
    syntax_error: Option<(Pos, String)>,
}

fn parse_yaml(text: &str) -> Docs<'_> {
    if let Some(docs) = fast::parse(text) {
        return Docs {
            docs,
            problems: Vec::new(),
            syntax_error: None,
        };
    }
    parse_yaml_full(text)
}

/// [`parse_yaml`] through serde-saphyr's YAML parser (any YAML).
fn parse_yaml_full(text: &str) -> Docs<'_> {
    let mut options = serde_saphyr::granit_parser::Options::default();
    options.set_emit_comments(false);
    let parser = Parser::new_from_str_with_options(text, options);
    let mut out = Docs {
        docs: Vec::new(),
        problems: Vec::new(),
        syntax_error: None,
    };
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut anchors: HashMap<usize, Node<'_>> = HashMap::new();
    let mut nodes = 0usize;
    for item in parser {
        let (event, span) = match item {
            Ok(x) => x,
            Err(e) => {
                let m = e.marker();
                out.syntax_error = Some((
                    Pos {
                        line: m.line() as u64,
                        col: m.col() as u64 + 1,
                    },
                    format!("invalid YAML: {}", e.info().replace('\n', " ")),
                ));
                break;
            }
        };
        let pos = Pos::of(&span);
        let tag_pos = span.tag_start.map_or(pos, |m| Pos {
            line: m.line() as u64,
            col: m.col() as u64 + 1,
        });
        let done: Option<(Node<'_>, usize)> = match event {
            Event::DocumentStart(..) => {
                anchors.clear();
                stack.clear();
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    if tag.handle() == "tag:yaml.org,2002:" && tag.suffix() == "str" {
                        plain = false;
                    } else {
                        out.problems
                            .push((tag_pos, "YAML tags are not supported (except !!str)".into()));
                    }
                }
                Some((
                    Node {
                        pos,
                        kind: Kind::Scalar { text, plain },
                    },
                    anchor,
                ))
            }
            Event::SequenceStart(_, anchor, tag) => {
                if tag.is_some() {
                    out.problems
                        .push((tag_pos, "YAML tags are not supported (except !!str)".into()));
                }
                stack.push(Frame::Seq(pos, anchor, Vec::new()));
                None
            }
            Event::MappingStart(_, anchor, tag) => {
                if tag.is_some() {
                    out.problems
                        .push((tag_pos, "YAML tags are not supported (except !!str)".into()));
                }
                stack.push(Frame::Map(pos, anchor, Vec::new(), None));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(pos, anchor, items)) => Some((
                    Node {
                        pos,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                )),
                Some(Frame::Map(pos, anchor, entries, _)) => Some((
                    Node {
                        pos,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                )),
                None => None,
            },
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    nodes = nodes.saturating_add(count_nodes(node));
                    // The alias itself is reported where it is used; what is inside keeps
                    // the position of its definition.
                    let mut node = node.clone();
                    node.pos = pos;
                    Some((node, 0))
                }
                None => {
                    out.problems.push((pos, "unknown YAML alias".into()));
                    Some((
                        Node {
                            pos,
                            kind: Kind::Scalar {
                                text: Cow::Borrowed(""),
                                plain: true,
                            },
                        },
                        0,
                    ))
                }
            },
            _ => None,
        };
        let Some((node, anchor)) = done else {
            continue;
        };
        nodes += 1;
        if nodes > MAX_NODES {
            out.syntax_error = Some((
                pos,
                format!(
                    "document too large (more than {MAX_NODES} YAML nodes after alias expansion)"
                ),
            ));
            break;
        }
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, pending)) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => *pending = Some(node),
            },
            None => {
                if !node.is_null() {
                    out.docs.push(node);
                }
            }
        }
    }
    out
}

fn count_nodes(node: &Node<'_>) -> usize {
    match &node.kind {
        Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

/// A fast reader for the plain subset of YAML that manifests are usually written in: block
/// mappings and sequences, one-line plain or quoted scalars without escapes, one-line flow
/// collections, comments and `---` separators. It returns `None` as soon as it meets
/// anything else (anchors, tags, block scalars, multi-line scalars, escapes, tabs, odd
/// indentation, syntax errors, ...), and the full parser then reads the text. When it
/// returns documents, they are exactly those of the full parser, positions included (a
/// differential test checks this on many generated and mutated inputs).
mod fast {
    use super::{Kind, Node, Pos};
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
}

// ---------------------------------------------------------------------------------------
// Validation of one file.

/// What one document declared, for the checks across documents and files.
#[derive(Debug, Clone)]
struct Declared {
    name: String,
    name_loc: SourceLoc,
    replicas: u32,
}

/// One file, parsed and validated on its own.
#[derive(Debug, Default)]
struct FileParse {
    /// Valid documents (all of them are dropped later if the file has any problem).
    claws: Vec<Claw>,
    /// Names declared by documents that parsed (valid or not).
    declared: Vec<Declared>,
    diagnostics: Vec<Diagnostic>,
}

struct Ctx<'f> {
    file: &'f Path,
    /// Absolute, normalized folder of the file (relative paths are resolved against it).
    dir: PathBuf,
    diags: Vec<Diagnostic>,
}

/// A mapping's entries after the generic checks (keys are strings, no duplicates, no
/// unknown fields), in document order.
struct Fields<'n, 'a> {
    entries: Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)>,
}

impl<'n, 'a> Fields<'n, 'a> {
    fn get(&self, name: &str) -> Option<(&'n Node<'a>, &'n Node<'a>)> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, k, v)| (*k, *v))
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// `path: message`, or just the message at the top level.
fn at(path: &str, message: impl fmt::Display) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

impl<'f> Ctx<'f> {
    fn loc(&self, pos: Pos) -> SourceLoc {
        SourceLoc {
            file: self.file.to_path_buf(),
            line: pos.line,
            col: pos.col,
        }
    }

    fn err(&mut self, pos: Pos, message: String) {
        self.diags.push(Diagnostic {
            loc: self.loc(pos),
            message,
        });
    }

    /// Check that `node` is a mapping with string keys, no duplicates and only `allowed`
    /// fields (`allowed` empty = any key).
    fn fields<'n, 'a>(
        &mut self,
        node: &'n Node<'a>,
        path: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n, 'a>> {
        self.fields_quiet(node, path, allowed, true)
    }

    /// [`Self::fields`]; with `echo_keys` false, messages do not repeat unknown or duplicate
    /// keys (used inside param values, which may hold secrets in the wrong place).
    fn fields_quiet<'n, 'a>(
        &mut self,
        node: &'n Node<'a>,
        path: &str,
        allowed: &[&str],
        echo_keys: bool,
    ) -> Option<Fields<'n, 'a>> {
        let Kind::Map(entries) = &node.kind else {
            let message = if path.is_empty() {
                format!(
                    "a manifest document must be a mapping (apiVersion, kind, metadata, spec), found {}",
                    node.describe()
                )
            } else {
                format!("{path}: expected a mapping, found {}", node.describe())
            };
            self.err(node.pos, message);
            return None;
        };
        let mut out = Fields {
            entries: Vec::with_capacity(entries.len()),
        };
        for (k, v) in entries {
            let key = match &k.kind {
                Kind::Scalar { text, .. } => text.as_ref(),
                _ => {
                    self.err(
                        k.pos,
                        at(
                            path,
                            format!("keys must be strings, found {}", k.describe()),
                        ),
                    );
                    continue;
                }
            };
            let shown = || {
                if echo_keys {
                    format!("\"{}\"", clip(key))
                } else {
                    "(not shown)".to_owned()
                }
            };
            if let Some((_, first, _)) = out.entries.iter().find(|(name, _, _)| *name == key) {
                let first = first.pos;
                self.err(
                    k.pos,
                    at(
                        path,
                        format!(
                            "duplicate key {} (first at line {}, column {})",
                            shown(),
                            first.line,
                            first.col
                        ),
                    ),
                );
                continue;
            }
            if !allowed.is_empty() && !allowed.contains(&key) {
                let place = if path.is_empty() {
                    String::new()
                } else {
                    format!(" in {path}")
                };
                let message = match suggest(key, allowed).filter(|_| echo_keys) {
                    Some(s) => format!("unknown field {}{place}; did you mean \"{s}\"?", shown()),
                    None => format!(
                        "unknown field {}{place} (expected one of: {})",
                        shown(),
                        allowed.join(", ")
                    ),
                };
                self.err(k.pos, message);
                continue;
            }
            out.entries.push((key, k, v));
        }
        Some(out)
    }

    fn missing(&mut self, pos: Pos, path: &str, field: &str) {
        self.err(
            pos,
            format!("{}: required field is missing", join(path, field)),
        );
    }

    /// A non-null scalar as a string.
    fn string<'n>(&mut self, node: &'n Node<'_>, path: &str) -> Option<&'n str> {
        match node.scalar() {
            Some(s) => Some(s),
            None => {
                self.err(
                    node.pos,
                    at(
                        path,
                        format!("expected a string, found {}", node.describe()),
                    ),
                );
                None
            }
        }
    }

    /// A plain integer scalar within `range`.
    fn integer(
        &mut self,
        node: &Node<'_>,
        path: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        let expect = || {
            format!(
                "expected a whole number from {} to {}",
                range.start(),
                range.end()
            )
        };
        let Kind::Scalar { text, plain: true } = &node.kind else {
            self.err(
                node.pos,
                at(path, format!("{}, found {}", expect(), node.describe())),
            );
            return None;
        };
        let text = text.trim();
        let digits = text.strip_prefix('+').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            self.err(
                node.pos,
                at(path, format!("{}, found {}", expect(), node.describe())),
            );
            return None;
        }
        match digits.parse::<u64>() {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                self.err(
                    node.pos,
                    at(
                        path,
                        format!(
                            "must be from {} to {}, got {}",
                            range.start(),
                            range.end(),
                            clip(digits)
                        ),
                    ),
                );
                None
            }
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        normalize(&self.dir.join(p))
    }
}

fn parse_file(file: &Path, text: &str) -> FileParse {
    let dir = std::path::absolute(file)
        .ok()
        .and_then(|a| a.parent().map(normalize))
        .unwrap_or_default();
    let mut ctx = Ctx {
        file,
        dir,
        diags: Vec::new(),
    };
    let docs = parse_yaml(text);
    for (pos, message) in docs.problems {
        ctx.err(pos, message);
    }
    let mut out = FileParse::default();
    for doc in &docs.docs {
        let before = ctx.diags.len();
        let (claw, declared) = validate_doc(&mut ctx, doc);
        if let Some(d) = declared {
            out.declared.push(d);
        }
        if let Some(claw) = claw
            && ctx.diags.len() == before
        {
            out.claws.push(claw);
        }
    }
    if let Some((pos, message)) = docs.syntax_error {
        ctx.err(pos, message);
    }
    out.diagnostics = ctx.diags;
    out
}

/// A required top-level field that must hold exactly `want` (`apiVersion`, `kind`).
fn expect_const(
    ctx: &mut Ctx<'_>,
    top: &Fields<'_, '_>,
    doc: &Node<'_>,
    field: &str,
    want: &str,
) -> bool {
    match top.get(field) {
        None => {
            ctx.missing(doc.pos, "", field);
            false
        }
        Some((_, v)) => match ctx.string(v, field) {
            Some(got) if got == want => true,
            Some(other) => {
                ctx.err(
                    v.pos,
                    format!(
                        "{field}: unsupported {field} \"{}\" (expected \"{want}\")",
                        clip(other)
                    ),
                );
                false
            }
            None => false,
        },
    }
}

fn validate_doc(ctx: &mut Ctx<'_>, doc: &Node<'_>) -> (Option<Claw>, Option<Declared>) {
    let Some(top) = ctx.fields(doc, "", TOP_FIELDS) else {
        return (None, None);
    };
    let mut ok = true;
    // apiVersion and kind first: a document of another kind is not checked further.
    ok &= expect_const(ctx, &top, doc, "apiVersion", API_VERSION);
    ok &= expect_const(ctx, &top, doc, "kind", KIND);
    if !ok {
        return (None, None);
    }

    // metadata.name
    let mut name: Option<(String, Pos)> = None;
    match top.get("metadata") {
        None => ctx.missing(doc.pos, "", "metadata"),
        Some((mk, mv)) => {
            if let Some(meta) = ctx.fields(mv, "metadata", METADATA_FIELDS) {
                match meta.get("name") {
                    None => ctx.missing(mk.pos, "metadata", "name"),
                    Some((_, nv)) => {
                        if let Some(n) = ctx.string(nv, "metadata.name") {
                            if is_dns_label(n, MAX_NAME_LEN) {
                                name = Some((n.to_owned(), nv.pos));
                            } else {
                                ctx.err(
                                    nv.pos,
                                    format!(
                                        "metadata.name: \"{}\" is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit, at most {MAX_NAME_LEN} characters",
                                        clip(n)
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    let (spec, replicas) = match top.get("spec") {
        None => {
            ctx.missing(doc.pos, "", "spec");
            (None, 1)
        }
        Some((sk, sv)) => validate_spec(ctx, sk.pos, sv),
    };

    let declared = name.as_ref().map(|(n, pos)| Declared {
        name: n.clone(),
        name_loc: ctx.loc(*pos),
        replicas,
    });
    let claw = match (name, spec) {
        (Some((name, _)), Some(s)) => Some(Claw {
            loc: ctx.loc(doc.pos),
            name,
            clawbox: s.clawbox,
            clawbox_loc: s.clawbox_loc,
            state: s.state,
            replicas: s.replicas,
            cpus: s.cpus,
            memory_mib: s.memory_mib,
            ports: s.ports,
            params: s.params,
            param_locs: s.param_locs,
            volumes: s.volumes,
        }),
        _ => None,
    };
    (claw, declared)
}

/// A valid `spec`.
struct Spec {
    clawbox: ClawboxRef,
    clawbox_loc: SourceLoc,
    state: DesiredState,
    replicas: u32,
    cpus: u32,
    memory_mib: u64,
    ports: Vec<Port>,
    params: BTreeMap<String, ParamSource>,
    param_locs: BTreeMap<String, SourceLoc>,
    volumes: Vec<Volume>,
}

/// `spec`, validated: `None` when anything in it is wrong (the problems are in `ctx`), and
/// `replicas` (1 unless valid) for the name checks across documents.
fn validate_spec(ctx: &mut Ctx<'_>, key_pos: Pos, node: &Node<'_>) -> (Option<Spec>, u32) {
    let before = ctx.diags.len();
    let Some(fields) = ctx.fields(node, "spec", SPEC_FIELDS) else {
        return (None, 1);
    };

    let mut clawbox = None;
    let mut clawbox_loc = ctx.loc(key_pos);
    match fields.get("clawbox") {
        None => ctx.missing(key_pos, "spec", "clawbox"),
        Some((_, v)) => {
            clawbox_loc = ctx.loc(v.pos);
            clawbox = validate_clawbox(ctx, v);
        }
    }

    let state = match fields.get("state") {
        None => DesiredState::Running,
        Some((_, v)) => match ctx.string(v, "spec.state") {
            Some("running") => DesiredState::Running,
            Some("stopped") => DesiredState::Stopped,
            Some(other) => {
                ctx.err(
                    v.pos,
                    format!(
                        "spec.state: must be \"running\" or \"stopped\", got \"{}\"",
                        clip(other)
                    ),
                );
                DesiredState::Running
            }
            None => DesiredState::Running,
        },
    };

    let range = |r: &std::ops::RangeInclusive<u32>| u64::from(*r.start())..=u64::from(*r.end());
    let replicas = match fields.get("replicas") {
        None => 1,
        Some((_, v)) => ctx
            .integer(v, "spec.replicas", range(&REPLICAS_RANGE))
            .map_or(1, |n| n as u32),
    };
    let cpus = match fields.get("cpus") {
        None => DEFAULT_CPUS,
        Some((_, v)) => ctx
            .integer(v, "spec.cpus", range(&CPUS_RANGE))
            .map_or(DEFAULT_CPUS, |n| n as u32),
    };
    let memory_mib = match fields.get("memory") {
        None => DEFAULT_MEMORY_MIB,
        Some((_, v)) => match v.scalar() {
            Some(text) => match parse_memory(text) {
                Ok(m) => m,
                Err(e) => {
                    ctx.err(v.pos, format!("spec.memory: {e}"));
                    DEFAULT_MEMORY_MIB
                }
            },
            None => {
                ctx.err(
                    v.pos,
                    format!(
                        "spec.memory: expected a size such as 2GiB or 512MiB, found {}",
                        v.describe()
                    ),
                );
                DEFAULT_MEMORY_MIB
            }
        },
    };
    let ports = match fields.get("ports") {
        None => Vec::new(),
        Some((_, v)) => validate_ports(ctx, v),
    };
    let (params, param_locs) = match fields.get("params") {
        None => (BTreeMap::new(), BTreeMap::new()),
        Some((_, v)) => validate_params(ctx, v),
    };
    let volumes = match fields.get("volumes") {
        None => Vec::new(),
        Some((_, v)) => validate_volumes(ctx, v),
    };
    if ctx.diags.len() != before {
        return (None, replicas);
    }
    let Some(clawbox) = clawbox else {
        return (None, replicas);
    };
    let spec = Spec {
        clawbox,
        clawbox_loc,
        state,
        replicas,
        cpus,
        memory_mib,
        ports,
        params,
        param_locs,
        volumes,
    };
    (Some(spec), replicas)
}

fn validate_clawbox(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Option<ClawboxRef> {
    const PATH: &str = "spec.clawbox";
    if let Kind::Map(_) = node.kind {
        let fields = ctx.fields(node, PATH, CLAWBOX_FIELDS)?;
        let url = match fields.get("url") {
            None => {
                ctx.missing(node.pos, PATH, "url");
                None
            }
            Some((_, v)) => ctx.string(v, "spec.clawbox.url").and_then(|u| {
                if is_bundle_url(u) {
                    Some(u.to_owned())
                } else {
                    ctx.err(
                        v.pos,
                        "spec.clawbox.url: must be an http://, https:// or file:// URL".into(),
                    );
                    None
                }
            }),
        };
        let sha256 = match fields.get("sha256") {
            None => {
                ctx.missing(node.pos, PATH, "sha256");
                None
            }
            Some((_, v)) => ctx.string(v, "spec.clawbox.sha256").and_then(|d| {
                if crate::input::clawspec::is_sha256_hex(d) {
                    Some(d.to_owned())
                } else {
                    ctx.err(
                        v.pos,
                        "spec.clawbox.sha256: must be 64 lowercase hex characters".into(),
                    );
                    None
                }
            }),
        };
        return Some(ClawboxRef::Url {
            url: url?,
            sha256: sha256?,
        });
    }
    let Some(text) = node.scalar() else {
        ctx.err(
            node.pos,
            format!(
                "spec.clawbox: expected a path or {{url: ..., sha256: ...}}, found {}",
                node.describe()
            ),
        );
        return None;
    };
    if text.trim().is_empty() {
        ctx.err(node.pos, "spec.clawbox: must not be empty".into());
        return None;
    }
    if text.contains("://") {
        ctx.err(
            node.pos,
            "spec.clawbox: a URL must be pinned by digest: write {url: ..., sha256: ...}".into(),
        );
        return None;
    }
    Some(ClawboxRef::Path(ctx.resolve(text)))
}

fn is_bundle_url(u: &str) -> bool {
    let lower = u.get(..8).unwrap_or(u).to_ascii_lowercase();
    let rest = ["https://", "http://", "file://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| &u[s.len()..]);
    matches!(rest, Some(r) if !r.is_empty())
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A list field: `null` counts as empty.
fn list<'n, 'a>(ctx: &mut Ctx<'_>, node: &'n Node<'a>, path: &str) -> &'n [Node<'a>] {
    match &node.kind {
        Kind::Seq(items) => items,
        _ if node.is_null() => &[],
        _ => {
            ctx.err(
                node.pos,
                format!("{path}: expected a list, found {}", node.describe()),
            );
            &[]
        }
    }
}

fn validate_ports(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Vec<Port> {
    let mut ports = Vec::new();
    let mut hosts: HashMap<u16, String> = HashMap::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, item) in list(ctx, node, "spec.ports").iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(fields) = ctx.fields(item, &path, PORT_FIELDS) else {
            continue;
        };
        let host = match fields.get("host") {
            None => {
                ctx.missing(item.pos, &path, "host");
                None
            }
            Some((_, v)) => {
                let p = join(&path, "host");
                match ctx.integer(v, &p, 1..=65535).map(|n| n as u16) {
                    Some(h) if h < MIN_HOST_PORT => {
                        ctx.err(
                            v.pos,
                            format!(
                                "{p}: host port {h} is privileged; use a port from {MIN_HOST_PORT} to 65535"
                            ),
                        );
                        None
                    }
                    Some(h) => {
                        if let Some(first) = hosts.get(&h) {
                            ctx.err(
                                v.pos,
                                format!("{p}: host port {h} is already used by {first}"),
                            );
                        } else {
                            hosts.insert(h, path.clone());
                        }
                        Some(h)
                    }
                    None => None,
                }
            }
        };
        let guest = match fields.get("guest") {
            None => {
                ctx.missing(item.pos, &path, "guest");
                None
            }
            Some((_, v)) => ctx
                .integer(v, &join(&path, "guest"), 1..=65535)
                .map(|n| n as u16),
        };
        let name = match fields.get("name") {
            None => None,
            Some((_, v)) => {
                let p = join(&path, "name");
                ctx.string(v, &p).and_then(|n| {
                    if !is_dns_label(n, MAX_LABEL_LEN) {
                        ctx.err(v.pos, format!("{p}: \"{}\" is not a valid port name: use lowercase letters, digits and '-', at most {MAX_LABEL_LEN} characters", clip(n)));
                        None
                    } else if let Some(first) = names.get(n) {
                        ctx.err(v.pos, format!("{p}: duplicate port name \"{n}\" (already used by {first})"));
                        None
                    } else {
                        names.insert(n.to_owned(), path.clone());
                        Some(n.to_owned())
                    }
                })
            }
        };
        if let (Some(host), Some(guest)) = (host, guest) {
            ports.push(Port { host, guest, name });
        }
    }
    ports
}

type Params = (BTreeMap<String, ParamSource>, BTreeMap<String, SourceLoc>);

fn validate_params(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Params {
    let mut params = BTreeMap::new();
    let mut locs = BTreeMap::new();
    if node.is_null() {
        return (params, locs);
    }
    let Some(fields) = ctx.fields(node, "spec.params", &[]) else {
        return (params, locs);
    };
    for (key, k, v) in fields.entries {
        if !crate::input::clawspec::is_env_key(key) {
            ctx.err(
                k.pos,
                format!(
                    "spec.params: invalid key \"{}\": must match [A-Za-z_][A-Za-z0-9_]*",
                    clip(key)
                ),
            );
            continue;
        }
        let path = format!("spec.params.{key}");
        let source = match &v.kind {
            Kind::Scalar { text, .. } if !v.is_null() => {
                Some(ParamSource::Literal(text.clone().into_owned()))
            }
            Kind::Scalar { .. } => {
                ctx.err(
                    k.pos,
                    format!("{path}: has no value (write \"\" for an empty string)"),
                );
                None
            }
            Kind::Seq(_) => {
                ctx.err(
                    v.pos,
                    format!(
                        "{path}: expected a value, {{env: NAME}} or {{file: PATH}}, found a list"
                    ),
                );
                None
            }
            Kind::Map(_) => param_reference(ctx, v, &path),
        };
        if let Some(source) = source {
            params.insert(key.to_owned(), source);
            locs.insert(key.to_owned(), ctx.loc(k.pos));
        }
    }
    (params, locs)
}

fn param_reference(ctx: &mut Ctx<'_>, node: &Node<'_>, path: &str) -> Option<ParamSource> {
    let fields = ctx.fields_quiet(node, path, PARAM_REF_FIELDS, false)?;
    match (fields.get("env"), fields.get("file")) {
        (Some(_), Some((fk, _))) => {
            ctx.err(fk.pos, format!("{path}: use either env or file, not both"));
            None
        }
        (None, None) => {
            ctx.err(
                node.pos,
                format!("{path}: expected {{env: NAME}} or {{file: PATH}}"),
            );
            None
        }
        (Some((_, v)), None) => {
            let p = join(path, "env");
            let name = ctx.string(v, &p)?;
            if crate::input::clawspec::is_env_key(name) {
                Some(ParamSource::Env(name.to_owned()))
            } else {
                ctx.err(
                    v.pos,
                    format!("{p}: \"{}\" is not a valid environment variable name (must match [A-Za-z_][A-Za-z0-9_]*)", clip(name)),
                );
                None
            }
        }
        (None, Some((_, v))) => {
            let p = join(path, "file");
            let file = ctx.string(v, &p)?;
            if file.trim().is_empty() {
                ctx.err(v.pos, format!("{p}: must not be empty"));
                None
            } else {
                Some(ParamSource::File(ctx.resolve(file)))
            }
        }
    }
}

fn validate_volumes(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Vec<Volume> {
    let mut volumes = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut paths: HashMap<String, String> = HashMap::new();
    for (i, item) in list(ctx, node, "spec.volumes").iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let Some(fields) = ctx.fields(item, &path, VOLUME_FIELDS) else {
            continue;
        };
        let name = match fields.get("name") {
            None => {
                ctx.missing(item.pos, &path, "name");
                None
            }
            Some((_, v)) => {
                let p = join(&path, "name");
                ctx.string(v, &p).and_then(|n| {
                    if !is_dns_label(n, MAX_LABEL_LEN) {
                        ctx.err(v.pos, format!("{p}: \"{}\" is not a valid volume name: use lowercase letters, digits and '-', starting and ending with a letter or digit, at most {MAX_LABEL_LEN} characters", clip(n)));
                        None
                    } else if let Some(first) = names.get(n) {
                        ctx.err(v.pos, format!("{p}: duplicate volume name \"{n}\" (already used by {first})"));
                        None
                    } else {
                        names.insert(n.to_owned(), path.clone());
                        Some(n.to_owned())
                    }
                })
            }
        };
        let guest_path = match fields.get("guestPath") {
            None => {
                ctx.missing(item.pos, &path, "guestPath");
                None
            }
            Some((_, v)) => {
                let p = join(&path, "guestPath");
                ctx.string(v, &p)
                    .and_then(|g| match normalize_guest_path(g) {
                        Err(why) => {
                            ctx.err(v.pos, format!("{p}: {why}"));
                            None
                        }
                        Ok(g) => {
                            if let Some(first) = paths.get(&g) {
                                ctx.err(
                                    v.pos,
                                    format!("{p}: \"{g}\" is already mounted by {first}"),
                                );
                                None
                            } else {
                                paths.insert(g.clone(), path.clone());
                                Some(g)
                            }
                        }
                    })
            }
        };
        if let (Some(name), Some(guest_path)) = (name, guest_path) {
            volumes.push(Volume { name, guest_path });
        }
    }
    volumes
}

/// An absolute guest path without `..`, not `/`, without blanks or control characters;
/// returned with `.` segments, repeated and trailing slashes removed.
fn normalize_guest_path(g: &str) -> Result<String, String> {
    if !g.starts_with('/') {
        return Err("must be an absolute path (starting with /)".into());
    }
    if g.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let mut out = String::with_capacity(g.len());
    for seg in g.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("must not contain \"..\"".into()),
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() {
        return Err("must not be the root folder /".into());
    }
    Ok(out)
}

/// Parse a memory size into MiB and check it is within [`MEMORY_MIB_RANGE`].
///
/// Accepted: a plain number of MiB (`2048`), or a number with a unit `MiB`/`Mi`/`M` or
/// `GiB`/`Gi`/`G` (all binary: 1 GiB = 1024 MiB), optionally with a decimal fraction and a
/// space before the unit (`512MiB`, `2GiB`, `1.5 GiB`). The result must be a whole number of
/// MiB. The error message says what was expected.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid memory size \"{}\": use a number of MiB (e.g. 2048) or a size such as 512MiB, 2GiB or 1.5GiB",
            clip(s)
        )
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let mult: u128 = match unit.trim_start() {
        "" | "M" | "Mi" | "MiB" => 1,
        "G" | "Gi" | "GiB" => 1024,
        _ => return Err(bad()),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || int.len() > 12
        || frac.len() > 9
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || number.ends_with('.')
    {
        return Err(bad());
    }
    let scale = 10u128.pow(frac.len() as u32);
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let scaled = (int_v * scale + frac_v) * mult;
    if !scaled.is_multiple_of(scale) {
        return Err(format!(
            "memory size \"{}\" is not a whole number of MiB",
            clip(s)
        ));
    }
    let mib = scaled / scale;
    let (lo, hi) = (*MEMORY_MIB_RANGE.start(), *MEMORY_MIB_RANGE.end());
    if mib < u128::from(lo) || mib > u128::from(hi) {
        return Err(format!(
            "memory must be from {lo} MiB to {hi} MiB ({} GiB), got {mib} MiB",
            hi / 1024
        ));
    }
    Ok(mib as u64)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most `max` characters.
/// True when `s` is a DNS label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`) of at most `max` chars.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The allowed field closest to an unknown `key`, if it is close enough to be a typo.
fn suggest<'s>(key: &str, allowed: &[&'s str]) -> Option<&'s str> {
    let lower = key.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&lower, &a.to_ascii_lowercase()), *a))
        .filter(|(d, a)| *d == 0 || (*d <= 2 && a.len() > 3 && key.len() > 2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A user string for a message: at most 64 characters, control characters escaped.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Lexically normalize a path: drop `.`, resolve `..` against what precedes it (never above
/// the root), without touching the file system (symlinks are not resolved).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Checks across documents and files.

fn instance_names_of(name: &str, replicas: u32) -> Vec<String> {
    if replicas <= 1 {
        vec![name.to_owned()]
    } else {
        (0..replicas).map(|i| format!("{name}-{i}")).collect()
    }
}

/// Duplicate names and colliding instance names across `declared` (in order). Returns the
/// problems, each at the later declaration, and the files involved (both sides).
fn check_names(declared: &[&Declared]) -> (Vec<Diagnostic>, BTreeSet<PathBuf>) {
    let mut diags = Vec::new();
    let mut files = BTreeSet::new();
    let mut report = |decl: &Declared, earlier: &Declared, message: String| {
        diags.push(Diagnostic {
            loc: decl.name_loc.clone(),
            message,
        });
        files.insert(decl.name_loc.file.clone());
        files.insert(earlier.name_loc.file.clone());
    };
    // 1. metadata.name is unique.
    let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(declared.len());
    let mut is_duplicate = vec![false; declared.len()];
    for (d, decl) in declared.iter().enumerate() {
        if let Some(&e) = first_of.get(decl.name.as_str()) {
            is_duplicate[d] = true;
            report(
                decl,
                declared[e],
                format!(
                    "duplicate name \"{}\" (also defined at {})",
                    decl.name, declared[e].name_loc
                ),
            );
        } else {
            first_of.insert(&decl.name, d);
        }
    }
    // 2. The instance names they expand to are unique too (`a` with replicas 2 makes
    //    `a-0`, `a-1`, which another manifest must not be called).
    let mut owner: HashMap<String, usize> = HashMap::with_capacity(declared.len());
    for (d, decl) in declared.iter().enumerate() {
        if is_duplicate[d] {
            continue;
        }
        let mut reported: HashSet<usize> = HashSet::new();
        for inst in instance_names_of(&decl.name, decl.replicas) {
            let Some(&e) = owner.get(&inst) else {
                owner.insert(inst, d);
                continue;
            };
            if !reported.insert(e) {
                continue;
            }
            let earlier = declared[e];
            let describe = |x: &Declared| {
                if x.replicas > 1 {
                    format!(
                        "instance \"{inst}\" of \"{}\" (replicas: {})",
                        x.name, x.replicas
                    )
                } else {
                    format!("\"{inst}\"")
                }
            };
            let message = format!(
                "instance name collision: {} is the same as {} defined at {}",
                describe(decl),
                describe(earlier),
                earlier.name_loc
            );
            report(decl, earlier, message);
        }
    }
    (diags, files)
}

/// Parse and validate the content of one manifest file.
///
/// `file` is used in locations and to resolve relative paths (against its folder, made
/// absolute with the current directory if needed). Returns the documents (empty ones
/// skipped), or every problem of the file, including duplicate names within it. A file
/// with any problem returns none of its documents.
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<Claw>, Vec<Diagnostic>> {
    let parsed = parse_file(file, text);
    let mut diags = parsed.diagnostics;
    let declared: Vec<&Declared> = parsed.declared.iter().collect();
    diags.extend(check_names(&declared).0);
    if diags.is_empty() {
        Ok(parsed.claws)
    } else {
        diags.sort();
        Err(diags)
    }
}

/// Load every manifest under `paths`: each a file (read whatever its extension) or a folder
/// (read recursively: `.yaml`, `.yml` and `.json` files, skipping hidden entries such as
/// `.git` and editor leftovers such as `*~`, `#*#`, `*.swp`), in sorted order.
///
/// All problems of all files are reported. A file with any problem (including a name it
/// shares with another file, in which case both files are bad) contributes no [`Claw`] and
/// is listed in [`LoadResult::bad_files`]; a path that cannot be read is listed there too.
/// Files are parsed on up to 4 threads when there are many.
pub fn load(paths: &[PathBuf]) -> LoadResult {
    let mut result = LoadResult::default();
    let mut files: Vec<PathBuf> = Vec::new();
    for p in paths {
        collect(p, &mut files, &mut result);
    }
    files.sort();
    let mut seen = HashSet::new();
    files.retain(|f| {
        seen.insert(std::path::absolute(f).map_or_else(|_| f.clone(), |a| normalize(&a)))
    });

    let parsed = parse_files(&files);
    let declared: Vec<&Declared> = parsed.iter().flat_map(|p| &p.declared).collect();
    let (name_diags, name_files) = check_names(&declared);
    result.bad_files.extend(name_files);
    for (file, p) in files.iter().zip(&parsed) {
        if !p.diagnostics.is_empty() {
            result.bad_files.insert(file.clone());
        }
    }
    for (file, p) in files.iter().zip(parsed) {
        result.diagnostics.extend(p.diagnostics);
        if !result.bad_files.contains(file) {
            result.claws.extend(p.claws);
        }
    }
    result.diagnostics.extend(name_diags);
    result.diagnostics.sort();
    result.files = files;
    result
}

fn path_problem(result: &mut LoadResult, path: &Path, message: String) {
    result.diagnostics.push(Diagnostic {
        loc: SourceLoc {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
        },
        message,
    });
    result.bad_files.insert(path.to_path_buf());
}

fn collect(path: &Path, files: &mut Vec<PathBuf>, result: &mut LoadResult) {
    match std::fs::metadata(path) {
        Err(e) => path_problem(result, path, format!("cannot read: {e}")),
        Ok(m) if m.is_dir() => {
            let mut visited = HashSet::new();
            walk(path, files, result, &mut visited);
        }
        Ok(_) => files.push(path.to_path_buf()),
    }
}

/// Whether a folder entry is skipped: hidden, editor leftovers.
fn skipped_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.starts_with('#')
        || name.ends_with(".swp")
        || name.ends_with(".swo")
}

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    result: &mut LoadResult,
    visited: &mut HashSet<PathBuf>,
) {
    // Symlinked folders are followed once (a loop is not walked twice).
    if let Ok(real) = std::fs::canonicalize(dir)
        && !visited.insert(real)
    {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return path_problem(result, dir, format!("cannot read folder: {e}")),
    };
    // (path, is a folder); the file type comes from the folder listing, so only symlinks
    // cost a `stat`.
    let mut names: Vec<(PathBuf, bool)> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                path_problem(result, dir, format!("cannot read folder: {e}"));
                continue;
            }
        };
        let name = entry.file_name();
        if name.to_str().is_some_and(skipped_name) {
            continue;
        }
        let p = entry.path();
        let is_manifest = || {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            EXTENSIONS.contains(&ext)
        };
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => match std::fs::metadata(&p) {
                Ok(m) => m.is_dir(),
                // A dangling symlink: only a problem if it looks like a manifest.
                Err(e) => {
                    if is_manifest() {
                        path_problem(result, &p, format!("cannot read: {e}"));
                    }
                    continue;
                }
            },
            Ok(t) => t.is_dir(),
            Err(e) => {
                if is_manifest() {
                    path_problem(result, &p, format!("cannot read: {e}"));
                }
                continue;
            }
        };
        if is_dir || is_manifest() {
            names.push((p, is_dir));
        }
    }
    names.sort();
    for (p, is_dir) in names {
        if is_dir {
            walk(&p, files, result, visited);
        } else {
            files.push(p);
        }
    }
}

fn read_and_parse(file: &Path) -> FileParse {
    let problem = |line: u64, col: u64, message: String| FileParse {
        diagnostics: vec![Diagnostic {
            loc: SourceLoc {
                file: file.to_path_buf(),
                line,
                col,
            },
            message,
        }],
        ..FileParse::default()
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return problem(0, 0, format!("cannot read: {e}")),
    };
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse_file(file, text),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = 1 + good.iter().filter(|b| **b == b'\n').count() as u64;
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let col = 1 + String::from_utf8_lossy(&good[line_start..]).chars().count() as u64;
            problem(line, col, "file is not valid UTF-8".into())
        }
    }
}

fn parse_files(files: &[PathBuf]) -> Vec<FileParse> {
    crate::util::par::par_map(files, |f| read_and_parse(f))
}

/// Every `metadata.name` value found in `text`, even when the file does not validate
/// (bad YAML, unknown fields, wrong types): the union of the names of the documents that
/// parse as YAML and of a line scan for `name:` under `metadata:`. Meant for protecting the
/// instances of a broken file; it errs on the side of finding too many names.
pub fn names_in_file_best_effort(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        let n = n.trim();
        if !n.is_empty() && !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    };
    let docs = parse_yaml(text);
    for doc in &docs.docs {
        if let Kind::Map(entries) = &doc.kind {
            for (k, v) in entries {
                if k.scalar() == Some("metadata")
                    && let Kind::Map(meta) = &v.kind
                {
                    for (mk, mv) in meta {
                        if mk.scalar() == Some("name")
                            && let Some(n) = mv.scalar()
                        {
                            add(n);
                        }
                    }
                }
            }
        }
    }
    for n in scan_names(text) {
        add(&n);
    }
    names
}

/// Line scan for `metadata:` blocks (block or flow style) and their `name:`.
fn scan_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // (indent of `metadata:`, indent of its children once seen)
    let mut metadata: Option<(usize, Option<usize>)> = None;
    for raw in text.lines() {
        let line = strip_comment(raw);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed == "---" || trimmed == "..." {
            metadata = None;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some((mi, child)) = metadata {
            if indent > mi {
                let child = child.unwrap_or(indent);
                metadata = Some((mi, Some(child)));
                if indent == child
                    && let Some(v) = trimmed.strip_prefix("name:")
                {
                    out.push(unquote(v));
                    metadata = None;
                }
                continue;
            }
            metadata = None;
        }
        let key_line = trimmed.trim_start_matches("- ");
        if let Some(rest) = key_line.strip_prefix("metadata:") {
            let rest = rest.trim();
            if rest.is_empty() {
                metadata = Some((indent, None));
            } else if let Some(i) = rest.find("name:") {
                let v = &rest[i + 5..];
                let end = v.find([',', '}']).unwrap_or(v.len());
                out.push(unquote(&v[..end]));
            }
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(v);
    v.trim().to_owned()
}

// ---------------------------------------------------------------------------------------
// JSON Schema.

/// The JSON Schema (draft 2020-12) of one manifest document, for editors (e.g. the YAML
/// language server's `# yaml-language-server: $schema=...`). Every object has
/// `additionalProperties: false`. Rules that a schema cannot express (unique names across
/// files, duplicate host ports, whole-MiB memory) are only checked by [`load`].
pub fn json_schema() -> serde_json::Value {
    use serde_json::json;
    let dns = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
    let env_key = "^[A-Za-z_][A-Za-z0-9_]*$";
    let sha = "^[0-9a-f]{64}$";
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:clawfarm:manifest:v1",
        "title": "clawfarm manifest (apiVersion clawfarm/v1, kind Claw)",
        "description": "One desired instance, or several with replicas. A file may hold several YAML documents separated by ---.",
        "type": "object",
        "additionalProperties": false,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": "Always clawfarm/v1."},
            "kind": {"const": KIND, "description": "Always Claw."},
            "metadata": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name"],
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": dns,
                        "minLength": 1,
                        "maxLength": MAX_NAME_LEN,
                        "description": "DNS label, unique across the applied set. With replicas > 1 the instances are NAME-0 .. NAME-(N-1)."
                    }
                }
            },
            "spec": {
                "type": "object",
                "additionalProperties": false,
                "required": ["clawbox"],
                "properties": {
                    "clawbox": {
                        "description": "The bundle: a path relative to this manifest's folder, or a URL pinned by digest.",
                        "oneOf": [
                            {"type": "string", "minLength": 1, "not": {"pattern": "://"}},
                            {
                                "type": "object",
                                "additionalProperties": false,
                                "required": ["url", "sha256"],
                                "properties": {
                                    "url": {"type": "string", "pattern": "^([hH][tT][tT][pP][sS]?|[fF][iI][lL][eE])://\\S+$"},
                                    "sha256": {"type": "string", "pattern": sha}
                                }
                            }
                        ]
                    },
                    "state": {"enum": ["running", "stopped"], "default": "running"},
                    "replicas": {"type": "integer", "minimum": *REPLICAS_RANGE.start(), "maximum": *REPLICAS_RANGE.end(), "default": 1},
                    "cpus": {"type": "integer", "minimum": *CPUS_RANGE.start(), "maximum": *CPUS_RANGE.end(), "default": DEFAULT_CPUS},
                    "memory": {
                        "description": "MiB as a plain number, or a size such as 512MiB, 2GiB, 1.5GiB (binary units). 128 MiB to 256 GiB.",
                        "default": DEFAULT_MEMORY_MIB,
                        "oneOf": [
                            {"type": "integer", "minimum": *MEMORY_MIB_RANGE.start(), "maximum": *MEMORY_MIB_RANGE.end()},
                            {"type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]+)?|\\.[0-9]+)\\s*(M|Mi|MiB|G|Gi|GiB)?\\s*$"}
                        ]
                    },
                    "ports": {
                        "type": ["array", "null"],
                        "description": "Host port forwards, bound to 127.0.0.1. A host port may appear once per manifest.",
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["host", "guest"],
                            "properties": {
                                "host": {"type": "integer", "minimum": MIN_HOST_PORT, "maximum": 65535},
                                "guest": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "name": {"type": "string", "pattern": dns, "maxLength": MAX_LABEL_LEN, "description": "e.g. gateway"}
                            }
                        }
                    },
                    "params": {
                        "type": ["object", "null"],
                        "description": "Values for the clawspec's params: a literal (not for secret params), {env: NAME} or {file: PATH} (relative to this manifest's folder).",
                        "propertyNames": {"pattern": env_key},
                        "additionalProperties": {
                            "oneOf": [
                                {"type": ["string", "number", "boolean"]},
                                {
                                    "type": "object",
                                    "additionalProperties": false,
                                    "required": ["env"],
                                    "properties": {"env": {"type": "string", "pattern": env_key}}
                                },
                                {
                                    "type": "object",
                                    "additionalProperties": false,
                                    "required": ["file"],
                                    "properties": {"file": {"type": "string", "minLength": 1}}
                                }
                            ]
                        }
                    },
                    "volumes": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["name", "guestPath"],
                            "properties": {
                                "name": {"type": "string", "pattern": dns, "maxLength": MAX_LABEL_LEN},
                                "guestPath": {"type": "string", "pattern": "^/[^\\s]*[^/\\s][^\\s]*$", "description": "Absolute guest path, not /, without .."}
                            }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &[&str] = &[
        include_str!("../../tests/fixtures/manifests/valid/demo-a.yaml"),
        include_str!("../../tests/fixtures/manifests/valid/multi.yaml"),
        include_str!("../../tests/fixtures/manifests/valid/team/minimal.yml"),
        include_str!("../../tests/fixtures/manifests/valid/team/from-json.json"),
        include_str!("../../tests/fixtures/manifests/invalid/unknown-field.yaml"),
        include_str!("../../tests/fixtures/manifests/invalid/bad-memory.yaml"),
        include_str!("../../tests/fixtures/manifests/invalid/syntax.yaml"),
        "a:\n  b: 1\n  c:\n  d: 'q'\n  e: \"w\"\nl:\n- x\n-   y\n- k: 1\n  m:\n- \n  - z\nf: [a, {b: c}, []]\ng: {}\nh:    # c\n  - 1\ni: x # c\n",
        "---\n---\n# c\n...\n---\na: 1\n...\n",
        "- a\n- b: c\n  d: [e, 'f', \"g\"]\n-\n  - h\n",
        "spec:\n  ports:\n  - host: 1\n    guest: 2\n  - {host: 3, guest: 4}\n  params:\n    A: {env: B}\n    C: héllo wörld\n    D: \"ü: x\"\n    E: x:y\n    F: http://a/b\n",
        "a: b c  \nd:   e\nf : g\n'h': i\nj: 'k''l'\nm: \"n\"o\n",
        "a:\n- 1\n- 2\nb:\n    - 3\n    -    4\nc: [ 1 , 2 ]\nd: {x: 1, y: [2, 3], z: {w: v}}\n",
        "  a: 1\n  b: 2\n",
        "a: 1\n b: 2\n",
        "a:\n  b: 1\n c: 2\n",
        "a: [1, 2,]\nb: {c: 1,}\nc: [a: b]\nd: {e}\n",
        "a: - b\nc: -\nd: -1\ne: --x\n",
        "a: 'x' # c\nb: \"#\"\nc: x#y\n",
        "{a: 1}\n",
        "[1, 2]\n",
        "a: b: c\n",
        "a:\n  - b\n  c: d\n",
        "a: 1\n---\nb\n---\n- c\n",
        "a:  \nb: 'b'c\nc: x\n\n\nd: y\ne: [b, c]  # comment\n",
        "- a: 1\n  b:\n    c: 2\n- d\n",
        "a:\n- b\n- c\nd: e\n",
        "a: \"\"\nb: ''\nc: [\"x, y\", 'z']\nd: {b: [1, {c: d}]}\n",
        "a: 0.5\nb: .inf\nc: ~\nd: null\ne: true\nf: 0x1F\ng: 012\n",
        "a: b\n  # indented comment\nc: d\n",
        "a:\n\n  b: 1\n",
        "\u{e9}: 1\nk: \u{e9}t\u{e9}\nl: [\u{e9}, \u{e9}\u{e9}]\n",
        "a: 'x'  \n: a\n",
        "a:: b\n",
        "a :b\n",
        "-a: 1\n",
        "a: -b\nb: [-1, - 2]\n",
        "a: {b: c, d}\n",
        "a: [b c, d]\nb: {b c: d}\n",
        "x: y\n---   \nz: 1\n",
        "--- # comment\na: 1\n",
        "a: 1 #\nb: b #c #d\n",
        "a: [b]c\n",
        "a: {b: c}}\n",
        "a: [[]]\nb: [{}]\nc: {d: []}\n",
        "a: {\"b\": c}\n",
        "a: {'b': c}\n",
        "a:\n  - b\n  -\n    c: d\n",
        "a:\n  -  b: c\n     d: e\n",
        "a: x\n  y\n",
        "- - a\n",
        "-\n",
        "a:\n-\n",
    ];

    fn check(text: &str) -> bool {
        let Some(fast) = fast::parse(text) else {
            return false;
        };
        let full = parse_yaml_full(text);
        assert!(
            full.syntax_error.is_none() && full.problems.is_empty(),
            "fast path accepted text the full parser rejects: {text:?}\n{:?}",
            full.syntax_error
        );
        assert_eq!(fast, full.docs, "fast and full parse differ for {text:?}");
        true
    }

    #[test]
    fn fast_path_accepts_typical_manifests() {
        for text in &CORPUS[..3] {
            assert!(check(text), "{text}");
        }
        assert!(check(CORPUS[7]));
        assert!(check(CORPUS[10]));
    }

    #[test]
    fn fast_path_agrees_with_the_full_parser() {
        let alphabet: Vec<char> = " :-#[]{},'\"\nabc0~.\u{e9}".chars().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let mut accepted = 0;
        let mut total = 0;
        for text in CORPUS {
            total += 1;
            accepted += usize::from(check(text));
            for _ in 0..1500 {
                let mut chars: Vec<char> = text.chars().collect();
                for _ in 0..1 + rnd(3) {
                    let at = rnd(chars.len() + 1);
                    match rnd(4) {
                        0 if at < chars.len() => {
                            chars.remove(at);
                        }
                        1 => chars.insert(at, alphabet[rnd(alphabet.len())]),
                        2 => {
                            // indent or dedent a line
                            let lines: Vec<usize> = std::iter::once(0)
                                .chain(
                                    chars
                                        .iter()
                                        .enumerate()
                                        .filter(|(_, c)| **c == '\n')
                                        .map(|(i, _)| i + 1),
                                )
                                .collect();
                            let l = lines[rnd(lines.len())];
                            if rnd(2) == 0 {
                                chars.insert(l.min(chars.len()), ' ');
                            } else if chars.get(l) == Some(&' ') {
                                chars.remove(l);
                            }
                        }
                        _ => {
                            if at < chars.len() {
                                chars[at] = alphabet[rnd(alphabet.len())];
                            }
                        }
                    }
                }
                let mutated: String = chars.into_iter().collect();
                total += 1;
                accepted += usize::from(check(&mutated));
            }
        }
        eprintln!("fast path: {accepted} of {total} inputs accepted and identical");
        // the comparison is not vacuous
        assert!(accepted > total / 10, "{accepted} of {total}");
    }
}
