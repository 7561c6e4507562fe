//! The YAML of a manifest as a tree with positions, built from the event stream of
//! serde-saphyr's parser (anchors expanded, with a node budget).

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------
// YAML tree with positions, built from the event stream of serde-saphyr's parser.

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(super) struct Pos {
    pub(super) line: u64,
    pub(super) col: u64,
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
pub(super) struct Node<'a> {
    pub(super) pos: Pos,
    pub(super) kind: Kind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind<'a> {
    /// `plain` is false for quoted, block and `!!str` scalars (always strings).
    Scalar {
        text: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

impl<'a> Node<'a> {
    pub(super) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub(super) fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// What the node is, for "expected X, found Y" messages (never the value itself).
    pub(super) fn describe(&self) -> &'static str {
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
pub(super) const MAX_NODES: usize = 100_000;

pub(super) enum Frame<'a> {
    Seq(Pos, usize, Vec<Node<'a>>),
    Map(Pos, usize, Vec<(Node<'a>, Node<'a>)>, Option<Node<'a>>),
}

/// The documents of a YAML text (empty documents skipped), problems found while building
/// them (unsupported tags), and the syntax error that stopped the parse, if any. Documents
/// completed before a syntax error are returned.
pub(super) struct Docs<'a> {
    pub(super) docs: Vec<Node<'a>>,
    pub(super) problems: Vec<(Pos, String)>,
    pub(super) syntax_error: Option<(Pos, String)>,
}

/// Parse `text` with serde-saphyr's YAML parser (any YAML) into positioned documents.
pub(super) fn parse_yaml(text: &str) -> Docs<'_> {
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

pub(super) fn count_nodes(node: &Node<'_>) -> usize {
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
