//! Tunnel lifecycle over real sockets: half-close, closes from either side, the idle and
//! half-closed timers, connect and handshake failures, and drain.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;

use support::*;
use switchback::ws::WebSocketLimits;
use switchback::{
    CloseFrame, ClosedBy, Drain, Forward, LegacyConfig, Route, RouteLayer, Runtime, TunnelConfig, TunnelEnd,
    TunnelMode, UpgradeConfig, UpgradeRouterLayer,
};

/// The ways a tunnel can carry bytes; every scenario runs on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Joined, socket to socket with splice(2) where the platform has it.
    Spliced,
    /// Joined, copied through a lent buffer.
    Copied,
    /// Pumped through a layer that wraps the bodies.
    Pumped,
    /// A legacy `use_websocket` route (joined, WebSocket frames followed).
    Legacy,
}

const PATHS: [Path; 4] = [Path::Spliced, Path::Copied, Path::Pumped, Path::Legacy];

impl Path {
    /// The mode tunnels on this path report.
    fn mode(self) -> TunnelMode {
        match self {
            Self::Spliced | Self::Copied => TunnelMode::Joined,
            Self::Pumped => TunnelMode::Pumped,
            Self::Legacy => TunnelMode::Legacy,
        }
    }

    /// An upgrade request this path's proxy takes: `foo` on the generic paths, WebSocket on
    /// the legacy route (which only takes WebSocket).
    fn upgrade_request(self, path: &str) -> String {
        match self {
            Self::Legacy => format!(
                "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
            _ => foo_upgrade(path),
        }
    }

    /// The upstream's `101` to [`Path::upgrade_request`].
    fn switched(self) -> &'static [u8] {
        match self {
            Self::Legacy => {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            }
            _ => FOO_101,
        }
    }
}

struct Setup {
    path: Path,
    proxy: Proxy,
    raw: RawUpstream,
    events: Events,
    drain: Drain,
}

async fn setup(path: Path, tunnel: TunnelConfig) -> Setup {
    setup_with(path, tunnel, WebSocketLimits::new()).await
}

/// As [`setup`], with WebSocket `limits` on the `websocket` type (and on the legacy route).
async fn setup_with(path: Path, tunnel: TunnelConfig, limits: WebSocketLimits) -> Setup {
    let tunnel = if matches!(path, Path::Copied) {
        tunnel.splice(false)
    } else {
        tunnel
    };
    let raw = RawUpstream::bind().await;
    let events = Events::default();
    let drain = Drain::new();
    let router = UpgradeRouterLayer::builder()
        .upgrade("foo")
        .upgrade_config(UpgradeConfig::new("websocket").websocket(limits))
        .tunnel(tunnel)
        .drain(drain.clone())
        .observer(events.observer())
        .build()
        .unwrap();
    let forward = Forward::new(cluster(raw.addr)).response_timeout(Duration::from_millis(500));
    let proxy = match path {
        Path::Spliced | Path::Copied => start(ServiceBuilder::new().layer(router).service(forward)).await,
        Path::Pumped => start(ServiceBuilder::new().layer(router).service(touch_bodies(forward))).await,
        Path::Legacy => {
            let route = Route::prefix("/")
                .cluster(cluster(raw.addr))
                .use_websocket(LegacyConfig::new())
                .websocket(limits);
            let routes = RouteLayer::new(vec![route], Runtime::new()).unwrap();
            start(
                ServiceBuilder::new()
                    .layer(routes)
                    .layer(router)
                    .service(Forward::routed()),
            )
            .await
        }
    };
    Setup {
        path,
        proxy,
        raw,
        events,
        drain,
    }
}

/// Reads past any data messages to the close frame, and returns its code.
async fn close_code<S, E>(ws: &mut S, who: &str) -> u16
where
    S: futures_util::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Debug,
{
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("{who} expected a close frame, got {other:?}"),
        }
    }
}

/// Opens a tunnel; returns the client and upstream ends, both past the 101.
async fn open(s: &Setup) -> (TcpStream, TcpStream) {
    let mut client = raw_client(s.proxy.addr, s.path.upgrade_request("/t").as_bytes()).await;
    let mut up = s.raw.accept().await;
    read_head(&mut up).await;
    up.write_all(s.path.switched()).await.unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 101);
    assert!(rest.is_empty());
    (client, up)
}

#[tokio::test]
async fn client_half_close_reaches_the_upstream_which_can_still_answer() {
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        let (mut client, mut up) = open(&s).await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut up).await, b"last words", "{path:?}");
        up.write_all(b"still talking").await.unwrap();
        up.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut client).await, b"still talking", "{path:?}");
        let (mode, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::ClientClosed, "{path:?} {mode:?}");
        assert_eq!((stats.upstream_bytes, stats.downstream_bytes), (10, 13));
    }
}

