//! Header hygiene and the upgrade-smuggling defences, with the exact bytes a client or a
//! hostile upstream would send, over raw sockets.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

use support::*;
use switchback::{Forward, RouteUpgrades, UpgradeConfig, UpgradeRouterLayer};

async fn proxy_to(upstream: std::net::SocketAddr, router: UpgradeRouterLayer) -> Proxy {
    start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster(upstream))),
    )
    .await
}

fn foo_router() -> UpgradeRouterLayer {
    UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .upgrade("foo")
        .build()
        .unwrap()
}

/// Asserts nothing more arrives on `up`: it reads EOF or stays silent.
async fn assert_silent(up: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(300), up.read(&mut buf)).await {
        Err(_) | Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("upstream received {:?}", String::from_utf8_lossy(&buf[..n])),
    }
}

/// The classic smuggling attempt: an upgrade the upstream refuses, with a second request
/// pipelined behind it. No tunnel opens, the upstream never sees the pipelined bytes, the
/// refusal reaches the client without upgrade headers, and the connection closes.
#[tokio::test]
async fn a_refused_upgrade_opens_nothing_and_pipelined_bytes_never_reach_the_upstream() {
    for answer in [
        "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: foo\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 426 Upgrade Required\r\nConnection: upgrade\r\nUpgrade: foo\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 404 Not Found\r\nUpgrade: foo\r\nContent-Length: 9\r\n\r\nnot found",
    ] {
        let raw = RawUpstream::bind().await;
        let proxy = proxy_to(raw.addr, foo_router()).await;
        let smuggled = "GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n";
        let mut client = raw_client(proxy.addr, format!("{}{smuggled}", foo_upgrade("/x")).as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, extra) = read_head(&mut up).await;
        assert!(head.starts_with("GET /x HTTP/1.1\r\n"));
        assert!(
            extra.is_empty(),
            "pipelined bytes reached the upstream with the head: {extra:?}"
        );
        up.write_all(answer.as_bytes()).await.unwrap();

        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), status(answer), "{head}");
        assert!(header(&head, "upgrade").is_none(), "{head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{head}");
        read_to_eof(&mut client).await;
        assert_silent(&mut up).await;
    }
}

#[tokio::test]
async fn a_101_for_a_protocol_the_client_did_not_offer_is_a_502() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let mut client = raw_client(proxy.addr, format!("{}SMUGGLED", foo_upgrade("/x")).as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: bar\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 502);
    read_to_eof(&mut client).await;
    assert_silent(&mut up).await;
}

#[tokio::test]
async fn a_101_without_connection_upgrade_is_a_502() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let mut client = raw_client(proxy.addr, foo_upgrade("/x").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 502);
}

/// A 101 to a request that asked for no upgrade is never trusted.
#[tokio::test]
async fn a_101_to_a_plain_request_is_a_502() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let mut client = raw_client(proxy.addr, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(FOO_101).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 502);
}

/// A `Connection` line with a byte outside ASCII in one of its tokens still nominates the
/// others: before, the whole line was skipped, and `X-Secret` below, hop-by-hop by the
/// client's word, reached the upstream. (Found by the `head_normalise` fuzz target.)
#[tokio::test]
async fn a_connection_nomination_next_to_an_odd_byte_is_still_removed() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req = b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: X-Secret, caf\xe9\r\nX-Secret: 1\r\nX-Kept: 1\r\n\r\n";
    let mut client = raw_client(proxy.addr, req).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(header(&head, "x-secret").is_none(), "{head}");
    assert!(header(&head, "connection").is_none(), "{head}");
    assert_eq!(header(&head, "x-kept"), Some("1"), "{head}");
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 200);
}

/// `h2c` is stripped wherever it appears; the request goes on as plain HTTP.
#[tokio::test]
async fn h2c_is_stripped_and_the_request_goes_on_as_plain_http() {
    for upgrade in ["h2c", "H2C", "h2c, H2c"] {
        let raw = RawUpstream::bind().await;
        let proxy = proxy_to(raw.addr, foo_router()).await;
        let req = format!(
            "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, _) = read_head(&mut up).await;
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("h2c"), "{head}");
        assert!(!lower.contains("http2-settings"), "{head}");
        assert!(
            header(&head, "upgrade").is_none() && header(&head, "connection").is_none(),
            "{head}"
        );
        up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
            .await
            .unwrap();
        let (head, body) = read_head(&mut client).await;
        assert_eq!(status(&head), 200);
        assert_eq!(read_n(&mut client, body, 5).await, b"plain");
    }
}

