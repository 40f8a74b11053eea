//! Clusters that speak HTTP/2 (`Cluster::http2`): WebSockets from HTTP/1.1 and HTTP/2 clients
//! as RFC 8441 streams on shared upstream connections, against a real hyper HTTP/2 server
//! with extended CONNECT; stream limits, resets, GOAWAY, refusals, plain requests.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tower::ServiceBuilder;

use support::h2_upstream::h2_server;
use support::*;
use switchback::{Cluster, Endpoint, Forward, UpgradeRouterLayer};

/// A proxy to `upstream`, an HTTP/2 cluster, with WebSocket upgrades allowed.
async fn proxy(upstream: SocketAddr) -> (Proxy, Cluster) {
    let cluster = Cluster::new("h2", [Endpoint::new(upstream.to_string())]).http2(true);
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .build()
        .unwrap();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(Forward::new(cluster.clone())),
    )
    .await;
    (proxy, cluster)
}

type Ws = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(proxy: SocketAddr, path: &str) -> Ws {
    within(tokio_tungstenite::connect_async(format!("ws://{proxy}{path}")))
        .await
        .expect("the handshake goes through")
        .0
}

async fn roundtrip(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(back, Message::text(text));
}

#[tokio::test]
async fn a_websocket_from_an_http1_client_is_an_extended_connect_stream() {
    let server = h2_server(100, true).await;
    let (proxy, _) = proxy(server.addr).await;
    // tungstenite checks the 101's Sec-WebSocket-Accept against its own key.
    let mut ws = ws(proxy.addr, "/chat?room=1").await;
    roundtrip(&mut ws, "over h2").await;
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![("websocket".to_owned(), "/chat".to_owned(), false)]);
}

