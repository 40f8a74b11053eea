//! Forwarded identity: `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id`, set as
//! Envoy's HTTP connection manager sets them, on plain requests and upgrades alike. The rules
//! are on [`ForwardedLayer`].
//!
//! ```
//! use switchback::{Forward, ForwardedLayer, RouteLayer, Runtime, UpgradeRouterLayer};
//! use tower::ServiceBuilder;
//!
//! let stack = ServiceBuilder::new()
//!     // Above routing and the upgrade router: every request gets the headers, and layers
//!     // below (an access log, a trace) find the `RequestId` in its extensions.
//!     .layer(ForwardedLayer::new().xff_num_trusted_hops(1)) // a load balancer in front
//!     .layer(RouteLayer::new(Vec::new(), Runtime::new()).expect("valid routes"))
//!     .layer(UpgradeRouterLayer::builder().upgrade("websocket").build().expect("valid"))
//!     .service(Forward::routed());
//! # let _ = stack;
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tower::{Layer, Service};

use crate::ext::{ClientAddr, RequestId, TlsSession, TrustedClientAddr};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id` on every request, and puts
/// [`TrustedClientAddr`] and [`RequestId`] in its extensions.
///
/// Defaults: `use_remote_address`, no trusted hops, `X-Forwarded-Proto` on with scheme
/// `http`, request ids generated and incoming ones preserved.
///
/// ```
/// use std::convert::Infallible;
/// use switchback::{ClientAddr, ForwardedLayer, RequestId, TrustedClientAddr};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // One load balancer in front of the proxy appends to X-Forwarded-For: trust one hop.
/// let svc = ServiceBuilder::new()
///     .layer(ForwardedLayer::new().xff_num_trusted_hops(1))
///     .service_fn(|req: http::Request<()>| async move { Ok::<_, Infallible>(req) });
///
/// let mut req = http::Request::builder()
///     .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
///     .header("x-forwarded-proto", "https")
///     .body(())
///     .unwrap();
/// // `serve` and `Workers` put the peer's address here.
/// req.extensions_mut().insert(ClientAddr("10.0.0.2:40000".parse().unwrap()));
///
/// let upstream_sees = svc.oneshot(req).await.unwrap();
/// let h = upstream_sees.headers();
/// assert_eq!(h["x-forwarded-for"], "198.51.100.1, 203.0.113.7, 10.0.0.2");
/// assert_eq!(h["x-forwarded-proto"], "https"); // set by the trusted hop, kept
/// let client = upstream_sees.extensions().get::<TrustedClientAddr>().unwrap();
/// assert_eq!(client.0.to_string(), "203.0.113.7"); // the address the trusted hop saw
/// let id = upstream_sees.extensions().get::<RequestId>().unwrap();
/// assert_eq!(h["x-request-id"], id.as_str()); // a fresh UUID v4
/// # }
/// ```
///
/// ## The rules
///
/// Envoy's, with its names ([`ForwardedLayer`]'s setters):
///
/// - **The trusted client address** ([`TrustedClientAddr`]) is the earliest address known to
///   be accurate. With `use_remote_address` (the default) and `xff_num_trusted_hops` *N*: the
///   peer when *N* is 0, else the *N*th address from the right of the incoming
///   `X-Forwarded-For` (the address the outermost trusted proxy saw). Without
///   `use_remote_address` (the proxy is not the edge): the (*N*+1)th from the right. When the
///   list is shorter, or that entry is not an IP address, it is the peer.
/// - **`X-Forwarded-For`**: with `use_remote_address`, the peer's IP (no port) is appended to
///   whatever the client sent, every incoming line joined into one list. A spoofed list from
///   a client at the edge is kept as it came, with the peer after it: the upstream must read
///   the list from the right, and [`TrustedClientAddr`] never comes from the part a client
///   wrote. Without `use_remote_address` the header is left alone.
/// - **`X-Forwarded-Proto`**: the listener's scheme: `https` when the request came over TLS
///   (it has a [`TlsSession`]) or [`ForwardedLayer::https`] says so. At the edge
///   with no trusted hop, a client's value is overwritten; otherwise it is set only when
///   absent (a trusted proxy in front knows the scheme its client used).
/// - **`X-Request-Id`**: with `generate_request_id` (the default), a request without one, or
///   with one that is not a single printable value, gets a fresh UUID v4. With
///   `preserve_external_request_id` (the default here) a valid incoming id is kept; without
///   it, an edge request's id is replaced. The id that goes upstream is also in the request's
///   extensions as [`RequestId`], for access logs and traces. Without `generate_request_id`
///   the header is left alone (and still reported as [`RequestId`] when usable).
///
/// **Where this differs from Envoy.** `use_remote_address` and `preserve_external_request_id`
/// default to `true` (Envoy: `false`): Switchback is usually the edge, and a client's request
/// id is worth keeping for correlation (it is still only a label, never a credential).
/// Envoy appends its own address instead of the peer's when the peer is loopback; Switchback
/// always appends the peer. Envoy tells "internal" requests (private peer, no
/// `X-Forwarded-For`) from external ones; Switchback treats every request at the edge as
/// external.
///
/// Put the layer above [`RouteLayer`](crate::RouteLayer) and the
/// [`UpgradeRouter`](crate::UpgradeRouter), so plain requests, upgrades through a chain and
/// legacy `use_websocket` routes all carry the headers, and above any layer (an access log,
/// a `TraceLayer`) that wants [`RequestId`]. A client's `Connection` header cannot nominate
/// these headers for removal: the router refuses such a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardedLayer {
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
    x_forwarded_proto: bool,
    https: bool,
    generate_request_id: bool,
    preserve_external_request_id: bool,
}