/// When `h2c` is listed with a real token, the real token is what is judged.
#[tokio::test]
async fn h2c_next_to_an_unknown_token_leaves_the_unknown_token_to_be_refused() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c, bar\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 403);
}

/// RFC 2817 clients offer `Upgrade: TLS/1.2` on plain requests; the default ignore set
/// serves them as plain HTTP instead of refusing them.
#[tokio::test]
async fn tls_upgrade_offers_are_ignored_by_default() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req = "GET /tls HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: TLS/1.2\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(header(&head, "upgrade").is_none(), "{head}");
    up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    assert_eq!(status(&read_head(&mut client).await.0), 204);
}

/// An unknown or disabled type gets 403 naming the reason, and the connection closes: a
/// request pipelined behind it is never answered.
#[tokio::test]
async fn unknown_and_disabled_types_get_403_and_the_connection_closes() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade_config(UpgradeConfig::new("foo").enabled(false))
        .build()
        .unwrap();
    let proxy = proxy_to(raw.addr, router).await;
    for (upgrade, reason) in [("bar", "not accepted"), ("Foo", "disabled")] {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: {upgrade}\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let all = String::from_utf8(read_to_eof(&mut client).await).unwrap();
        assert!(all.starts_with("HTTP/1.1 403"), "{all}");
        assert!(all.contains(reason), "{all}");
        assert_eq!(
            all.matches("HTTP/1.1").count(),
            1,
            "the pipelined request was served: {all}"
        );
    }
}

/// Envoy's route overrides end to end: a route can enable a type the listener lacks and
/// disable one the listener enables.
#[tokio::test]
async fn route_overrides_enable_and_disable_types() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .build()
        .unwrap();
    let overrides = tower::util::MapRequestLayer::new(|mut req: http::Request<hyper::body::Incoming>| {
        let o = match req.uri().path() {
            "/foo-on" => RouteUpgrades::new([("foo", true)]).unwrap(),
            _ => RouteUpgrades::new([("websocket", false)]).unwrap(),
        };
        req.extensions_mut().insert(o);
        req
    });
    let stack = ServiceBuilder::new()
        .layer(overrides)
        .layer(router)
        .service(Forward::new(cluster(raw.addr)));
    let proxy = start(stack).await;

    let mut client = raw_client(proxy.addr, foo_upgrade("/foo-on").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(FOO_101).await.unwrap();
    assert_eq!(status(&read_head(&mut client).await.0), 101);

    let req = "GET /ws-off HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let all = String::from_utf8(read_to_eof(&mut client).await).unwrap();
    assert!(
        all.starts_with("HTTP/1.1 403") && all.contains("disabled on this route"),
        "{all}"
    );
}

/// `Connection` may not nominate Host, the framing headers or headers the proxy adds.
#[tokio::test]
async fn connection_nominating_protected_headers_is_a_400() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("foo")
        .protect_header(http::HeaderName::from_static("x-proxied-by"))
        .build()
        .unwrap();
    let proxy = proxy_to(raw.addr, router).await;
    for nominated in ["Host", "content-length", "Transfer-Encoding", "x-proxied-by"] {
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, {nominated}\r\n\r\n");
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 400, "{nominated}: {head}");
    }
}

/// Hop-by-hop headers go nowhere, in either direction; `Connection`-nominated ones neither.
#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req = "GET /h HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\n\
               Proxy-Connection: keep-alive\r\nTE: gzip\r\nTrailer: x-t\r\nx-hop: secret\r\nx-end: kept\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    for gone in ["keep-alive", "proxy-connection", "te", "trailer", "x-hop"] {
        assert!(header(&head, gone).is_none(), "{gone} forwarded: {head}");
    }
    assert_eq!(header(&head, "x-end"), Some("kept"));
    up.write_all(
        b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nx-secret: 1\r\nKeep-Alive: timeout=1\r\nUpgrade: foo\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_head(&mut client).await;
    for gone in ["x-secret", "keep-alive", "upgrade"] {
        assert!(header(&head, gone).is_none(), "{gone} relayed: {head}");
    }
}

