//! What a client's own bytes may not do to the binary: grow its metrics, pick a route by a
//! `Host` the upstream won't get, open more HTTP/2 tunnels than `max_concurrent_streams`, or
//! open a raw pipe on a legacy route with a forged `101`.

use super::*;
use support::read_to_eof;

/// The proxy's resident memory, in KiB.
pub(super) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A 400-character token no one configured, different every call: each would be a series
/// of its own if labels took tokens.
fn fresh_token() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("t{:0>399}", N.fetch_add(1, Ordering::Relaxed))
}

/// 3 000 refused upgrades with distinct 400-byte tokens, over HTTP/1.1: every one is counted
/// as `type="other"`, `/metrics` keeps its size, and memory stays level (before labels were
/// bounded, the same load took `/metrics` from 2.9 KB to 1.4 MB and RSS up 16 MiB).
#[tokio::test]
async fn random_upgrade_tokens_leave_metrics_and_memory_flat() {
    let dir = TempDir::new("random-tokens");
    let upstream = http_upstream("app").await;
    let file = dir.write(
        "tokens.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nupgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: app\n\
             clusters:\n  - name: app\n    endpoints: [{upstream}]\n"
        ),
    );
    let (proxy, listen, admin) = Proxy::with_admin(&dir, &file).await;
    let refuse = |n: usize| async move {
        for _ in 0..n {
            let req = format!(
                "GET / HTTP/1.1\r\nhost: a.example\r\nconnection: upgrade\r\nupgrade: {}\r\n\r\n",
                fresh_token()
            );
            let mut stream = raw_client(listen, req.as_bytes()).await;
            let (head, _) = read_head(&mut stream).await;
            assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        }
    };
    // A first round so that every series and pool exists before measuring.
    refuse(200).await;
    let metrics_before = http(admin, "GET", "/metrics", &[], b"").await.body;
    let rss_before = rss_kib(proxy.child.id());
    let rounds: Vec<_> = (0..8).map(|_| tokio::spawn(refuse(375))).collect();
    for round in rounds {
        round.await.unwrap();
    }
    let metrics_after = http(admin, "GET", "/metrics", &[], b"").await.body;
    let rss_after = rss_kib(proxy.child.id());

    let rejected = |text: &str| {
        metric(
            text,
            "switchback_upgrades_rejected_total",
            &["type=\"other\"", "reason=\"not_configured\""],
        )
    };
    assert_eq!(rejected(&metrics_after) - rejected(&metrics_before), 3000.0);
    let growth = metrics_after.len().abs_diff(metrics_before.len());
    assert!(
        growth < 256,
        "/metrics went from {} to {} bytes:\n{metrics_after}",
        metrics_before.len(),
        metrics_after.len()
    );
    assert!(
        rss_after < rss_before + 4 * 1024,
        "RSS went from {rss_before} KiB to {rss_after} KiB"
    );
}