impl Default for ForwardedLayer {
    fn default() -> Self {
        Self {
            use_remote_address: true,
            xff_num_trusted_hops: 0,
            x_forwarded_proto: true,
            https: false,
            generate_request_id: true,
            preserve_external_request_id: true,
        }
    }
}

impl ForwardedLayer {
    /// Every header on, for an edge proxy with nothing trusted in front of it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the peer is the source of truth (the proxy is the edge): its address is
    /// appended to `X-Forwarded-For` and counts from there. `false` is Envoy's transparent
    /// mode for a proxy behind another: `X-Forwarded-For` is left alone and the trusted
    /// client address is read from it. Default `true`.
    pub fn use_remote_address(mut self, yes: bool) -> Self {
        self.use_remote_address = yes;
        self
    }

    /// How many proxies in front of this one append to `X-Forwarded-For` and can be
    /// trusted to. It picks the [`TrustedClientAddr`], and above zero a trusted proxy's
    /// `X-Forwarded-Proto` is kept. Default 0.
    pub fn xff_num_trusted_hops(mut self, n: u32) -> Self {
        self.xff_num_trusted_hops = n;
        self
    }

    /// Whether to set `X-Forwarded-Proto`. Default `true`.
    pub fn x_forwarded_proto(mut self, yes: bool) -> Self {
        self.x_forwarded_proto = yes;
        self
    }

    /// Says the listener serves TLS (terminated in front of this stack): `X-Forwarded-Proto`
    /// is `https` rather than `http`. Requests that came over Switchback's own TLS
    /// listeners are `https` anyway. Default `false`.
    pub fn https(mut self, yes: bool) -> Self {
        self.https = yes;
        self
    }

    /// Whether to give a request without a usable `X-Request-Id` a fresh UUID v4. `false`
    /// leaves the header alone. Default `true`.
    pub fn generate_request_id(mut self, yes: bool) -> Self {
        self.generate_request_id = yes;
        self
    }

    /// Whether to keep the `X-Request-Id` a client sent to the edge (`true`, the default
    /// here; Envoy's is `false`) or replace it with a fresh one. Only matters with
    /// `generate_request_id` and `use_remote_address`.
    pub fn preserve_external_request_id(mut self, yes: bool) -> Self {
        self.preserve_external_request_id = yes;
        self
    }

