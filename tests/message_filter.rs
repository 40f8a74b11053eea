//! `ws::MessageFilterLayer` over real sockets: verdicts with a real WebSocket client and
//! server, and byte-exact frames (fragments, control frames, masks, protocol errors, the
//! handshake's extension offer) with raw TCP on both sides.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::convert::Infallible;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower::{ServiceBuilder, service_fn};

use support::*;
use switchback::ws::{Direction, Message, MessageFilterLayer, MessageKind, Verdict};
use switchback::{Chain, Forward, TunnelMode, UpgradeConfig, UpgradeRouterLayer};

/// The filter of these tests: `drop*` is dropped, `secret` becomes `[redacted]`, `close`
/// closes with 4001, `fail` is an error, binary messages are passed; upstream-bound text gets
/// `>` in front and client-bound text `<`, so each direction's work is seen.
fn test_filter(msg: Message) -> std::future::Ready<Result<Verdict, std::io::Error>> {
    let verdict = match (msg.kind(), msg.text()) {
        (MessageKind::Binary, _) => Ok(Verdict::Pass),
        (_, Some(t)) if t.starts_with("drop") => Ok(Verdict::Drop),
        (_, Some("close")) => Ok(Verdict::close(4001, "closed by the filter")),
        (_, Some("fail")) => Err(std::io::Error::other("the filter failed")),
        (_, Some(t)) => {
            let mark = match msg.direction() {
                Direction::ToUpstream => ">",
                Direction::ToClient => "<",
            };
            let t = format!("{mark}{}", t.replace("secret", "[redacted]"));
            Ok(Verdict::Replace(msg.with_text(t)))
        }
        (MessageKind::Text, None) => unreachable!("text is checked to be UTF-8"),
    };
    std::future::ready(verdict)
}

/// A proxy with the test filter on the `websocket` type's chain (messages of at most
/// `max` bytes, or the default), `foo` with the default chain, both to `upstream`.
async fn proxy(upstream: std::net::SocketAddr, max: Option<u64>, events: &Events) -> Proxy {
    let forward = Forward::new(cluster(upstream)).response_timeout(Duration::from_secs(2));
    let layer = MessageFilterLayer::new(service_fn(test_filter));
    let layer = match max {
        Some(max) => layer.max_message_size(max),
        None => layer,
    };
    let filtered = ServiceBuilder::new().layer(layer).service(forward.clone());
    let router = UpgradeRouterLayer::builder()
        .upgrade_config(UpgradeConfig::new("websocket").chain(Chain::new(filtered)))
        .upgrade("foo")
        .observer(events.observer())
        .build()
        .unwrap();
    start(ServiceBuilder::new().layer(router).service(forward)).await
}

/// The echo upstream behind the test filter, and a WebSocket client connected through it.
async fn echo_through_filter() -> (
    WsEcho,
    Events,
    Proxy,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) {
    let echo = ws_echo().await;
    let events = Events::default();
    let proxy = proxy(echo.addr, None, &events).await;
    let (ws, _) = within(tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr)))
        .await
        .unwrap();
    (echo, events, proxy, ws)
}

#[tokio::test]
async fn messages_are_passed_replaced_dropped_and_closed_each_way() {
    let (echo, events, _proxy, mut ws) = echo_through_filter().await;
    // Up through the filter (">"), echoed, down through it ("<").
    ws.send(WsMessage::text("hello")).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        WsMessage::text("<>hello")
    );
    ws.send(WsMessage::text("my secret")).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        WsMessage::text("<>my [redacted]")
    );
    // A dropped message never reaches the upstream, so nothing comes back for it.
    ws.send(WsMessage::text("drop this")).await.unwrap();
    let big = pattern(300_000);
    ws.send(WsMessage::binary(big.clone())).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), WsMessage::binary(big));
    // Pings pass untouched (tungstenite's server answers them).
    ws.send(WsMessage::Ping(b"p".to_vec().into())).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        WsMessage::Pong(b"p".to_vec().into())
    );
    ws.send(WsMessage::text("close")).await.unwrap();
    match within(ws.next()).await.unwrap().unwrap() {
        WsMessage::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason.as_str(), "closed by the filter");
        }
        other => panic!("expected the filter's close, got {other:?}"),
    }
    drop(ws);
    let mut codes = echo.close_codes;
    assert_eq!(
        within(codes.recv()).await,
        Some(1001),
        "the upstream is told it is going away"
    );
    let (mode, stats) = events.closed(1).await;
    assert_eq!(mode, TunnelMode::Pumped);
    // Sent upstream: hello, my secret, the binary (not the dropped one, not "close").
    assert_eq!(stats.upstream_messages, 3);
}