/// HTTP/1.0 never upgrades: the header is stripped and the request served plainly.
#[tokio::test]
async fn http10_requests_never_upgrade() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req = "GET /old HTTP/1.0\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(header(&head, "upgrade").is_none(), "{head}");
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&read_head(&mut client).await.0), 200);
}

/// Bytes that arrive with the 101 and bytes the client sends right behind its request are
/// all delivered, in order, and the upstream gets the client's only after it said 101.
#[tokio::test]
async fn early_bytes_both_ways_are_never_lost() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let mut client = raw_client(
        proxy.addr,
        format!("{}client-early", foo_upgrade("/e")).as_bytes(),
    )
    .await;
    let mut up = raw.accept().await;
    let (_, extra) = read_head(&mut up).await;
    assert!(extra.is_empty(), "client bytes arrived before the 101: {extra:?}");
    assert_silent(&mut up).await;
    up.write_all(&[FOO_101, b"upstream-early"].concat())
        .await
        .unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 12).await, b"client-early");
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 101);
    assert_eq!(read_n(&mut client, rest, 14).await, b"upstream-early");
}

/// An upgrade request may carry a body of its own (Envoy's "early data"): it reaches the
/// upstream with the head, framed as declared, and the tunnel follows.
#[tokio::test]
async fn an_upgrade_request_body_is_sent_with_the_head() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req =
        "GET /b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 5\r\n\r\nhello";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, extra) = read_head(&mut up).await;
    assert_eq!(header(&head, "content-length"), Some("5"), "{head}");
    assert_eq!(read_n(&mut up, extra, 5).await, b"hello");
    up.write_all(FOO_101).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 101);
    client.write_all(b"after").await.unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 5).await, b"after");
}

/// A `Content-Length` body still on its way does not hold the upstream's `101` back (Envoy
/// relays it at once): the client gets the `101`, the rest of the body reaches the upstream
/// next, and only then the tunnel bytes. On the joined path and the pumped one.
#[tokio::test]
async fn an_unfinished_upgrade_body_does_not_hold_the_101_back() {
    for layered in [false, true] {
        let raw = RawUpstream::bind().await;
        let proxy = if layered {
            start(
                ServiceBuilder::new()
                    .layer(foo_router())
                    .service(touch_bodies(Forward::new(cluster(raw.addr)))),
            )
            .await
        } else {
            proxy_to(raw.addr, foo_router()).await
        };
        let req = "GET /b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 10\r\n\r\nabcd";
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, extra) = read_head(&mut up).await;
        assert_eq!(header(&head, "content-length"), Some("10"), "{head}");
        assert_eq!(read_n(&mut up, extra, 4).await, b"abcd");
        up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\nfirst")
            .await
            .unwrap();
        let (head, rest) = within(read_head(&mut client)).await;
        assert_eq!(status(&head), 101, "layered: {layered}: {head}");

        client.write_all(b"efghijTUNNEL").await.unwrap();
        assert_eq!(
            read_n(&mut up, Vec::new(), 12).await,
            b"efghijTUNNEL",
            "layered: {layered}"
        );
        up.write_all(b"-down").await.unwrap();
        assert_eq!(
            read_n(&mut client, rest, 10).await,
            b"first-down",
            "layered: {layered}"
        );
    }
}

