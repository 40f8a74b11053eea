//! The parsed values the effective [`Config`](crate::Config) holds where the YAML has text:
//! validation parses each once, so the binary uses them without parsing (and failing) again.
//! Serializing one writes its text form back, so the effective config stays in the shape of
//! the file.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use http::{HeaderName, HeaderValue};
use regex::Regex;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

// === impl UpgradeToken ===

/// An upgrade token (`upgrade_type`) or `ignore_upgrades` pattern: a single non-empty word,
/// lowercased, since upgrade types compare case-insensitively (`WebSocket` is `websocket`).
///
/// ```
/// use switchback_config::UpgradeToken;
///
/// let token: UpgradeToken = "WebSocket".parse().unwrap();
/// assert_eq!(token.as_str(), "websocket");
/// assert!("web socket".parse::<UpgradeToken>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpgradeToken(Cow<'static, str>);

impl UpgradeToken {
    /// The token for `text`, lowercased.
    ///
    /// # Errors
    ///
    /// `text` is empty or contains whitespace.
    pub fn new(text: &str) -> Result<Self, InvalidToken> {
        if text.is_empty() {
            Err(InvalidToken::Empty)
        } else if text.chars().any(char::is_whitespace) {
            Err(InvalidToken::Whitespace)
        } else {
            Ok(Self(Cow::Owned(text.to_ascii_lowercase())))
        }
    }

    /// A token from a constant, without allocating.
    ///
    /// # Panics
    ///
    /// When `text` is empty or has a byte that is not a printable, non-uppercase ASCII
    /// character; in a constant this is a compile error.
    #[must_use]
    pub const fn from_static(text: &'static str) -> Self {
        let bytes = text.as_bytes();
        assert!(!bytes.is_empty(), "an upgrade token is not empty");
        let mut i = 0;
        while i < bytes.len() {
            assert!(
                bytes[i].is_ascii_graphic() && !bytes[i].is_ascii_uppercase(),
                "an upgrade token constant is printable lowercase ASCII"
            );
            i += 1;
        }
        Self(Cow::Borrowed(text))
    }

    /// The lowercase token.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UpgradeToken {
    type Err = InvalidToken;

    fn from_str(text: &str) -> Result<Self, InvalidToken> {
        Self::new(text)
    }
}

impl AsRef<str> for UpgradeToken {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for UpgradeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for UpgradeToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a string is not an [`UpgradeToken`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidToken {
    /// The string is empty.
    Empty,
    /// The string contains whitespace: a token is a single word.
    Whitespace,
}

impl fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidToken::Empty => "an upgrade token is not empty",
            InvalidToken::Whitespace => "an upgrade token is a single word, without whitespace",
        })
    }
}

impl std::error::Error for InvalidToken {}

// === impl HeadersToAdd ===

/// Headers added by a filter or a route (YAML: a mapping `{ x-proxied-by: switchback }`), in
/// file order. Names are unique; [`HeaderName`] keeps them lowercase (header names are
/// case-insensitive). Serializes as a mapping of name to value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeadersToAdd(Vec<(HeaderName, HeaderValue)>);

impl HeadersToAdd {
    /// No headers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The name and value pairs, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(name, value)| (name, value))
    }

    /// The header names, in order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &HeaderName> {
        self.0.iter().map(|(name, _)| name)
    }

    /// How many headers there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(HeaderName, HeaderValue)> for HeadersToAdd {
    fn from_iter<I: IntoIterator<Item = (HeaderName, HeaderValue)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }
}

impl Serialize for HeadersToAdd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name.as_str(), &value_text(value))?;
        }
        map.end()
    }
}

/// A header value as text. Values parsed from the YAML are UTF-8; any other byte (only
/// possible for a value built in code) is written as U+FFFD.
fn value_text(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// `serialize_with` helper: a header name as its text.
pub(crate) fn serialize_header_name<S: Serializer>(
    name: &HeaderName,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name.as_str())
}

/// `serialize_with` helper: header names as a list of their texts.
pub(crate) fn serialize_header_names<S: Serializer>(
    names: &[HeaderName],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut seq = serializer.serialize_seq(Some(names.len()))?;
    for name in names {
        seq.serialize_element(name.as_str())?;
    }
    seq.end()
}

// === impl PathRegex ===

/// A compiled `regex` path condition. Equal when the patterns are; serializes as the
/// pattern.
///
/// ```
/// use switchback_config::PathRegex;
///
/// let re: PathRegex = "^/ws/[0-9]+$".parse().unwrap();
/// assert!(re.regex().is_match("/ws/42"));
/// assert_eq!(re.as_str(), "^/ws/[0-9]+$");
/// ```
#[derive(Debug, Clone)]
pub struct PathRegex(Regex);

impl PathRegex {
    /// Compiles `pattern` (`regex` crate syntax).
    ///
    /// # Errors
    ///
    /// The pattern does not compile.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(pattern).map(Self)
    }

    /// The compiled expression.
    #[must_use]
    pub fn regex(&self) -> &Regex {
        &self.0
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<Regex> for PathRegex {
    fn from(regex: Regex) -> Self {
        Self(regex)
    }
}

impl FromStr for PathRegex {
    type Err = regex::Error;

    fn from_str(pattern: &str) -> Result<Self, regex::Error> {
        Self::new(pattern)
    }
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for PathRegex {}

impl Serialize for PathRegex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
