//! Who may use the admin endpoint.
//!
//! - The probes, `/ready` and `/metrics`, answer anyone the address lets through, whatever
//!   their `Host`: monitoring reaches them by pod IP, node name or Service name alike, and
//!   they reveal nothing the address doesn't already offer.
//! - Every other path (what changes the proxy, and what reveals its config, clients and
//!   upstreams) answers only requests that:
//!   1. name the endpoint itself in `Host`: a loopback name (`localhost`, `127.0.0.1`,
//!      `[::1]`, any port) or the address the connection arrived on (an unspecified bind
//!      address, `0.0.0.0` or `[::]`, stands for whichever local address that is). Anything
//!      else is `421`: a page whose DNS name was rebound to this address names its own
//!      host;
//!   2. when they change something (any method but `GET` and `HEAD`), carry no `Origin`, or
//!      the endpoint's own (`http://` and the `Host` they sent). Anything else, `null`
//!      included, is `403`: a form another site posts from the operator's browser;
//!   3. come from a loopback address, or present the token (`Authorization: Bearer
//!      <token>`, `admin.token_file`), compared in constant time. Anything else is `401`
//!      with `WWW-Authenticate: Bearer`.
//!
//! Each refusal is logged (warn) with the peer and the path, never with what was presented.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use switchback_config::AdminToken;

/// The two ends of one admin connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    /// The client.
    pub(crate) peer: SocketAddr,
    /// The local address the connection arrived on.
    pub(crate) local: SocketAddr,
}

/// The admin endpoint's access rules (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(crate) struct Door {
    token: Option<AdminToken>,
}

impl Door {
    /// The rules, with the token from `admin.token_file` if there is one.
    pub(crate) fn new(token: Option<AdminToken>) -> Self {
        Self { token }
    }

    /// Whether callers other than loopback ones can get in (with the token).
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The answer that refuses `req`, or `None` when it may go on.
    pub(crate) fn refusal<B>(&self, req: &Request<B>, caller: Caller) -> Option<Response<Full<Bytes>>> {
        let path = req.uri().path();
        if is_probe(path) {
            return None;
        }
        let refuse = |status: StatusCode, why: &str, body: String| {
            tracing::warn!(
                peer = %caller.peer,
                method = %req.method(),
                path,
                "admin: refused ({why})"
            );
            let mut res = Response::new(Full::new(Bytes::from(body)));
            *res.status_mut() = status;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            res
        };

        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        // An absolute-form target names a host too; it must pass the same check.
        let target_host = req.uri().authority().map(http::uri::Authority::as_str);
        let Some(host) = host.filter(|h| names_this_endpoint(h, caller.local)) else {
            return Some(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "foreign Host",
                format!(
                    "admin: the Host header must name this endpoint: localhost, 127.0.0.1, [::1] or {}\n",
                    caller.local
                ),
            ));
        };
        if target_host.is_some_and(|h| !names_this_endpoint(h, caller.local)) {
            return Some(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "foreign request target",
                "admin: the request target must name this endpoint\n".to_owned(),
            ));
        }

        if !matches!(*req.method(), Method::GET | Method::HEAD)
            && let Some(origin) = req.headers().get(header::ORIGIN)
            && !is_own_origin(origin.as_bytes(), host)
        {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "foreign Origin",
                format!(
                    "admin: a request from another origin may not change anything here; use http://{host}\n"
                ),
            ));
        }

        if caller.peer.ip().to_canonical().is_loopback() {
            return None;
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        match (&self.token, presented) {
            (Some(token), Some(presented)) if token.matches(presented) => None,
            (token, presented) => {
                let (why, body) = match (token, presented) {
                    (None, _) => (
                        "not loopback, and no admin token is set",
                        "admin: only loopback clients may use this; set admin.token_file to let others in with a token\n",
                    ),
                    (Some(_), None) => (
                        "not loopback, and no bearer token",
                        "admin: send `Authorization: Bearer <token>` (the token in admin.token_file), or call from loopback\n",
                    ),
                    (Some(_), Some(_)) => ("wrong bearer token", "admin: wrong token\n"),
                };
                let mut res = refuse(StatusCode::UNAUTHORIZED, why, body.to_owned());
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"switchback admin\""),
                );
                Some(res)
            }
        }
    }
}

/// The read-only probes anyone the address lets through may use.
fn is_probe(path: &str) -> bool {
    matches!(path, "/ready" | "/metrics")
}

/// Whether a `Host` value (or a request target's authority) names this endpoint, reached on
/// `local`.
fn names_this_endpoint(authority: &str, local: SocketAddr) -> bool {
    let Some((host, port)) = split_authority(authority) else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = host.parse::<IpAddr>() else {
        return false;
    };
    let ip = ip.to_canonical();
    // A browser that reached a loopback literal is on this host already: no rebinding.
    ip.is_loopback() || (ip == local.ip().to_canonical() && port.is_none_or(|p| p == local.port()))
}

