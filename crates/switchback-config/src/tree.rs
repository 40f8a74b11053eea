//! The YAML document as a tree of located nodes, built from the events of serde-saphyr's
//! parser (`granit_parser`).
//!
//! Reading the whole document before looking at the schema is what lets every field be
//! checked on its own: a field of the wrong type is reported and skipped instead of ending
//! the parse, as a serde deserialization would. Aliases are expanded and merge keys (`<<`)
//! resolved here, so the schema reader only ever sees plain mappings, lists and scalars.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

/// Most nodes a document may expand to through aliases (serde-saphyr's default limit on
/// replayed alias events), so that a few nested aliases cannot exhaust memory.
const MAX_NODES: usize = 1_000_000;

/// A position in the file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Pos {
    fn start_of(span: &Span) -> Self {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }

    fn end_of(span: &Span) -> Self {
        Pos {
            line: span.end.line(),
            column: span.end.col() + 1,
        }
    }
}

/// A node of the document and where it starts (for an alias: where the alias is).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) at: Pos,
    pub(crate) content: Content,
}

/// What a node holds.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order, merged entries after the mapping's own.
    Map(Vec<(Node, Node)>),
}

/// A scalar: its text after YAML escape processing, and what the reader needs to know of how
/// it was written.
#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    pub(crate) text: String,
    /// Plain (unquoted, not a block scalar): only plain scalars can be null, numbers or
    /// booleans, and only they fold lines silently.
    pub(crate) plain: bool,
    /// YAML null: nothing, `~` or `null` written plain (or tagged `!!null`).
    pub(crate) null: bool,
    /// Where the scalar ends; for a null, at its start when nothing at all was written.
    pub(crate) end: Pos,
}

impl Node {
    /// A short description of what was written, for "expected ..., found ..." messages.
    pub(crate) fn describe(&self) -> String {
        match &self.content {
            Content::Scalar(s) if s.null => "nothing".to_owned(),
            Content::Scalar(s) => format!("{:?}", s.text),
            Content::Seq(items) if items.is_empty() => "an empty list".to_owned(),
            Content::Seq(_) => "a list".to_owned(),
            Content::Map(entries) if entries.is_empty() => "an empty mapping".to_owned(),
            Content::Map(_) => "a mapping".to_owned(),
        }
    }

    /// The scalar that starts at `at`, searching keys, values and items.
    pub(crate) fn scalar_at(&self, at: Pos) -> Option<&Scalar> {
        match &self.content {
            Content::Scalar(s) => (self.at == at).then_some(s),
            Content::Seq(items) => items.iter().find_map(|item| item.scalar_at(at)),
            Content::Map(entries) => entries
                .iter()
                .find_map(|(key, value)| key.scalar_at(at).or_else(|| value.scalar_at(at))),
        }
    }

    /// How many nodes this one is, itself included.
    fn size(&self) -> usize {
        1 + match &self.content {
            Content::Scalar(_) => 0,
            Content::Seq(items) => items.iter().map(Node::size).sum(),
            Content::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
        }
    }

    /// Whether this is the merge key `<<` (written plain).
    fn is_merge_key(&self) -> bool {
        matches!(&self.content, Content::Scalar(s) if s.plain && s.text == "<<")
    }

    fn scalar_text(&self) -> Option<&str> {
        match &self.content {
            Content::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }
}

/// Why the document could not be read into a tree. Each stops the reading: nothing after
/// it can be trusted.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// Not valid YAML.
    Syntax(ScanError),
    /// A second document (`---`) starts here.
    SecondDocument(Pos),
    /// Aliases expand the document beyond [`MAX_NODES`]; the alias that crossed it is here.
    TooLarge(Pos),
    /// The value of a merge key (`<<`) here is neither a mapping nor a list of mappings.
    BadMerge(Pos),
    /// The alias here refers to a node that contains it.
    RecursiveAlias(Pos),
}

