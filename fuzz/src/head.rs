//! A model of request heads and the invariants of [`switchback::fuzzing::upstream_head`],
//! shared by the `head_normalise` fuzz target and the `head_properties` tests (which include
//! this file by path), so that both check the same things.
//!
//! A [`Head`] is built from known pieces (the names and tokens that matter to an upgrade,
//! to hop-by-hop handling and to framing) and raw bytes, so that a fuzzer or a proptest
//! strategy reaches the interesting cases quickly and still tries odd bytes.

use std::collections::BTreeMap;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// Methods a head may carry (raw bytes give any other token).
pub const METHODS: &[&str] = &["GET", "POST", "CONNECT", "OPTIONS", "HEAD", "PUT", "PRI", "get"];

/// Request targets: origin, absolute (with and without userinfo or port), authority and
/// asterisk forms.
pub const TARGETS: &[&str] = &[
    "/",
    "/chat",
    "/a?b=c",
    "*",
    "http://a.example/x",
    "http://b.example:81/?q",
    "http://user@a.example/",
    "https://[::1]:443/ws",
    "a.example:443",
    "//a.example/x",
];

/// Header names: the upgrade, hop-by-hop, framing, WebSocket handshake and proxy-added ones.
pub const NAMES: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "http2-settings",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-original-path",
    "expect",
    "x-a",
];

/// Value tokens: upgrade protocols, `Connection` options and nominations, framing, hosts.
pub const TOKENS: &[&str] = &[
    "upgrade",
    "Upgrade",
    "websocket",
    "WebSocket",
    "h2c",
    "H2C",
    "foo",
    "TLS/1.2",
    "chunked",
    "identity",
    "gzip",
    "close",
    "keep-alive",
    "trailers",
    "HTTP2-Settings",
    "host",
    "Content-Length",
    "Transfer-Encoding",
    "x-a",
    "sec-websocket-key",
    "a.example",
    "a.example:8080",
    "[::1]:443",
    "user@a.example",
    "0",
    "5",
    "13",
    "AAMAAABkAAQAAP__",
    "dGhlIHNhbXBsZSBub25jZQ==",
];

/// `:protocol` values of an HTTP/2 extended CONNECT (RFC 8441).
pub const PROTOCOLS: &[&str] = &["websocket", "foo", "h2c", "connect-udp"];

/// Separators between a value's pieces.
pub const SEPARATORS: &[&str] = &[", ", ",", " ", "", ";", "\t,"];

/// A piece of text: one of a list of known ones, or raw bytes.
#[derive(Debug, Clone)]
pub enum Text {
    /// An index into the list that applies (wrapped).
    Known(usize),
    /// Any bytes.
    Raw(Vec<u8>),
}

impl Text {
    fn bytes(&self, known: &[&str]) -> Vec<u8> {
        match self {
            Self::Known(i) => known[i % known.len()].as_bytes().to_vec(),
            Self::Raw(b) => b.clone(),
        }
    }
}

/// One header line: a name, and a value made of pieces joined by a separator.
#[derive(Debug, Clone)]
pub struct Line {
    /// From [`NAMES`].
    pub name: Text,
    /// Each from [`TOKENS`].
    pub value: Vec<Text>,
    /// An index into [`SEPARATORS`] (wrapped).
    pub separator: usize,
}

/// A request head.
#[derive(Debug, Clone)]
pub struct Head {
    /// From [`METHODS`].
    pub method: Text,
    /// From [`TARGETS`].
    pub target: Text,
    /// 0: HTTP/1.0, 1: HTTP/1.1, 2: HTTP/2 (wrapped).
    pub version: u8,
    /// An index into [`PROTOCOLS`]: the `:protocol` of an HTTP/2 CONNECT.
    pub protocol: Option<usize>,
    /// The header lines, in order, duplicates allowed.
    pub lines: Vec<Line>,
}

/// The `http::Request` for `head`, as a server would hand it on: `None` if the method or the
/// target is no valid token or URI. Lines whose name or value `http` refuses are left out,
/// and values are trimmed of surrounding whitespace (RFC 9110 §5.5: it is not part of the value,
/// and HTTP/1.1 parsers drop it).
pub fn build(head: &Head) -> Option<Request<()>> {
    let method = Method::from_bytes(&head.method.bytes(METHODS)).ok()?;
    let target = Uri::try_from(head.target.bytes(TARGETS)).ok()?;
    let version = match head.version % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .version(version)
        .body(())
        .ok()?;
    if let (Version::HTTP_2, true, Some(p)) = (version, req.method() == Method::CONNECT, head.protocol) {
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(PROTOCOLS[p % PROTOCOLS.len()]));
    }
    for line in &head.lines {
        let Ok(name) = HeaderName::from_bytes(&line.name.bytes(NAMES)) else {
            continue;
        };
        let separator = SEPARATORS[line.separator % SEPARATORS.len()].as_bytes();
        let pieces: Vec<Vec<u8>> = line.value.iter().map(|t| t.bytes(TOKENS)).collect();
        let value = pieces.join(separator);
        let Ok(value) = HeaderValue::from_bytes(value.trim_ascii()) else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    Some(req)
}

/// A copy of a head (requests don't implement `Clone`).
pub fn copy(req: &Request<()>) -> Request<()> {
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version())
        .body(())
        .expect("the parts of a valid request");
    *out.headers_mut() = req.headers().clone();
    if let Some(p) = req.extensions().get::<hyper::ext::Protocol>() {
        out.extensions_mut().insert(p.clone());
    }
    out
}

