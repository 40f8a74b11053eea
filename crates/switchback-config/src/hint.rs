//! Hints that turn the YAML parser's terse messages about indentation into what to change,
//! for the common mistakes: a field indented under a field that already has a value, a field
//! or list item out of line with its neighbours, a tab, a missing colon. Each hint names the
//! line to fix and the column it should start in.

use serde_saphyr::granit_parser::{ErrorKind, ScanError};

use crate::error::ConfigError;
use crate::locate::{self, Kind};
use crate::raw;
use crate::read::Keys;
use crate::tree::{Node, Pos};

/// Line `n` (1-based) of `text`.
fn line(text: &str, n: usize) -> &str {
    text.lines().nth(n.saturating_sub(1)).unwrap_or_default()
}

/// The 1-based column of the first character of `line` that is not a space.
fn indent_column(line: &str) -> usize {
    line.chars().take_while(|c| *c == ' ').count() + 1
}

/// The key a line starts with (`cluster` for `    cluster: echo`), if it starts with one.
fn key_of(line: &str) -> Option<&str> {
    let content = line.trim_start();
    if content.starts_with('-') || content.starts_with('#') {
        return None;
    }
    let (key, _) = content
        .split_once(": ")
        .or_else(|| content.strip_suffix(':').map(|key| (key, "")))?;
    Some(key.trim_matches(['"', '\'']))
}

/// Whether a line is a list item (`- value`).
fn is_item(line: &str) -> bool {
    let content = line.trim_start();
    content == "-" || content.starts_with("- ")
}

/// The hint for a syntax error, when it is a mistake this module recognises.
pub(crate) fn for_syntax_error(text: &str, error: &ScanError) -> Option<String> {
    let at = Pos {
        line: error.marker().line(),
        column: error.marker().col() + 1,
    };
    match error.kind() {
        ErrorKind::MappingValueNotAllowed => value_runs_on(text, at),
        ErrorKind::ExpectedBlockMappingKey | ErrorKind::ExpectedBlockSequenceEntry => {
            out_of_line(text, at.line)
        }
        ErrorKind::TabInBlockIndentation
        | ErrorKind::TabInIndentation
        | ErrorKind::TabInPlainScalar
        | ErrorKind::TabNotAllowed => Some(tab(text, at.line)),
        ErrorKind::SimpleKeyExpected => {
            missing_colon(line(text, at.line)).map(|fix| format!("check line {}: {fix}", at.line))
        }
        ErrorKind::BlockSequenceEntryNotAllowed => item_after_key(line(text, at.line), at),
        _ => None,
    }
}

/// `mapping values are not allowed in this context`: a `key:` where YAML was reading a
/// plain value, either further in than the field whose value it continues, or on the same
/// line (`a: b: c`).
fn value_runs_on(text: &str, at: Pos) -> Option<String> {
    let nodes = locate::outline(text);
    let value_index = nodes
        .iter()
        .rposition(|n| n.kind == Kind::Scalar && n.start < at)?;
    let value = &nodes[value_index];
    if value.start.line == at.line {
        let rest: String = line(text, at.line).chars().skip(value.start.column - 1).collect();
        let rest = rest.split(" #").next().unwrap_or_default().trim_end();
        return Some(format!(
            "a value cannot contain \": \" (a colon and a space) unless it is quoted; if `{rest}` is one value, write it in quotes: \"{rest}\""
        ));
    }
    let key = key_of(line(text, at.line))?;
    let owner = value_index
        .checked_sub(1)
        .map(|i| &nodes[i])
        .filter(|n| n.kind == Kind::Key && n.path == value.path);
    Some(match owner {
        Some(owner) => {
            let name = owner.path.rsplit('.').next().unwrap_or_default();
            format!(
                "check the indentation of line {}: `{key}:` is further in than `{name}:` (line {}), which already has a value, so YAML reads `{key}:` as more of that value; start it in column {}, like `{name}:`",
                at.line, owner.start.line, owner.start.column
            )
        }
        None => format!(
            "check the indentation of line {}: `{key}:` is further in than the value that starts on line {}, so YAML reads it as more of that value",
            at.line, value.start.line
        ),
    })
}

