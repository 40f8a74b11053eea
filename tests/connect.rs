//! CONNECT tunnels (RFC 9110 §9.3.6) over real sockets: terminated by the proxy and relayed as
//! raw TCP to a route's cluster, or forwarded to an upstream proxy; Envoy's answers to the bad
//! forms; HTTP/2 CONNECT streams.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

use support::*;
use switchback::{
    Cluster, ConnectConfig, Endpoint, Forward, Route, RouteLayer, Runtime, UpgradeConfig, UpgradeRouterLayer,
};

const CONNECT: &[u8] = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";

/// A proxy with `routes`, CONNECT allowed (or not) at listener level.
async fn proxy(routes: Vec<Route>, listener_connect: bool) -> Proxy {
    let router = UpgradeRouterLayer::builder()
        .upgrade_config(UpgradeConfig::new("CONNECT").enabled(listener_connect))
        .build()
        .unwrap();
    start(
        ServiceBuilder::new()
            .layer(RouteLayer::new(routes, Runtime::new()).unwrap())
            .layer(router)
            .service(Forward::routed()),
    )
    .await
}

/// A route that terminates CONNECT to `cluster`.
fn terminating(cluster: Cluster) -> Route {
    Route::connect_matcher()
        .cluster(cluster)
        .connect_config(ConnectConfig::new())
}

/// A port nothing listens on.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn terminate_mode_relays_raw_bytes_and_half_closes_both_ways() {
    let echo = echo_then_bye().await;
    let proxy = proxy(vec![terminating(cluster(echo))], true).await;
    // Bytes sent right behind the request are the tunnel's first.
    let mut client = raw_client(proxy.addr, &[CONNECT, b"early "].concat()).await;
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(header(&head, "content-length").is_none(), "{head}");
    assert!(header(&head, "transfer-encoding").is_none(), "{head}");
    client.write_all(b"payload").await.unwrap();
    let echoed = read_n(&mut client, rest, 13).await;
    assert_eq!(echoed, b"early payload");
    // The client's FIN reaches the echo server, which answers and closes: the client still
    // reads what came after its own FIN.
    client.shutdown().await.unwrap();
    assert_eq!(read_to_eof(&mut client).await, b"bye");
}

#[tokio::test]
async fn terminate_mode_tries_the_next_endpoint_when_one_refuses() {
    let echo = echo_then_bye().await;
    let dead = dead_port().await;
    let both = Cluster::new(
        "two",
        [Endpoint::new(dead.to_string()), Endpoint::new(echo.to_string())],
    );
    let proxy = proxy(vec![terminating(both)], true).await;
    for _ in 0..4 {
        let mut client = raw_client(proxy.addr, CONNECT).await;
        let (head, rest) = read_head(&mut client).await;
        assert_eq!(status(&head), 200, "{head}");
        client.write_all(b"x").await.unwrap();
        assert_eq!(read_n(&mut client, rest, 1).await, b"x");
    }
}

#[tokio::test]
async fn terminate_mode_answers_503_and_closes_when_no_endpoint_connects() {
    let dead = dead_port().await;
    let proxy = proxy(vec![terminating(cluster(dead))], true).await;
    let mut client = raw_client(proxy.addr, CONNECT).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 503, "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    read_to_eof(&mut client).await;
}

/// An upstream that resets its connection resets the client's: a reset is passed on as a
/// reset (or at least an abrupt end), never as a clean close followed by more bytes.
#[tokio::test]
async fn a_reset_travels_both_ways() {
    let raw = RawUpstream::bind().await;
    let proxy = proxy(vec![terminating(cluster(raw.addr))], true).await;

    // Upstream → client.
    let mut client = raw_client(proxy.addr, CONNECT).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");
    let up = raw.accept().await;
    up.set_zero_linger().unwrap();
    drop(up);
    let mut buf = [0u8; 16];
    let ended = within(client.read(&mut buf)).await;
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");

    // Client → upstream.
    let client = raw_client(proxy.addr, CONNECT).await;
    let mut up = raw.accept().await;
    client.set_zero_linger().unwrap();
    drop(client);
    let ended = within(up.read(&mut buf)).await;
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
}

