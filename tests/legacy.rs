//! Legacy WebSocket routes (`use_websocket`) over real sockets: the handshake bytes, the
//! refusal path that Envoy's old mode left open, tunnel lifecycle, connect retries, drain,
//! and a real WebSocket client and server.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod route_support;
mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tower::ServiceBuilder;
use tower_http::set_header::SetRequestHeaderLayer;

use route_support::*;
use support::*;
use switchback::{
    Cluster, Drain, Endpoint, Forward, LegacyConfig, Route, RouteLayer, Runtime, TunnelEnd, TunnelMode,
    UpgradeConfig, UpgradeRouterLayer,
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn ws_upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

struct Setup {
    proxy: Proxy,
    events: Events,
    drain: Drain,
}

/// Routes, then a router whose listener *disables* WebSocket (legacy routes bypass that),
/// then a default chain that marks what passes through it, then `Forward::routed()`.
async fn setup(routes: Vec<Route>) -> Setup {
    let events = Events::default();
    let drain = Drain::new();
    let router = UpgradeRouterLayer::builder()
        .upgrade_config(UpgradeConfig::new("websocket").enabled(false))
        .observer(events.observer())
        .drain(drain.clone())
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(routes, Runtime::new()).unwrap())
        .layer(router)
        .layer(SetRequestHeaderLayer::appending(
            HeaderName::from_static("x-chain"),
            HeaderValue::from_static("default"),
        ))
        .service(Forward::routed());
    Setup {
        proxy: start(stack).await,
        events,
        drain,
    }
}

fn legacy_route(upstream: &RawUpstream) -> Route {
    Route::prefix("/")
        .cluster(cluster(upstream.addr))
        .use_websocket(LegacyConfig::new())
}

/// Opens a legacy tunnel; returns the client and upstream ends, both past the 101.
async fn open(s: &Setup, raw: &RawUpstream) -> (TcpStream, TcpStream) {
    let mut client = raw_client(s.proxy.addr, ws_upgrade("/chat").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(WS_101).await.unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 101, "{head}");
    assert!(rest.is_empty());
    (client, up)
}

/// Asserts nothing arrives on `up` for a moment (or it reads EOF).
async fn assert_silent(up: &mut TcpStream) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(300), up.read(&mut buf)).await {
        Err(_) | Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("upstream received {:?}", String::from_utf8_lossy(&buf[..n])),
    }
}

/// The upstream receives the rewritten head (path, `Host`, the original path, upgrade headers
/// kept, no framing headers added) and, only after its 101, the bytes the client sent early.
/// The client receives the upstream's 101 and the bytes that came in the same segment.
#[tokio::test]
async fn handshake_bytes_are_exact_both_ways() {
    let raw = RawUpstream::bind().await;
    let route = Route::prefix("/chat")
        .prefix_rewrite("/ws")
        .host_rewrite_literal("chat.internal")
        .cluster(cluster(raw.addr))
        .use_websocket(LegacyConfig::new());
    let s = setup(vec![route]).await;
    let request = format!("{}EARLY", ws_upgrade("/chat/room?id=7"));
    let mut client = raw_client(s.proxy.addr, request.as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, extra) = read_head(&mut up).await;
    assert_eq!(
        head,
        format!(
            "GET /ws/room?id=7 HTTP/1.1\r\nhost: chat.internal\r\nsec-websocket-version: 13\r\n\
             x-envoy-original-path: /chat/room?id=7\r\nsec-websocket-key: {KEY}\r\n\
             connection: upgrade\r\nupgrade: websocket\r\n\r\n"
        )
    );
    assert!(extra.is_empty(), "client bytes came before the 101: {extra:?}");
    assert_silent(&mut up).await;

    up.write_all(&[WS_101, b"HELLO"].concat()).await.unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(
        head,
        "HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
         connection: upgrade\r\nupgrade: websocket\r\n\r\n"
    );
    assert_eq!(read_n(&mut client, rest, 5).await, b"HELLO");
    assert_eq!(read_n(&mut up, Vec::new(), 5).await, b"EARLY");

    // Raw bytes, not WebSocket frames: nothing is interpreted.
    client.write_all(b"\x00\xffnot a frame").await.unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 13).await, b"\x00\xffnot a frame");
    assert_eq!(s.events.opened(), [TunnelMode::Legacy]);
}

