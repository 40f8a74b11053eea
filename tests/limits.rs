//! The bounds on clients and tunnels, with the exact bytes over real sockets: the head and
//! idle timers on kept-alive HTTP/1 and HTTP/2 connections, a full listener that makes room
//! by closing a connection that sends nothing, and the tunnel caps.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;

use support::*;
use switchback::{ClientLimits, Forward, Route, RouteLayer, Runtime, UpgradeRouterLayer};

/// An upstream answering `200 ok` to every request, on kept-alive connections.
async fn ok_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn router() -> UpgradeRouterLayer {
    UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .upgrade("foo")
        .build()
        .unwrap()
}

async fn proxy(upstream: SocketAddr, router: UpgradeRouterLayer, limits: ClientLimits) -> Proxy {
    let stack = ServiceBuilder::new()
        .layer(router)
        .service(Forward::new(cluster(upstream)));
    start_with(stack, limits).await
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";

/// Sends a GET on a kept-alive connection and reads its `200 ok`.
async fn get_ok(client: &mut TcpStream) {
    client.write_all(GET).await.unwrap();
    let (head, rest) = within(read_head(client)).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(read_n(client, rest, 2).await, b"ok");
}

/// Whether `client` is still open: nothing arrives within 100 ms.
async fn still_open(client: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf))
        .await
        .is_err()
}

/// A kept-alive connection idle between requests outlives the request headers timeout and is
/// closed at the connection idle timeout; the head that follows an idle spell is timed from
/// its first byte.
#[tokio::test]
async fn an_idle_kept_alive_connection_waits_for_the_idle_timeout_and_a_late_head_for_its_own() {
    let limits = ClientLimits::new()
        .request_headers_timeout(Duration::from_millis(300))
        .connection_idle_timeout(Duration::from_millis(1500));
    let proxy = proxy(ok_upstream().await, router(), limits).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    get_ok(&mut client).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Idle past the head timeout, and still served.
    get_ok(&mut client).await;
    let idle = Instant::now();
    read_to_eof(&mut client).await;
    let took = idle.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "the idle connection closed after {took:?}"
    );

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    get_ok(&mut client).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let head = Instant::now();
    read_to_eof(&mut client).await;
    let took = head.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1200),
        "the unfinished head was closed after {took:?}"
    );
}

// === HTTP/2 ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// HPACK: `:method GET`, `:scheme http`, `:path /`, `:authority a.example`.
const GET_BLOCK: &[u8] = b"\x82\x86\x84\x41\x09a.example";

/// The frame types in a server's byte stream.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// Opens an HTTP/2 connection and makes one complete GET on stream 1.
async fn h2_after_one_request(proxy: SocketAddr) -> TcpStream {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_BLOCK));
    raw_client(proxy, &bytes).await
}

/// After a complete request, an HTTP/2 connection that starts a HEADERS block and never ends
/// it gets GOAWAY and is closed at the request headers timeout, counted from that frame;
/// an idle one at the connection idle timeout.
#[tokio::test]
async fn http2_heads_and_idle_connections_are_timed() {
    let limits = ClientLimits::new()
        .request_headers_timeout(Duration::from_millis(300))
        .connection_idle_timeout(Duration::from_millis(1500));
    let proxy = proxy(ok_upstream().await, router(), limits).await;

    let mut client = h2_after_one_request(proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Stream 3: HEADERS without END_HEADERS, and no CONTINUATION.
    client
        .write_all(&frame(HEADERS, END_STREAM, 3, &GET_BLOCK[..1]))
        .await
        .unwrap();
    let head = Instant::now();
    let got = read_to_eof(&mut client).await;
    let took = head.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1400),
        "the unfinished HEADERS block was closed after {took:?}"
    );
    let types = frame_types(&got);
    assert!(types.contains(&HEADERS), "stream 1 was not answered: {types:?}");
    assert!(types.contains(&GOAWAY), "{types:?}");

    let mut client = h2_after_one_request(proxy.addr).await;
    let idle = Instant::now();
    let got = read_to_eof(&mut client).await;
    let took = idle.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "the idle HTTP/2 connection closed after {took:?}"
    );
    assert!(frame_types(&got).contains(&GOAWAY));
}

// === max_connections ===

async fn ws_client(proxy: SocketAddr) -> WsStream {
    let (ws, _) = within(tokio_tungstenite::client_async(
        format!("ws://{proxy}/"),
        TcpStream::connect(proxy).await.unwrap(),
    ))
    .await
    .unwrap();
    ws
}