/// Proxy mode: the CONNECT goes on to an upstream proxy, and bytes the client sent early wait
/// until that proxy's `200`.
#[tokio::test]
async fn proxy_mode_holds_early_bytes_until_the_upstream_says_200() {
    let raw = RawUpstream::bind().await;
    let route = Route::connect_matcher().cluster(cluster(raw.addr));
    let proxy = proxy(vec![route], true).await;
    let mut client = raw_client(proxy.addr, &[CONNECT, b"early"].concat()).await;
    let mut up = raw.accept().await;
    let (head, rest) = read_head(&mut up).await;
    assert!(head.starts_with("CONNECT example.com:443 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(&head, "host"), Some("example.com:443"), "{head}");
    assert!(rest.is_empty(), "early bytes went ahead of the answer: {rest:?}");
    let mut buf = [0u8; 16];
    let silent = tokio::time::timeout(Duration::from_millis(200), up.read(&mut buf)).await;
    assert!(
        silent.is_err(),
        "the upstream got bytes before it answered: {silent:?}"
    );

    up.write_all(b"HTTP/1.1 200 Connection established\r\n\r\nfrom-up")
        .await
        .unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(read_n(&mut client, rest, 7).await, b"from-up");
    assert_eq!(read_n(&mut up, Vec::new(), 5).await, b"early");
}

/// Proxy mode: any answer but a 2xx is relayed, no tunnel opens, and the client's early bytes
/// never reach the upstream.
#[tokio::test]
async fn proxy_mode_relays_a_407_without_a_tunnel() {
    let raw = RawUpstream::bind().await;
    let route = Route::connect_matcher().cluster(cluster(raw.addr));
    let proxy = proxy(vec![route], true).await;
    let mut client = raw_client(proxy.addr, &[CONNECT, b"GET /smuggled HTTP/1.1\r\n\r\n"].concat()).await;
    let mut up = raw.accept().await;
    let _ = read_head(&mut up).await;
    up.write_all(
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 4\r\n\r\nauth",
    )
    .await
    .unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(status(&head), 407, "{head}");
    assert_eq!(header(&head, "proxy-authenticate"), Some("Basic"), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let body = [rest, read_to_eof(&mut client).await].concat();
    assert_eq!(body, b"auth");
    let after = read_to_eof(&mut up).await;
    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));
}

/// Envoy's answers to CONNECTs it won't take; each closes the client's connection, so bytes
/// behind the request are never read as HTTP.
#[tokio::test]
async fn bad_forms_get_envoys_answers_and_close() {
    let raw = RawUpstream::bind().await;
    let routes = || {
        vec![
            terminating(cluster(raw.addr)),
            Route::prefix("/").cluster(cluster(raw.addr)),
        ]
    };
    let with_length =
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nContent-Length: 5\r\n\r\nhello";
    let chunked = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let no_port = b"CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let absolute = b"CONNECT http://example.com:443/ HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let enabled = proxy(routes(), true).await;
    for (request, expected) in [
        (&with_length[..], 400),
        (&chunked[..], 501),
        (&no_port[..], 400),
        (&absolute[..], 400),
    ] {
        let mut client = raw_client(enabled.addr, request).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), expected, "{head}");
        read_to_eof(&mut client).await;
    }
    // No route takes a CONNECT: path conditions never do.
    let paths_only = proxy(vec![Route::prefix("/").cluster(cluster(raw.addr))], true).await;
    let mut client = raw_client(paths_only.addr, &[CONNECT, b"GET / HTTP/1.1\r\n\r\n"].concat()).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 404, "{head}");
    read_to_eof(&mut client).await;
    // CONNECT is not enabled: neither at listener level nor on the route.
    let disabled = proxy(routes(), false).await;
    let mut client = raw_client(disabled.addr, CONNECT).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 403, "{head}");
    read_to_eof(&mut client).await;
    raw.assert_untouched("a refused CONNECT").await;
}