/// On a legacy route, a request that is not a WebSocket upgrade is ordinary HTTP through the
/// default chain; the WebSocket upgrade on the same route skips that chain.
#[tokio::test]
async fn other_requests_on_a_legacy_route_take_the_default_chain() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;

    let mut client = raw_client(s.proxy.addr, b"GET /page HTTP/1.1\r\nHost: front\r\n\r\n").await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(head.starts_with("GET /page HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(&head, "x-chain"), Some("default"), "{head}");
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 200);
    assert_eq!(read_n(&mut client, rest, 2).await, b"ok");

    let _client = raw_client(s.proxy.addr, ws_upgrade("/chat").as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(
        header(&head, "x-chain").is_none(),
        "the upgrade went through a chain: {head}"
    );
}

/// The listener disables WebSocket: a route without `use_websocket` follows that and refuses,
/// a legacy route bypasses it.
#[tokio::test]
async fn legacy_routes_bypass_the_decision_table() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![
        Route::prefix("/new").cluster(cluster(raw.addr)),
        legacy_route(&raw),
    ])
    .await;
    let mut client = raw_client(s.proxy.addr, ws_upgrade("/new").as_bytes()).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 403);
    open(&s, &raw).await;
}

/// Where Envoy's old mode left a raw pipe: the upstream refuses, the refusal reaches the
/// client with `Connection: close`, no byte the client sent after its request reaches the
/// upstream, and both connections close.
#[tokio::test]
async fn a_refusal_is_relayed_and_closes_both_connections() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n";
    let mut client = raw_client(
        s.proxy.addr,
        format!("{}{smuggled}", ws_upgrade("/chat")).as_bytes(),
    )
    .await;
    let mut up = raw.accept().await;
    let (_, extra) = read_head(&mut up).await;
    assert!(extra.is_empty());
    up.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied")
        .await
        .unwrap();

    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 403);
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let mut all = rest;
    all.extend(read_to_eof(&mut client).await);
    assert_eq!(all, b"denied", "the client connection closed after the refusal");
    assert_eq!(
        read_to_eof(&mut up).await,
        b"",
        "the upstream got no byte more, then EOF"
    );
    assert!(s.events.opened().is_empty());
}

/// The websocket-smuggle pattern on a legacy route: an upstream made to answer a bare `101`
/// (no `Upgrade`, no `Connection`, no `Sec-WebSocket-Accept`) opens no raw pipe. The client
/// gets a 502, and its smuggled request never reaches the upstream.
#[tokio::test]
async fn a_bare_101_is_a_502_and_nothing_passes() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;
    let smuggled = "GET /internal/admin HTTP/1.1\r\nHost: internal\r\n\r\n";
    for (case, answer) in [
        ("bare", "HTTP/1.1 101 Switching Protocols\r\n\r\n".to_owned()),
        (
            "no Connection: upgrade",
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n", switchback::websocket::accept_key(KEY.as_bytes())),
        ),
        (
            "a wrong accept key",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: eA==\r\n\r\n".to_owned(),
        ),
    ] {
        let request = format!("{}{smuggled}", ws_upgrade("/chat"));
        let mut client = raw_client(s.proxy.addr, request.as_bytes()).await;
        let mut up = raw.accept().await;
        let (_, extra) = read_head(&mut up).await;
        assert!(extra.is_empty(), "{case}");
        up.write_all(answer.as_bytes()).await.unwrap();
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 502, "{case}: {head}");
        read_to_eof(&mut client).await;
        assert_eq!(read_to_eof(&mut up).await, b"", "{case}: the upstream got nothing more");
    }
    assert!(s.events.opened().is_empty());
}

