//! Hop-by-hop header handling (RFC 9110 §7.6.1).
//!
//! A proxy must not forward the headers that describe one connection: `Connection` and every
//! header it nominates, plus the fixed set below. The upgrade pair (`Connection: upgrade` and
//! `Upgrade`) is the one exception, and only on a real upgrade, where it is re-added by the
//! caller.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Hop-by-hop headers that are removed whether or not `Connection` names them. Names, not
/// strings: removing by a string parses it first, and this runs a few times per request.
static FIXED: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Headers a `Connection` nomination may never remove: the target, the framing, and the
/// headers the proxy itself adds.
pub(crate) const PROTECTED: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-envoy-original-path",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

/// Iterates over the comma-separated tokens of every `name` header line, trimmed. A token
/// with a byte outside ASCII is skipped alone: it can name no header and no protocol, and it
/// must not hide the tokens next to it.
pub(crate) fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && t.is_ascii())
        .filter_map(|t| std::str::from_utf8(t).ok())
}

/// Whether any `Connection` line carries `token` (case-insensitive, any position).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token))
}

/// The first `Connection` nomination of a protected header, if any.
///
/// A request that tries this is refused: honouring it would let a client strip `Host` or the
/// framing between proxy and upstream, the root of several smuggling attacks.
pub(crate) fn nominated_protected<'a>(headers: &'a HeaderMap, extra: &[HeaderName]) -> Option<&'a str> {
    tokens(headers, &header::CONNECTION).find(|t| {
        PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p))
            || extra.iter().any(|p| t.eq_ignore_ascii_case(p.as_str()))
    })
}

/// Removes every hop-by-hop header: the fixed set and whatever `Connection` nominates, except
/// protected names. `TE: trailers` survives as the one `TE` value allowed end to end.
pub(crate) fn strip(headers: &mut HeaderMap) {
    // A head has a handful of names, most of them not hop-by-hop: find which fixed ones are
    // there in one pass, rather than hash all eight for a removal each.
    let present = headers.keys().fold(0u8, |found, name| {
        FIXED
            .iter()
            .position(|f| f == name)
            .map_or(found, |i| found | 1 << i)
    });
    let has = |name: &HeaderName| {
        FIXED
            .iter()
            .position(|f| f == name)
            .is_some_and(|i| present & 1 << i != 0)
    };
    let te_trailers =
        has(&header::TE) && tokens(headers, &header::TE).any(|t| t.eq_ignore_ascii_case("trailers"));
    if has(&header::CONNECTION) {
        // Removed in the order `Connection` names them, then the fixed ones: removal moves
        // the last header into the gap, so this order keeps the forwarded head's order as
        // it has always been. Fixed names aren't parsed again.
        let nominated: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
            .filter(|t| !PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p)))
            .filter_map(
                |t| match FIXED.iter().find(|f| t.eq_ignore_ascii_case(f.as_str())) {
                    Some(fixed) => Some(fixed.clone()),
                    None => HeaderName::from_bytes(t.as_bytes()).ok(),
                },
            )
            .collect();
        for name in nominated {
            headers.remove(name);
        }
    }
    for (i, name) in FIXED.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Strips hop-by-hop headers and puts back the upgrade pair: `Connection: upgrade` and the
/// given `Upgrade` value.
pub(crate) fn strip_keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    strip(headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    #[test]
    fn token_match_spans_lines_cases_and_positions() {
        let m = map(&[("connection", "keep-alive"), ("connection", "x-a,  UpGrade ,b")]);
        assert!(connection_has(&m, "upgrade"));
        assert!(!connection_has(&map(&[("connection", "upgrades")]), "upgrade"));
    }

    #[test]
    fn an_odd_byte_hides_only_its_own_token() {
        let mut m = map(&[("x-secret", "1")]);
        m.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"X-Secret, caf\xe9, upgrade").expect("value"),
        );
        assert_eq!(
            tokens(&m, &header::CONNECTION).collect::<Vec<_>>(),
            ["X-Secret", "upgrade"]
        );
        strip(&mut m);
        assert!(m.is_empty(), "{m:?}");
    }

    #[test]
    fn strip_removes_fixed_and_nominated_but_not_protected() {
        let mut m = map(&[
            ("connection", "x-secret, host, Content-Length"),
            ("x-secret", "1"),
            ("host", "a"),
            ("content-length", "0"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("http2-settings", "AAA"),
            ("x-kept", "1"),
        ]);
        strip(&mut m);
        let mut names: Vec<_> = m.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "host", "te", "x-kept"]);
        assert_eq!(m["te"], "trailers");
    }

    #[test]
    fn protected_nomination_is_found() {
        let m = map(&[("connection", "close, Transfer-Encoding")]);
        assert_eq!(nominated_protected(&m, &[]), Some("Transfer-Encoding"));
        let m = map(&[("connection", "x-proxied-by")]);
        let extra = [HeaderName::from_static("x-proxied-by")];
        assert_eq!(nominated_protected(&m, &extra), Some("x-proxied-by"));
        assert_eq!(nominated_protected(&map(&[("connection", "upgrade")]), &[]), None);
    }
}
