//! Forwarded identity over real sockets: what the upstream receives in `X-Forwarded-For`,
//! `X-Forwarded-Proto` and `X-Request-Id` for plain requests, upgrades through the router and
//! legacy `use_websocket` routes, with each header switched off in turn.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod route_support;
mod support;

use http::{HeaderValue, Request};
use tokio::io::AsyncWriteExt;
use tower::ServiceBuilder;

use route_support::*;
use support::*;
use switchback::{
    Forward, ForwardedLayer, LegacyConfig, RequestId, Route, RouteLayer, Runtime, TrustedClientAddr,
    UpgradeRouterLayer,
};

/// Copies the extensions the layer leaves into headers, so the upstream can show them.
fn expose<B>(mut req: Request<B>) -> Request<B> {
    if let Some(TrustedClientAddr(ip)) = req.extensions().get::<TrustedClientAddr>().copied() {
        let v = HeaderValue::from_str(&ip.to_string()).unwrap();
        req.headers_mut().insert("x-test-trusted-client", v);
    }
    if let Some(id) = req.extensions().get::<RequestId>().cloned() {
        let v = HeaderValue::from_str(id.as_str()).unwrap();
        req.headers_mut().insert("x-test-request-id", v);
    }
    req
}

/// `layer`, then routes (legacy ones included), a router accepting `foo`, and `Forward`.
async fn proxy(layer: ForwardedLayer, routes: Vec<Route>) -> Proxy {
    start(
        ServiceBuilder::new()
            .layer(layer)
            .map_request(expose)
            .layer(RouteLayer::new(routes, Runtime::new()).unwrap())
            .layer(UpgradeRouterLayer::builder().upgrade("foo").build().unwrap())
            .service(Forward::routed()),
    )
    .await
}

fn every_path_to(upstream: &RawUpstream) -> Vec<Route> {
    vec![
        Route::prefix("/legacy")
            .cluster(cluster(upstream.addr))
            .use_websocket(LegacyConfig::new()),
        Route::prefix("/").cluster(cluster(upstream.addr)),
    ]
}