#[tokio::test]
async fn upstream_half_close_reaches_the_client_which_can_still_send() {
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        let (mut client, mut up) = open(&s).await;
        up.write_all(b"bye").await.unwrap();
        up.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut client).await, b"bye", "{path:?}");
        client.write_all(b"one more thing").await.unwrap();
        assert_eq!(
            read_n(&mut up, Vec::new(), 14).await,
            b"one more thing",
            "{path:?}"
        );
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut up).await, b"", "{path:?}");
        assert_eq!(
            s.events.closed(1).await.1.end,
            TunnelEnd::UpstreamClosed,
            "{path:?}"
        );
    }
}

/// A WebSocket upgrade on any path (the generic paths take `websocket` too); returns the
/// client and upstream ends, both past the 101.
async fn open_websocket(s: &Setup) -> (TcpStream, TcpStream) {
    let mut client = raw_client(s.proxy.addr, Path::Legacy.upgrade_request("/ws").as_bytes()).await;
    let mut up = s.raw.accept().await;
    read_head(&mut up).await;
    up.write_all(Path::Legacy.switched()).await.unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 101);
    assert!(rest.is_empty());
    (client, up)
}

/// A client's close frame with code 1000 (masked, as a client's must be).
const CLIENT_CLOSE: [u8; 8] = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];
/// A server's close frame with code 1000.
const SERVER_CLOSE: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// Once a WebSocket's closing handshake is over (a close frame each way), the upstream's end
/// ends the tunnel: the client's connection is closed at once (RFC 6455 §7.1.1: the server
/// closes the TCP connection first), not half-closed to wait for the client's own end.
#[tokio::test]
async fn after_the_closing_handshake_the_upstreams_end_closes_the_client() {
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        let (mut client, mut up) = open_websocket(&s).await;
        client.write_all(&CLIENT_CLOSE).await.unwrap();
        assert_eq!(read_n(&mut up, Vec::new(), 8).await, CLIENT_CLOSE, "{path:?}");
        up.write_all(&SERVER_CLOSE).await.unwrap();
        up.shutdown().await.unwrap();
        // The client never ends its side: the tunnel ends all the same.
        assert_eq!(read_to_eof(&mut client).await, SERVER_CLOSE, "{path:?}");
        let (_, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::UpstreamClosed, "{path:?}");
        assert_eq!(read_to_eof(&mut up).await, b"", "{path:?}");
    }
}

/// Before the handshake is over, an end is a half-close as for any tunnel: the upstream
/// closes first with its close frame, and the client's reply still reaches it; then both are
/// closed. The client ending first after the handshake ends the tunnel the same way.
#[tokio::test]
async fn a_close_frame_one_way_keeps_the_half_close_until_the_reply() {
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        let (mut client, mut up) = open_websocket(&s).await;
        up.write_all(&SERVER_CLOSE).await.unwrap();
        up.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut client).await, SERVER_CLOSE, "{path:?}");
        client.write_all(&CLIENT_CLOSE).await.unwrap();
        assert_eq!(read_to_eof(&mut up).await, CLIENT_CLOSE, "{path:?}");
        let (_, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::UpstreamClosed, "{path:?}");

        let (mut client, mut up) = open_websocket(&s).await;
        client.write_all(&CLIENT_CLOSE).await.unwrap();
        assert_eq!(read_n(&mut up, Vec::new(), 8).await, CLIENT_CLOSE, "{path:?}");
        up.write_all(&SERVER_CLOSE).await.unwrap();
        assert_eq!(read_n(&mut client, Vec::new(), 4).await, SERVER_CLOSE, "{path:?}");
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut up).await, b"", "{path:?}");
        let (_, stats) = s.events.closed(2).await;
        assert_eq!(stats.end, TunnelEnd::ClientClosed, "{path:?}");
        assert_eq!(read_to_eof(&mut client).await, b"", "{path:?}");
    }
}

/// The upstream closes outright: what it sent first is flushed to the client, then the
/// client's connection closes.
#[tokio::test]
async fn upstream_close_flushes_then_closes_the_client() {
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        let (mut client, mut up) = open(&s).await;
        let data = vec![9u8; 256 * 1024];
        up.write_all(&data).await.unwrap();
        drop(up);
        assert_eq!(read_to_eof(&mut client).await.len(), data.len(), "{path:?}");
    }
}

/// A client that half-closes and an upstream that never does: the half-closed state ends at
/// its bound.
#[tokio::test]
async fn the_half_closed_state_is_bounded() {
    for path in PATHS {
        let config = TunnelConfig::new().half_close_timeout(Duration::from_millis(200));
        let s = setup(path, config).await;
        let (mut client, mut up) = open(&s).await;
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut up).await, b"");
        let (_, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::HalfCloseTimeout, "{path:?}");
        assert_eq!(read_to_eof(&mut client).await, b"");
    }
}