/// An upgrade body that never finishes after the `101` is bounded: both connections close
/// at the tunnel's idle timeout, and the upstream never gets a tunnel byte.
#[tokio::test]
async fn an_upgrade_body_that_never_ends_is_bounded() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("foo")
        .tunnel(switchback::TunnelConfig::new().idle_timeout(Duration::from_millis(300)))
        .build()
        .unwrap();
    let proxy = proxy_to(raw.addr, router).await;
    let req =
        "GET /b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 10\r\n\r\nabcd";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (_, extra) = read_head(&mut up).await;
    assert_eq!(read_n(&mut up, extra, 4).await, b"abcd");
    up.write_all(FOO_101).await.unwrap();
    let (head, _) = within(read_head(&mut client)).await;
    assert_eq!(status(&head), 101, "{head}");
    let started = tokio::time::Instant::now();
    within(read_to_eof(&mut client)).await;
    assert!(within(read_to_eof(&mut up)).await.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

/// An HTTP/1.0 CONNECT is a CONNECT too, not a plain request: down the plain path, hyper's
/// client would send the upstream `CONNECT <the upstream's own address> HTTP/1.1`, a tunnel
/// request nobody asked for, with the client's bytes behind it. It is refused as an HTTP/1.1
/// CONNECT is where the type is not allowed, and where it is, it goes on as the client's own
/// CONNECT, with nothing behind it until the upstream says 2xx. (Found by the
/// `head_normalise` fuzz target: normalising an HTTP/1.0 CONNECT twice refused it the second
/// time.)
#[tokio::test]
async fn an_http_1_0_connect_is_handled_like_any_connect() {
    const REQUEST: &[u8] =
        b"CONNECT example.com:443 HTTP/1.0\r\nHost: example.com:443\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let mut client = raw_client(proxy.addr, REQUEST).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 403, "{head}");
    read_to_eof(&mut client).await;
    raw.assert_untouched("an HTTP/1.0 CONNECT").await;

    let router = UpgradeRouterLayer::builder().upgrade("connect").build().unwrap();
    let proxy = proxy_to(raw.addr, router).await;
    let mut client = raw_client(proxy.addr, REQUEST).await;
    let mut up = raw.accept().await;
    let (head, rest) = read_head(&mut up).await;
    assert!(head.starts_with("CONNECT example.com:443 HTTP/1.1\r\n"), "{head}");
    assert!(rest.is_empty(), "{rest:?}");
    up.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 403, "{head}");
    read_to_eof(&mut client).await;
    assert_silent(&mut up).await;
}

/// A body that leaves out trailers, or ends at them: layers a proxy may well have.
struct Trailers<B> {
    body: B,
    end_at_trailers: bool,
}

impl<B> http_body::Body for Trailers<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        loop {
            match std::task::ready!(std::pin::Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_trailers() && self.end_at_trailers => {
                    return std::task::Poll::Ready(None);
                }
                Some(Ok(frame)) if frame.is_trailers() => {}
                other => return std::task::Poll::Ready(other),
            }
        }
    }
}

/// The end of an upgrade request's own body (chunked, with trailers) and the start of its
/// tunnel bytes (sent right behind the request) stay apart through real body layers: a body
/// limit, a map over the bytes, one that drops trailers and one that ends the body at them.
/// The upstream gets the HTTP body with the head and the tunnel bytes only after its `101`,
/// both as the layer made them.
#[tokio::test]
async fn the_end_of_an_upgrade_body_survives_any_body_layer() {
    use http_body_util::BodyExt;
    use switchback::Body;
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::map_request_body::MapRequestBodyLayer;

    fn upper(b: Body) -> Body {
        Body::new(b.map_frame(|f| f.map_data(|d| bytes::Bytes::from(d.to_ascii_uppercase()))))
    }
    fn trailers(end_at_trailers: bool) -> impl Fn(Body) -> Body + Clone {
        move |body| {
            Body::new(Trailers {
                body,
                end_at_trailers,
            })
        }
    }
    let req = "GET /b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\
               Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-trailer: t\r\n\r\nearly";
    for layer in ["limit", "map", "drop trailers", "end at trailers"] {
        let raw = RawUpstream::bind().await;
        let forward = Forward::new(cluster(raw.addr));
        let stack = ServiceBuilder::new().layer(foo_router());
        let proxy = match layer {
            "limit" => start(stack.layer(RequestBodyLimitLayer::new(1 << 20)).service(forward)).await,
            "map" => start(stack.layer(MapRequestBodyLayer::new(upper)).service(forward)).await,
            "drop trailers" => {
                start(
                    stack
                        .layer(MapRequestBodyLayer::new(trailers(false)))
                        .service(forward),
                )
                .await
            }
            _ => {
                start(
                    stack
                        .layer(MapRequestBodyLayer::new(trailers(true)))
                        .service(forward),
                )
                .await
            }
        };
        let case = |s: &str| {
            if layer == "map" {
                s.to_ascii_uppercase()
            } else {
                s.to_owned()
            }
        };
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let mut up = raw.accept().await;
        let (head, extra) = read_head(&mut up).await;
        assert_eq!(
            header(&head, "transfer-encoding"),
            Some("chunked"),
            "{layer}: {head}"
        );
        assert_eq!(
            read_chunked(&mut up, extra).await,
            case("hello").as_bytes(),
            "{layer}"
        );
        // Nothing of the tunnel before the 101.
        let mut probe = [0u8; 16];
        let early = tokio::time::timeout(Duration::from_millis(100), up.read(&mut probe)).await;
        assert!(early.is_err(), "{layer}: tunnel bytes before the 101: {early:?}");
        up.write_all(FOO_101).await.unwrap();
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 101, "{layer}");
        client.write_all(b"after").await.unwrap();
        assert_eq!(
            read_n(&mut up, Vec::new(), 10).await,
            case("earlyafter").as_bytes(),
            "{layer}"
        );
        up.write_all(b"down").await.unwrap();
        assert_eq!(read_n(&mut client, Vec::new(), 4).await, b"down", "{layer}");
    }
}

