//! Is an upstream's `101` a real switch to a protocol the client asked for?
//!
//! A proxy that believes a `101` the upstream did not mean (or a non-`101` at all) would pass
//! the client's next bytes through unparsed: the upgrade-smuggling attacks. So the answer must
//! name an offered protocol in `Upgrade`, carry `upgrade` in `Connection`, and for WebSocket
//! prove it read the client's key.

use http::HeaderMap;
use http::header::{self, HeaderName};

use crate::hop;
use crate::websocket::{self, SEC_WEBSOCKET_KEY};

const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// Why a `101` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad101 {
    NoUpgrade,
    NotOffered,
    NoConnectionUpgrade,
    BadAccept,
}

impl Bad101 {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoUpgrade => "the 101 has no Upgrade header",
            Self::NotOffered => "the 101 switches to a protocol the client did not offer",
            Self::NoConnectionUpgrade => "the 101 lacks `Connection: upgrade`",
            Self::BadAccept => "the 101's Sec-WebSocket-Accept does not match the client's key",
        }
    }
}

/// Checks a `101`'s headers against the request's.
pub(crate) fn verify(request: &HeaderMap, response: &HeaderMap, websocket: bool) -> Result<(), Bad101> {
    let mut chosen = hop::tokens(response, &header::UPGRADE).peekable();
    if chosen.peek().is_none() {
        return Err(Bad101::NoUpgrade);
    }
    let offered: Vec<&str> = hop::tokens(request, &header::UPGRADE).collect();
    // `tokens` skips a token with a byte outside ASCII; no client offered one.
    let odd = response
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| !v.as_bytes().is_ascii());
    if odd || !chosen.all(|c| offered.iter().any(|o| o.eq_ignore_ascii_case(c))) {
        return Err(Bad101::NotOffered);
    }
    if !hop::connection_has(response, "upgrade") {
        return Err(Bad101::NoConnectionUpgrade);
    }
    // Only a request without a key goes without the check: an old draft's (hixie-75/76) on a
    // legacy route. The new-style path always sends one (`Forward` adds its own).
    if let (true, Some(key)) = (websocket, request.get(SEC_WEBSOCKET_KEY)) {
        let expected = websocket::accept_key(key.as_bytes());
        let accept = response.get(SEC_WEBSOCKET_ACCEPT).map(|v| v.as_bytes());
        if accept != Some(expected.as_bytes()) {
            return Err(Bad101::BadAccept);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn rules() {
        let req = map(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let good = map(&[
            ("upgrade", "WebSocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert_eq!(verify(&req, &good, true), Ok(()));
        let wrong_accept = map(&[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-accept", "x"),
        ]);
        assert_eq!(verify(&req, &wrong_accept, true), Err(Bad101::BadAccept));
        let other = map(&[("upgrade", "h2c"), ("connection", "upgrade")]);
        assert_eq!(verify(&req, &other, true), Err(Bad101::NotOffered));
        let mut odd = good.clone();
        odd.append("upgrade", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert_eq!(verify(&req, &odd, true), Err(Bad101::NotOffered));
        let no_conn = map(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert_eq!(verify(&req, &no_conn, true), Err(Bad101::NoConnectionUpgrade));
        assert_eq!(
            verify(&req, &map(&[("connection", "upgrade")]), true),
            Err(Bad101::NoUpgrade)
        );
        let keyless = map(&[("upgrade", "websocket")]);
        assert_eq!(
            verify(
                &keyless,
                &map(&[("upgrade", "websocket"), ("connection", "upgrade")]),
                true
            ),
            Ok(())
        );
    }
}
