//! `admin`: the admin endpoint's address and, optionally, the token that lets callers other
//! than loopback ones use it.
//!
//! ```yaml
//! admin: 127.0.0.1:9901                  # loopback callers only
//! admin:                                 # or: others too, with `Authorization: Bearer <token>`
//!   address: 0.0.0.0:9901
//!   token_file: /etc/switchback-admin/token   # relative to the config file; read at load
//! ```
//!
//! The token file is read when the config is loaded (`--check`, start, reload): surrounding
//! whitespace and the final newline are dropped, and what is left must be at least
//! [`AdminToken::MIN_LEN`] visible ASCII characters.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::error::Ctx;
use crate::locate::join_key;
use crate::read::S;
use crate::tree::{Content, Node};

/// The admin endpoint: `admin: ADDR:PORT`, or `admin: { address, token_file }`.
///
/// Serializes the way it was written: the bare address without a token file, else the
/// mapping; the token itself never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminEndpoint {
    /// The address it listens on.
    pub address: SocketAddr,
    /// Where the token was read from. Absent: no token, only loopback callers get past the
    /// endpoint's guarded paths.
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` (present exactly when `token_file` is).
    pub token: Option<AdminToken>,
}

impl AdminEndpoint {
    /// An endpoint on `address` without a token.
    #[must_use]
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            token_file: None,
            token: None,
        }
    }
}

impl Serialize for AdminEndpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.token_file {
            None => self.address.serialize(serializer),
            Some(file) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("address", &self.address)?;
                map.serialize_entry("token_file", file)?;
                map.end()
            }
        }
    }
}

/// The admin token: a secret a caller presents as `Authorization: Bearer <token>`.
///
/// It never shows: `Debug` writes `AdminToken(<redacted>)`, and it is not serialized.
/// Equality is [`AdminToken::matches`], in constant time.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// The shortest token accepted: 16 characters. A short one could be guessed over the
    /// network.
    pub const MIN_LEN: usize = 16;

    /// A token from its text, surrounding whitespace dropped.
    ///
    /// # Errors
    ///
    /// Why the text is not a usable token (empty, too short, or with a character that
    /// can't be sent in an `Authorization` header), in words that name the fix.
    pub fn new(text: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("it is empty; {}", Self::HOW));
        }
        if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "it holds {c:?}, which an `Authorization: Bearer` header can't carry; use visible ASCII only, {}",
                Self::HOW
            ));
        }
        if token.len() < Self::MIN_LEN {
            return Err(format!(
                "it is {} characters long; use at least {}, {}",
                token.len(),
                Self::MIN_LEN,
                Self::HOW
            ));
        }
        Ok(Self(token.to_owned()))
    }

    /// Reads a token from `path` (see [`AdminToken::new`]).
    ///
    /// # Errors
    ///
    /// The file can't be read, or what it holds is not a usable token; the message names
    /// the file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::new(&text).map_err(|why| format!("the admin token in {}: {why}", path.display()))
    }

    /// How to make a good token, for the errors.
    const HOW: &'static str = "e.g. write one with `openssl rand -hex 32 > FILE`";

    /// The token's text, to send it (`switchback drain`). Never log it.
    #[must_use]
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. The time taken depends on the length of
    /// `presented` only, never on how much of it matches, so a caller can't find the token
    /// a byte at a time by timing the answers.
    #[must_use]
    pub fn matches(&self, presented: &[u8]) -> bool {
        let token = self.0.as_bytes();
        // Never empty (see `new`), so the modulo is defined; a length mismatch is folded in
        // rather than returned early.
        let mut diff = u8::from(presented.len() != token.len());
        for (i, byte) in presented.iter().enumerate() {
            diff |= byte ^ token[i % token.len()];
        }
        std::hint::black_box(diff) == 0
    }
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for AdminToken {}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

// === reading ===

/// `admin` as written: a bare address, or the mapping.
#[derive(Debug)]
pub(crate) enum RawAdmin {
    Short(S<String>),
    Long {
        address: Option<S<String>>,
        token_file: Option<S<String>>,
    },
}

impl RawAdmin {
    pub(crate) const FIELDS: &'static [&'static str] = &["address", "token_file"];

    pub(crate) fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        if let Content::Map(_) = &node.content {
            let f = ctx.fields(node, path, Self::FIELDS)?;
            return Some(f.at(RawAdmin::Long {
                address: f.required(ctx, "address", Ctx::string),
                token_file: f.optional(ctx, "token_file", Ctx::string).ok(),
            }));
        }
        let address = ctx.string(node, path)?;
        Some(S {
            at: address.at,
            value: RawAdmin::Short(address),
        })
    }
}

// === checking ===

impl Ctx<'_> {
    /// Checks `admin` and builds it; the token file is read here.
    pub(crate) fn admin(&mut self, raw: &S<RawAdmin>) -> Option<AdminEndpoint> {
        const EXAMPLE: &str = "127.0.0.1:9901";
        match &raw.value {
            RawAdmin::Short(address) => self
                .socket_addr(address, "admin", EXAMPLE)
                .map(AdminEndpoint::new),
            RawAdmin::Long { address, token_file } => {
                let address = address
                    .as_ref()
                    .and_then(|a| self.socket_addr(a, "admin.address", EXAMPLE));
                let token = match token_file {
                    None => None,
                    Some(file) => Some(self.token_file(file)?),
                };
                let address = address?;
                Some(match token {
                    None => AdminEndpoint::new(address),
                    Some((file, token)) => AdminEndpoint {
                        address,
                        token_file: Some(file),
                        token: Some(token),
                    },
                })
            }
        }
    }

    /// `admin.token_file`: the path (relative to the config file's folder) and its token.
    fn token_file(&mut self, raw: &S<String>) -> Option<(PathBuf, AdminToken)> {
        let path = join_key("admin", "token_file");
        if raw.value.trim().is_empty() {
            self.error(
                raw.at,
                &path,
                "the file name is empty; give the path of a file holding the admin token, or leave token_file out for loopback callers only",
            );
            return None;
        }
        let file = self.base_dir().join(raw.value.trim());
        match std::fs::read_to_string(&file) {
            Err(e) => {
                self.error(
                    raw.at,
                    &path,
                    format!(
                        "cannot read {}: {e}; give the path of a file holding the admin token, absolute or relative to the config file",
                        file.display()
                    ),
                );
                None
            }
            Ok(text) => match AdminToken::new(&text) {
                Ok(token) => Some((file, token)),
                Err(why) => {
                    self.error(
                        raw.at,
                        &path,
                        format!("the admin token in {}: {why}", file.display()),
                    );
                    None
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_checked() {
        let token = AdminToken::new("  0123456789abcdef\n").unwrap();
        assert_eq!(token.secret(), "0123456789abcdef");
        assert!(AdminToken::new("\n\n").unwrap_err().contains("empty"));
        assert!(
            AdminToken::new("short\n")
                .unwrap_err()
                .contains("5 characters long")
        );
        assert!(AdminToken::new("0123456789 abcdef").unwrap_err().contains("' '"));
        assert!(AdminToken::new("0123456789abcdeé").is_err());
    }

    #[test]
    fn matching_is_exact() {
        let token = AdminToken::new("0123456789abcdef").unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789abcdeF",
            b"0123456789abcdef0",
            b"0123456789abcdef0123456789abcdef",
            b"x123456789abcdef",
        ] {
            assert!(!token.matches(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn the_token_never_shows() {
        let endpoint = AdminEndpoint {
            address: "127.0.0.1:9901".parse().unwrap(),
            token_file: Some("/run/token".into()),
            token: Some(AdminToken::new("0123456789abcdef").unwrap()),
        };
        assert!(!format!("{endpoint:?}").contains("0123456789abcdef"));
        let json = serde_json::to_string(&endpoint).unwrap();
        assert_eq!(json, r#"{"address":"127.0.0.1:9901","token_file":"/run/token"}"#);
        let bare = serde_json::to_string(&AdminEndpoint::new("[::1]:9901".parse().unwrap())).unwrap();
        assert_eq!(bare, r#""[::1]:9901""#);
    }
}