/// RFC 9112 §3.2: every HTTP/1.1 request has exactly one valid `Host`. Requests that break
/// that, or a WebSocket handshake that gives its key or version twice, are refused with 400
/// and the connection closes; nothing reaches the upstream. The exact bytes an attacker
/// would send.
#[tokio::test]
async fn requests_with_a_missing_double_or_bad_host_are_refused() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
    let cases = [
        ("no Host".to_owned(), "GET / HTTP/1.1\r\n\r\n".to_owned()),
        (
            "no Host, upgrade".to_owned(),
            format!("GET / HTTP/1.1\r\n{ws}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
        ),
        (
            "two equal Hosts".to_owned(),
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n".to_owned(),
        ),
        (
            "two Hosts".to_owned(),
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n".to_owned(),
        ),
        (
            "a Host list".to_owned(),
            "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n".to_owned(),
        ),
        (
            "userinfo".to_owned(),
            "GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n".to_owned(),
        ),
        (
            "a path".to_owned(),
            "GET / HTTP/1.1\r\nHost: a.example/x\r\n\r\n".to_owned(),
        ),
        (
            "a bad port".to_owned(),
            "GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n".to_owned(),
        ),
        (
            "userinfo in the target".to_owned(),
            "GET http://user@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n".to_owned(),
        ),
        (
            "two WebSocket keys".to_owned(),
            format!(
                "GET / HTTP/1.1\r\nHost: a.example\r\n{ws}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n"
            ),
        ),
        (
            "two WebSocket versions".to_owned(),
            format!(
                "GET / HTTP/1.1\r\nHost: a.example\r\n{ws}Sec-WebSocket-Version: 8\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        ),
    ];
    for (name, req) in cases {
        // A second request behind the first must not be read either.
        let bytes = format!("{req}GET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n");
        let mut client = raw_client(proxy.addr, bytes.as_bytes()).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 400, "{name}: {head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{name}");
        read_to_eof(&mut client).await;
        raw.assert_untouched(&name).await;
    }
}

/// A target's authority becomes `Host` (RFC 9112 §3.2.2), so it must be a valid
/// `host[:port]` as `Host` must: a bad port, or an "authority" made of a comma, would reach the
/// upstream as a `Host` the proxy itself refuses. (Found by the `head_normalise` fuzz target:
/// `GET , HTTP/1.1` went upstream with `Host: ,`.)
#[tokio::test]
async fn a_target_authority_that_is_no_valid_host_is_refused() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    for target in [
        ",",
        "http://a.example:99999/",
        "http://a.example:/x",
        "a.example:http",
    ] {
        let bytes = format!(
            "GET {target} HTTP/1.1\r\nHost: a.example\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n"
        );
        let mut client = raw_client(proxy.addr, bytes.as_bytes()).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 400, "{target}: {head}");
        read_to_eof(&mut client).await;
        raw.assert_untouched(target).await;
    }
}