/// A route's own `CONNECT` entry enables it where the listener doesn't, and a
/// `connect_matcher` route takes no plain request.
#[tokio::test]
async fn a_route_enables_connect_and_connect_routes_take_only_connect() {
    let echo = echo_then_bye().await;
    let route = terminating(cluster(echo)).upgrade("CONNECT", true);
    let proxy = proxy(vec![route], false).await;
    let mut client = raw_client(proxy.addr, CONNECT).await;
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");

    let mut plain = raw_client(proxy.addr, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    let (head, _) = read_head(&mut plain).await;
    assert_eq!(status(&head), 404, "{head}");
}

/// HTTP/2 CONNECT (no `:protocol`): one stream per tunnel on one client connection.
#[tokio::test]
async fn http2_connect_streams_are_tunnels() {
    let echo = echo_then_bye().await;
    let proxy = proxy(vec![terminating(cluster(echo))], true).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut sender = sender.clone();
        let req = http::Request::connect("example.com:443")
            .version(http::Version::HTTP_2)
            .body(Empty::new())
            .unwrap();
        let mut res = within(sender.send_request(req)).await.unwrap();
        assert_eq!(res.status(), 200, "stream {i}");
        let upgraded = within(hyper::upgrade::on(&mut res)).await.unwrap();
        streams.push(hyper_util::rt::TokioIo::new(upgraded));
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        assert_eq!(read_n(s, Vec::new(), msg.len()).await, msg.as_bytes());
    }
    // One stream's end leaves the others running.
    let mut first = streams.remove(0);
    first.shutdown().await.unwrap();
    assert_eq!(read_to_eof(&mut first).await, b"bye");
    for s in &mut streams {
        s.write_all(b"still").await.unwrap();
        assert_eq!(read_n(s, Vec::new(), 5).await, b"still");
    }
}

/// `allow_post`: a POST on the route is terminated as a CONNECT is. Its body goes to the
/// upstream as raw bytes while the upstream's come back as the `200`'s body, and the body's
/// end is the upstream's FIN.
#[tokio::test]
async fn allow_post_streams_a_post_both_ways() {
    let echo = echo_then_bye().await;
    let route = Route::prefix("/tcp")
        .cluster(cluster(echo))
        .connect_config(ConnectConfig::new().allow_post(true));
    let plain = Route::prefix("/").cluster(cluster(echo));
    let terminating = proxy(vec![route, plain], false).await;
    let mut client = raw_client(
        terminating.addr,
        b"POST /tcp HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    let (head, mut have) = read_head(&mut client).await;
    assert_eq!(status(&head), 200, "{head}");
    // The echo comes back while the request body is still open.
    while !have.windows(5).any(|w| w == b"hello") {
        let mut buf = [0u8; 256];
        let n = within(client.read(&mut buf)).await.unwrap();
        assert!(n > 0, "{have:?}");
        have.extend_from_slice(&buf[..n]);
    }
    client.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let body = read_chunked(&mut client, have).await;
    assert_eq!(body, b"hello worldbye");

    // Without allow_post, a POST on such a route is an ordinary request.
    let route = Route::prefix("/tcp")
        .cluster(cluster(echo))
        .connect_config(ConnectConfig::new());
    let raw = RawUpstream::bind().await;
    let forwarding = proxy(vec![route.cluster(cluster(raw.addr))], false).await;
    let _client = raw_client(
        forwarding.addr,
        b"POST /tcp HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    let mut up = raw.accept().await;
    let (head, _) = read_head(&mut up).await;
    assert!(head.starts_with("POST /tcp HTTP/1.1\r\n"), "{head}");
}

/// An HTTP/2 WebSocket is an extended CONNECT: it has a path, path routes take it, CONNECT
/// rules (authority form, `connect_matcher`) don't apply to it.
#[tokio::test]
async fn an_extended_connect_is_not_a_connect() {
    let echo = ws_echo().await;
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .upgrade("CONNECT")
        .build()
        .unwrap();
    let routes = vec![
        terminating(cluster(echo.addr)).name("connect"),
        Route::prefix("/chat").cluster(cluster(echo.addr)),
    ];
    let proxy = start(
        ServiceBuilder::new()
            .layer(RouteLayer::new(routes, Runtime::new()).unwrap())
            .layer(router)
            .service(Forward::routed()),
    )
    .await;
    let mut sender = h2_client(proxy.addr).await;
    let res = within(sender.send_request(h2_websocket(proxy.addr)))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