    /// Applies the rules to `req` (what [`Forwarded`] does before calling its inner service).
    fn apply<B>(&self, req: &mut Request<B>) {
        let peer = req
            .extensions()
            .get::<ClientAddr>()
            .map(|a| a.0.ip().to_canonical());
        if let Some(peer) = peer {
            let trusted = self.trusted_client(req.headers(), peer);
            req.extensions_mut().insert(TrustedClientAddr(trusted));
            if self.use_remote_address {
                append_xff(req.headers_mut(), peer);
            }
        }
        let https = self.https || req.extensions().get::<TlsSession>().is_some();
        let headers = req.headers_mut();
        if self.x_forwarded_proto {
            let untrusted = self.use_remote_address && self.xff_num_trusted_hops == 0;
            if untrusted || !headers.contains_key(X_FORWARDED_PROTO) {
                let scheme = if https { "https" } else { "http" };
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
        }
        if let Some(id) = self.request_id(headers) {
            req.extensions_mut().insert(id);
        }
    }

    /// The trusted client address, from the incoming `X-Forwarded-For` before anything is
    /// appended to it.
    fn trusted_client(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let hops = self.xff_num_trusted_hops as usize;
        let from_right = if self.use_remote_address {
            hops
        } else {
            hops.saturating_add(1)
        };
        if from_right == 0 {
            return peer;
        }
        let entries: Vec<&[u8]> = xff_entries(headers).collect();
        entries
            .len()
            .checked_sub(from_right)
            .and_then(|i| parse_ip(entries[i]))
            .unwrap_or(peer)
    }

    /// Sets or keeps `X-Request-Id`; the id that goes upstream, if there is one.
    fn request_id(&self, headers: &mut HeaderMap) -> Option<RequestId> {
        let incoming = {
            let mut lines = headers.get_all(X_REQUEST_ID).iter();
            match (lines.next(), lines.next()) {
                (Some(v), None) => v.to_str().ok().filter(|s| !s.trim().is_empty()),
                _ => None,
            }
        };
        if !self.generate_request_id {
            return incoming.map(|s| RequestId(Arc::from(s)));
        }
        let replace = self.use_remote_address && !self.preserve_external_request_id;
        if let Some(id) = incoming
            && !replace
        {
            return Some(RequestId(Arc::from(id)));
        }
        let id = uuid_v4(rand::random());
        headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&id).expect("a UUID is a valid header value"),
        );
        Some(RequestId(Arc::from(id)))
    }
}

impl<S> Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Forwarded { inner, config: *self }
    }
}

// === impl Forwarded ===

/// The service of [`ForwardedLayer`]: sets the forwarded headers, then calls its inner
/// service.
#[derive(Clone, Debug)]
pub struct Forwarded<S> {
    inner: S,
    config: ForwardedLayer,
}

impl<S> Forwarded<S> {
    /// Wraps `inner` with `config`.
    pub fn new(inner: S, config: ForwardedLayer) -> Self {
        Self { inner, config }
    }
}

impl<S, B> Service<Request<B>> for Forwarded<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        self.config.apply(&mut req);
        self.inner.call(req)
    }
}

// === X-Forwarded-For ===

/// The entries of every `X-Forwarded-For` line, in order, trimmed; empty ones are skipped.
fn xff_entries(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// An entry as an address: an IP, or an `ip:port` / `[ip]:port` some proxies write.
fn parse_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let ip = text
        .parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()?;
    Some(ip.to_canonical())
}

