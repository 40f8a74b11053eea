//! Reading the document tree into the shape of the file ([`crate::raw`]), field by
//! field. A value of the wrong type, an unknown field, a duplicate key or a missing required
//! field is reported and left out, and reading goes on, so one run reports all of them.

use std::fmt;

use crate::error::Ctx;
use crate::locate::{join_index, join_key};
use crate::raw;
use crate::suggest;
use crate::tree::{Content, Node, Pos};

/// A value together with where it is in the file.
#[derive(Debug, Clone)]
pub(crate) struct S<T> {
    pub(crate) value: T,
    pub(crate) at: Pos,
}

/// The entries of a list in file order: `None` where an entry could not be read (the reason
/// is already reported), so the others keep their index in field paths.
pub(crate) type List<T> = Vec<Option<S<T>>>;

/// The entries of a mapping whose keys are names of the user's choosing (headers, runtime
/// keys), in file order; entries whose value could not be read are left out.
#[derive(Debug)]
pub(crate) struct Pairs<V>(pub(crate) Vec<(S<String>, S<V>)>);

impl<V> Default for Pairs<V> {
    fn default() -> Self {
        Pairs(Vec::new())
    }
}

/// An optional field: whether it was written matters to some checks (a route with neither
/// `cluster` nor `weighted_clusters`) even when its value could not be read.
#[derive(Debug, Default)]
pub(crate) enum Field<T> {
    /// Not written, or written without a value.
    #[default]
    Absent,
    /// Written, but the value is unusable (already reported).
    Invalid,
    /// Written and read.
    Valid(T),
}

impl<T> Field<T> {
    /// The value, if it was written and could be read.
    pub(crate) fn ok(self) -> Option<T> {
        match self {
            Field::Valid(value) => Some(value),
            Field::Absent | Field::Invalid => None,
        }
    }

    /// As [`Field::ok`], by reference.
    pub(crate) fn valid(&self) -> Option<&T> {
        match self {
            Field::Valid(value) => Some(value),
            Field::Absent | Field::Invalid => None,
        }
    }

    /// Whether the field was written with a value, usable or not.
    pub(crate) fn is_written(&self) -> bool {
        !matches!(self, Field::Absent)
    }
}

impl<T> Field<S<List<T>>> {
    /// The entries of a list field; none when it is absent or unusable.
    pub(crate) fn items(self) -> List<T> {
        self.ok().map(|list| list.value).unwrap_or_default()
    }
}

/// The whole numbers a field accepts. Its type error names them, so that `workers: two` is
/// told the same range that `workers: 0` is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Whole {
    pub(crate) min: u64,
    pub(crate) max: u64,
}

impl Whole {
    /// Any whole number from `min` up.
    pub(crate) const fn at_least(min: u64) -> Self {
        Whole { min, max: u64::MAX }
    }
}

impl fmt::Display for Whole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max == u64::MAX {
            write!(f, "a whole number that is {} or more", self.min)
        } else {
            write!(f, "a whole number from {} to {}", self.min, self.max)
        }
    }
}

/// The names a mapping accepts as keys.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keys {
    /// The fields of a struct, or the filter names.
    Fields(&'static [&'static str]),
    /// Names of the user's choosing.
    Any,
    /// Not a mapping of the schema.
    Unknown,
}

impl Keys {
    pub(crate) fn accepts(self, key: &str) -> bool {
        match self {
            Keys::Fields(fields) => fields.contains(&key),
            Keys::Any => true,
            Keys::Unknown => false,
        }
    }
}

/// One entry of a mapping with a string key.
#[derive(Debug)]
pub(crate) struct Entry<'n> {
    pub(crate) key: &'n str,
    pub(crate) key_at: Pos,
    pub(crate) value: &'n Node,
}

/// A mapping being read as a struct: its known fields, each taken by name.
#[derive(Debug)]
pub(crate) struct Fields<'n> {
    at: Pos,
    path: String,
    entries: Vec<Entry<'n>>,
    /// Fields that an unknown field is a likely misspelling of (reported with a "did you
    /// mean"): they count as written, so their absence is not reported as well.
    misspelt: Vec<&'static str>,
}

/// Reads a node into a value, reporting why it can't.
pub(crate) trait Reader<'a, T>: FnMut(&mut Ctx<'a>, &Node, &str) -> Option<T> {}