type WsStream = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn echo(ws: &mut WsStream, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(back, Message::text(text));
}

/// A full listener closes the connection that has waited longest for a head (then the next
/// one) so that real clients get in; tunnels keep their places; once every place is held by
/// a tunnel, a newcomer is answered `503` and closed, and gets in again once one ends.
#[tokio::test]
async fn a_full_listener_makes_room_by_closing_the_longest_silent_connection() {
    let upstream = ws_echo().await;
    let limits = ClientLimits::new().max_connections(3);
    let proxy = proxy(upstream.addr, router(), limits).await;

    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Wait until the proxy has taken all three, so that the order is theirs.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut first = ws_client(proxy.addr).await;
    echo(&mut first, "one").await;
    assert!(within(read_to_eof(&mut silent[0])).await.is_empty());
    assert!(still_open(&mut silent[1]).await && still_open(&mut silent[2]).await);

    let mut second = ws_client(proxy.addr).await;
    let mut third = ws_client(proxy.addr).await;
    echo(&mut second, "two").await;
    echo(&mut third, "three").await;
    within(read_to_eof(&mut silent[1])).await;
    within(read_to_eof(&mut silent[2])).await;

    // Three tunnels hold every place.
    let mut refused = raw_client(proxy.addr, GET).await;
    let (head, rest) = within(read_head(&mut refused)).await;
    assert_eq!(status(&head), 503, "{head}");
    let length: usize = header(&head, "content-length").unwrap().parse().unwrap();
    let mut body = rest;
    body.extend(within(read_to_eof(&mut refused)).await);
    assert_eq!(body.len(), length, "{:?}", String::from_utf8_lossy(&body));
    echo(&mut first, "still here").await;

    // A tunnel ends: its place is free again.
    first.close(None).await.unwrap();
    while within(first.next()).await.is_some() {}
    drop(first);
    within(async {
        loop {
            let mut client = raw_client(proxy.addr, GET).await;
            let (head, _) = read_head(&mut client).await;
            if status(&head) != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    echo(&mut second, "and here").await;
}

// === max_tunnels ===

const FOO_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";

/// Opens a `foo` tunnel to `path` through the proxy, the raw upstream answering `101`.
async fn foo_tunnel(proxy: SocketAddr, raw: &RawUpstream, path: &str) -> (TcpStream, TcpStream) {
    let mut client = raw_client(proxy, foo_upgrade(path).as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(FOO_101).await.unwrap();
    let (head, _) = within(read_head(&mut client)).await;
    assert_eq!(status(&head), 101, "{head}");
    (client, up)
}

/// Asserts an upgrade to `path` gets `503` and the upstream is never contacted.
async fn refused_upgrade(proxy: SocketAddr, raw: &RawUpstream, path: &str) {
    let mut client = raw_client(proxy, foo_upgrade(path).as_bytes()).await;
    let (head, _) = within(read_head(&mut client)).await;
    assert_eq!(status(&head), 503, "{path}: {head}");
    within(read_to_eof(&mut client)).await;
    raw.assert_untouched(path).await;
}

/// Ends a tunnel from both sides.
async fn end_tunnel((mut client, mut up): (TcpStream, TcpStream)) {
    client.shutdown().await.unwrap();
    up.shutdown().await.unwrap();
    within(read_to_eof(&mut client)).await;
    within(read_to_eof(&mut up)).await;
}

/// `max_tunnels` on the router and on a route: past either, an upgrade gets `503` before
/// any upstream contact; a place comes back when a tunnel ends.
#[tokio::test]
async fn tunnel_caps_refuse_before_the_upstream_and_give_places_back() {
    let raw = RawUpstream::bind().await;
    let routes = vec![
        Route::prefix("/capped").max_tunnels(1).cluster(cluster(raw.addr)),
        Route::prefix("/").cluster(cluster(raw.addr)),
    ];
    let router = UpgradeRouterLayer::builder()
        .upgrade("foo")
        .max_tunnels(3)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(routes, Runtime::new()).unwrap())
        .layer(router)
        .service(Forward::routed());
    let proxy = start(stack).await;

    let capped = foo_tunnel(proxy.addr, &raw, "/capped").await;
    refused_upgrade(proxy.addr, &raw, "/capped/again").await;
    let a = foo_tunnel(proxy.addr, &raw, "/a").await;
    let b = foo_tunnel(proxy.addr, &raw, "/b").await;
    // Three open: the router's cap.
    refused_upgrade(proxy.addr, &raw, "/c").await;

    end_tunnel(capped).await;
    // The task lets go of its places once it has seen both ends close.
    within(async {
        loop {
            let mut client = raw_client(proxy.addr, foo_upgrade("/capped").as_bytes()).await;
            let up = tokio::time::timeout(Duration::from_millis(50), raw.accept()).await;
            if let Ok(mut up) = up {
                read_head(&mut up).await;
                up.write_all(FOO_101).await.unwrap();
                let (head, _) = read_head(&mut client).await;
                assert_eq!(status(&head), 101, "{head}");
                break;
            }
            let (head, _) = read_head(&mut client).await;
            assert_eq!(status(&head), 503, "{head}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    end_tunnel(a).await;
    end_tunnel(b).await;
}

/// A drain's close window: the tunnels still open at the deadline close at moments spread
/// over the window, not all at once.
#[tokio::test]
async fn a_drain_spreads_its_closing_over_the_close_window() {
    let raw = RawUpstream::bind().await;
    let drain = switchback::Drain::new();
    drain.set_close_window(Duration::from_millis(1500));
    let router = UpgradeRouterLayer::builder()
        .upgrade("foo")
        .drain(drain.clone())
        .build()
        .unwrap();
    let proxy = proxy(raw.addr, router, ClientLimits::new()).await;
    let mut tunnels = Vec::new();
    for i in 0..8 {
        tunnels.push(foo_tunnel(proxy.addr, &raw, &format!("/{i}")).await);
    }
    let started = Instant::now();
    let draining = tokio::spawn(async move { drain.drain(Duration::ZERO).await });
    let ends = futures_util::future::join_all(tunnels.into_iter().map(|(mut client, up)| async move {
        within(read_to_eof(&mut client)).await;
        drop(up);
        started.elapsed()
    }))
    .await;
    let (first, last) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
    assert!(
        *last - *first >= Duration::from_millis(300),
        "all closed together: {ends:?}"
    );
    assert!(*last < Duration::from_millis(2500), "closed too late: {ends:?}");
    assert_eq!(draining.await.unwrap().closed, 8);
}

// === HTTP/2 tunnels ===

/// One HTTP/2 connection asking for 300 WebSocket streams at once gets the default 100 open
/// at a time, each with its upstream connection; the rest wait for a stream to end.
#[tokio::test]
async fn an_http2_connection_opens_at_most_max_concurrent_streams_tunnels() {
    let echo = ws_echo().await;
    let events = Events::default();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .observer(events.observer())
        .build()
        .unwrap();
    let proxy = proxy(echo.addr, router, ClientLimits::new()).await;
    let sender = h2_client(proxy.addr).await;
    let mut open_rx = h2_tunnels(&sender, proxy.addr, 300);
    let mut open = Vec::new();
    while open.len() < 100 {
        open.push(within(open_rx.recv()).await.unwrap());
    }
    // No 101st while the first hundred are open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(open_rx.try_recv().is_err(), "a 101st tunnel opened");
    assert_eq!(events.opened().len(), 100);
    // One ends: one more opens.
    drop(open.pop());
    open.push(within(open_rx.recv()).await.unwrap());
    assert_eq!(open.len(), 100);
}

/// Each HTTP/2 tunnel takes a place under `max_connections`, as its upstream socket is a
/// descriptor: with 3 places, one connection gets 2 tunnels and a third is refused with
/// `503`, while the connection goes on serving; a place freed is a tunnel again.
#[tokio::test]
async fn http2_tunnels_count_towards_max_connections() {
    let echo = ws_echo().await;
    let proxy = proxy(echo.addr, router(), ClientLimits::new().max_connections(3)).await;
    let mut sender = h2_client(proxy.addr).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut res = within(sender.send_request(h2_websocket(proxy.addr)))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        open.push(within(hyper::upgrade::on(&mut res)).await.unwrap());
    }
    let res = within(sender.send_request(h2_websocket(proxy.addr)))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let get = http::Request::get(format!("http://{}/", proxy.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    within(sender.send_request(get))
        .await
        .expect("the connection still serves");
    drop(open.pop());
    // The freed place comes back once the tunnel's task has seen its end.
    within(async {
        loop {
            let res = sender.send_request(h2_websocket(proxy.addr)).await.unwrap();
            if res.status() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