#[tokio::test]
async fn a_hundred_tunnels_share_one_upstream_connection() {
    let server = h2_server(1000, true).await;
    let (proxy, cluster) = proxy(server.addr).await;
    let mut tunnels = Vec::new();
    for i in 0..100 {
        let mut ws = ws(proxy.addr, "/").await;
        roundtrip(&mut ws, &format!("tunnel {i}")).await;
        tunnels.push(ws);
    }
    for (i, ws) in tunnels.iter_mut().enumerate() {
        roundtrip(ws, &format!("again {i}")).await;
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    assert_eq!(cluster.http2_connections(), 1);
}

#[tokio::test]
async fn past_the_peers_stream_limit_a_new_connection_opens() {
    let server = h2_server(10, true).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut tunnels = Vec::new();
    for i in 0..25 {
        let mut ws = ws(proxy.addr, "/").await;
        roundtrip(&mut ws, &format!("tunnel {i}")).await;
        tunnels.push(ws);
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 3);
    // Ended tunnels give their places back: no further connection for the next ones.
    for ws in tunnels.drain(..10) {
        drop(ws);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..10 {
        let mut ws = ws(proxy.addr, "/").await;
        roundtrip(&mut ws, &format!("reused {i}")).await;
        tunnels.push(ws);
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_stream_reset_ends_its_tunnel_and_no_other() {
    let server = h2_server(100, true).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut neighbour = ws(proxy.addr, "/").await;
    let mut doomed = ws(proxy.addr, "/reset").await;
    // The reset closes the client's connection of that tunnel.
    let ended = within(doomed.next()).await;
    assert!(
        matches!(ended, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{ended:?}"
    );
    roundtrip(&mut neighbour, "still here").await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_goaway_lets_open_tunnels_finish_and_new_ones_use_a_fresh_connection() {
    let server = h2_server(100, true).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut old = ws(proxy.addr, "/").await;
    roundtrip(&mut old, "before").await;
    server.goaway.notify_waiters();
    tokio::time::sleep(Duration::from_millis(200)).await;
    roundtrip(&mut old, "after the goaway").await;
    let mut new = ws(proxy.addr, "/").await;
    roundtrip(&mut new, "fresh").await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    roundtrip(&mut old, "still").await;
}

#[tokio::test]
async fn an_upstream_without_extended_connect_gets_a_502_that_says_so() {
    let server = h2_server(100, false).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut client = raw_client(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 502, "{head}");
    let body = [rest, read_to_eof(&mut client).await].concat();
    assert!(
        String::from_utf8_lossy(&body).contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"),
        "{body:?}"
    );
}

#[tokio::test]
async fn a_refusal_is_relayed_with_its_body_and_the_connection_closes() {
    let server = h2_server(100, true).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut client = raw_client(
        proxy.addr,
        b"GET /refuse HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 403, "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let body = [rest, read_to_eof(&mut client).await].concat();
    assert!(body.ends_with(b"no"), "{body:?}");
}

#[tokio::test]
async fn an_http2_clients_websocket_goes_through_as_a_stream() {
    let server = h2_server(100, true).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut sender = h2_client(proxy.addr).await;
    let mut res = within(sender.send_request(h2_websocket(proxy.addr)))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let upgraded = within(hyper::upgrade::on(&mut res)).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text("h2 to h2")).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::text("h2 to h2")
    );
}

#[tokio::test]
async fn plain_requests_to_an_http2_cluster_are_http2() {
    let server = h2_server(100, true).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut client = raw_client(
        proxy.addr,
        b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");
    let body = [rest, read_to_eof(&mut client).await].concat();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("HTTP/2.0"), "{text}");
}

/// Flow control is backpressure: a client that doesn't read stalls its own stream (the
/// upstream can't write more than the windows and socket buffers on the way hold), while a
/// neighbour on the same upstream connection goes on.
#[tokio::test]
async fn a_slow_client_stalls_its_stream_not_the_connection() {
    let server = h2_server(100, true).await;
    let (proxy, _) = proxy(server.addr).await;
    let mut neighbour = ws(proxy.addr, "/").await;
    // A client that upgrades and then never reads.
    let mut stalled = raw_client(
        proxy.addr,
        b"GET /flood HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let (head, _) = read_head(&mut stalled).await;
    assert_eq!(status(&head), 101, "{head}");
    // Let the flood fill everything it can, then check that it stopped.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = server.flooded.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        assert!(now < 64 << 20, "the flood never stalled: {now} bytes out");
    }
    // The stream's window (256 KiB) and the sockets' buffers on the way: a few MiB at most.
    assert!(
        last < 16 << 20,
        "{last} bytes left the upstream for a client that reads nothing"
    );
    for i in 0..20 {
        roundtrip(&mut neighbour, &format!("unaffected {i}")).await;
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

/// A layer that touches bodies makes the tunnel pumped; the payload still goes as the
/// stream's DATA, and a drain closes it with `1001` as any WebSocket tunnel.
#[tokio::test]
async fn pumped_tunnels_and_drains_work_over_http2_streams() {
    let server = h2_server(100, true).await;
    let cluster = Cluster::new("h2", [Endpoint::new(server.addr.to_string())]).http2(true);
    let drain = switchback::Drain::new();
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .drain(drain.clone())
        .build()
        .unwrap();
    let proxy = start(
        ServiceBuilder::new()
            .layer(router)
            .service(touch_bodies(Forward::new(cluster))),
    )
    .await;
    let mut ws = ws(proxy.addr, "/").await;
    roundtrip(&mut ws, "pumped over h2").await;
    let (outcome, closed) = tokio::join!(drain.drain(Duration::from_millis(100)), async {
        loop {
            match within(ws.next()).await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    });
    assert_eq!(closed, Some(1001));
    let _ = outcome;
}

/// A CONNECT in proxy mode to an HTTP/2 cluster goes as an HTTP/2 CONNECT stream (no
/// `:protocol`), its target as `:authority`; the stream's `200` opens the tunnel.
#[tokio::test]
async fn a_forwarded_connect_is_an_http2_connect_stream() {
    use switchback::{Route, RouteLayer, Runtime};
    let server = h2_server(100, true).await;
    let cluster = Cluster::new("h2", [Endpoint::new(server.addr.to_string())]).http2(true);
    let router = UpgradeRouterLayer::builder().upgrade("CONNECT").build().unwrap();
    let routes = vec![Route::connect_matcher().cluster(cluster)];
    let proxy = start(
        ServiceBuilder::new()
            .layer(RouteLayer::new(routes, Runtime::new()).unwrap())
            .layer(router)
            .service(Forward::routed()),
    )
    .await;
    let mut client = raw_client(
        proxy.addr,
        b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\nearly",
    )
    .await;
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(read_n(&mut client, rest, 5).await, b"early");
    tokio::io::AsyncWriteExt::write_all(&mut client, b" and more")
        .await
        .unwrap();
    assert_eq!(read_n(&mut client, Vec::new(), 9).await, b" and more");
    // Half-close: the client's FIN ends the stream's sending side, the echo ends its own.
    tokio::io::AsyncWriteExt::shutdown(&mut client).await.unwrap();
    assert!(read_to_eof(&mut client).await.is_empty());
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![("CONNECT".to_owned(), "db.internal:5432".to_owned(), false)]
    );
}