/// An absolute-form upgrade target with an empty path (`http://a.example#x`: the fragment
/// leaves no path) goes upstream as `/`, as a plain request does; before, the upgrade path
/// wrote an empty request target, `GET  HTTP/1.1`. (Found by the `head_normalise` fuzz
/// target: the head it wrote didn't re-parse.)
#[tokio::test]
async fn an_upgrade_target_without_a_path_goes_up_as_slash() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req =
        "GET http://a.example#x HTTP/1.1\r\nHost: a.example\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head:?}");
    up.write_all(FOO_101).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 101, "{head}");
}

/// An absolute-form target (RFC 9112 §3.2.2): its authority becomes `Host`, whatever `Host`
/// said, and the upstream gets the origin form.
#[tokio::test]
async fn an_absolute_form_target_replaces_host() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let mut client = raw_client(
        proxy.addr,
        b"GET http://target.example:8080/abs?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(head.starts_with("GET /abs?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(&head, "host"), Some("target.example:8080"), "{head}");
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    assert_eq!(status(&read_head(&mut client).await.0), 200);
}

/// `101` exists only in HTTP/1.1: an upstream's `HTTP/1.0 101` is a 502, not a tunnel.
#[tokio::test]
async fn an_http_1_0_101_is_a_502() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let mut client = raw_client(proxy.addr, foo_upgrade("/old").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(b"HTTP/1.0 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 502, "{head}");
    client.write_all(b"tunnel bytes").await.ok();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(100), up.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "client bytes reached the upstream: {rest:?}");
}

/// A client that sends nothing, or trickles its head, is closed once the request headers
/// timeout passes (counted from accept), and never reaches the upstream.
#[tokio::test]
async fn silent_and_trickling_clients_are_closed_in_time() {
    let raw = RawUpstream::bind().await;
    let limits = switchback::ClientLimits::new().request_headers_timeout(Duration::from_millis(300));
    let stack = ServiceBuilder::new()
        .layer(foo_router())
        .service(Forward::new(cluster(raw.addr)));
    let proxy = start_with(stack, limits).await;

    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut trickling = raw_client(proxy.addr, b"GET / HTTP/1.1\r\nHost: a.example\r\n").await;
    let trickle = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if trickling.write_all(b"x").await.is_err() {
                break;
            }
        }
    };
    let (silent_end, ()) = tokio::join!(read_to_eof(&mut silent), trickle);
    assert!(silent_end.is_empty(), "the silent client got {silent_end:?}");
    read_to_eof(&mut trickling).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    raw.assert_untouched("silent and trickling clients").await;
}

/// A request head past the size limit (60 KiB by default), or with more than 100 header
/// lines, is answered 431 and the connection closed; one within the limits goes through.
#[tokio::test]
async fn oversized_heads_are_refused_with_431() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a.example\r\n{many}\r\n");
    for (name, req) in [("64 KiB head", big), ("102 header lines", many)] {
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 431, "{name}: {head}");
        read_to_eof(&mut client).await;
        raw.assert_untouched(name).await;
    }
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(50 * 1024)
    );
    let mut client = raw_client(proxy.addr, fits.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert_eq!(header(&head, "x-big").map(str::len), Some(50 * 1024));
    up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    assert_eq!(status(&read_head(&mut client).await.0), 204);
}

/// A request line past the limit: 414.
#[tokio::test]
async fn an_oversized_request_line_is_a_414() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let req = format!(
        "GET /{} HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 414, "{head}");
}

