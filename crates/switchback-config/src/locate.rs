//! An outline of a document that may not parse: the path and position of every node up to
//! the first syntax error, so a syntax error can name the field it is in
//! (`routes[0].match.prefix`) and its hint can name the fields around it.
//!
//! It walks the events of serde-saphyr's own parser (`granit_parser`), which reports
//! everything it read before an error.

use serde_saphyr::granit_parser::{Event, Parser, Span, StructureStyle};

use crate::tree::Pos;

/// What kind of node an outline entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A mapping key; its path is the path of the value it introduces.
    Key,
    /// A scalar value (or alias).
    Scalar,
    /// A mapping value; `block` unless written in braces.
    Map { block: bool },
    /// A list value; `block` unless written in brackets.
    Seq { block: bool },
}

/// A node of the outline.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) path: String,
    pub(crate) kind: Kind,
    pub(crate) start: Pos,
    /// Where a mapping or list ends; `None` while it is still open at a syntax error.
    pub(crate) end: Option<Pos>,
}

impl Node {
    pub(crate) fn is_container(&self) -> bool {
        matches!(self.kind, Kind::Map { .. } | Kind::Seq { .. })
    }
}

enum Frame {
    Map {
        node: usize,
        path: String,
        key: Option<String>,
    },
    Seq {
        node: usize,
        path: String,
        index: usize,
    },
}

/// Joins a mapping key onto a path.
pub(crate) fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub(crate) fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

fn start(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn end(span: &Span) -> Pos {
    Pos {
        line: span.end.line(),
        column: span.end.col() + 1,
    }
}

/// Every node of the first document of `text`, in document order (a container before what
/// it holds), up to the first syntax error.
pub(crate) fn outline(text: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else { break };
        let container = match &event {
            Event::MappingStart(style, ..) => Some(Kind::Map {
                block: *style == StructureStyle::Block,
            }),
            Event::SequenceStart(style, ..) => Some(Kind::Seq {
                block: *style == StructureStyle::Block,
            }),
            _ => None,
        };
        let is_leaf = matches!(event, Event::Scalar(..) | Event::Alias(..));
        if container.is_some() || is_leaf {
            // Is this node a key of the enclosing mapping?
            if let Some(Frame::Map { key, path, .. }) = stack.last_mut()
                && key.is_none()
            {
                let name = match &event {
                    Event::Scalar(value, ..) => value.to_string(),
                    _ => "?".to_owned(),
                };
                let key_path = join_key(path, &name);
                *key = Some(name);
                nodes.push(Node {
                    path: key_path.clone(),
                    kind: Kind::Key,
                    start: start(&span),
                    end: None,
                });
                if let Some(kind) = container {
                    // A complex key: walk it, attributing its insides to the key.
                    stack.push(new_frame(kind, key_path, nodes.len() - 1));
                }
                continue;
            }
            let path = match stack.last_mut() {
                None => String::new(),
                Some(Frame::Map { path, key, .. }) => {
                    let key = key.take().unwrap_or_default();
                    join_key(path, &key)
                }
                Some(Frame::Seq { path, index, .. }) => {
                    *index += 1;
                    join_index(path, *index - 1)
                }
            };
            nodes.push(Node {
                path: path.clone(),
                kind: container.unwrap_or(Kind::Scalar),
                start: start(&span),
                end: None,
            });
            if let Some(kind) = container {
                stack.push(new_frame(kind, path, nodes.len() - 1));
            }
        } else if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
            if let Some(Frame::Map { node, .. } | Frame::Seq { node, .. }) = stack.pop()
                && let Some(n) = nodes.get_mut(node)
            {
                n.end = Some(end(&span));
            }
        } else if matches!(event, Event::DocumentEnd) {
            break;
        }
    }
    nodes
}

fn new_frame(kind: Kind, path: String, node: usize) -> Frame {
    if matches!(kind, Kind::Map { .. }) {
        Frame::Map {
            node,
            path,
            key: None,
        }
    } else {
        Frame::Seq { node, path, index: 0 }
    }
}