/// The idle timer counts both directions: traffic either way keeps the tunnel open; silence
/// ends it.
#[tokio::test]
async fn idle_timeout_counts_both_directions() {
    for path in PATHS {
        let config = TunnelConfig::new().idle_timeout(Duration::from_millis(300));
        let s = setup(path, config).await;
        let (mut client, mut up) = open(&s).await;
        // Six rounds 100 ms apart, alternating directions: 600 ms, twice the timeout.
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if i % 2 == 0 {
                client.write_all(b"c").await.unwrap();
                assert_eq!(read_n(&mut up, Vec::new(), 1).await, b"c");
            } else {
                up.write_all(b"u").await.unwrap();
                assert_eq!(read_n(&mut client, Vec::new(), 1).await, b"u");
            }
        }
        let (_, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::IdleTimeout, "{path:?}");
        assert_eq!((stats.upstream_bytes, stats.downstream_bytes), (3, 3));
        assert_eq!(read_to_eof(&mut client).await, b"");
        assert_eq!(read_to_eof(&mut up).await, b"");
    }
}

#[tokio::test]
async fn connect_refused_is_a_503() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let router = UpgradeRouterLayer::builder().upgrade("foo").build().unwrap();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster(dead))),
    )
    .await;
    for req in [
        foo_upgrade("/x"),
        "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
    ] {
        let mut client = raw_client(proxy.addr, req.as_bytes()).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), 503, "{req}");
    }
}

/// An upstream that accepts and never answers: 504 once the response timeout passes.
#[tokio::test]
async fn handshake_timeout_is_a_504() {
    let s = setup(Path::Spliced, TunnelConfig::new()).await;
    let mut client = raw_client(s.proxy.addr, foo_upgrade("/slow").as_bytes()).await;
    let _up = s.raw.accept().await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 504);
}

/// Drain: new upgrades get 503; a live WebSocket tunnel gets a 1001 close frame each way when
/// the deadline passes, then closes.
#[tokio::test]
async fn drain_refuses_new_upgrades_and_closes_websocket_tunnels_with_1001() {
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        // The upstream is a real WebSocket server on an accepted raw connection.
        let upstream = async {
            let tcp = s.raw.accept().await;
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let first = within(ws.next()).await.unwrap().unwrap();
            ws.send(first).await.unwrap();
            // The next thing from the proxy must be the 1001 close.
            close_code(&mut ws, "upstream").await
        };
        let client = async {
            let url = format!("ws://{}/live", s.proxy.addr);
            let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
            ws.send(Message::text("hi")).await.unwrap();
            assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::text("hi"));
            let outcome = s.drain.drain(Duration::from_millis(200)).await;
            assert_eq!((outcome.finished, outcome.closed), (0, 1));
            let code = close_code(&mut ws, "client").await;
            // A new upgrade during drain: 503.
            let mut late = raw_client(s.proxy.addr, path.upgrade_request("/late").as_bytes()).await;
            let (head, _) = read_head(&mut late).await;
            assert_eq!(status(&head), 503);
            code
        };
        let (up_code, client_code) = tokio::join!(upstream, client);
        assert_eq!((up_code, client_code), (1001, 1001), "{path:?}");
        let (mode, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::Drain, "{path:?}");
        assert_eq!(mode, path.mode());
        // The first close frame was the proxy's own.
        let by_proxy = CloseFrame {
            by: ClosedBy::Proxy,
            code: Some(1001),
        };
        assert_eq!(stats.close, Some(by_proxy), "{path:?}");
        assert_eq!(
            (stats.upstream_messages, stats.downstream_messages),
            (1, 1),
            "{path:?}"
        );
    }
}

