//! WebSocket through the proxy, with tokio-tungstenite on both ends: every kind of message,
//! on the joined path (no layer touches the bodies) and on the pumped path (a layer wraps
//! them), and the payload meeting a body-limit layer in the default chain.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;

use support::*;
use switchback::{Chain, Forward, TunnelEnd, TunnelMode, UpgradeConfig, UpgradeRouterLayer};

/// Runs every message kind through a proxy at `proxy` to the echo upstream.
async fn exercise(proxy: std::net::SocketAddr, echo: &mut WsEcho) {
    let (mut ws, res) = within(tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::text("hello"));

    let binary: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::binary(binary));

    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::binary(big));

    // A message in three fragments, a ping between two of them, as RFC 6455 allows.
    let frag = |op, data: &'static str, fin| {
        Message::Frame(Frame::message(Bytes::from_static(data.as_bytes()), op, fin))
    };
    ws.send(frag(OpCode::Data(Data::Text), "frag", false))
        .await
        .unwrap();
    ws.send(frag(OpCode::Data(Data::Continue), "ment", false))
        .await
        .unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    ws.send(frag(OpCode::Data(Data::Continue), "ed", true))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(within(ws.next()).await.unwrap().unwrap());
    }
    assert!(
        got.contains(&Message::Pong(Bytes::from_static(b"are you there"))),
        "{got:?}"
    );
    assert!(got.contains(&Message::text("fragmented")), "{got:?}");

    // Client-initiated close: the upstream sees the client's code and echoes it.
    let close = CloseFrame {
        code: CloseCode::from(4001),
        reason: "client done".into(),
    };
    ws.send(Message::Close(Some(close))).await.unwrap();
    assert_eq!(within(echo.close_codes.recv()).await, Some(4001));
    match within(ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4001),
        other => panic!("expected the echoed close, got {other:?}"),
    }

    // Upstream-initiated close: the client sees the upstream's code.
    let (mut ws, _) = within(tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")))
        .await
        .unwrap();
    ws.send(Message::text("close:4002")).await.unwrap();
    match within(ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 4002);
            assert_eq!(f.reason, "server");
        }
        other => panic!("expected the upstream's close, got {other:?}"),
    }
}

/// Runs [`exercise`] through a router with no body-touching layer, so tunnels are joined.
async fn joined(tunnel: switchback::TunnelConfig) {
    let mut echo = ws_echo().await;
    let events = Events::default();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .tunnel(tunnel)
        .observer(events.observer())
        .build()
        .unwrap();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster(echo.addr))),
    )
    .await;

    exercise(proxy.addr, &mut echo).await;

    let (mode, stats) = events.closed(1).await;
    assert_eq!(mode, TunnelMode::Joined);
    assert!(stats.upstream_bytes > 1024 * 1024, "{stats:?}");
    assert!(stats.downstream_bytes > 1024 * 1024, "{stats:?}");
    assert!(events.opened().iter().all(|m| *m == TunnelMode::Joined));
}

/// Socket to socket: frame payload is spliced, headers are read (Linux).
#[tokio::test]
async fn websocket_on_the_joined_path() {
    joined(switchback::TunnelConfig::new()).await;
}

#[tokio::test]
async fn websocket_on_the_joined_path_without_splice() {
    joined(switchback::TunnelConfig::new().splice(false)).await;
}

#[tokio::test]
async fn websocket_on_the_pumped_path() {
    let mut echo = ws_echo().await;
    let events = Events::default();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .observer(events.observer())
        .build()
        .unwrap();
    let chain = touch_bodies(Forward::new(cluster(echo.addr)));
    let proxy = start(ServiceBuilder::new().layer(router).service(chain)).await;

    exercise(proxy.addr, &mut echo).await;

    let (mode, stats) = events.closed(1).await;
    assert_eq!(mode, TunnelMode::Pumped);
    assert!(stats.upstream_bytes > 1024 * 1024, "{stats:?}");
    assert!(stats.downstream_bytes > 1024 * 1024, "{stats:?}");
}