/// Appends `peer` to `X-Forwarded-For`, joining the incoming lines (empty ones dropped) into
/// one.
fn append_xff(headers: &mut HeaderMap, peer: IpAddr) {
    let mut value: Vec<u8> = Vec::new();
    for line in headers.get_all(X_FORWARDED_FOR) {
        let line = line.as_bytes().trim_ascii();
        if line.is_empty() {
            continue;
        }
        if !value.is_empty() {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(line);
    }
    if !value.is_empty() {
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(peer.to_string().as_bytes());
    // Incoming lines were valid values and an address is plain ASCII: this can't fail.
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

// === X-Request-Id ===

/// Formats 16 random bytes as a UUID version 4 (RFC 9562 §5.4): version nibble 4, variant
/// bits `10`, lowercase hex in 8-4-4-4-12 groups.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], peer: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        if let Some(p) = peer {
            req.extensions_mut().insert(ClientAddr(p.parse().unwrap()));
        }
        req
    }

    fn run(layer: ForwardedLayer, mut req: Request<()>) -> Request<()> {
        layer.apply(&mut req);
        req
    }

    fn trusted(req: &Request<()>) -> String {
        req.extensions().get::<TrustedClientAddr>().unwrap().0.to_string()
    }

    const XFF: &str = "203.0.113.128, 203.0.113.10, 203.0.113.1";

    #[test]
    fn envoy_example_1_edge_without_trusted_hops() {
        let req = run(
            ForwardedLayer::new(),
            request(&[("x-forwarded-for", XFF)], Some("192.0.2.5:1")),
        );
        assert_eq!(trusted(&req), "192.0.2.5", "XFF is ignored");
        assert_eq!(req.headers()["x-forwarded-for"], format!("{XFF}, 192.0.2.5"));
    }

    #[test]
    fn envoy_example_2_internal_behind_the_edge() {
        let xff = format!("{XFF}, 192.0.2.5");
        let layer = ForwardedLayer::new().use_remote_address(false);
        let req = run(
            layer,
            request(&[("x-forwarded-for", &xff)], Some("10.11.12.13:1")),
        );
        assert_eq!(trusted(&req), "192.0.2.5", "the last address is trusted");
        assert_eq!(req.headers()["x-forwarded-for"], xff.as_str(), "left alone");
    }

    #[test]
    fn envoy_examples_3_and_4_two_trusted_hops() {
        let layer = ForwardedLayer::new().xff_num_trusted_hops(2);
        let req = run(layer, request(&[("x-forwarded-for", XFF)], Some("192.0.2.5:1")));
        assert_eq!(trusted(&req), "203.0.113.10");
        assert_eq!(req.headers()["x-forwarded-for"], format!("{XFF}, 192.0.2.5"));

        let xff = format!("{XFF}, 192.0.2.5");
        let layer = layer.use_remote_address(false);
        let req = run(
            layer,
            request(&[("x-forwarded-for", &xff)], Some("10.11.12.13:1")),
        );
        assert_eq!(trusted(&req), "203.0.113.10");
    }

    #[test]
    fn short_or_broken_lists_fall_back_to_the_peer() {
        let layer = ForwardedLayer::new().xff_num_trusted_hops(3);
        let req = run(
            layer,
            request(&[("x-forwarded-for", "1.2.3.4")], Some("192.0.2.5:1")),
        );
        assert_eq!(trusted(&req), "192.0.2.5");
        let layer = ForwardedLayer::new().xff_num_trusted_hops(1);
        let req = run(
            layer,
            request(&[("x-forwarded-for", "unknown")], Some("192.0.2.5:1")),
        );
        assert_eq!(trusted(&req), "192.0.2.5");
        let req = run(layer, request(&[], Some("192.0.2.5:1")));
        assert_eq!(trusted(&req), "192.0.2.5");
        assert_eq!(req.headers()["x-forwarded-for"], "192.0.2.5");
    }

    #[test]
    fn lines_are_joined_and_ports_and_mapped_addresses_understood() {
        let layer = ForwardedLayer::new().xff_num_trusted_hops(2);
        let req = run(
            layer,
            request(
                &[
                    ("x-forwarded-for", "[2001:db8::1]:443"),
                    ("x-forwarded-for", " "),
                    ("x-forwarded-for", "10.0.0.1:80"),
                ],
                Some("[::ffff:192.0.2.5]:1"),
            ),
        );
        assert_eq!(trusted(&req), "2001:db8::1");
        assert_eq!(
            req.headers()["x-forwarded-for"],
            "[2001:db8::1]:443, 10.0.0.1:80, 192.0.2.5",
            "one line, the mapped peer written as IPv4"
        );
        let req = run(ForwardedLayer::new(), request(&[], Some("[::1]:9")));
        assert_eq!(
            req.headers()["x-forwarded-for"],
            "::1",
            "IPv6 without brackets or port"
        );
    }

    #[test]
    fn without_a_peer_only_proto_and_id_are_set() {
        let req = run(
            ForwardedLayer::new(),
            request(&[("x-forwarded-for", "1.2.3.4")], None),
        );
        assert!(req.extensions().get::<TrustedClientAddr>().is_none());
        assert_eq!(req.headers()["x-forwarded-for"], "1.2.3.4");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
        assert!(req.extensions().get::<RequestId>().is_some());
    }

    #[test]
    fn x_forwarded_proto_is_trusted_only_from_trusted_hops() {
        let spoofed = [("x-forwarded-proto", "https")];
        let req = run(ForwardedLayer::new(), request(&spoofed, Some("192.0.2.5:1")));
        assert_eq!(req.headers()["x-forwarded-proto"], "http", "edge: overwritten");
        let req = run(
            ForwardedLayer::new().xff_num_trusted_hops(1),
            request(&spoofed, None),
        );
        assert_eq!(
            req.headers()["x-forwarded-proto"],
            "https",
            "a trusted hop's kept"
        );
        let req = run(
            ForwardedLayer::new().use_remote_address(false),
            request(&spoofed, None),
        );
        assert_eq!(req.headers()["x-forwarded-proto"], "https", "not the edge: kept");
        let req = run(ForwardedLayer::new().https(true), request(&[], None));
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        let req = run(
            ForwardedLayer::new().x_forwarded_proto(false),
            request(&spoofed, None),
        );
        assert_eq!(req.headers()["x-forwarded-proto"], "https", "off: untouched");
        let req = run(ForwardedLayer::new().x_forwarded_proto(false), request(&[], None));
        assert!(req.headers().get("x-forwarded-proto").is_none());
    }

    #[test]
    fn request_ids() {
        let id = |req: &Request<()>| req.extensions().get::<RequestId>().map(|r| r.0.to_string());
        let req = run(ForwardedLayer::new(), request(&[], None));
        let fresh = id(&req).unwrap();
        assert_eq!(req.headers()["x-request-id"], fresh.as_str());
        assert!(is_uuid_v4(&fresh), "{fresh}");

        let given = [("x-request-id", "abc-123")];
        let req = run(ForwardedLayer::new(), request(&given, None));
        assert_eq!(id(&req).as_deref(), Some("abc-123"), "preserved");
        assert_eq!(req.headers()["x-request-id"], "abc-123");

        let replacing = ForwardedLayer::new().preserve_external_request_id(false);
        let req = run(replacing, request(&given, None));
        assert_ne!(req.headers()["x-request-id"], "abc-123", "replaced at the edge");
        assert!(is_uuid_v4(&id(&req).unwrap()));
        let req = run(replacing.use_remote_address(false), request(&given, None));
        assert_eq!(req.headers()["x-request-id"], "abc-123", "not the edge: kept");

        let twice = [("x-request-id", "a"), ("x-request-id", "b")];
        let req = run(ForwardedLayer::new(), request(&twice, None));
        assert_eq!(
            req.headers().get_all("x-request-id").iter().count(),
            1,
            "one id goes on"
        );
        assert!(is_uuid_v4(&id(&req).unwrap()));

        let off = ForwardedLayer::new().generate_request_id(false);
        let req = run(off, request(&[], None));
        assert!(req.headers().get("x-request-id").is_none() && id(&req).is_none());
        let req = run(off, request(&given, None));
        assert_eq!(id(&req).as_deref(), Some("abc-123"), "still reported");
    }

    #[test]
    fn uuid_v4_format() {
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        for _ in 0..100 {
            assert!(is_uuid_v4(&uuid_v4(rand::random())));
        }
    }

    fn is_uuid_v4(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => matches!(c, '0'..='9' | 'a'..='f'),
            })
            && b[14] == b'4'
            && matches!(b[19], b'8' | b'9' | b'a' | b'b')
    }
}