/// A client past its frame rate is closed on every path: frames within the burst pass, then a
/// flood gets the client a `1008` and the upstream a `1001`, each after whole frames.
#[tokio::test]
async fn a_client_past_its_frame_rate_gets_1008_and_the_upstream_1001() {
    for path in PATHS {
        let limits = WebSocketLimits::new().max_frames_per_second(20);
        let s = setup_with(path, TunnelConfig::new(), limits).await;
        let upstream = async {
            let tcp = s.raw.accept().await;
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            loop {
                match within(ws.next()).await {
                    Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                    Some(Ok(m)) => {
                        let _ = ws.send(m).await;
                    }
                    other => panic!("{path:?}: upstream expected frames then a close, got {other:?}"),
                }
            }
        };
        let client = async {
            let url = format!("ws://{}/rate", s.proxy.addr);
            let (ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            // Within the burst: echoed.
            for i in 0..5 {
                tx.send(Message::text(format!("m{i}"))).await.unwrap();
                assert_eq!(
                    within(rx.next()).await.unwrap().unwrap(),
                    Message::text(format!("m{i}"))
                );
            }
            // A flood: the proxy closes.
            let flood = tokio::spawn(async move {
                for i in 0..1000 {
                    if tx.send(Message::binary(vec![i as u8; 100])).await.is_err() {
                        break;
                    }
                }
            });
            let code = loop {
                match within(rx.next()).await {
                    Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
                    Some(Ok(_)) => continue,
                    other => panic!("{path:?}: client expected echoes then a close, got {other:?}"),
                }
            };
            flood.abort();
            code
        };
        let (up_code, client_code) = tokio::join!(upstream, client);
        assert_eq!((client_code, up_code), (1008, 1001), "{path:?}");
        let (_, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::RateLimited, "{path:?}");
        let policy = CloseFrame {
            by: ClosedBy::Proxy,
            code: Some(1008),
        };
        assert_eq!(stats.close, Some(policy), "{path:?}");
        assert!(stats.upstream_messages < 1000, "{path:?}: {stats:?}");
    }
}

/// A message past its size limit is never delivered whole, on every path, either way: the
/// sender gets `1009`, the other side `1001`; messages within the limit pass, one that fills
/// it exactly too, and so does a fragmented one whose sum fits.
#[tokio::test]
async fn a_message_past_its_size_limit_gets_1009_and_is_not_delivered() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    const LIMIT: usize = 1 << 20;
    for (path, client_sends) in PATHS.into_iter().flat_map(|p| [(p, true), (p, false)]) {
        let limits = WebSocketLimits::new()
            .max_message_size(LIMIT as u64)
            .max_upstream_message_size(LIMIT as u64);
        let s = setup_with(path, TunnelConfig::new(), limits).await;
        let big = vec![7u8; 2 * LIMIT];
        // The sending side: three messages that fit (one of exactly the limit, one in three
        // fragments), then one that doesn't; it then expects a 1009.
        let send = |ws: tokio_tungstenite::WebSocketStream<_>| async move {
            let (mut tx, mut rx) = futures_util::StreamExt::split(ws);
            tx.send(Message::binary(vec![1u8; 900 * 1024])).await.unwrap();
            tx.send(Message::binary(vec![2u8; LIMIT])).await.unwrap();
            for (i, fin) in [(0, false), (1, false), (2, true)] {
                let opcode = if i == 0 {
                    OpCode::Data(Data::Binary)
                } else {
                    OpCode::Data(Data::Continue)
                };
                let frame = Frame::message(vec![3u8; LIMIT / 3], opcode, fin);
                tx.send(Message::Frame(frame)).await.unwrap();
            }
            let _ = tx.send(Message::binary(big)).await;
            loop {
                match within(rx.next()).await {
                    Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                    Some(Ok(_)) => continue,
                    other => panic!("{path:?}: the sender expected a close, got {other:?}"),
                }
            }
        };
        // The receiving side: the three messages that fit, whole, then a close (1001).
        let receive = |ws: tokio_tungstenite::WebSocketStream<_>| async move {
            let mut ws = ws;
            let mut sizes = Vec::new();
            loop {
                match within(ws.next()).await {
                    Some(Ok(Message::Binary(b))) => sizes.push(b.len()),
                    Some(Ok(Message::Close(Some(f)))) => return (sizes, u16::from(f.code)),
                    other => panic!("{path:?}: the receiver expected messages then a close, got {other:?}"),
                }
            }
        };
        let upstream = async {
            let tcp = s.raw.accept().await;
            tokio_tungstenite::accept_async(tcp).await.unwrap()
        };
        let client = async {
            let tcp = TcpStream::connect(s.proxy.addr).await.unwrap();
            let url = format!("ws://{}/size", s.proxy.addr);
            within(tokio_tungstenite::client_async(url, tcp)).await.unwrap().0
        };
        let (up, cl) = tokio::join!(upstream, client);
        let (sender_code, (sizes, receiver_code)) = if client_sends {
            tokio::join!(send(cl), receive(up))
        } else {
            let (r, c) = tokio::join!(receive(cl), send(up));
            (c, r)
        };
        let case = format!(
            "{path:?}, from the {}",
            if client_sends { "client" } else { "upstream" }
        );
        assert_eq!(sizes, [900 * 1024, LIMIT, LIMIT / 3 * 3], "{case}");
        assert_eq!((sender_code, receiver_code), (1009, 1001), "{case}");
        let (_, stats) = s.events.closed(1).await;
        let end = if client_sends {
            TunnelEnd::ClientMessageTooBig
        } else {
            TunnelEnd::UpstreamMessageTooBig
        };
        assert_eq!(stats.end, end, "{case}");
        let too_big = CloseFrame {
            by: ClosedBy::Proxy,
            code: Some(1009),
        };
        assert_eq!(stats.close, Some(too_big), "{case}");
    }
}