/// `host[:port]` or `[v6]:port` into the host (brackets removed) and the port.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            None => (authority, None),
            // More than one colon without brackets is not an authority.
            Some((_, port)) if port.contains(':') => return None,
            Some((host, port)) => (host, Some(port)),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    Some((host, port))
}

/// Whether `origin` is `http://` followed by the `Host` the request sent (any case).
fn is_own_origin(origin: &[u8], host: &str) -> bool {
    origin
        .strip_prefix(b"http://")
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host.as_bytes()))
}

/// The credentials of an `Authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    fn status(door: &Door, req: &Request<()>, peer: &str) -> u16 {
        let caller = Caller {
            peer: local(peer),
            local: local("10.1.2.3:9901"),
        };
        door.refusal(req, caller).map_or(200, |res| res.status().as_u16())
    }

    #[test]
    fn hosts_that_name_the_endpoint() {
        let here = local("10.1.2.3:9901");
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:9901",
            "10.1.2.3",
            "10.1.2.3:9901",
        ] {
            assert!(names_this_endpoint(ok, here), "{ok}");
        }
        for foreign in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "10.1.2.3:80",
            "10.1.2.4:9901",
            "",
            ":9901",
            "[::1",
            "::1",
            "10.1.2.3:x",
            "[::1]x",
        ] {
            assert!(!names_this_endpoint(foreign, here), "{foreign:?}");
        }
        // On a dual-stack socket an IPv4 client arrives on a mapped address.
        let mapped = local("[::ffff:10.1.2.3]:9901");
        assert!(names_this_endpoint("10.1.2.3:9901", mapped));
        assert!(names_this_endpoint("[fd00::2]:9901", local("[fd00::2]:9901")));
    }

    #[test]
    fn bearer_credentials() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Basic abc"), None);
    }

    #[test]
    fn the_rules_in_order() {
        let token = "0123456789abcdef";
        let door = Door::new(Some(AdminToken::new(token).unwrap()));
        let auth = format!("Bearer {token}");
        let host = ("host", "10.1.2.3:9901");
        let remote = "10.9.9.9:5000";
        let loopback = "127.0.0.1:5000";

        // Probes: anyone, any Host.
        for path in ["/ready", "/metrics"] {
            let req = request("GET", path, &[("host", "evil.example")]);
            assert_eq!(status(&door, &req, remote), 200, "{path}");
        }
        // The rest: loopback, or the token.
        for (method, path) in [
            ("GET", "/config"),
            ("GET", "/"),
            ("POST", "/drain"),
            ("GET", "/nope"),
        ] {
            assert_eq!(status(&door, &request(method, path, &[host]), remote), 401);
            assert_eq!(status(&door, &request(method, path, &[host]), loopback), 200);
            let wrong = request(
                method,
                path,
                &[host, ("authorization", "Bearer 0123456789abcdeX")],
            );
            assert_eq!(status(&door, &wrong, remote), 401);
            let good = request(method, path, &[host, ("authorization", &auth)]);
            assert_eq!(status(&door, &good, remote), 200);
            // A foreign Host first, token or not.
            let rebound = request(
                method,
                path,
                &[("host", "evil.example"), ("authorization", &auth)],
            );
            assert_eq!(status(&door, &rebound, loopback), 421);
            assert_eq!(
                status(&door, &request(method, path, &[]), loopback),
                421,
                "no Host"
            );
        }
        // A foreign Origin may not change anything, even from loopback with the token.
        for origin in [
            "http://evil.example",
            "null",
            "https://10.1.2.3:9901",
            "http://10.1.2.3",
        ] {
            let req = request(
                "POST",
                "/drain",
                &[host, ("origin", origin), ("authorization", &auth)],
            );
            assert_eq!(status(&door, &req, loopback), 403, "{origin}");
        }
        let own = request("POST", "/drain", &[host, ("origin", "http://10.1.2.3:9901")]);
        assert_eq!(status(&door, &own, loopback), 200);
        let read = request("GET", "/config", &[host, ("origin", "http://evil.example")]);
        assert_eq!(status(&door, &read, loopback), 200, "a read is the Host check's");
        // Without a token only loopback gets in.
        let closed = Door::new(None);
        let req = request("GET", "/config", &[host, ("authorization", &auth)]);
        assert_eq!(status(&closed, &req, remote), 401);
        // An IPv4 loopback peer on a dual-stack socket.
        assert_eq!(
            status(
                &closed,
                &request("GET", "/config", &[host]),
                "[::ffff:127.0.0.1]:5000"
            ),
            200
        );
    }
}