/// An open block mapping or list, as the hints describe it.
struct Level<'a> {
    path: &'a str,
    list: bool,
    column: usize,
    /// The line of its first entry, and for a mapping that entry's key.
    first_line: usize,
    first_key: Option<&'a str>,
}

impl Level<'_> {
    /// "the fields of `routes[0]`", "the items of `routes`", "the top-level fields".
    fn entries(&self) -> String {
        match (self.list, self.path) {
            (false, "") => "the top-level fields".to_owned(),
            (false, path) => format!("the fields of `{path}`"),
            (true, path) => format!("the items of `{path}`"),
        }
    }

    /// "(like `match:` on line 2)", "(line 2)".
    fn example(&self) -> String {
        match self.first_key {
            Some(key) => format!("like `{key}:` on line {}", self.first_line),
            None => format!("line {}", self.first_line),
        }
    }
}

/// The block mappings and lists open before `line`, outermost first.
fn open_levels(nodes: &[locate::Node], line: usize) -> Vec<Level<'_>> {
    locate::open_blocks(nodes, line)
        .map(|(i, n)| {
            let list = matches!(n.kind, Kind::Seq { .. });
            Level {
                path: &n.path,
                list,
                column: n.start.column,
                first_line: n.start.line,
                first_key: nodes
                    .get(i + 1)
                    .filter(|first| !list && first.kind == Kind::Key)
                    .and_then(|first| first.path.rsplit('.').next()),
            }
        })
        .collect()
}

/// `did not find expected key` / `did not find expected '-' indicator`: a line that starts
/// in a column where no field or list item above it does.
fn out_of_line(text: &str, n: usize) -> Option<String> {
    let nodes = locate::outline(text);
    let levels = open_levels(&nodes, n);
    let this = line(text, n);
    let column = indent_column(this);
    if is_item(this) {
        // The list whose items start nearest to this one, the innermost of equals.
        let list = levels
            .iter()
            .rev()
            .filter(|l| l.list)
            .min_by_key(|l| l.column.abs_diff(column))?;
        return (list.column != column).then(|| {
            format!(
                "check the indentation of line {n}: {} start with `- ` in column {} ({}), but this one starts in column {column}; line up the `- ` of every item",
                list.entries(),
                list.column,
                list.example()
            )
        });
    }
    let key = key_of(this)?;
    let maps = || levels.iter().rev().filter(|l| !l.list);
    // The innermost mapping that has such a field, else one that takes any name.
    let owner = maps()
        .find(|l| matches!(raw::keys_at(l.path), Keys::Fields(_)) && raw::keys_at(l.path).accepts(key))
        .or_else(|| maps().find(|l| raw::keys_at(l.path).accepts(key)));
    if let Some(owner) = owner.filter(|o| o.column != column) {
        let of = match owner.path {
            "" => "a top-level field, and top-level fields start".to_owned(),
            path => format!("a field of `{path}`, whose fields start"),
        };
        return Some(format!(
            "check the indentation of line {n}: `{key}` is {of} in column {} ({}); start `{key}:` in column {} too",
            owner.column,
            owner.example(),
            owner.column
        ));
    }
    // A name no mapping here has: say where each level starts.
    let columns: Vec<String> = levels
        .iter()
        .filter(|l| !l.list)
        .map(|l| format!("{} start in column {} ({})", l.entries(), l.column, l.example()))
        .collect();
    (!columns.is_empty()).then(|| {
        format!(
            "check the indentation of line {n}: `{key}:` starts in column {column}, in line with no field above it; {}",
            columns.join(", ")
        )
    })
}

