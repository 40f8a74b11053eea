//! Upgrade detection: is a request an upgrade, and of which type.
//!
//! Detection also sanitises the request so that everything below sees one clean shape:
//! `h2c` and ignored tokens are gone, hop-by-hop headers are gone, and a real upgrade carries
//! exactly `Connection: upgrade` plus its `Upgrade` value.
//!
//! ```
//! use switchback::{IgnoreUpgrades, UpgradeType};
//!
//! // Upgrade types compare case-insensitively...
//! assert_eq!(UpgradeType::new("WebSocket"), UpgradeType::new("websocket"));
//! // ...and some are never proxied as upgrades: by default `tls/*` (RFC 2817) is ignored.
//! assert!(IgnoreUpgrades::default().matches("TLS/1.2"));
//! assert!(!IgnoreUpgrades::default().matches("websocket"));
//! ```

use std::fmt;
use std::sync::{Arc, LazyLock};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use crate::{hop, host};

/// The type of an upgrade: the `Upgrade` value of an HTTP/1.1 request, the `:protocol` of an
/// HTTP/2 extended CONNECT, or `connect` for a plain CONNECT. Always lowercase, so types compare
/// case-insensitively.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpgradeType(Arc<str>);

impl UpgradeType {
    /// The token as a metric label, without copying it.
    pub(crate) fn label(&self) -> ::metrics::SharedString {
        ::metrics::SharedString::from(Arc::clone(&self.0))
    }

    /// The type for a token, lowercased.
    pub fn new(token: &str) -> Self {
        // Nearly every tunnel is a WebSocket: its type shares one text.
        static WEBSOCKET: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("websocket"));
        let token = token.trim();
        if token.eq_ignore_ascii_case("websocket") {
            return Self(WEBSOCKET.clone());
        }
        Self(token.to_ascii_lowercase().into())
    }

    /// The lowercase token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a WebSocket upgrade.
    pub fn is_websocket(&self) -> bool {
        &*self.0 == "websocket"
    }

    /// Whether this is a CONNECT tunnel (HTTP/1.1 CONNECT or HTTP/2 CONNECT without `:protocol`).
    pub fn is_connect(&self) -> bool {
        &*self.0 == "connect"
    }
}

impl fmt::Debug for UpgradeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UpgradeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UpgradeType {
    fn from(token: &str) -> Self {
        Self::new(token)
    }
}

/// Upgrade tokens that are stripped so the request goes on as plain HTTP.
///
/// `h2c` is always stripped (with `HTTP2-Settings`); this set adds more. A pattern is an exact
/// token or a prefix ending in `*`, both case-insensitive. The default is `["tls/*"]`: RFC 2817
/// clients such as Apache HttpClient 5 offer `Upgrade: TLS/1.2` on plain requests, which Envoy
/// answers with a 403; Switchback serves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoreUpgrades {
    patterns: Vec<String>,
}

impl Default for IgnoreUpgrades {
    fn default() -> Self {
        Self::new(["tls/*"])
    }
}

impl IgnoreUpgrades {
    /// A set from patterns such as `tls/*` or `foo`.
    pub fn new<I, P>(patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let patterns = patterns
            .into_iter()
            .map(|p| p.as_ref().trim().to_ascii_lowercase())
            .collect();
        Self { patterns }
    }

    /// An empty set: only `h2c` is stripped.
    pub fn none() -> Self {
        Self { patterns: Vec::new() }
    }