/// Draft 76 (hixie-76), which legacy routes serve: the client's 8 key bytes follow its head
/// undeclared and its server reads them before it answers. They go upstream with the head
/// (declared: `content-length: 8`); the bytes the client sends after them wait for the `101`,
/// whose 16-byte answer reaches the client; then frames pass both ways.
#[tokio::test]
async fn a_draft_76_handshake_sends_its_key_bytes_with_the_head() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;
    let head = "GET /demo HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\nUpgrade: WebSocket\r\n\
                Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\nOrigin: http://example.com\r\n\r\n";
    // The key bytes, then a first frame sent before any answer.
    let mut client = raw_client(s.proxy.addr, format!("{head}^n:ds[4U\x00early\u{ff}").as_bytes()).await;
    let mut up = raw.accept().await;
    let (sent, extra) = read_head(&mut up).await;
    assert_eq!(header(&sent, "content-length"), Some("8"), "{sent}");
    assert_eq!(header(&sent, "sec-websocket-key1"), Some("4 @1  46546xW%0l 1 5"));
    assert_eq!(read_n(&mut up, extra, 8).await, b"^n:ds[4U");
    assert_silent(&mut up).await;

    let answer = b"HTTP/1.1 101 WebSocket Protocol Handshake\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Origin: http://example.com\r\nSec-WebSocket-Location: ws://example.com/demo\r\n\r\n8jKS'y:G*Co,Wxa-";
    up.write_all(answer).await.unwrap();
    let (got, rest) = read_head(&mut client).await;
    assert_eq!(status(&got), 101, "{got}");
    assert_eq!(
        header(&got, "sec-websocket-location"),
        Some("ws://example.com/demo")
    );
    assert_eq!(read_n(&mut client, rest, 16).await, b"8jKS'y:G*Co,Wxa-");
    assert_eq!(read_n(&mut up, Vec::new(), 7).await, "\x00early\u{ff}".as_bytes());
    up.write_all(b"\x00hi\xff").await.unwrap();
    assert_eq!(read_n(&mut client, Vec::new(), 4).await, b"\x00hi\xff");
    assert_eq!(s.events.opened(), [TunnelMode::Legacy]);
}

/// Draft 75 and others that send no key at all: the `101` is held to `Upgrade` and
/// `Connection` only, and the tunnel opens.
#[tokio::test]
async fn a_keyless_old_draft_still_tunnels() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;
    let head = "GET /demo HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\
                Origin: http://example.com\r\n\r\n";
    let mut client = raw_client(s.proxy.addr, head.as_bytes()).await;
    let mut up = raw.accept().await;
    let (sent, extra) = read_head(&mut up).await;
    assert!(
        extra.is_empty() && header(&sent, "content-length").is_none(),
        "{sent}"
    );
    assert!(
        header(&sent, "sec-websocket-key").is_none(),
        "legacy routes add no key: {sent}"
    );
    up.write_all(
        b"HTTP/1.1 101 Web Socket Protocol Handshake\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, _) = read_head(&mut client).await;
    assert_eq!(status(&got), 101, "{got}");
    client.write_all(b"\x00hello\xff").await.unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 7).await, b"\x00hello\xff");
}

/// The upstream closes: what it sent still reaches the client, then the client sees EOF.
#[tokio::test]
async fn upstream_close_reaches_the_client_after_its_data() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;
    let (mut client, mut up) = open(&s, &raw).await;
    up.write_all(b"last words").await.unwrap();
    drop(up);
    assert_eq!(read_to_eof(&mut client).await, b"last words");
    drop(client);
    let (mode, stats) = s.events.closed(1).await;
    assert_eq!(mode, TunnelMode::Legacy);
    assert_eq!(stats.end, TunnelEnd::UpstreamClosed);
    assert_eq!(stats.downstream_bytes, 10);
}

