//! Maps a source position back to the path of the YAML node there (`routes[0].match.prefx`).
//!
//! serde-saphyr reports where a parse error is (line and column) but not which field it is
//! in, so for parse errors we walk the document's events with serde-saphyr's own parser
//! (`granit_parser`, re-exported by serde-saphyr) and record the path and position of every
//! key and value node.

use serde_saphyr::granit_parser::{Event, Parser, Span};

/// A (line, column) position, both 1-based.
type Pos = (usize, usize);

/// What kind of node a recorded entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A mapping key; its path is the path of the value it introduces.
    Key,
    /// A scalar value (or alias).
    Scalar,
    /// A mapping or sequence value.
    Container,
}

#[derive(Debug)]
struct Node {
    path: String,
    kind: Kind,
    start: Pos,
    /// End of a container (filled in at its end event); the start for other nodes.
    end: Pos,
}

/// What kind of error is being located, which decides between nodes at the same position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The error is about a mapping key (unknown field, duplicate key, unknown filter).
    Key,
    /// The error is about the mapping that contains the position (missing field).
    EnclosingMapping,
    /// The error is about the value at the position.
    Value,
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

fn pos(span: &Span) -> Pos {
    (span.start.line(), span.start.col() + 1)
}

fn end_pos(span: &Span) -> Pos {
    (span.end.line(), span.end.col() + 1)
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

/// Records every node of the first document of `text` (stopping at a syntax error).
fn collect(text: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else { break };
        let is_start = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
        let is_leaf = matches!(event, Event::Scalar(..) | Event::Alias(..));
        if is_start || is_leaf {
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
                    start: pos(&span),
                    end: pos(&span),
                });
                if is_start {
                    // A complex key: walk it, attributing its insides to the key.
                    stack.push(new_frame(&event, key_path, nodes.len() - 1));
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
                kind: if is_start { Kind::Container } else { Kind::Scalar },
                start: pos(&span),
                end: pos(&span),
            });
            if is_start {
                stack.push(new_frame(&event, path, nodes.len() - 1));
            }
        } else if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
            if let Some(Frame::Map { node, .. } | Frame::Seq { node, .. }) = stack.pop()
                && let Some(n) = nodes.get_mut(node)
            {
                n.end = end_pos(&span);
            }
        } else if matches!(event, Event::DocumentEnd) {
            break;
        }
    }
    nodes
}

fn new_frame(event: &Event<'_>, path: String, node: usize) -> Frame {
    if matches!(event, Event::MappingStart(..)) {
        Frame::Map {
            node,
            path,
            key: None,
        }
    } else {
        Frame::Seq { node, path, index: 0 }
    }
}

/// The path of the node of `text` at `(line, column)` (1-based), choosing by `want` among
/// nodes that share the position. Falls back to the innermost container holding the
/// position, then to the last node before it; empty when nothing fits (e.g. the root).
pub(crate) fn path_at(text: &str, line: usize, column: usize, want: Want) -> String {
    let nodes = collect(text);
    let at = (line, column);
    let exact = |kind: Kind| nodes.iter().rev().find(|n| n.kind == kind && n.start == at);
    let enclosing = || {
        // The innermost (latest-starting) container whose span holds the position.
        nodes
            .iter()
            .rev()
            .find(|n| n.kind == Kind::Container && n.start <= at && at <= n.end)
    };
    let found = match want {
        Want::Key => exact(Kind::Key)
            .or_else(|| exact(Kind::Scalar))
            .or_else(|| exact(Kind::Container)),
        Want::EnclosingMapping => enclosing(),
        Want::Value => exact(Kind::Scalar)
            .or_else(|| exact(Kind::Container))
            .or_else(|| exact(Kind::Key)),
    };
    found
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

    #[test]
    fn keys_values_and_containers() {
        assert_eq!(path_at(DOC, 1, 1, Want::Key), "listen");
        assert_eq!(path_at(DOC, 1, 9, Want::Value), "listen");
        assert_eq!(path_at(DOC, 4, 7, Want::Key), "routes[0].match.prefix");
        assert_eq!(path_at(DOC, 4, 15, Want::Value), "routes[0].match.prefix");
        assert_eq!(path_at(DOC, 3, 5, Want::EnclosingMapping), "routes[0]");
        assert_eq!(path_at(DOC, 3, 5, Want::Key), "routes[0].match");
        assert_eq!(path_at(DOC, 5, 14, Want::Value), "routes[0].cluster");
        assert_eq!(path_at(DOC, 6, 6, Want::EnclosingMapping), "routes[1]");
        assert_eq!(path_at(DOC, 6, 32, Want::Value), "routes[1].match.path");
        assert_eq!(path_at(DOC, 6, 26, Want::EnclosingMapping), "routes[1].match");
    }
}