/// Sends `request` and returns the head the upstream received; answers it with `answer`.
async fn seen_upstream(proxy: &Proxy, upstream: &RawUpstream, request: &str, answer: &[u8]) -> String {
    let mut client = raw_client(proxy.addr, request.as_bytes()).await;
    let mut up = upstream.accept().await;
    let (head, _) = read_head(&mut up).await;
    up.write_all(answer).await.unwrap();
    let (reply, _) = read_head(&mut client).await;
    assert!(matches!(status(&reply), 101 | 200), "{reply}");
    head
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const WS_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn plain(extra: &str) -> String {
    get("/plain", extra)
}

fn foo(extra: &str) -> String {
    format!("GET /up HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: foo\r\n{extra}\r\n")
}

fn legacy_ws(extra: &str) -> String {
    format!(
        "GET /legacy HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// The three kinds of request, each with `extra` header lines, and the answer each needs.
fn kinds(extra: &str) -> [(&'static str, String, &'static [u8]); 3] {
    [
        ("plain", plain(extra), OK),
        ("upgrade", foo(extra), FOO_101),
        ("legacy", legacy_ws(extra), WS_101),
    ]
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

/// By default every kind of request reaches the upstream with the peer in `X-Forwarded-For`,
/// `X-Forwarded-Proto: http` and a fresh UUID v4 as `X-Request-Id` (the same one the
/// `RequestId` extension carries), and the upgrades still open.
#[tokio::test]
async fn every_kind_of_request_gets_the_headers() {
    let raw = RawUpstream::bind().await;
    let p = proxy(ForwardedLayer::new(), every_path_to(&raw)).await;
    let mut ids = Vec::new();
    for (kind, request, answer) in kinds("") {
        let head = seen_upstream(&p, &raw, &request, answer).await;
        assert_eq!(
            header(&head, "x-forwarded-for"),
            Some("127.0.0.1"),
            "{kind}: {head}"
        );
        assert_eq!(header(&head, "x-forwarded-proto"), Some("http"), "{kind}");
        assert_eq!(
            header(&head, "x-test-trusted-client"),
            Some("127.0.0.1"),
            "{kind}"
        );
        let id = header(&head, "x-request-id").unwrap();
        assert!(is_uuid_v4(id), "{kind}: {id}");
        assert_eq!(header(&head, "x-test-request-id"), Some(id), "{kind}");
        assert_eq!(head.matches("x-request-id").count(), 1, "{kind}");
        ids.push(id.to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "a new id per request");
}

/// At the edge with no trusted hop, a client's `X-Forwarded-For` is kept with the peer
/// appended (the trusted client is the peer), its `X-Forwarded-Proto` is overwritten, and
/// its `X-Request-Id` is kept.
#[tokio::test]
async fn a_spoofing_client_at_the_edge() {
    let raw = RawUpstream::bind().await;
    let p = proxy(ForwardedLayer::new(), every_path_to(&raw)).await;
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Request-Id: trace-42\r\n";
    for (kind, request, answer) in kinds(spoof) {
        let head = seen_upstream(&p, &raw, &request, answer).await;
        assert_eq!(
            header(&head, "x-forwarded-for"),
            Some("6.6.6.6, 127.0.0.1"),
            "{kind}"
        );
        assert_eq!(
            header(&head, "x-test-trusted-client"),
            Some("127.0.0.1"),
            "{kind}"
        );
        assert_eq!(header(&head, "x-forwarded-proto"), Some("http"), "{kind}");
        assert_eq!(header(&head, "x-request-id"), Some("trace-42"), "{kind}");
        assert_eq!(header(&head, "x-test-request-id"), Some("trace-42"), "{kind}");
    }
}

/// With two trusted proxies in front, the client is the second address from the right of
/// what arrived, and the proxies' `X-Forwarded-Proto` is believed.
#[tokio::test]
async fn trusted_hops_pick_the_client() {
    let raw = RawUpstream::bind().await;
    let p = proxy(ForwardedLayer::new().xff_num_trusted_hops(2), every_path_to(&raw)).await;
    let via = "X-Forwarded-For: 6.6.6.6, 203.0.113.10\r\nX-Forwarded-For: 10.0.0.1\r\n\
               X-Forwarded-Proto: https\r\n";
    for (kind, request, answer) in kinds(via) {
        let head = seen_upstream(&p, &raw, &request, answer).await;
        assert_eq!(
            header(&head, "x-test-trusted-client"),
            Some("203.0.113.10"),
            "{kind}"
        );
        assert_eq!(
            header(&head, "x-forwarded-for"),
            Some("6.6.6.6, 203.0.113.10, 10.0.0.1, 127.0.0.1"),
            "{kind}"
        );
        assert_eq!(header(&head, "x-forwarded-proto"), Some("https"), "{kind}");
    }
    // Fewer addresses than trusted hops: the peer is all that is known.
    let head = seen_upstream(&p, &raw, &plain("X-Forwarded-For: 6.6.6.6\r\n"), OK).await;
    assert_eq!(header(&head, "x-test-trusted-client"), Some("127.0.0.1"));
}

/// Generating, preserving and replacing request ids.
#[tokio::test]
async fn request_ids_replaced_when_not_preserved() {
    let raw = RawUpstream::bind().await;
    let layer = ForwardedLayer::new().preserve_external_request_id(false);
    let p = proxy(layer, every_path_to(&raw)).await;
    for (kind, request, answer) in kinds("X-Request-Id: trace-42\r\n") {
        let head = seen_upstream(&p, &raw, &request, answer).await;
        let id = header(&head, "x-request-id").unwrap();
        assert!(is_uuid_v4(id), "{kind}: {id}");
        assert_eq!(header(&head, "x-test-request-id"), Some(id), "{kind}");
    }
}

/// Each header switched off: the client's values pass untouched and nothing is added.
#[tokio::test]
async fn each_header_switched_off() {
    let raw = RawUpstream::bind().await;
    let layer = ForwardedLayer::new()
        .use_remote_address(false)
        .x_forwarded_proto(false)
        .generate_request_id(false);
    let p = proxy(layer, every_path_to(&raw)).await;
    for (kind, request, answer) in kinds("") {
        let head = seen_upstream(&p, &raw, &request, answer).await;
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-request-id",
            "x-test-request-id",
        ] {
            assert_eq!(header(&head, name), None, "{kind}: {name} in {head}");
        }
        // Not the edge and no XFF: the peer is the client all the same.
        assert_eq!(
            header(&head, "x-test-trusted-client"),
            Some("127.0.0.1"),
            "{kind}"
        );
    }
    let given = "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\nX-Request-Id: trace-42\r\n";
    for (kind, request, answer) in kinds(given) {
        let head = seen_upstream(&p, &raw, &request, answer).await;
        assert_eq!(header(&head, "x-forwarded-for"), Some("192.0.2.1"), "{kind}");
        assert_eq!(
            header(&head, "x-test-trusted-client"),
            Some("192.0.2.1"),
            "{kind}"
        );
        assert_eq!(header(&head, "x-forwarded-proto"), Some("https"), "{kind}");
        assert_eq!(header(&head, "x-request-id"), Some("trace-42"), "{kind}");
        assert_eq!(header(&head, "x-test-request-id"), Some("trace-42"), "{kind}");
    }
}

/// A listener said to be TLS forwards `https`.
#[tokio::test]
async fn an_https_listener() {
    let raw = RawUpstream::bind().await;
    let p = proxy(ForwardedLayer::new().https(true), every_path_to(&raw)).await;
    let head = seen_upstream(&p, &raw, &plain("X-Forwarded-Proto: http\r\n"), OK).await;
    assert_eq!(header(&head, "x-forwarded-proto"), Some("https"));
}

/// A client may not nominate the added headers as hop-by-hop to strip them: refused, and the
/// upstream never contacted.
#[tokio::test]
async fn nominating_the_added_headers_is_refused() {
    let raw = RawUpstream::bind().await;
    let p = proxy(ForwardedLayer::new(), every_path_to(&raw)).await;
    for name in ["X-Forwarded-For", "x-forwarded-proto", "X-Request-Id"] {
        let (head, _) = fetch(p.addr, &plain(&format!("Connection: {name}\r\n"))).await;
        assert_eq!(status(&head), 400, "{name}: {head}");
    }
    raw.assert_untouched("nominated forwarded headers").await;
}