    /// Whether `token` is stripped (always true for `h2c`).
    pub fn matches(&self, token: &str) -> bool {
        if token.eq_ignore_ascii_case("h2c") {
            return true;
        }
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => token
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
            None => token.eq_ignore_ascii_case(p),
        })
    }
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inspection {
    /// A plain request; any upgrade headers were stripped.
    Plain,
    /// An upgrade of this type; the request carries only the upgrade pair of hop-by-hop headers.
    Upgrade(UpgradeType),
    /// The request must be refused with 400: its `Connection` header nominates this protected
    /// header (`Host`, framing, or one the proxy adds).
    NominatesProtected(String),
    /// The request must be refused with 400, for this reason (its `Host`, a WebSocket
    /// handshake header given twice, or an HTTP/2 CONNECT for an ignored protocol).
    Malformed(&'static str),
}

/// Classifies `req` and sanitises its headers in place.
///
/// - HTTP/1.1: an upgrade needs an `Upgrade` header and the `upgrade` token in `Connection`.
///   `h2c` and tokens in `ignore` are removed from `Upgrade` first; if none is left the request
///   is plain. A `CONNECT` is type `connect`.
/// - HTTP/1.0 and older never upgrade; a CONNECT of any version is type `connect`.
/// - HTTP/2: a CONNECT is an upgrade, typed by its `:protocol` (RFC 8441) or `connect`; one
///   whose `:protocol` is `h2c` or in `ignore` is malformed.
///
/// `protected` lists extra headers (those the proxy adds) that `Connection` may not nominate.
pub(crate) fn inspect<B>(
    req: &mut Request<B>,
    ignore: &IgnoreUpgrades,
    protected: &[HeaderName],
) -> Inspection {
    if let Some(name) = hop::nominated_protected(req.headers(), protected) {
        return Inspection::NominatesProtected(name.to_owned());
    }
    if let Err(why) = host::normalise(req) {
        return Inspection::Malformed(why);
    }
    let version = req.version();
    if version == Version::HTTP_2 || version == Version::HTTP_3 {
        hop::strip(req.headers_mut());
        if req.method() != Method::CONNECT {
            return Inspection::Plain;
        }
        let ty = match req.extensions().get::<hyper::ext::Protocol>() {
            // An ignored token is never an upgrade; a CONNECT for it can't go on as plain
            // HTTP either.
            Some(p) if ignore.matches(p.as_str()) => {
                return Inspection::Malformed("an extended CONNECT for a protocol that is never proxied");
            }
            Some(p) => UpgradeType::new(p.as_str()),
            None => UpgradeType::new("connect"),
        };
        if ty.is_websocket() && handshake_header_twice(req) {
            return Inspection::Malformed(TWICE);
        }
        return Inspection::Upgrade(ty);
    }
    // A CONNECT is one whatever its HTTP/1 version: down the plain path hyper's client would
    // send the upstream a CONNECT to the upstream's own address.
    if req.method() == Method::CONNECT {
        hop::strip(req.headers_mut());
        return Inspection::Upgrade(UpgradeType::new("connect"));
    }
    if version != Version::HTTP_11 {
        hop::strip(req.headers_mut());
        return Inspection::Plain;
    }

    let offered: Vec<&str> = hop::tokens(req.headers(), &header::UPGRADE)
        .filter(|t| !ignore.matches(t))
        .collect();
    let wants = !offered.is_empty() && hop::connection_has(req.headers(), "upgrade");
    let upgrade = wants.then(|| offered.join(", "));
    match upgrade.and_then(|u| HeaderValue::from_str(&u).ok().map(|v| (u, v))) {
        Some((text, value)) => {
            let ty = UpgradeType::new(&text);
            if ty.is_websocket() && handshake_header_twice(req) {
                return Inspection::Malformed(TWICE);
            }
            hop::strip_keep_upgrade(req.headers_mut(), value);
            Inspection::Upgrade(ty)
        }
        None => {
            hop::strip(req.headers_mut());
            Inspection::Plain
        }
    }
}

const TWICE: &str = "a WebSocket handshake header is given twice";

/// Two keys or versions: which one would the upstream check the answer against? (An HTTP/2
/// request's key is replaced by one of Switchback's, but its version goes up as sent.)
fn handshake_header_twice<B>(req: &Request<B>) -> bool {
    ["sec-websocket-key", "sec-websocket-version"]
        .iter()
        .any(|name| req.headers().get_all(*name).iter().count() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_token_anywhere_makes_an_upgrade_and_the_headers_come_out_clean() {
        let mut req = Request::get("/chat")
            .header("host", "chat.example")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .body(())
            .unwrap();
        match inspect(&mut req, &IgnoreUpgrades::default(), &[]) {
            Inspection::Upgrade(ty) => assert_eq!(ty.as_str(), "websocket"),
            other => panic!("not an upgrade: {other:?}"),
        }
        assert_eq!(req.headers()["connection"], "upgrade");
    }

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/").version(version).header("host", "a.example");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn check(headers: &[(&str, &str)]) -> (Inspection, Request<()>) {
        let mut r = req(Version::HTTP_11, headers);
        let i = inspect(&mut r, &IgnoreUpgrades::default(), &[]);
        (i, r)
    }

    #[test]
    fn websocket_any_case_any_position_any_line() {
        let (i, r) = check(&[
            ("connection", "keep-alive"),
            ("connection", "foo, UPGRADE"),
            ("upgrade", "WebSocket"),
            ("foo", "bar"),
        ]);
        assert_eq!(i, Inspection::Upgrade("websocket".into()));
        assert_eq!(r.headers()["connection"], "upgrade");
        assert_eq!(r.headers()["upgrade"], "WebSocket");
        assert!(r.headers().get("foo").is_none(), "nominated header forwarded");
    }

    #[test]
    fn upgrade_without_connection_token_is_plain() {
        let (i, r) = check(&[("upgrade", "websocket"), ("connection", "keep-alive")]);
        assert_eq!(i, Inspection::Plain);
        assert!(r.headers().get("upgrade").is_none());
    }

    #[test]
    fn h2c_is_stripped_alone_in_lists_and_on_any_line() {
        for lines in [
            vec![("upgrade", "h2c")],
            vec![("upgrade", "H2C")],
            vec![("upgrade", "foo, h2c")],
            vec![("upgrade", "h2c"), ("upgrade", "tls/1.2")],
        ] {
            let mut headers = vec![
                ("connection", "Upgrade, HTTP2-Settings"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ];
            headers.extend(lines.iter().copied());
            let (i, r) = check(&headers);
            if lines.iter().any(|(_, v)| v.contains("foo")) {
                assert_eq!(i, Inspection::Upgrade("foo".into()));
                assert_eq!(r.headers()["upgrade"], "foo");
            } else {
                assert_eq!(i, Inspection::Plain, "{lines:?}");
                assert!(r.headers().get("upgrade").is_none());
            }
            assert!(r.headers().get("http2-settings").is_none());
        }
    }

    #[test]
    fn ignored_tls_tokens_go_on_as_plain() {
        let (i, r) = check(&[("upgrade", "TLS/1.2"), ("connection", "Upgrade")]);
        assert_eq!(i, Inspection::Plain);
        assert!(r.headers().get("connection").is_none());
        let mut r = req(
            Version::HTTP_11,
            &[("upgrade", "TLS/1.2"), ("connection", "upgrade")],
        );
        let i = inspect(&mut r, &IgnoreUpgrades::none(), &[]);
        assert_eq!(i, Inspection::Upgrade("tls/1.2".into()));
    }

    #[test]
    fn http10_never_upgrades() {
        let mut r = req(
            Version::HTTP_10,
            &[("upgrade", "websocket"), ("connection", "upgrade")],
        );
        assert_eq!(
            inspect(&mut r, &IgnoreUpgrades::default(), &[]),
            Inspection::Plain
        );
        assert!(r.headers().get("upgrade").is_none());
    }

    #[test]
    fn protected_nomination_is_refused() {
        let (i, _) = check(&[("connection", "upgrade, host"), ("upgrade", "websocket")]);
        assert_eq!(i, Inspection::NominatesProtected("host".into()));
    }

    #[test]
    fn connect_is_its_own_type() {
        let mut r = Request::connect("example.com:443").body(()).expect("request");
        assert_eq!(
            inspect(&mut r, &IgnoreUpgrades::default(), &[]),
            Inspection::Upgrade("connect".into())
        );
    }

    #[test]
    fn an_http_1_0_connect_is_a_connect() {
        let mut r = Request::connect("example.com:443")
            .version(Version::HTTP_10)
            .body(())
            .expect("request");
        assert_eq!(
            inspect(&mut r, &IgnoreUpgrades::default(), &[]),
            Inspection::Upgrade("connect".into())
        );
    }

    #[test]
    fn ignore_patterns() {
        let set = IgnoreUpgrades::new(["TLS/*", "foo"]);
        assert!(set.matches("tls/1.3"));
        assert!(set.matches("FOO"));
        assert!(!set.matches("foobar"));
        assert!(!set.matches("tl"));
        assert!(set.matches("h2c"));
    }
}