#[tokio::test]
async fn a_filter_error_closes_with_1011() {
    let (echo, _events, _proxy, mut ws) = echo_through_filter().await;
    ws.send(WsMessage::text("fail")).await.unwrap();
    match within(ws.next()).await.unwrap().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1011),
        other => panic!("expected 1011, got {other:?}"),
    }
    let mut codes = echo.close_codes;
    assert_eq!(within(codes.recv()).await, Some(1001));
}

#[tokio::test]
async fn other_upgrade_types_pass_untouched_and_stay_joined() {
    let raw = RawUpstream::bind().await;
    let events = Events::default();
    let proxy = proxy(raw.addr, None, &events).await;
    let mut client = raw_client(proxy.addr, foo_upgrade("/").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(FOO_101).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 101);
    // Bytes that are no WebSocket frame go through as they are.
    client.write_all(b"\x00\xffnot a frame").await.unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 13).await, b"\x00\xffnot a frame");
    assert_eq!(events.opened(), [TunnelMode::Joined]);
}

// === byte-exact, raw TCP on both sides ===

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A client frame: `first` is the first header byte (FIN and opcode), masked with `mask`.
fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![first];
    push_len(&mut f, payload.len(), 0x80);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A server frame (unmasked).
fn unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    push_len(&mut f, payload.len(), 0);
    f.extend_from_slice(payload);
    f
}