/// An HTTP/2 connection whose first request never completes (a HEADERS frame without
/// END_HEADERS, and no CONTINUATION) is sent away once the request headers timeout passes.
#[tokio::test]
async fn an_http2_request_that_never_completes_its_headers_is_closed_in_time() {
    let raw = RawUpstream::bind().await;
    let limits = switchback::ClientLimits::new().request_headers_timeout(Duration::from_millis(300));
    let stack = ServiceBuilder::new()
        .layer(foo_router())
        .service(Forward::new(cluster(raw.addr)));
    let proxy = start_with(stack, limits).await;
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS, empty.
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // HEADERS on stream 1: END_STREAM but not END_HEADERS; one HPACK byte (:method GET).
    bytes.extend_from_slice(&[0, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82]);
    let started = tokio::time::Instant::now();
    let mut client = raw_client(proxy.addr, &bytes).await;
    read_to_eof(&mut client).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "closed before the timeout: {took:?}"
    );
    raw.assert_untouched("the unfinished HTTP/2 request").await;
}

/// In HTTP/2, `host` lines are ordinary headers next to `:authority` (RFC 9113 §8.3.1), and
/// the HTTP/1.1 request sent upstream keeps them: two of them, a list, or one naming another
/// host than `:authority` would reach the upstream as an ambiguous `Host`. Each is a 400 that
/// never reaches the upstream; one `host` that agrees goes through alone. (Found by the
/// `head_normalise` fuzz target: two `host` lines came out of the HTTP/2 path.)
#[tokio::test]
async fn http2_host_lines_that_disagree_with_the_authority_are_refused() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy_to(raw.addr, foo_router()).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = |hosts: &[&str]| {
        let mut req = http::Request::get("http://a.example/x");
        for host in hosts {
            req = req.header("host", *host);
        }
        req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()
    };
    for (name, hosts) in [
        ("two Hosts", &["a.example", "b.example"][..]),
        ("two equal Hosts", &["a.example", "a.example"][..]),
        ("a Host list", &["a.example, b.example"][..]),
        ("a Host unlike :authority", &["b.example"][..]),
    ] {
        let res = within(sender.send_request(request(hosts))).await.unwrap();
        assert_eq!(res.status(), 400, "{name}");
        raw.assert_untouched(name).await;
    }

    let sent = tokio::spawn(sender.send_request(request(&["A.example"])));
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");
    let hosts: Vec<_> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
        .collect();
    assert_eq!(hosts, ["host: A.example"], "{head}");
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let res = within(sent).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
}

/// `h2c` is never proxied (an ignored token is never an upgrade), and that holds for an
/// HTTP/2 extended CONNECT naming it as `:protocol` too: it is refused with 400 even where a
/// route or the listener would allow the type, and the upstream never sees `Upgrade: h2c`.
/// (Found by the `head_normalise` fuzz target: the HTTP/2 path turned `:protocol h2c` into an
/// HTTP/1.1 `Upgrade: h2c` handshake.)
#[tokio::test]
async fn an_http2_extended_connect_for_an_ignored_protocol_is_refused() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("h2c")
        .upgrade("tls/1.3")
        .build()
        .unwrap();
    let proxy = proxy_to(raw.addr, router).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    // The server announces SETTINGS_ENABLE_CONNECT_PROTOCOL in its first SETTINGS frame.
    support::spawn_once_extended_connect(conn).await;
    for protocol in ["h2c", "H2C", "tls/1.3"] {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}/x", proxy.addr))
            .version(http::Version::HTTP_2)
            .extension(hyper::ext::Protocol::from_static(protocol))
            .body(http_body_util::Empty::new())
            .unwrap();
        let res = within(sender.send_request(req)).await.unwrap();
        assert_eq!(res.status(), 400, "{protocol}");
        raw.assert_untouched(protocol).await;
    }
}

/// Two `Sec-WebSocket-Version` (or key) lines are refused on an HTTP/2 WebSocket as on an
/// HTTP/1.1 one: before, the HTTP/2 path sent both versions upstream in the handshake it
/// made. (Found by the `head_normalise` fuzz target: a second pass refused what the first
/// let through.)
#[tokio::test]
async fn an_http2_websocket_with_two_versions_is_refused() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .build()
        .unwrap();
    let proxy = proxy_to(raw.addr, router).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    // The server announces SETTINGS_ENABLE_CONNECT_PROTOCOL in its first SETTINGS frame.
    support::spawn_once_extended_connect(conn).await;
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/chat", proxy.addr))
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-version", "8")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let res = within(sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 400);
    raw.assert_untouched("two versions").await;
}