/// The client closes: what it sent still reaches the upstream, then the upstream sees EOF.
#[tokio::test]
async fn client_close_reaches_the_upstream_after_its_data() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;
    let (mut client, mut up) = open(&s, &raw).await;
    client.write_all(b"bye").await.unwrap();
    drop(client);
    assert_eq!(read_to_eof(&mut up).await, b"bye");
    drop(up);
    assert_eq!(s.events.closed(1).await.1.end, TunnelEnd::ClientClosed);
}

/// The idle timeout comes from the legacy config, else from the route.
#[tokio::test]
async fn idle_timeout_from_the_legacy_config_or_the_route() {
    let short = Duration::from_millis(200);
    for (name, route) in [
        (
            "legacy config",
            Route::prefix("/")
                .no_idle_timeout()
                .use_websocket(LegacyConfig::new().idle_timeout(short)),
        ),
        (
            "route",
            Route::prefix("/")
                .idle_timeout(short)
                .use_websocket(LegacyConfig::new()),
        ),
    ] {
        let raw = RawUpstream::bind().await;
        let s = setup(vec![route.cluster(cluster(raw.addr))]).await;
        let (mut client, mut up) = open(&s, &raw).await;
        assert_eq!(read_to_eof(&mut client).await, b"", "{name}");
        assert_eq!(read_to_eof(&mut up).await, b"", "{name}");
        assert_eq!(s.events.closed(1).await.1.end, TunnelEnd::IdleTimeout, "{name}");
    }
}

/// A dead first endpoint is skipped with two attempts; with one, the client gets `504`.
#[tokio::test]
async fn max_connect_attempts_skips_a_dead_endpoint() {
    let raw = RawUpstream::bind().await;
    let dead = dead_addr().await;
    let endpoints = || {
        [
            Endpoint::new(dead.to_string()),
            Endpoint::new(raw.addr.to_string()),
        ]
    };
    let route = |attempts| {
        Route::prefix("/")
            .cluster(Cluster::new("two", endpoints()))
            .use_websocket(LegacyConfig::new().max_connect_attempts(attempts))
    };

    let s = setup(vec![route(1)]).await;
    let mut client = raw_client(s.proxy.addr, ws_upgrade("/chat").as_bytes()).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 504);
    assert_eq!(header(&head, "connection"), Some("close"));

    let s = setup(vec![route(2)]).await;
    open(&s, &raw).await;
}

/// No cluster, or one without endpoints: `503`. Nothing listening: `504`.
#[tokio::test]
async fn no_upstream_is_503_and_a_failed_connect_is_504() {
    let dead = dead_addr().await;
    let s = setup(vec![
        Route::prefix("/none").use_websocket(LegacyConfig::new()),
        Route::prefix("/empty")
            .cluster(Cluster::new("empty", []))
            .use_websocket(LegacyConfig::new()),
        Route::prefix("/dead")
            .cluster(cluster(dead))
            .use_websocket(LegacyConfig::new()),
    ])
    .await;
    for (path, expected) in [("/none", 503), ("/empty", 503), ("/dead", 504)] {
        let mut client = raw_client(s.proxy.addr, ws_upgrade(path).as_bytes()).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), expected, "{path}");
        assert_eq!(header(&head, "connection"), Some("close"), "{path}");
    }
}

/// The route's `timeout` does not apply to legacy tunnels; the idle timeout bounds the wait
/// for an answer instead.
#[tokio::test]
async fn the_route_timeout_does_not_apply_but_the_idle_timeout_does() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![
        Route::prefix("/slow")
            .timeout(Duration::from_millis(50))
            .cluster(cluster(raw.addr))
            .use_websocket(LegacyConfig::new()),
        Route::prefix("/mute")
            .cluster(cluster(raw.addr))
            .use_websocket(LegacyConfig::new().idle_timeout(Duration::from_millis(200))),
    ])
    .await;

    let mut client = raw_client(s.proxy.addr, ws_upgrade("/slow").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.write_all(WS_101).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 101);

    let mut client = raw_client(s.proxy.addr, ws_upgrade("/mute").as_bytes()).await;
    let _up = raw.accept().await; // never answers
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 504);
}