/// A collection being built.
enum Frame {
    Seq {
        at: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        at: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Reads the single document of `text`; `None` for a file without one (empty, or only
/// comments).
pub(crate) fn parse(text: &str) -> Result<Option<Node>, ParseError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut root = None;
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(ParseError::Syntax)?;
        let at = Pos::start_of(&span);
        let done = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(ParseError::SecondDocument(at));
                }
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                let node = Node {
                    at,
                    content: Content::Scalar(scalar(text.into_owned(), style, tag.as_deref(), &span)),
                };
                Some((node, anchor))
            }
            Event::Alias(id) => {
                // The parser rejects unknown anchors; a known one not yet recorded is still
                // being read, so this alias is inside it.
                let mut node = anchors.get(&id).cloned().ok_or(ParseError::RecursiveAlias(at))?;
                nodes += node.size();
                if nodes > MAX_NODES {
                    return Err(ParseError::TooLarge(at));
                }
                node.at = at;
                Some((node, 0))
            }
            Event::SequenceStart(_, anchor, _) => {
                stack.push(Frame::Seq {
                    at,
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(_, anchor, _) => {
                stack.push(Frame::Map {
                    at,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { at, anchor, items }) => Some((
                    Node {
                        at,
                        content: Content::Seq(items),
                    },
                    anchor,
                )),
                Some(Frame::Map {
                    at, anchor, entries, ..
                }) => Some((
                    Node {
                        at,
                        content: Content::Map(merge(entries)?),
                    },
                    anchor,
                )),
                None => None,
            },
            _ => None,
        };
        let Some((node, anchor)) = done else { continue };
        nodes += 1;
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Ok(root)
}

fn scalar(text: String, style: ScalarStyle, tag: Option<&Tag>, span: &Span) -> Scalar {
    let plain = style == ScalarStyle::Plain;
    let null = match tag {
        Some(tag) => tag.is_yaml_core_schema_tag("null"),
        None => plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"),
    };
    Scalar {
        text,
        plain,
        null,
        end: Pos::end_of(span),
    }
}

/// Resolves merge keys: the entries of each mapping merged in (`<<: *base` or
/// `<<: [*a, *b]`) follow the mapping's own, except keys it already has; earlier sources win.
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, ParseError> {
    if !entries.iter().any(|(key, _)| key.is_merge_key()) {
        return Ok(entries);
    }
    let (sources, mut own): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(key, _)| key.is_merge_key());
    for (_, source) in sources {
        let maps = match source.content {
            Content::Map(entries) => vec![entries],
            Content::Seq(items) => items
                .into_iter()
                .map(|item| match item.content {
                    Content::Map(entries) => Ok(entries),
                    _ => Err(ParseError::BadMerge(item.at)),
                })
                .collect::<Result<_, _>>()?,
            Content::Scalar(_) => return Err(ParseError::BadMerge(source.at)),
        };
        for (key, value) in maps.into_iter().flatten() {
            let taken = key
                .scalar_text()
                .is_some_and(|name| own.iter().any(|(k, _)| k.scalar_text() == Some(name)));
            if !taken {
                own.push((key, value));
            }
        }
    }
    Ok(own)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(node: &Node) -> Vec<(&str, &str)> {
        let Content::Map(entries) = &node.content else {
            panic!("a mapping: {node:?}")
        };
        entries
            .iter()
            .map(|(k, v)| (k.scalar_text().unwrap(), v.scalar_text().unwrap_or("<container>")))
            .collect()
    }

    #[test]
    fn aliases_and_merge_keys() {
        let root = parse("base: &b { a: 1, b: 2 }\nx:\n  <<: *b\n  b: 3\n  c: *b\n")
            .unwrap()
            .unwrap();
        let Content::Map(entries) = &root.content else {
            panic!()
        };
        let x = &entries[1].1;
        assert_eq!(keys(x), [("b", "3"), ("c", "<container>"), ("a", "1")]);
        // An alias is located where it is used.
        assert_eq!(x.scalar_at(Pos { line: 4, column: 6 }).unwrap().text, "3");
        let Content::Map(x_entries) = &x.content else {
            panic!()
        };
        assert_eq!(x_entries[1].1.at, Pos { line: 5, column: 6 });
    }

    #[test]
    fn nulls_and_empty_documents() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
        let root = parse("a:\nb: ~\nc: '~'\nd: !!str null\n").unwrap().unwrap();
        let Content::Map(entries) = &root.content else {
            panic!()
        };
        let nulls: Vec<bool> = entries
            .iter()
            .map(|(_, v)| matches!(&v.content, Content::Scalar(s) if s.null))
            .collect();
        assert_eq!(nulls, [true, true, false, false]);
    }

    #[test]
    fn what_stops_the_reading() {
        assert!(matches!(parse("a: [1\n"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            parse("a: 1\n---\nb: 2\n"),
            Err(ParseError::SecondDocument(Pos { line: 2, column: 1 }))
        ));
        assert!(matches!(
            parse("a: &a 1\nb:\n  <<: *a\n"),
            Err(ParseError::BadMerge(Pos { line: 3, column: 7 }))
        ));
        // Ten levels of ten aliases each: 10^10 nodes if expanded.
        let mut yaml = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
        for level in 1..10 {
            let below = level - 1;
            yaml.push_str(&format!(
                "l{level}: &l{level} [{}]\n",
                vec![format!("*l{below}"); 10].join(", ")
            ));
        }
        assert!(matches!(parse(&yaml), Err(ParseError::TooLarge(_))));
    }
}