/// A tab in the indentation: YAML indents with spaces only.
fn tab(text: &str, from: usize) -> String {
    let found = text
        .lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| l.chars().take_while(|c| c.is_whitespace()).any(|c| c == '\t'));
    match found {
        Some((i, _)) => format!(
            "check the indentation of line {}: it starts with a tab, and YAML indents with spaces only; replace the tab with spaces",
            i + 1
        ),
        None => {
            "YAML indents with spaces only; replace the tabs at the start of lines with spaces".to_owned()
        }
    }
}

/// `simple key expected ':'`: a field written without its colon, or without the space after it.
fn missing_colon(line: &str) -> Option<String> {
    let content = line.trim();
    if let Some((name, value)) = content.split_once(':') {
        return (!value.is_empty() && !value.starts_with(' '))
            .then(|| format!("a field name is followed by a colon and a space; write `{name}: {value}`"));
    }
    Some(match content.split_once(' ') {
        Some((name, value)) => format!(
            "`{content}` has no colon; a field is written `name: value`, e.g. `{name}: {}`",
            value.trim_start()
        ),
        None => format!("`{content}` has no colon; a field is written `name: value`, e.g. `{content}: ...`"),
    })
}

/// `block sequence entries are not allowed in this context`: `key: - item` on one line.
fn item_after_key(line: &str, at: Pos) -> Option<String> {
    let before: String = line.chars().take(at.column - 1).collect();
    let key = before.trim().strip_suffix(':')?.trim_start_matches("- ");
    let item = line.chars().skip(at.column - 1).collect::<String>();
    let item = item.trim_end();
    let first = item.trim_start_matches('-').trim_start();
    Some(format!(
        "check line {}: a list item (`- `) cannot follow `{key}:` on the same line; put `{item}` on the next line, further in than `{key}:`, or write the list in brackets: `{key}: [{first}]`",
        at.line
    ))
}

/// Adds a hint to errors about plain values that run on over more lines than meant: a
/// more-indented `- item` line continues the value above it instead of starting an item.
pub(crate) fn add_run_on_values(errors: &mut [ConfigError], root: &Node, text: &str) {
    for e in errors.iter_mut().filter(|e| e.hint.is_none()) {
        let (Some(line_no), Some(column)) = (e.line, e.column) else {
            continue;
        };
        let Some(scalar) = root.scalar_at(Pos {
            line: line_no,
            column,
        }) else {
            continue;
        };
        if !scalar.plain || scalar.end.line == line_no {
            continue;
        }
        let Some(item_line) = (line_no + 1..=scalar.end.line).find(|&n| is_item(line(text, n))) else {
            continue;
        };
        let first = line(text, line_no);
        e.hint = Some(if is_item(first) {
            format!(
                "check the indentation of line {item_line}: its `- ` is further in than the one on line {line_no}, so YAML reads it as more of that item's value; start it in column {}, like the item above",
                indent_column(first)
            )
        } else {
            let key = key_of(first).unwrap_or("the field");
            format!(
                "check the indentation of line {item_line}: YAML reads it as more of the value of `{key}` on line {line_no}; for a list, leave nothing after `{key}:` and put each item on a line of its own"
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_lines() {
        assert_eq!(key_of("    cluster: echo"), Some("cluster"));
        assert_eq!(key_of("routes:"), Some("routes"));
        assert_eq!(key_of("  \"x-a\": 1"), Some("x-a"));
        assert_eq!(key_of("  - match: x"), None);
        assert_eq!(key_of("  http://x"), None);
        assert!(is_item("  - a") && is_item("-") && !is_item("-a"));
    }

    #[test]
    fn missing_colons() {
        assert_eq!(
            missing_colon("    cluster echo").as_deref(),
            Some("`cluster echo` has no colon; a field is written `name: value`, e.g. `cluster: echo`")
        );
        assert_eq!(
            missing_colon("    cluster:echo").as_deref(),
            Some("a field name is followed by a colon and a space; write `cluster: echo`")
        );
    }
}