/// Keepalive on every path: a client that answers the proxy's pings stays open well past
/// the ping interval, and the upstream sees no ping and no pong; a client that never answers
/// is closed after the interval and the pong timeout (the upstream gets `1001`).
#[tokio::test]
async fn keepalive_pings_a_quiet_client_and_closes_one_that_never_answers() {
    use std::time::Instant;
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(300));
    for path in PATHS {
        let limits = WebSocketLimits::new()
            .ping_interval(interval)
            .pong_timeout(timeout);
        // A client that answers (tungstenite answers pings while it reads).
        let s = setup_with(path, TunnelConfig::new(), limits).await;
        let upstream = async {
            let tcp = s.raw.accept().await;
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            // The first thing the upstream gets is the client's text, a second later: no
            // ping, no pong.
            let first = within(ws.next()).await.unwrap().unwrap();
            assert_eq!(first, Message::text("still here"), "{path:?}");
            ws.send(Message::text("me too")).await.unwrap();
            ws
        };
        let client = async {
            let url = format!("ws://{}/keepalive", s.proxy.addr);
            let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
            // A second of quiet: the proxy pings every 200 ms, tungstenite answers each.
            let mut pings = 0;
            let quiet = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(quiet);
            loop {
                tokio::select! {
                    () = &mut quiet => break,
                    m = ws.next() => match m {
                        Some(Ok(Message::Ping(_))) => pings += 1,
                        other => panic!("{path:?}: only pings while quiet, got {other:?}"),
                    },
                }
            }
            assert!(pings >= 3, "{path:?}: {pings} pings in a second");
            ws.send(Message::text("still here")).await.unwrap();
            let echo = loop {
                match within(ws.next()).await.unwrap().unwrap() {
                    Message::Ping(_) | Message::Pong(_) => continue,
                    m => break m,
                }
            };
            assert_eq!(echo, Message::text("me too"), "{path:?}");
            ws
        };
        let (_up, _client) = tokio::join!(upstream, client);
        assert!(s.events.opened().len() == 1, "{path:?}");

        // A client that never answers: the tunnel ends after the interval and the timeout.
        let s = setup_with(path, TunnelConfig::new(), limits).await;
        let upstream = async {
            let tcp = s.raw.accept().await;
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            close_code(&mut ws, "upstream").await
        };
        let silent = async {
            let request = "GET /mute HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                           Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
            let mut client = raw_client(s.proxy.addr, request.as_bytes()).await;
            let (head, _) = read_head(&mut client).await;
            assert_eq!(status(&head), 101, "{path:?}");
            let start = Instant::now();
            // Read what comes (a ping, then a close) and never answer.
            let got = read_to_eof(&mut client).await;
            (start.elapsed(), got)
        };
        let (up_code, (took, got)) = tokio::join!(upstream, silent);
        assert_eq!(up_code, 1001, "{path:?}");
        assert_eq!(&got[..2], &[0x89, 0x08], "{path:?}: a ping first: {got:?}");
        assert!(
            got.windows(4).any(|w| w == [0x88, 0x02, 0x03, 0xe9]),
            "{path:?}: then a 1001: {got:?}"
        );
        assert!(took >= interval + timeout, "{path:?}: closed after {took:?}");
        assert!(
            took < interval + timeout + Duration::from_secs(2),
            "{path:?}: closed after {took:?}"
        );
        let (_, stats) = s.events.closed(1).await;
        assert_eq!(stats.end, TunnelEnd::PongTimeout, "{path:?}");
    }
}

/// Every path follows WebSocket frames, splice included: a tunnel reports the messages it
/// carried each way (a large one spliced counts as one) and the first close frame, here the
/// client's `4001`.
#[tokio::test]
async fn every_path_counts_messages_and_the_first_close_frame() {
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        let upstream = async {
            let tcp = s.raw.accept().await;
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            while let Some(Ok(m)) = within(ws.next()).await {
                if m.is_close() {
                    break;
                }
                ws.send(m).await.unwrap();
            }
        };
        let client = async {
            let url = format!("ws://{}/count", s.proxy.addr);
            let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
            for m in [
                Message::text("small"),
                Message::binary(vec![1u8; 200_000]),
                Message::binary(vec![2u8; 70_000]),
            ] {
                ws.send(m.clone()).await.unwrap();
                assert_eq!(within(ws.next()).await.unwrap().unwrap(), m, "{path:?}");
            }
            let bye = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 4001.into(),
                reason: "bye".into(),
            };
            ws.close(Some(bye)).await.unwrap();
            while let Some(Ok(_)) = within(ws.next()).await {}
        };
        tokio::join!(upstream, client);
        let (_, stats) = s.events.closed(1).await;
        assert_eq!(
            (stats.upstream_messages, stats.downstream_messages),
            (3, 3),
            "{path:?}"
        );
        let by_client = CloseFrame {
            by: ClosedBy::Client,
            code: Some(4001),
        };
        assert_eq!(stats.close, Some(by_client), "{path:?}");
    }
}