/// The payload is body data: a 1 KiB request body limit in the default chain ends a WebSocket
/// tunnel once the client has sent 2 KiB, while `foo`, whose chain is the router alone,
/// carries 2 KiB untouched.
#[tokio::test]
async fn body_limit_in_the_default_chain_sees_the_payload_and_a_router_only_chain_does_not() {
    let echo = ws_echo().await;
    let raw = RawUpstream::bind().await;
    let events = Events::default();
    // Two clusters behind one proxy: WebSocket to the echo server, `foo` to the raw upstream.
    let ws_forward = Forward::new(cluster(echo.addr));
    let foo_chain = Chain::new(Forward::new(cluster(raw.addr)));
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .upgrade_config(UpgradeConfig::new("foo").chain(foo_chain))
        .observer(events.observer())
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(router)
        .layer(RequestBodyLimitLayer::new(1024))
        .service(ws_forward);
    let proxy = start(stack).await;

    // WebSocket: 512-byte messages are echoed until the limit trips, then the tunnel ends.
    let (mut ws, _) = within(tokio_tungstenite::connect_async(format!(
        "ws://{}/ws",
        proxy.addr
    )))
    .await
    .unwrap();
    let mut echoed = 0usize;
    let mut ended = false;
    for _ in 0..4 {
        if ws.send(Message::binary(vec![7u8; 512])).await.is_err() {
            ended = true;
            break;
        }
    }
    while !ended {
        match within(ws.next()).await {
            Some(Ok(Message::Binary(b))) => echoed += b.len(),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => ended = true,
        }
    }
    assert!(echoed < 2048, "the limit let {echoed} bytes through");
    let (mode, stats) = events.closed(1).await;
    assert_eq!((mode, stats.end), (TunnelMode::Pumped, TunnelEnd::Error));
    assert!(stats.upstream_bytes <= 1024, "{stats:?}");

    // `foo`: 2 KiB each way, byte for byte.
    let mut client = raw_client(proxy.addr, foo_upgrade("/foo").as_bytes()).await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(head.starts_with("GET /foo HTTP/1.1\r\n"), "{head}");
    up.write_all(FOO_101).await.unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 101);
    let payload: Vec<u8> = (0..2048).map(|i| (i % 256) as u8).collect();
    client.write_all(&payload).await.unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 2048).await, payload);
    up.write_all(&payload).await.unwrap();
    assert_eq!(read_n(&mut client, rest, 2048).await, payload);
    drop((client, up));
    let (mode, stats) = events.closed(2).await;
    assert_eq!(mode, TunnelMode::Joined);
    assert_eq!((stats.upstream_bytes, stats.downstream_bytes), (2048, 2048));
}

/// A `101` whose `Sec-WebSocket-Accept` doesn't match the client's key opens nothing: 502.
#[tokio::test]
async fn a_101_with_the_wrong_accept_key_is_a_502() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .build()
        .unwrap();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster(raw.addr))),
    )
    .await;
    let req = "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 502, "{head}");
    // The upstream connection is dropped: it gets EOF, never any client byte.
    client.write_all(b"tunnel bytes").await.unwrap_or(());
    let mut buf = [0u8; 64];
    let n = within(up.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "upstream got {:?}", String::from_utf8_lossy(&buf[..n]));
}

/// The same stack mounted in an axum app, next to an ordinary handler, under `axum::serve`.
#[tokio::test]
async fn works_inside_an_axum_app() {
    let mut echo = ws_echo().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(router)
        .service(Forward::new(cluster(echo.addr)));
    let app = axum::Router::new()
        .route_service("/chat", stack)
        .route("/hello", axum::routing::get(|| async { "hello from axum" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    exercise(addr, &mut echo).await;

    let mut client = raw_client(addr, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 200);
    assert_eq!(read_n(&mut client, rest, 15).await, b"hello from axum");
}

/// WebSocket over HTTP/2 (RFC 8441): the client's extended CONNECT becomes an HTTP/1.1
/// handshake upstream (with a key Switchback makes and then checks), and the client gets a
/// 200 and a stream carrying the WebSocket frames.
#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let mut echo = ws_echo().await;
    let events = Events::default();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .observer(events.observer())
        .build()
        .unwrap();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster(echo.addr))),
    )
    .await;

    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    // The server announces SETTINGS_ENABLE_CONNECT_PROTOCOL in its first SETTINGS frame.
    support::spawn_once_extended_connect(conn).await;
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/chat", proxy.addr))
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let mut res = within(sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("upgrade").is_none() && res.headers().get("sec-websocket-accept").is_none());
    let stream = within(hyper::upgrade::on(&mut res)).await.unwrap();
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(stream), Role::Client, None).await;

    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::text("over h2")
    );
    let big = vec![5u8; 200 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::binary(big));
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4003),
        reason: "h2 done".into(),
    })))
    .await
    .unwrap();
    assert_eq!(within(echo.close_codes.recv()).await, Some(4003));
    drop(ws);
    let (mode, stats) = events.closed(1).await;
    assert_eq!(mode, TunnelMode::Joined);
    assert!(stats.upstream_bytes > 200 * 1024, "{stats:?}");
}