impl<'a, T, F: FnMut(&mut Ctx<'a>, &Node, &str) -> Option<T>> Reader<'a, T> for F {}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&Entry<'n>> {
        self.entries.iter().find(|e| e.key == name)
    }

    /// A field that may be left out; written without a value (`~`, or nothing after the
    /// colon) it is left out too.
    pub(crate) fn optional<'a, T>(
        &self,
        ctx: &mut Ctx<'a>,
        name: &str,
        read: impl Reader<'a, T>,
    ) -> Field<T> {
        match self.get(name) {
            Some(e) if matches!(&e.value.content, Content::Scalar(s) if s.null) => Field::Absent,
            _ => self.value(ctx, name, read),
        }
    }

    /// A field with a default when left out, which must have a value when written (a list
    /// or a mapping).
    pub(crate) fn value<'a, T>(
        &self,
        ctx: &mut Ctx<'a>,
        name: &str,
        mut read: impl Reader<'a, T>,
    ) -> Field<T> {
        match self.get(name) {
            None if self.misspelt.contains(&name) => Field::Invalid,
            None => Field::Absent,
            Some(e) => match read(ctx, e.value, &join_key(&self.path, name)) {
                Some(value) => Field::Valid(value),
                None => Field::Invalid,
            },
        }
    }

    /// A list field, empty when left out.
    pub(crate) fn list<'a, T>(
        &self,
        ctx: &mut Ctx<'a>,
        name: &str,
        mut item: impl Reader<'a, S<T>>,
    ) -> Field<S<List<T>>> {
        self.value(ctx, name, |ctx: &mut Ctx<'a>, node: &Node, path: &str| {
            ctx.list(node, path, &mut item)
        })
    }

    /// A field that must be written.
    pub(crate) fn required<'a, T>(
        &self,
        ctx: &mut Ctx<'a>,
        name: &str,
        mut read: impl Reader<'a, T>,
    ) -> Option<T> {
        match self.get(name) {
            None if self.misspelt.contains(&name) => None,
            None => {
                ctx.error(
                    self.at,
                    &self.path,
                    format!("missing required field `{name}`; add it"),
                );
                None
            }
            Some(e) => read(ctx, e.value, &join_key(&self.path, name)),
        }
    }

    /// Puts the struct read from this mapping at the mapping's position.
    pub(crate) fn at<T>(&self, value: T) -> S<T> {
        S { value, at: self.at }
    }
}

/// A "did you mean" and the list of valid names.
pub(crate) fn known_names(wrong: &str, expected: &[&str], what: &str) -> String {
    let list = expected.join(", ");
    match suggest::closest(wrong, expected) {
        Some(close) => format!("did you mean `{close}`? (known {what}: {list})"),
        None => format!("remove it or use one of the known {what}: {list}"),
    }
}

/// A plain scalar as a whole number, in the forms YAML 1.2 (and serde-saphyr) accept: `42`,
/// `+42`, `1_000`, `0x2a`, `0o52`, `0b101010`. A decimal with a leading zero (`042`) is not one.
pub(crate) fn parse_whole(text: &str) -> Option<u64> {
    let text = text.trim_matches([' ', '\t', '\r', '\n']);
    let text = text.strip_prefix('+').unwrap_or(text);
    let (radix, digits) = match text.get(..2) {
        Some("0x" | "0X") => (16, &text[2..]),
        Some("0o" | "0O") => (8, &text[2..]),
        Some("0b" | "0B") => (2, &text[2..]),
        _ if text.len() > 1 && text.starts_with('0') => return None,
        _ => (10, text),
    };
    // Underscores only between digits; `from_str_radix` would also take a sign.
    if digits.is_empty()
        || digits.starts_with(['_', '+', '-'])
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    u64::from_str_radix(&digits.replace('_', ""), radix).ok()
}

/// A YAML boolean, in the spellings serde-saphyr accepts (YAML 1.1's `yes`/`no`/`on`/`off`
/// included, in any case).
fn parse_bool(text: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["true", "yes", "y", "on"];
    const FALSE: [&str; 4] = ["false", "no", "n", "off"];
    let text = text.trim_matches([' ', '\t', '\r', '\n']);
    if TRUE.iter().any(|t| text.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|f| text.eq_ignore_ascii_case(f)) {
        Some(false)
    } else {
        None
    }
}

impl<'a> Ctx<'a> {
    /// "expected `expected` here, found ..." at `node`.
    pub(crate) fn type_error(&mut self, node: &Node, path: &str, expected: impl fmt::Display) {
        self.error(
            node.at,
            path,
            format!("expected {expected} here, found {}", node.describe()),
        );
    }

    /// A string: any scalar but null, as written (`30` is `"30"`).
    pub(crate) fn string(&mut self, node: &Node, path: &str) -> Option<S<String>> {
        match &node.content {
            Content::Scalar(s) if !s.null => Some(S {
                value: s.text.clone(),
                at: node.at,
            }),
            _ => {
                self.type_error(node, path, "a single value (a string)");
                None
            }
        }
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self, node: &Node, path: &str) -> Option<S<bool>> {
        let value = match &node.content {
            Content::Scalar(s) if !s.null => parse_bool(&s.text),
            _ => None,
        };
        if value.is_none() {
            self.type_error(node, path, "true or false");
        }
        value.map(|value| S { value, at: node.at })
    }

    /// A whole number; its type error names `range`.
    pub(crate) fn whole(&mut self, node: &Node, path: &str, range: Whole) -> Option<S<u64>> {
        let value = match &node.content {
            Content::Scalar(s) if !s.null => parse_whole(&s.text),
            _ => None,
        };
        if value.is_none() {
            self.type_error(node, path, range);
        }
        value.map(|value| S { value, at: node.at })
    }