/// Frames of mixed sizes back to back (small ones copied, large ones spliced with their
/// header), then a drain while large frames flow both ways: every frame arrives whole and in
/// order, and each side's `1001` close frame comes after the frame that was in flight, never
/// inside it (tungstenite rejects anything else as a protocol error).
#[tokio::test]
async fn mixed_frames_in_flight_survive_splicing_and_a_drain() {
    /// Sizes around the splice threshold (16 KiB) and the 16/64-bit length encodings.
    const SIZES: [usize; 9] = [5, 70_000, 300, 16_383, 16_384, 1, 131_072, 65_535, 200_000];
    fn message(i: usize) -> Vec<u8> {
        (0..SIZES[i % SIZES.len()]).map(|b| (b + i) as u8).collect()
    }
    const FLOOD: usize = 100_000;
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        // The upstream echoes every message until it gets a close frame.
        let upstream = async {
            let tcp = s.raw.accept().await;
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            loop {
                match within(ws.next()).await {
                    Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                    Some(Ok(m @ Message::Binary(_))) => {
                        if ws.send(m).await.is_err() {
                            panic!("{path:?}: upstream could not echo before the close frame");
                        }
                    }
                    other => panic!("{path:?}: upstream expected frames then a close, got {other:?}"),
                }
            }
        };
        let client = async {
            let url = format!("ws://{}/mixed", s.proxy.addr);
            let (ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let count = 3 * SIZES.len();
            let send = async {
                for i in 0..count {
                    tx.send(Message::binary(message(i))).await.unwrap();
                }
            };
            let receive = async {
                for i in 0..count {
                    match within(rx.next()).await {
                        Some(Ok(Message::Binary(b))) => {
                            assert!(b[..] == message(i)[..], "{path:?}: message {i}")
                        }
                        other => panic!("{path:?}: message {i}: {other:?}"),
                    }
                }
            };
            tokio::join!(send, receive);
            // Now large frames flow both ways without pause, and the proxy drains.
            let flood =
                tokio::spawn(
                    async move { while tx.send(Message::binary(vec![7u8; FLOOD])).await.is_ok() {} },
                );
            // Set once a flood frame has come back: frames then flow both ways.
            let flowing = tokio::sync::Notify::new();
            let closed = async {
                loop {
                    match within(rx.next()).await {
                        Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                        Some(Ok(Message::Binary(b))) => {
                            assert!(b.len() == FLOOD && b.iter().all(|&x| x == 7), "{path:?}");
                            flowing.notify_one();
                        }
                        other => panic!("{path:?}: client expected frames then a close, got {other:?}"),
                    }
                }
            };
            let drain = async {
                within(flowing.notified()).await;
                s.drain.drain(Duration::from_millis(50)).await
            };
            let (outcome, code) = tokio::join!(drain, closed);
            flood.abort();
            assert_eq!((outcome.finished, outcome.closed), (0, 1), "{path:?}");
            code
        };
        let (up_code, client_code) = tokio::join!(upstream, client);
        assert_eq!((up_code, client_code), (1001, 1001), "{path:?}");
    }
}