/// The same stack on two worker threads (a runtime and a `SO_REUSEPORT` listener each):
/// WebSocket works through either, every tunnel runs on a worker thread, a second proxy can't
/// take the port, and shutdown stops accepting while open tunnels live on until `stop`.
#[tokio::test]
async fn websocket_through_worker_threads() {
    use std::num::NonZeroUsize;
    use std::sync::{Arc, Mutex};
    use switchback::TunnelEvent;
    use switchback::Workers;

    let mut echo = ws_echo().await;
    let threads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = threads.clone();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .observer(switchback::TunnelObserver::new(move |event: &TunnelEvent<'_>| {
            if let TunnelEvent::Opened(_) = event {
                let name = std::thread::current().name().unwrap_or("?").to_owned();
                seen.lock().unwrap().push(name);
            }
        }))
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(router)
        .service(Forward::new(cluster(echo.addr)));
    let two = NonZeroUsize::new(2).unwrap();
    let mut workers = Workers::start("127.0.0.1:0".parse().unwrap(), two, stack.clone()).unwrap();
    let addr = workers.local_addr();

    exercise(addr, &mut echo).await;
    // Many connections: the kernel spreads them over both listeners.
    let mut open = Vec::new();
    for _ in 0..16 {
        let (mut ws, _) = within(tokio_tungstenite::connect_async(format!("ws://{addr}/chat")))
            .await
            .unwrap();
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::text("ping"));
        open.push(ws);
    }
    let names = threads.lock().unwrap().clone();
    assert!(names.len() >= 17, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("switchback-worker-")),
        "{names:?}"
    );
    // 17 tunnels all hashed to one of two listeners: odds of 1 in 65 536.
    assert!(
        names.iter().any(|n| n != &names[0]),
        "one worker took every connection: {names:?}"
    );

    // The port is taken, whatever the second proxy's socket options.
    let again = Workers::start(addr, two, stack).unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);

    workers.shutdown();
    within(workers.stopped()).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
    // Tunnels outlive the listeners...
    let ws = &mut open[0];
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::text("still here")
    );
    // ...until the workers stop.
    tokio::task::spawn_blocking(move || workers.stop()).await.unwrap();
    match within(open[1].next()).await {
        None | Some(Err(_)) => {}
        other => panic!("expected the tunnel to end with the workers, got {other:?}"),
    }
}

/// `Workers::stop` ends what is still open at once, an exchange waiting for its upstream
/// included (shutdown alone would give it up to 30 s).
#[tokio::test]
async fn workers_stop_does_not_wait_for_exchanges_in_flight() {
    use std::num::NonZeroUsize;
    use switchback::Workers;

    let raw = RawUpstream::bind().await;
    let stack = ServiceBuilder::new()
        .layer(
            UpgradeRouterLayer::builder()
                .upgrade("websocket")
                .build()
                .unwrap(),
        )
        .service(Forward::new(cluster(raw.addr)));
    let one = NonZeroUsize::new(1).unwrap();
    let mut workers = Workers::start("127.0.0.1:0".parse().unwrap(), one, stack).unwrap();
    let mut client = raw_client(workers.local_addr(), b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").await;
    // The upstream has the request and never answers.
    let _held = raw.accept().await;
    workers.shutdown();
    within(tokio::task::spawn_blocking(move || workers.stop()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(client.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}