/// The route's cluster choice (here by weight) is what the legacy tunnel connects to.
#[tokio::test]
async fn legacy_tunnels_go_where_the_route_sends_them() {
    let raw = RawUpstream::bind().await;
    let dead = dead_addr().await;
    let s = setup(vec![
        Route::prefix("/")
            .weighted_clusters([(cluster(dead), 0), (cluster(raw.addr), 1)])
            .use_websocket(LegacyConfig::new()),
    ])
    .await;
    for _ in 0..5 {
        open(&s, &raw).await;
    }
}

/// `auto_host_rewrite` applies to the endpoint the legacy tunnel connects to.
#[tokio::test]
async fn auto_host_rewrite_on_a_legacy_route() {
    let raw = RawUpstream::bind().await;
    let endpoint = Endpoint::new(raw.addr.to_string()).hostname("chat.internal");
    let s = setup(vec![
        Route::prefix("/")
            .auto_host_rewrite(true)
            .cluster(Cluster::new("chat", [endpoint]))
            .use_websocket(LegacyConfig::new()),
    ])
    .await;
    let _client = raw_client(s.proxy.addr, ws_upgrade("/chat").as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert_eq!(header(&head, "host"), Some("chat.internal"), "{head}");
}

/// A drain refuses new legacy upgrades with `503`, waits for open legacy tunnels, and closes
/// them at the deadline with `1001 Going Away` each way.
#[tokio::test]
async fn drain_covers_legacy_tunnels() {
    let raw = RawUpstream::bind().await;
    let s = setup(vec![legacy_route(&raw)]).await;
    let (mut client, mut up) = open(&s, &raw).await;
    assert_eq!(s.drain.active(), 1);

    let drain = s.drain.clone();
    let drained = tokio::spawn(async move { drain.drain(Duration::from_millis(300)).await });
    while !s.drain.is_draining() {
        tokio::task::yield_now().await;
    }
    let mut late = raw_client(s.proxy.addr, ws_upgrade("/chat").as_bytes()).await;
    let (head, _) = read_head(&mut late).await;
    assert_eq!(status(&head), 503);

    assert_eq!(read_to_eof(&mut client).await, [0x88, 0x02, 0x03, 0xe9]);
    let to_upstream = read_to_eof(&mut up).await;
    assert_eq!(to_upstream.len(), 8, "a masked close frame: {to_upstream:?}");
    assert_eq!(to_upstream[..2], [0x88, 0x82]);
    let outcome = within(drained).await.unwrap();
    assert_eq!(outcome.closed, 1);
    assert_eq!(s.events.closed(1).await.1.end, TunnelEnd::Drain);
}

/// A real WebSocket client through a legacy route to a real WebSocket server.
#[tokio::test]
async fn tungstenite_through_a_legacy_route() {
    let mut echo = ws_echo().await;
    let s = setup(vec![
        Route::prefix("/")
            .cluster(cluster(echo.addr))
            .use_websocket(LegacyConfig::new()),
    ])
    .await;
    let tcp = TcpStream::connect(s.proxy.addr).await.unwrap();
    let (mut ws, res) = within(tokio_tungstenite::client_async(
        format!("ws://{}/chat", s.proxy.addr),
        tcp,
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), 101);
    for msg in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(100_000)),
    ] {
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(within(ws.next()).await.unwrap().unwrap(), msg);
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    assert_eq!(within(echo.close_codes.recv()).await, Some(1000));
    // The server ends the TCP connection after the close handshake; the client follows.
    while let Some(Ok(_)) = within(ws.next()).await {}
    drop(ws);
    let (mode, _) = s.events.closed(1).await;
    assert_eq!(mode, TunnelMode::Legacy);
}