/// A client that uploads without pause, to an upstream that takes everything, doesn't starve
/// the other direction: the upstream's messages still reach the client while the flood goes
/// on. (The two directions of a joined tunnel share one task and its I/O budget.)
#[tokio::test]
async fn a_flood_one_way_does_not_starve_the_other() {
    use tokio::io::AsyncReadExt;
    for path in PATHS {
        let s = setup(path, TunnelConfig::new()).await;
        let (client, up) = open(&s).await;
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut up_rd, mut up_wr) = up.into_split();
        let flood = tokio::spawn(async move {
            let chunk = vec![0x5a; 64 * 1024];
            while client_wr.write_all(&chunk).await.is_ok() {}
        });
        let flowing = std::sync::Arc::new(tokio::sync::Notify::new());
        let sink = tokio::spawn({
            let flowing = flowing.clone();
            async move {
                let mut buf = vec![0; 256 * 1024];
                while matches!(up_rd.read(&mut buf).await, Ok(n) if n > 0) {
                    flowing.notify_one();
                }
            }
        });
        // Let the flood get going first: its bytes reach the upstream.
        within(flowing.notified()).await;
        let talk = async {
            for _ in 0..10 {
                up_wr.write_all(b"hello").await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let mut heard = [0u8; 50];
        let (_, heard_all) = tokio::join!(talk, within(client_rd.read_exact(&mut heard)));
        heard_all.unwrap();
        assert_eq!(&heard[..], "hello".repeat(10).as_bytes(), "{path:?}");
        flood.abort();
        sink.abort();
    }
}

/// A tunnel that ends before the deadline is not cut: drain waits for it.
#[tokio::test]
async fn drain_waits_for_tunnels_that_finish_in_time() {
    let s = setup(Path::Spliced, TunnelConfig::new()).await;
    let (mut client, mut up) = open(&s).await;
    let finisher = async {
        // The tunnel finishes once the drain is under way.
        within(async {
            while !s.drain.is_draining() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        client.write_all(b"done").await.unwrap();
        drop(client);
        assert_eq!(read_to_eof(&mut up).await, b"done");
        drop(up);
    };
    let (outcome, ()) = tokio::join!(s.drain.drain(Duration::from_secs(5)), finisher);
    assert_eq!((outcome.finished, outcome.closed), (1, 0));
    assert_eq!(s.events.closed(1).await.1.end, TunnelEnd::ClientClosed);
}

/// Bytes of a recognisable pattern: position `i` holds `(i * 7 + seed) % 251`, so a lost,
/// repeated or reordered chunk shows.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// Half-close under backpressure, each way: one peer writes 8 MiB and the other shuts its
/// write side down before reading anything, while the proxy's writes to it are blocked. Every byte still arrives, in order, then the end of stream, and the FIN
/// reaches the writer.
#[tokio::test]
async fn half_close_under_backpressure_delivers_every_byte() {
    const LEN: usize = 8 << 20;
    for path in PATHS {
        for to_client in [true, false] {
            let s = setup(path, TunnelConfig::new()).await;
            let (client, up) = open(&s).await;
            let (mut writer, mut reader) = if to_client { (up, client) } else { (client, up) };
            let data = pattern(LEN, 3);
            let expected = data.clone();
            let write = tokio::spawn(async move {
                writer.write_all(&data).await.unwrap();
                // The reader's FIN reached the writer...
                assert_eq!(read_to_eof(&mut writer).await, b"");
                // ...and the writer's own FIN ends the tunnel.
                writer.shutdown().await.unwrap();
            });
            // The proxy's writes to the reader are blocked when its FIN arrives; it reads only
            // after that has gone through.
            tokio::time::sleep(Duration::from_millis(200)).await;
            reader.shutdown().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let got = read_to_eof(&mut reader).await;
            assert_eq!(got.len(), LEN, "{path:?}, to client: {to_client}");
            assert!(got == expected, "{path:?}, to client: {to_client}: bytes differ");
            within(write).await.unwrap();
            let (mode, stats) = s.events.closed(1).await;
            assert_eq!(mode, path.mode());
            let relayed = if to_client {
                stats.downstream_bytes
            } else {
                stats.upstream_bytes
            };
            assert_eq!(relayed, LEN as u64, "{path:?}, to client: {to_client}");
        }
    }
}

/// One way floods while the other half-closes: the half-closing side's last bytes and its FIN
/// reach the flooding peer in the middle of the flood, and the flood is delivered whole.
#[tokio::test]
async fn a_flood_one_way_while_the_other_half_closes() {
    use tokio::io::AsyncReadExt;
    const FLOOD: usize = 16 << 20;
    for path in PATHS {
        for flood_to_client in [true, false] {
            let s = setup(path, TunnelConfig::new()).await;
            let (client, up) = open(&s).await;
            let (flooder, closer) = if flood_to_client {
                (up, client)
            } else {
                (client, up)
            };
            let (mut flooder_rd, mut flooder_wr) = flooder.into_split();
            let (mut closer_rd, mut closer_wr) = closer.into_split();
            let flood = pattern(FLOOD, 11);
            let expected = flood.clone();
            let flooding = tokio::spawn(async move {
                flooder_wr.write_all(&flood).await.unwrap();
                flooder_wr.shutdown().await.unwrap();
            });
            let last_words = pattern(100_000, 5);
            closer_wr.write_all(&last_words).await.unwrap();
            closer_wr.shutdown().await.unwrap();
            // Heard in full while the flood is still going: the flooder reads concurrently.
            let mut heard = Vec::new();
            within(flooder_rd.read_to_end(&mut heard)).await.unwrap();
            assert!(
                heard == last_words,
                "{path:?}, flood to client: {flood_to_client}"
            );
            let got = read_to_eof(&mut closer_rd).await;
            assert_eq!(got.len(), FLOOD, "{path:?}, flood to client: {flood_to_client}");
            assert!(got == expected, "{path:?}: flood bytes differ");
            within(flooding).await.unwrap();
            let (_, stats) = s.events.closed(1).await;
            let (closer_end, flood_end) = if flood_to_client {
                (TunnelEnd::ClientClosed, stats.downstream_bytes)
            } else {
                (TunnelEnd::UpstreamClosed, stats.upstream_bytes)
            };
            assert_eq!(stats.end, closer_end, "{path:?}");
            assert_eq!(flood_end, FLOOD as u64, "{path:?}");
        }
    }
}

/// A reset from either side (a close with unread data, or `SO_LINGER` 0) ends the tunnel and
/// closes the other side, rather than leaving it open.
#[tokio::test]
async fn a_reset_from_either_side_closes_the_other() {
    for path in PATHS {
        for client_resets in [true, false] {
            let s = setup(path, TunnelConfig::new()).await;
            let (client, up) = open(&s).await;
            let (resetter, mut other) = if client_resets { (client, up) } else { (up, client) };
            resetter.set_zero_linger().unwrap();
            drop(resetter);
            // The other side sees its connection end (EOF or a reset of its own)...
            read_to_eof(&mut other).await;
            // ...and the tunnel is over.
            let (mode, _) = s.events.closed(1).await;
            assert_eq!(mode, path.mode(), "{path:?}, client resets: {client_resets}");
        }
    }
}

/// The `101` carries a handle on its tunnel: a layer above the router ties the tunnel to its
/// request with it and learns how it ended, without matching client addresses.
#[tokio::test]
async fn the_101_carries_a_handle_that_reports_the_tunnels_end() {
    use switchback::TunnelHandle;
    let raw = RawUpstream::bind().await;
    let (tx, mut handles) = tokio::sync::mpsc::unbounded_channel();
    let router = UpgradeRouterLayer::builder().upgrade("foo").build().unwrap();
    let stack = ServiceBuilder::new()
        .map_response(move |res: http::Response<switchback::Body>| {
            if let Some(handle) = res.extensions().get::<TunnelHandle>() {
                tx.send(handle.clone()).unwrap();
            }
            res
        })
        .layer(router)
        .service(Forward::new(cluster(raw.addr)));
    let proxy = start(stack).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut client = raw_client(proxy.addr, foo_upgrade("/h").as_bytes()).await;
        let mut up = raw.accept().await;
        read_head(&mut up).await;
        up.write_all(FOO_101).await.unwrap();
        assert_eq!(status(&read_head(&mut client).await.0), 101);
        let handle = within(handles.recv()).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read_n(&mut up, Vec::new(), 4).await, b"ping");
        up.write_all(b"pong!").await.unwrap();
        assert_eq!(read_n(&mut client, Vec::new(), 5).await, b"pong!");
        drop(client);
        drop(up);
        let stats = within(handle.closed()).await.expect("the tunnel opened");
        assert_eq!((stats.upstream_bytes, stats.downstream_bytes), (4, 5));
        ids.push(handle.id());
    }
    assert_ne!(ids[0], ids[1], "each tunnel has an id of its own");
}

/// Forgetting `.drain(..)` on the builder doesn't leave tunnels undrainable: the layer hands
/// out the drain its tunnels register with.
#[tokio::test]
async fn a_routers_own_drain_closes_its_tunnels() {
    let raw = RawUpstream::bind().await;
    let router = UpgradeRouterLayer::builder().upgrade("foo").build().unwrap();
    let drain = router.drain().clone();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster(raw.addr))),
    )
    .await;
    let mut client = raw_client(proxy.addr, foo_upgrade("/d").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(FOO_101).await.unwrap();
    assert_eq!(status(&read_head(&mut client).await.0), 101);
    assert_eq!(drain.active(), 1);
    let outcome = drain.drain(Duration::from_millis(50)).await;
    assert_eq!((outcome.finished, outcome.closed), (0, 1));
    assert_eq!(read_to_eof(&mut client).await, b"");
    assert_eq!(read_to_eof(&mut up).await, b"");
}