/// An absolute-form target names the authority: `GET http://admin.internal/secret` with
/// `Host: public.example` takes the route for `admin.internal` (and reaches its cluster with
/// that `Host`), never the public one's.
#[tokio::test]
async fn an_absolute_form_request_is_routed_by_its_target() {
    let dir = TempDir::new("absolute-form");
    let (public, internal) = (http_upstream("public").await, http_upstream("internal").await);
    let file = dir.write(
        "hosts.yaml",
        &format!(
            "listen: 127.0.0.1:0\n\
             routes:\n  - match: {{ prefix: /, headers: [{{ name: host, exact: public.example }}] }}\n    cluster: public\n\
             \x20 - match: {{ prefix: /, headers: [{{ name: host, exact: admin.internal }}] }}\n    cluster: internal\n\
             clusters:\n  - name: public\n    endpoints: [{public}]\n  - name: internal\n    endpoints: [{internal}]\n"
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let req =
        "GET http://admin.internal/secret HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n";
    let mut stream = raw_client(listen, req.as_bytes()).await;
    let reply = parse_reply(&read_to_eof(&mut stream).await);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.starts_with("internal\n"), "{}", reply.body);
    assert!(reply.body.contains("host: admin.internal\r\n"), "{}", reply.body);
    assert!(
        reply.body.starts_with("internal\nGET /secret HTTP/1.1\r\n"),
        "{}",
        reply.body
    );

    // Two Host lines can't pick a route either.
    let req = "GET /x HTTP/1.1\r\nHost: public.example\r\nHost: admin.internal\r\n\r\n";
    let mut stream = raw_client(listen, req.as_bytes()).await;
    let reply = parse_reply(&read_to_eof(&mut stream).await);
    assert_eq!(reply.status, 400, "{}", reply.body);
}

/// `use_websocket` routes hold the upstream's `101` to the same checks as the new style: a
/// bare `101 Switching Protocols` is a `502`, and the request the client wrote behind its
/// handshake never reaches the backend.
#[tokio::test]
async fn a_forged_101_on_a_legacy_route_is_a_502() {
    let dir = TempDir::new("forged-101");
    let upstream = RawUpstream::bind().await;
    let file = dir.write(
        "legacy.yaml",
        &format!(
            "listen: 127.0.0.1:0\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: app\n    use_websocket: true\n\
             clusters:\n  - name: app\n    endpoints: [{}]\n",
            upstream.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let req = "GET /chat HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
               GET /internal/admin HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let mut client = raw_client(listen, req.as_bytes()).await;
    let mut up = within("the upstream connection", upstream.accept()).await;
    let (head, extra) = read_head(&mut up).await;
    assert!(head.starts_with("GET /chat "), "{head}");
    assert!(extra.is_empty(), "{extra:?}");
    up.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        .await
        .unwrap();
    let reply = parse_reply(&read_to_eof(&mut client).await);
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(
        read_to_eof(&mut up).await,
        b"",
        "the smuggled request reached the backend"
    );
}

/// One HTTP/2 connection asking for 300 WebSocket streams at once through the binary gets
/// `max_concurrent_streams` of them open at a time, each with its upstream connection.
#[tokio::test]
async fn an_http2_client_gets_at_most_max_concurrent_streams_tunnels() {
    let dir = TempDir::new("h2-streams");
    let echo = ws_echo().await;
    let file = dir.write(
        "streams.yaml",
        &format!(
            "listen: 127.0.0.1:0\nmax_concurrent_streams: 20\nupgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{}]\n",
            echo.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let sender = support::h2_client(listen).await;
    let mut open_rx = support::h2_tunnels(&sender, listen, 300);
    let mut open = Vec::new();
    while open.len() < 20 {
        open.push(within("20 tunnels", open_rx.recv()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(open_rx.try_recv().is_err(), "a 21st tunnel opened");
    // Each that ends lets one more open.
    open.truncate(15);
    while open.len() < 20 {
        open.push(within("5 more tunnels", open_rx.recv()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(open_rx.try_recv().is_err(), "more than 20 at once");
}

/// A route's `websocket: { max_frames_per_second }` from the YAML: a client that floods gets
/// `1008` (the upstream `1001`), and the access log says why the tunnel ended.
#[tokio::test]
async fn a_flooding_client_is_closed_with_1008() {
    let dir = TempDir::new("frame-rate");
    let mut echo = ws_echo().await;
    let log = dir.path("access.jsonl");
    let file = dir.write(
        "rate.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nupgrade_configs:\n  - upgrade_type: websocket\n\
             \x20   websocket: {{ max_frames_per_second: 1000 }}\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n    websocket: {{ max_frames_per_second: 20 }}\n\
             clusters:\n  - name: echo\n    endpoints: [{}]\n",
            log.display(),
            echo.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let (ws, _) = ws_connect(format!("ws://{listen}/chat")).await;
    let (mut tx, mut rx) = ws.split();
    let flood = tokio::spawn(async move {
        for i in 0..1000u32 {
            if tx.send(Message::text(format!("{i}"))).await.is_err() {
                break;
            }
        }
    });
    let code = within("the close frame", async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("expected echoes then a close, got {other:?}"),
            }
        }
    })
    .await;
    flood.abort();
    assert_eq!(code, 1008, "the route's 20 a second, not the type's 1000");
    let upstream = within("the upstream's close", echo.close_codes.recv()).await;
    assert_eq!(upstream, Some(1001));
    drop(rx);
    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["end"], "rate_limited", "{close}");
    assert_eq!(close["close_code"], 1008, "{close}");
}

/// `websocket: { max_message_size: 1048576 }` from the YAML: 900 KiB passes; 2 MiB, in one
/// frame or in three fragments, is never delivered: its sender gets `1009`, the upstream
/// `1001`, and the access log says why the tunnel ended.
#[tokio::test]
async fn a_message_past_max_message_size_is_refused_with_1009() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let dir = TempDir::new("message-size");
    let mut echo = ws_echo().await;
    let log = dir.path("access.jsonl");
    let file = dir.write(
        "size.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nupgrade_configs:\n  - upgrade_type: websocket\n\
             \x20   websocket: {{ max_message_size: 1048576 }}\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n\
             clusters:\n  - name: echo\n    endpoints: [{}]\n",
            log.display(),
            echo.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;
    let fragments = |n: usize| {
        (0..n)
            .map(|i| {
                let opcode = if i == 0 {
                    OpCode::Data(Data::Binary)
                } else {
                    OpCode::Data(Data::Continue)
                };
                Message::Frame(Frame::message(vec![9u8; 700 * 1024], opcode, i == n - 1))
            })
            .collect::<Vec<_>>()
    };
    for (case, too_big) in [
        ("one frame", vec![Message::binary(vec![8u8; 2 << 20])]),
        ("three fragments", fragments(3)),
    ] {
        let (mut ws, _) = ws_connect(format!("ws://{listen}/size")).await;
        ws_roundtrip(&mut ws, Message::binary(vec![1u8; 900 * 1024])).await;
        for m in too_big {
            let _ = ws.send(m).await;
        }
        let code = within("the close frame", async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
                    Some(Ok(Message::Binary(b))) => panic!("{case}: {} bytes came back", b.len()),
                    Some(Ok(_)) => continue,
                    other => panic!("{case}: expected a close, got {other:?}"),
                }
            }
        })
        .await;
        assert_eq!(code, 1009, "{case}");
        let upstream = within("the upstream's close", echo.close_codes.recv()).await;
        assert_eq!(upstream, Some(1001), "{case}");
        drop(ws);
    }
    let close = wait_log_line(&log, "tunnel_close", None).await;
    assert_eq!(close["end"], "client_message_too_big", "{close}");
    assert_eq!(close["close_code"], 1009, "{close}");
}

/// `websocket: { ping_interval, pong_timeout }` from the YAML: a client that answers stays
/// open past the interval and the upstream never sees a ping or a pong; one that never
/// answers is closed within the interval and the timeout plus a second.
#[tokio::test]
async fn keepalive_from_the_yaml() {
    let dir = TempDir::new("keepalive");
    let mut echo = ws_echo().await;
    let log = dir.path("access.jsonl");
    let file = dir.write(
        "keepalive.yaml",
        &format!(
            "listen: 127.0.0.1:0\naccess_log: {}\nupgrade_configs:\n  - upgrade_type: websocket\n\
             routes:\n  - match: {{ prefix: / }}\n    cluster: echo\n    websocket: {{ ping_interval: 300ms, pong_timeout: 300ms }}\n\
             clusters:\n  - name: echo\n    endpoints: [{}]\n",
            log.display(),
            echo.addr
        ),
    );
    let (_proxy, listen) = Proxy::serve(&dir, &file).await;

    // Answers (tungstenite does, while it reads): open after 1.2 s, and the echo upstream
    // sends back exactly the message, no pong of the client's.
    let (mut ws, _) = ws_connect(format!("ws://{listen}/alive")).await;
    let quiet = tokio::time::sleep(Duration::from_millis(1200));
    tokio::pin!(quiet);
    let mut pings = 0;
    loop {
        tokio::select! {
            () = &mut quiet => break,
            m = ws.next() => match m {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("only pings while quiet, got {other:?}"),
            },
        }
    }
    assert!(pings >= 2, "{pings} pings");
    // A ping may still come first: the proxy keeps sending them every 300 ms.
    ws.send(Message::text("alive")).await.unwrap();
    let echoed = within("echo", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert_eq!(echoed.unwrap().unwrap(), Message::text("alive"));

    // Never answers: a raw client that reads nothing after its 101.
    let request = "GET /mute HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut mute = raw_client(listen, request.as_bytes()).await;
    let (head, _) = read_head(&mut mute).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let start = Instant::now();
    let upstream = within("the upstream's close", echo.close_codes.recv()).await;
    assert_eq!(upstream, Some(1001));
    assert!(
        start.elapsed() < Duration::from_millis(600) + Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let close = wait_log_line(&log, "tunnel_close", Some("/mute")).await;
    assert_eq!(close["end"], "pong_timeout", "{close}");
    drop((ws, mute));
}