/// Everything a head says: method, target, version, and each header's values in order.
type Canonical = (String, String, Version, BTreeMap<String, Vec<Vec<u8>>>);

fn canonical(req: &Request<()>) -> Canonical {
    let mut headers: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(value.as_bytes().to_vec());
    }
    (
        req.method().to_string(),
        req.uri().to_string(),
        req.version(),
        headers,
    )
}

/// Comma-separated tokens of every `name` line, trimmed, empty ones skipped.
fn tokens(req: &Request<()>, name: &HeaderName) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).into_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Header names that never survive normalisation.
const NEVER: [&str; 4] = ["keep-alive", "proxy-connection", "trailer", "http2-settings"];

/// Names a `Connection` nomination can't remove, or that the proxy puts back or adds.
const KEPT: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-envoy-original-path",
    "x-forwarded-for",
    "x-forwarded-proto",
    "connection",
    "upgrade",
    "te",
    "sec-websocket-key",
];

/// Runs `input` through [`switchback::fuzzing::upstream_head`] and panics if an invariant
/// fails: no panic inside; a second pass changes nothing; no hop-by-hop header, `h2c` token or
/// `Connection` nomination survives; exactly one `Host`; `Upgrade` and `Connection` agree (both
/// absent, or `Connection: upgrade` and one `Upgrade` line); at most one framing header;
/// and the head written as HTTP/1.1 re-parses (httparse) to the same method, target and
/// headers.
///
/// Returns whether the head was forwarded (`false`: refused).
pub fn check(input: &Request<()>) -> bool {
    let out = match switchback::fuzzing::upstream_head(copy(input)) {
        Ok(out) => out,
        Err(_) => return false,
    };
    let shown = canonical(&out);

    // Normalising twice changes nothing.
    match switchback::fuzzing::upstream_head(copy(&out)) {
        Ok(again) => assert_eq!(canonical(&again), shown, "a second pass changed the head"),
        Err(why) => panic!("a second pass refused the normalised head ({why}): {shown:?}"),
    }

    assert_eq!(out.version(), Version::HTTP_11, "{shown:?}");
    if out.method() == http::Method::CONNECT {
        let authority_form = out.uri().authority().is_some() && out.uri().path_and_query().is_none();
        assert!(authority_form, "a CONNECT not in authority form: {shown:?}");
    } else {
        assert!(out.uri().authority().is_none(), "not origin form: {shown:?}");
    }

    // No hop-by-hop header, h2c token or nomination survives.
    for name in NEVER {
        assert!(!out.headers().contains_key(name), "{name} survived: {shown:?}");
    }
    let te: Vec<_> = out.headers().get_all(header::TE).iter().collect();
    assert!(
        te.is_empty() || te == ["trailers"],
        "TE other than trailers: {shown:?}"
    );
    let nominated: Vec<String> = tokens(input, &header::CONNECTION);
    for token in nominated {
        let lower = token.to_ascii_lowercase();
        if KEPT.contains(&lower.as_str()) {
            continue;
        }
        assert!(
            !out.headers().contains_key(lower.as_str()),
            "the nominated {token:?} survived: {shown:?}"
        );
    }
    let upgrades = tokens(&out, &header::UPGRADE);
    assert!(
        !upgrades.iter().any(|t| t.eq_ignore_ascii_case("h2c")),
        "h2c survived: {shown:?}"
    );

    // Exactly one Host.
    assert_eq!(
        out.headers().get_all(header::HOST).iter().count(),
        1,
        "Host lines: {shown:?}"
    );

    // Upgrade and Connection agree.
    let connection: Vec<_> = out.headers().get_all(header::CONNECTION).iter().collect();
    let upgrade_lines = out.headers().get_all(header::UPGRADE).iter().count();
    match (connection.as_slice(), upgrade_lines) {
        ([], 0) => {}
        ([c], 1) if *c == "upgrade" && !upgrades.is_empty() => {}
        _ => panic!("Connection and Upgrade disagree: {shown:?}"),
    }

    // Framing: chunked, a length, or nothing; never both.
    let te: Vec<_> = out.headers().get_all(header::TRANSFER_ENCODING).iter().collect();
    assert!(te.is_empty() || te == ["chunked"], "Transfer-Encoding: {shown:?}");
    assert!(
        te.is_empty() || !out.headers().contains_key(header::CONTENT_LENGTH),
        "both framings: {shown:?}"
    );

    // The head as written re-parses to the same thing.
    let mut wire = format!("{} {} HTTP/1.1\r\n", out.method(), out.uri()).into_bytes();
    for (name, value) in out.headers() {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    let mut slots = vec![httparse::EMPTY_HEADER; out.headers().len() + 1];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(&wire) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, wire.len(), "{shown:?}"),
        other => panic!(
            "the head doesn't re-parse ({other:?}): {:?}",
            String::from_utf8_lossy(&wire)
        ),
    }
    assert_eq!(parsed.method, Some(out.method().as_str()), "{shown:?}");
    assert_eq!(parsed.path, Some(out.uri().to_string().as_str()), "{shown:?}");
    assert_eq!(parsed.version, Some(1), "{shown:?}");
    let mut reparsed: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for h in parsed.headers.iter() {
        reparsed
            .entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(h.value.to_vec());
    }
    assert_eq!(
        reparsed,
        shown.3,
        "the re-parsed header set differs: {:?}",
        String::from_utf8_lossy(&wire)
    );
    true
}