    /// A list, each entry read by `item`.
    pub(crate) fn list<T>(
        &mut self,
        node: &Node,
        path: &str,
        mut item: impl Reader<'a, S<T>>,
    ) -> Option<S<List<T>>> {
        let Content::Seq(items) = &node.content else {
            self.type_error(node, path, "a list");
            return None;
        };
        let value = items
            .iter()
            .enumerate()
            .map(|(i, entry)| item(self, entry, &join_index(path, i)))
            .collect();
        Some(S { value, at: node.at })
    }

    /// The entries of a mapping whose keys are strings, without duplicates (reported).
    pub(crate) fn entries<'n>(&mut self, node: &'n Node, path: &str) -> Option<Vec<Entry<'n>>> {
        let Content::Map(map) = &node.content else {
            self.type_error(node, path, "a mapping (key: value)");
            return None;
        };
        let mut entries: Vec<Entry<'n>> = Vec::with_capacity(map.len());
        for (key, value) in map {
            let Content::Scalar(k) = &key.content else {
                self.type_error(key, path, "a single value (a string)");
                continue;
            };
            if entries.iter().any(|e| e.key == k.text) {
                self.error(
                    key.at,
                    &join_key(path, &k.text),
                    format!(
                        "duplicate key `{}`; a key may appear only once in a mapping, remove one",
                        k.text
                    ),
                );
                continue;
            }
            entries.push(Entry {
                key: &k.text,
                key_at: key.at,
                value,
            });
        }
        Some(entries)
    }

    /// A mapping of names of the user's choosing to values read by `read`.
    pub(crate) fn pairs<T>(
        &mut self,
        node: &Node,
        path: &str,
        mut read: impl Reader<'a, S<T>>,
    ) -> Option<Pairs<T>> {
        let entries = self.entries(node, path)?;
        let pairs = entries
            .into_iter()
            .filter_map(|e| {
                let value = read(self, e.value, &join_key(path, e.key))?;
                let key = S {
                    value: e.key.to_owned(),
                    at: e.key_at,
                };
                Some((key, value))
            })
            .collect();
        Some(Pairs(pairs))
    }

    /// A mapping read as a struct with the fields `known`; unknown fields are reported, with
    /// the closest known name or, when the field belongs under an earlier field left empty,
    /// a hint to indent it.
    pub(crate) fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &'static [&'static str],
    ) -> Option<Fields<'n>> {
        let mut entries = self.entries(node, path)?;
        let mut misspelt = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let e = &entries[i];
            if known.contains(&e.key) {
                i += 1;
                continue;
            }
            misspelt.extend(suggest::closest(e.key, known));
            let hint = under_empty_field(&entries[..i], path, e);
            self.error_with_hint(
                e.key_at,
                &join_key(path, e.key),
                format!(
                    "unknown field `{}`; {}",
                    e.key,
                    known_names(e.key, known, "fields")
                ),
                hint,
            );
            entries.remove(i);
        }
        Some(Fields {
            at: node.at,
            path: path.to_owned(),
            entries,
            misspelt,
        })
    }
}

/// When `unknown` is a field of an earlier field of the same mapping that was left empty:
/// what indenting a nested field too little looks like.
fn under_empty_field(earlier: &[Entry<'_>], path: &str, unknown: &Entry<'_>) -> Option<String> {
    earlier.iter().rev().find_map(|e| {
        let empty = matches!(&e.value.content, Content::Scalar(s) if s.null && s.end == e.value.at);
        (empty && raw::keys_at(&join_key(path, e.key)).accepts(unknown.key)).then(|| {
            format!(
                "check the indentation of line {}: `{}` is a field of `{}` (line {}), which is left empty; indent `{}:` further than `{}:` to put it inside",
                unknown.key_at.line, unknown.key, e.key, e.key_at.line, unknown.key, e.key
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers() {
        for (text, value) in [
            ("0", 0),
            ("42", 42),
            ("+42", 42),
            ("1_000", 1000),
            ("0x2a", 42),
            ("0o52", 42),
            ("0b101010", 42),
            (" 7 ", 7),
        ] {
            assert_eq!(parse_whole(text), Some(value), "{text}");
        }
        for text in [
            "",
            "-1",
            "042",
            "1.5",
            "two",
            "_1",
            "1_",
            "1__0",
            "0x",
            "0x+1",
            "++1",
            "18446744073709551616",
        ] {
            assert_eq!(parse_whole(text), None, "{text}");
        }
    }

    #[test]
    fn ranges_read_as_they_are_checked() {
        assert_eq!(
            Whole { min: 1, max: 1024 }.to_string(),
            "a whole number from 1 to 1024"
        );
        assert_eq!(Whole::at_least(0).to_string(), "a whole number that is 0 or more");
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