/// A listing drain lists its live tunnels (what they are, what they relayed) and closes one
/// on request as a drain would: a WebSocket tunnel gets `1001` each way, the others run on.
#[tokio::test]
async fn a_listing_drain_lists_live_tunnels_and_closes_one() {
    let echo_a = ws_echo().await;
    let drain = Drain::listing();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .drain(drain.clone())
        .build()
        .unwrap();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster(echo_a.addr))),
    )
    .await;
    let mut clients = Vec::new();
    for path in ["/one", "/two"] {
        let url = format!("ws://{}{path}", proxy.addr);
        let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::text("hello"));
        clients.push(ws);
    }
    let live = drain.tunnels();
    assert_eq!(live.len(), 2);
    assert_eq!(
        live.iter().map(|t| t.info.path.as_str()).collect::<Vec<_>>(),
        ["/one", "/two"]
    );
    for t in &live {
        // A masked client frame of "hello" is 11 bytes; the echo's unmasked one 7.
        assert_eq!(
            (t.bytes_from_client, t.bytes_to_client),
            (11, 7),
            "{:?}",
            t.info.path
        );
        assert_eq!(t.info.mode, TunnelMode::Joined);
        assert_eq!(t.info.version, http::Version::HTTP_11);
    }
    assert!(drain.close(live[0].info.id));
    assert!(!drain.close(u64::MAX), "no such tunnel");
    assert_eq!(
        close_code(&mut clients[0], "the closed tunnel's client").await,
        1001
    );
    // The other tunnel is untouched, and soon the closed one is no longer listed.
    clients[1].send(Message::text("still here")).await.unwrap();
    assert_eq!(
        within(clients[1].next()).await.unwrap().unwrap(),
        Message::text("still here")
    );
    within(async {
        while drain.tunnels().len() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(drain.tunnels()[0].info.id, live[1].info.id);
    assert!(Drain::new().tunnels().is_empty(), "a plain drain lists nothing");
}

/// A tunnel older than its longest life (Envoy's `max_stream_duration`) closes as on a drain:
/// a WebSocket gets `1001` each way, between frames.
#[tokio::test]
async fn a_tunnel_closes_at_its_longest_life() {
    for path in PATHS {
        let s = setup(
            path,
            TunnelConfig::new().max_stream_duration(Duration::from_millis(300)),
        )
        .await;
        let upstream = async {
            let tcp = s.raw.accept().await;
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            loop {
                match within(ws.next()).await {
                    Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                    Some(Ok(m @ Message::Text(_))) => ws.send(m).await.unwrap(),
                    Some(Ok(_)) => continue,
                    other => panic!("{path:?}: upstream expected a close frame, got {other:?}"),
                }
            }
        };
        let client = async {
            let url = format!("ws://{}/old", s.proxy.addr);
            let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
            ws.send(Message::text("young")).await.unwrap();
            assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::text("young"));
            close_code(&mut ws, &format!("{path:?}: client")).await
        };
        let (up_code, client_code) = tokio::join!(upstream, client);
        assert_eq!((up_code, client_code), (1001, 1001), "{path:?}");
        let (mode, stats) = s.events.closed(1).await;
        assert_eq!(
            (mode, stats.end),
            (path.mode(), TunnelEnd::MaxDuration),
            "{path:?}"
        );
    }
}