/// The block mappings and lists open at the end of the line before `line`, outermost
/// first, with their index in `nodes`. Those the dedent of `line` itself closed count as
/// open: a syntax error on `line` is about where it belongs among them.
pub(crate) fn open_blocks(nodes: &[Node], line: usize) -> impl Iterator<Item = (usize, &Node)> {
    nodes.iter().enumerate().filter(move |(_, n)| {
        matches!(n.kind, Kind::Map { block: true } | Kind::Seq { block: true })
            && n.start.line < line
            && n.end.is_none_or(|end| end.line >= line)
    })
}

/// The path of the node of `text` at `at`, preferring a value to a key that starts there.
/// Where no node starts, at the start of a line (an indentation error) it is the innermost
/// block open there that starts at or before that column; elsewhere the innermost closed
/// container holding the position, then the last node before it. Empty when nothing fits
/// (e.g. the root).
pub(crate) fn path_at(text: &str, at: Pos) -> String {
    let nodes = outline(text);
    let exact = |want: fn(&Node) -> bool| nodes.iter().rev().find(|n| want(n) && n.start == at);
    let line_start = text
        .lines()
        .nth(at.line.saturating_sub(1))
        .is_some_and(|line| line.chars().take_while(|c| *c == ' ').count() + 1 == at.column);
    let block_at_line_start = || {
        open_blocks(&nodes, at.line)
            .map(|(_, n)| n)
            .filter(|n| line_start && n.start.column <= at.column)
            .last()
    };
    let enclosing = || {
        // The innermost (latest-starting) container whose span holds the position.
        nodes
            .iter()
            .rev()
            .find(|n| n.is_container() && n.start <= at && n.end.is_some_and(|end| at <= end))
    };
    exact(|n| n.kind == Kind::Scalar)
        .or_else(|| exact(Node::is_container))
        .or_else(|| exact(|n| n.kind == Kind::Key))
        .or_else(block_at_line_start)
        .or_else(enclosing)
        .or_else(|| nodes.iter().rev().find(|n| n.start <= at))
        .map(|n| n.path.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen: a
routes:
  - match:
      prefix: /ws
    cluster: echo
  - {cluster: b, match: {path: /x}}
";

    fn path(line: usize, column: usize) -> String {
        path_at(DOC, Pos { line, column })
    }

    #[test]
    fn values_keys_and_containers() {
        assert_eq!(path(1, 1), "", "the root mapping starts at its first key");
        assert_eq!(path(1, 9), "listen");
        assert_eq!(
            path(4, 7),
            "routes[0].match",
            "a value before a key at the same place"
        );
        assert_eq!(path(4, 15), "routes[0].match.prefix");
        assert_eq!(
            path(3, 5),
            "routes[0]",
            "the route's mapping starts at its first key"
        );
        assert_eq!(path(5, 14), "routes[0].cluster");
        assert_eq!(path(6, 5), "routes[1]");
        assert_eq!(path(6, 32), "routes[1].match.path");
        assert_eq!(path(6, 26), "routes[1].match.path");
    }

    #[test]
    fn at_a_line_start_the_block_it_is_in() {
        let text = "routes:\n  - match: { prefix: / }\n      cluster: echo\n";
        assert_eq!(path_at(text, Pos { line: 3, column: 7 }), "routes[0]");
        assert_eq!(
            path_at(text, Pos { line: 3, column: 14 }),
            "routes[0].match.prefix"
        );
    }

    #[test]
    fn stops_at_a_syntax_error_with_containers_open() {
        let nodes = outline("routes:\n  - match: { prefix: / }\n      cluster: echo\n");
        let open: Vec<&str> = nodes
            .iter()
            .filter(|n| n.is_container() && n.end.is_none())
            .map(|n| n.path.as_str())
            .collect();
        assert_eq!(open, ["", "routes", "routes[0]"]);
    }
}