fn push_len(f: &mut Vec<u8>, len: usize, bit: u8) {
    match len {
        0..=125 => f.push(bit | len as u8),
        126..=0xFFFF => {
            f.push(bit | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(bit | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// One frame read off `r`: (first header byte, mask if any, payload unmasked).
async fn read_frame(r: &mut TcpStream) -> (u8, Option<[u8; 4]>, Vec<u8>) {
    let mut h = [0; 2];
    within(r.read_exact(&mut h)).await.unwrap();
    let len = match h[1] & 0x7F {
        126 => {
            let mut n = [0; 2];
            r.read_exact(&mut n).await.unwrap();
            u64::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0; 8];
            r.read_exact(&mut n).await.unwrap();
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    let mask = if h[1] & 0x80 != 0 {
        let mut m = [0; 4];
        r.read_exact(&mut m).await.unwrap();
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0; len as usize];
    within(r.read_exact(&mut payload)).await.unwrap();
    if let Some(m) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
    }
    (h[0], mask, payload)
}

/// A close frame's code.
fn code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A tunnel through the filter between a raw client and a raw upstream; `extra` goes into
/// the client's handshake, `answer` is the upstream's `101` (or another answer).
async fn raw_tunnel(extra: &str, max: Option<u64>) -> (TcpStream, TcpStream, String, Proxy, RawUpstream) {
    let raw = RawUpstream::bind().await;
    let events = Events::default();
    let proxy = proxy(raw.addr, max, &events).await;
    let req = format!(
        "GET /chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    );
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    let (up_head, _) = read_head(&mut up).await;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    );
    up.write_all(answer.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 101, "{head}");
    assert!(rest.is_empty());
    (client, up, up_head, proxy, raw)
}

#[tokio::test]
async fn fragments_are_joined_control_frames_pass_untouched_and_masks_are_fresh() {
    let (mut client, mut up, up_head, _proxy, _raw) = raw_tunnel(
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        None,
    )
    .await;
    assert!(
        header(&up_head, "sec-websocket-extensions").is_none(),
        "the compression offer is taken out: {up_head}"
    );
    let mask = [0x11, 0x22, 0x33, 0x44];
    let ping = masked(0x89, b"are you there", [9, 9, 9, 9]);
    let mut bytes = masked(0x01, b"Hel", mask); // text, not final
    bytes.extend_from_slice(&ping);
    bytes.extend(masked(0x80, b"lo", mask)); // continuation, final
    // One byte at a time: headers and payloads split everywhere.
    for b in &bytes {
        client.write_all(&[*b]).await.unwrap();
    }
    let mut raw_ping = vec![0; ping.len()];
    within(up.read_exact(&mut raw_ping)).await.unwrap();
    assert_eq!(
        raw_ping, ping,
        "the ping goes on byte for byte, ahead of the unfinished message"
    );
    let (first, key, payload) = read_frame(&mut up).await;
    assert_eq!(first, 0x81, "one final text frame");
    assert!(key.is_some(), "masked towards the upstream");
    assert_eq!(payload, b">Hello");
    // Down: unmasked, filtered, one frame; a large binary message passes as it is.
    up.write_all(&unmasked(0x81, b"world")).await.unwrap();
    let big = pattern(70_000);
    up.write_all(&unmasked(0x82, &big)).await.unwrap();
    let (first, key, payload) = read_frame(&mut client).await;
    assert_eq!((first, key, payload.as_slice()), (0x81, None, &b"<world"[..]));
    let (first, key, payload) = read_frame(&mut client).await;
    assert_eq!((first, key), (0x82, None));
    assert_eq!(payload, big);
    // The client closes: the close frame passes untouched, the upstream answers, both end.
    let close = masked(0x88, &1000u16.to_be_bytes(), mask);
    client.write_all(&close).await.unwrap();
    let mut raw_close = vec![0; close.len()];
    within(up.read_exact(&mut raw_close)).await.unwrap();
    assert_eq!(raw_close, close);
    up.write_all(&unmasked(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    drop(up);
    let (first, _, payload) = read_frame(&mut client).await;
    assert_eq!((first, code(&payload)), (0x88, 1000));
    assert!(read_to_eof(&mut client).await.is_empty());
}

/// Frames that break the protocol, or a message past the limit: the sender gets the code
/// at once, the upstream `1001`, and nothing of the bad message is delivered.
#[tokio::test]
async fn bad_frames_close_with_the_right_code_and_deliver_nothing() {
    let mask = [1, 2, 3, 4];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked client frame", unmasked(0x81, b"hi"), 1002),
        ("reserved bit", masked(0xC1, b"hi", mask), 1002),
        ("reserved opcode", masked(0x83, b"hi", mask), 1002),
        ("continuation with no message", masked(0x80, b"hi", mask), 1002),
        ("fragmented ping", masked(0x09, b"hi", mask), 1002),
        (
            "control frame past 125 bytes",
            masked(0x89, &[0; 126], mask),
            1002,
        ),
        (
            "new message inside a fragmented one",
            {
                let mut b = masked(0x01, b"a", mask);
                b.extend(masked(0x81, b"b", mask));
                b
            },
            1002,
        ),
        (
            "invalid UTF-8, said at once",
            {
                let mut b = masked(0x01, b"ok\xC0\xAF", mask);
                b.extend(masked(0x80, b"more", mask));
                b
            },
            1007,
        ),
        (
            "text that ends inside a character",
            masked(0x81, b"ok\xE2\x82", mask),
            1007,
        ),
        (
            "message past the limit, in fragments",
            {
                let mut b = masked(0x02, &[7; 60], mask);
                b.extend(masked(0x80, &[7; 41], mask));
                b
            },
            1009,
        ),
        ("one frame past the limit", masked(0x82, &[7; 101], mask), 1009),
    ];
    for (case, bytes, want) in cases {
        let (mut client, mut up, _, _proxy, _raw) = raw_tunnel("", Some(100)).await;
        client.write_all(&bytes).await.unwrap();
        let (first, _, payload) = read_frame(&mut client).await;
        assert_eq!(
            (first, code(&payload)),
            (0x88, want),
            "{case}: the client's close"
        );
        let (first, key, payload) = read_frame(&mut up).await;
        assert_eq!(
            (first, code(&payload)),
            (0x88, 1001),
            "{case}: the upstream's close"
        );
        assert!(key.is_some(), "{case}: a client's close frame is masked");
        // The client answers the close and goes; the upstream answers, the proxy reads it and
        // ends both sides cleanly: nothing more reaches either.
        client
            .write_all(&masked(0x88, &want.to_be_bytes(), mask))
            .await
            .unwrap();
        up.write_all(&unmasked(0x88, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        up.shutdown().await.unwrap();
        assert!(read_to_eof(&mut client).await.is_empty(), "{case}");
        client.shutdown().await.unwrap();
        assert!(read_to_eof(&mut up).await.is_empty(), "{case}");
    }
}

#[tokio::test]
async fn the_limit_edges_zero_and_exact() {
    let mask = [5, 6, 7, 8];
    // A limit of 0 admits empty messages only.
    let (mut client, mut up, _, _proxy, _raw) = raw_tunnel("", Some(0)).await;
    client.write_all(&masked(0x82, b"", mask)).await.unwrap();
    let (first, _, payload) = read_frame(&mut up).await;
    assert_eq!((first, payload.len()), (0x82, 0));
    client.write_all(&masked(0x82, b"x", mask)).await.unwrap();
    let (_, _, payload) = read_frame(&mut client).await;
    assert_eq!(code(&payload), 1009);
    // A message of exactly the limit passes.
    let (mut client, mut up, _, _proxy, _raw) = raw_tunnel("", Some(100)).await;
    client.write_all(&masked(0x02, &[1; 50], mask)).await.unwrap();
    client.write_all(&masked(0x80, &[1; 50], mask)).await.unwrap();
    let (first, _, payload) = read_frame(&mut up).await;
    assert_eq!((first, payload), (0x82, vec![1; 100]));
    // The default, 1 MiB: exactly that passes, one byte more is refused from its header.
    let (mut client, mut up, _, _proxy, _raw) = raw_tunnel("", None).await;
    client
        .write_all(&masked(0x82, &vec![2; 1 << 20], mask))
        .await
        .unwrap();
    let (first, _, payload) = read_frame(&mut up).await;
    assert_eq!((first, payload.len()), (0x82, 1 << 20));
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&((1u64 << 20) + 1).to_be_bytes());
    head.extend_from_slice(&mask);
    client.write_all(&head).await.unwrap();
    let (_, _, payload) = read_frame(&mut client).await;
    assert_eq!(code(&payload), 1009, "refused before a byte of its payload");
    // The largest: no limit to speak of.
    let (mut client, mut up, _, _proxy, _raw) = raw_tunnel("", Some(u64::MAX)).await;
    client
        .write_all(&masked(0x82, &vec![3; 2 << 20], mask))
        .await
        .unwrap();
    let (first, _, payload) = read_frame(&mut up).await;
    assert_eq!((first, payload.len()), (0x82, 2 << 20));
}

#[tokio::test]
async fn the_handshake_is_refused_where_frames_cannot_be_read() {
    let raw = RawUpstream::bind().await;
    let events = Events::default();
    let proxy = proxy(raw.addr, None, &events).await;
    // An older protocol version: 426 naming the one we read.
    let old = "GET / HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut client = raw_client(proxy.addr, old.as_bytes()).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 426, "{head}");
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"));
    // A handshake with a body of its own.
    let with_body = "GET / HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Content-Length: 5\r\n\r\nhello";
    let mut client = raw_client(proxy.addr, with_body.as_bytes()).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 400, "{head}");
    raw.assert_untouched("refused handshakes").await;
    // An upstream that accepts an extension nobody offered: 502.
    let req = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    let mut client = raw_client(proxy.addr, req.as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    up.write_all(answer.as_bytes()).await.unwrap();
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 502, "{head}");
    assert!(
        read_to_eof(&mut up).await.is_empty(),
        "the upstream connection is closed"
    );
}

/// A filter keeps per-tunnel state in itself: each tunnel gets its own clone.
#[tokio::test]
async fn each_tunnel_has_its_own_filter() {
    #[derive(Clone, Default)]
    struct Counter(u32);
    impl tower::Service<Message> for Counter {
        type Response = Verdict;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Verdict, Infallible>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, msg: Message) -> Self::Future {
            if msg.direction() == Direction::ToUpstream {
                self.0 += 1;
            }
            let n = self.0;
            std::future::ready(Ok(Verdict::Replace(msg.with_text(n.to_string()))))
        }
    }
    let echo = ws_echo().await;
    let forward = Forward::new(cluster(echo.addr));
    let chain = Chain::new(
        ServiceBuilder::new()
            .layer(MessageFilterLayer::new(Counter::default()))
            .service(forward.clone()),
    );
    let router = UpgradeRouterLayer::builder()
        .upgrade_config(UpgradeConfig::new("websocket").chain(chain))
        .build()
        .unwrap();
    let proxy = start(ServiceBuilder::new().layer(router).service(forward)).await;
    let url = format!("ws://{}/", proxy.addr);
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    for want in ["1", "2", "3"] {
        a.send(WsMessage::text("x")).await.unwrap();
        assert_eq!(within(a.next()).await.unwrap().unwrap(), WsMessage::text(want));
    }
    b.send(WsMessage::text("x")).await.unwrap();
    assert_eq!(within(b.next()).await.unwrap().unwrap(), WsMessage::text("1"));
}

/// A deterministic payload of `len` bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn http2_websockets_are_filtered_too() {
    let echo = ws_echo().await;
    let events = Events::default();
    let proxy = proxy(echo.addr, None, &events).await;
    let mut sender = h2_client(proxy.addr).await;
    let mut req = h2_websocket(proxy.addr);
    req.headers_mut().insert(
        "sec-websocket-extensions",
        http::HeaderValue::from_static("permessage-deflate"),
    );
    let mut res = within(sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("sec-websocket-extensions"));
    let mut stream = hyper_util::rt::TokioIo::new(within(hyper::upgrade::on(&mut res)).await.unwrap());
    stream
        .write_all(&masked(0x81, b"a secret", [3, 1, 4, 1]))
        .await
        .unwrap();
    let want = unmasked(0x81, b"<>a [redacted]");
    let mut got = vec![0; want.len()];
    within(stream.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, want);
}

/// The upstream breaks the protocol: it gets the code (in a masked close frame, as a
/// client sends), the client `1001`.
#[tokio::test]
async fn a_bad_frame_from_the_upstream_closes_it_with_1002() {
    let (mut client, mut up, _, _proxy, _raw) = raw_tunnel("", None).await;
    up.write_all(&masked(0x81, b"masked", [1, 1, 1, 1]))
        .await
        .unwrap();
    let (first, key, payload) = read_frame(&mut up).await;
    assert_eq!((first, code(&payload)), (0x88, 1002));
    assert!(key.is_some(), "towards the upstream, masked");
    let (first, key, payload) = read_frame(&mut client).await;
    assert_eq!((first, key, code(&payload)), (0x88, None, 1001));
}

/// A close frame goes each way once: after the upstream's close went to the client, a
/// message the filter closes on sends no second close to the client.
#[tokio::test]
async fn no_second_close_frame_follows_a_relayed_one() {
    let (mut client, mut up, _, _proxy, _raw) = raw_tunnel("", None).await;
    up.write_all(&unmasked(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (first, _, payload) = read_frame(&mut client).await;
    assert_eq!((first, code(&payload)), (0x88, 1000));
    // Before answering the close, the client sends a message the filter closes on.
    client
        .write_all(&masked(0x81, b"close", [2, 2, 2, 2]))
        .await
        .unwrap();
    let (first, _, payload) = read_frame(&mut up).await;
    assert_eq!(
        (first, code(&payload)),
        (0x88, 1001),
        "the upstream hears the client went away"
    );
    up.shutdown().await.unwrap();
    assert!(
        read_to_eof(&mut client).await.is_empty(),
        "no second close frame to the client"
    );
}
