//! Route matching and route actions end to end, over real sockets: what the upstream receives
//! byte for byte, which upstream a request lands on, and how upgrades follow route settings.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod route_support;
mod support;

use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderName;
use tokio::io::AsyncWriteExt;

use route_support::*;
use support::*;
use switchback::{
    Cluster, Endpoint, Route, Runtime, TunnelEnd, TunnelMode, UpgradeConfig, UpgradeRouterLayer,
};

fn foo_router() -> UpgradeRouterLayer {
    UpgradeRouterLayer::builder().upgrade("foo").build().unwrap()
}

fn named_cluster(name: &str, upstream: &Answering) -> Cluster {
    Cluster::new(name, [Endpoint::new(upstream.addr.to_string())])
}

/// The upstream receives the rewritten target, the original in `x-envoy-original-path`, the
/// client's headers and nothing added (no `Content-Length`, no `Transfer-Encoding`); the
/// client receives the upstream's 101 and the bytes that came with it.
#[tokio::test]
async fn prefix_rewrite_reaches_the_upstream_byte_exact() {
    let raw = RawUpstream::bind().await;
    let routes = vec![
        Route::prefix("/ws")
            .prefix_rewrite("/socket")
            .cluster(cluster(raw.addr)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    let mut client = raw_client(
        proxy.addr,
        b"GET /ws/chat?room=1 HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: foo\r\nX-Client: 1\r\n\r\n",
    )
    .await;
    let mut up = raw.accept().await;
    let (head, extra) = read_head(&mut up).await;
    assert_eq!(
        head,
        "GET /socket/chat?room=1 HTTP/1.1\r\nhost: front\r\nx-client: 1\r\n\
         x-envoy-original-path: /ws/chat?room=1\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n"
    );
    assert!(extra.is_empty());

    up.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nfirst bytes",
    )
    .await
    .unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert_eq!(
        head,
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n"
    );
    assert_eq!(read_n(&mut client, rest, 11).await, b"first bytes");
}

/// `host_rewrite_literal` sets `Host` on plain requests and upgrades alike.
#[tokio::test]
async fn explicit_host_rewrite() {
    let mut up = Answering::named("up").await;
    let routes = vec![
        Route::prefix("/")
            .host_rewrite_literal("back.internal:8080")
            .cluster(named_cluster("up", &up)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for request in [get("/plain", ""), foo_upgrade("/upgrade")] {
        let (head, _) = fetch(proxy.addr, &request).await;
        assert_eq!(status(&head), 200);
        let seen = up.head().await;
        assert_eq!(header(&seen, "host"), Some("back.internal:8080"), "{seen}");
        assert_eq!(seen.matches("host:").count(), 1, "{seen}");
    }
}

/// `auto_host_rewrite` puts the chosen endpoint's hostname in `Host` (its address's host part
/// when it has none), on plain requests and upgrades alike.
#[tokio::test]
async fn auto_host_rewrite_uses_the_chosen_endpoint() {
    let mut up = Answering::named("up").await;
    let with_name = Cluster::new(
        "named",
        [Endpoint::new(up.addr.to_string()).hostname("backend.internal")],
    );
    let routes = vec![
        Route::prefix("/named").auto_host_rewrite(true).cluster(with_name),
        Route::prefix("/bare")
            .auto_host_rewrite(true)
            .cluster(named_cluster("bare", &up)),
        Route::prefix("/off").cluster(named_cluster("off", &up)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for (path, host) in [
        ("/named", "backend.internal"),
        ("/bare", "127.0.0.1"),
        ("/off", "front"),
    ] {
        for request in [
            get(path, ""),
            get(path, "Connection: Upgrade\r\nUpgrade: foo\r\n"),
        ] {
            fetch(proxy.addr, &request).await;
            let seen = up.head().await;
            assert_eq!(header(&seen, "host"), Some(host), "{seen}");
        }
    }
}

/// An HTTP/2 client's host is its `:authority`; a host rewrite reaches the HTTP/1.1 upstream
/// as `Host`, and a header condition on `host` sees the authority.
#[tokio::test]
async fn http2_requests_are_matched_and_rewritten_by_authority() {
    let mut up = Answering::named("up").await;
    let routes = vec![
        Route::prefix("/")
            .header(http::header::HOST, Some("front.example".into()))
            .host_rewrite_literal("back.example")
            .cluster(named_cluster("up", &up)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (authority, expected) in [("front.example", 200), ("other.example", 404)] {
        let req = http::Request::get(format!("http://{authority}/x"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = within(sender.send_request(req)).await.unwrap();
        assert_eq!(res.status(), expected, "{authority}");
    }
    let seen = up.head().await;
    assert!(seen.starts_with("GET /x HTTP/1.1\r\n"), "{seen}");
    assert_eq!(header(&seen, "host"), Some("back.example"), "{seen}");
}

/// 1000 upgrades split 80/20 by weight. The share of the first cluster has a standard
/// deviation of sqrt(0.8 * 0.2 / 1000) = 1.26 percentage points, so the ±5 points allowed
/// here is more than 3.9 sigma: a correct split fails this less than once in 10 000 runs,
/// while a split that ignored the weights (50/50) or inverted them could never pass.
#[tokio::test]
async fn weighted_clusters_split_upgrades_by_weight() {
    let answer = FOO_101.to_vec();
    let a = Answering::new(answer.clone()).await;
    let b = Answering::new(answer).await;
    let routes = vec![
        Route::prefix("/").weighted_clusters([(named_cluster("a", &a), 80), (named_cluster("b", &b), 20)]),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    let (addr, request) = (proxy.addr, foo_upgrade("/split"));
    let request = request.as_str();
    let upgrades = futures_util::stream::iter(0..1000)
        .map(move |_| async move {
            let mut c = raw_client(addr, request.as_bytes()).await;
            let (head, _) = read_head(&mut c).await;
            assert_eq!(status(&head), 101);
        })
        .buffer_unordered(16);
    within(upgrades.collect::<Vec<()>>()).await;
    // The upstreams count a request when they read its head, before answering; every 101 has
    // been read, so every count is in.
    let (a, b) = (a.hits(), b.hits());
    assert_eq!(a + b, 1000);
    assert!((750..=850).contains(&a), "a {a} b {b}");
}

/// A runtime value changed while the proxy runs moves the traffic from the next request on.
#[tokio::test]
async fn runtime_fraction_shifts_traffic_while_running() {
    let (new, old) = (Answering::named("new").await, Answering::named("old").await);
    let runtime = Runtime::new();
    let routes = vec![
        Route::prefix("/")
            .runtime_fraction("shift.new", 0)
            .cluster(named_cluster("new", &new)),
        Route::prefix("/").cluster(named_cluster("old", &old)),
    ];
    let proxy = routed(routes, runtime.clone(), foo_router()).await;
    for (value, expected) in [(None, "old"), (Some(100), "new"), (Some(0), "old")] {
        if let Some(v) = value {
            runtime.set("shift.new", v);
        }
        for _ in 0..20 {
            assert_eq!(served_by(proxy.addr, &get("/", "")).await, expected, "{value:?}");
        }
    }
    assert_eq!((new.hits(), old.hits()), (20, 40));
}

#[tokio::test]
async fn header_conditions_select_the_route() {
    let (blue, canary, rest) = (
        Answering::named("blue").await,
        Answering::named("canary").await,
        Answering::named("rest").await,
    );
    let tenant = HeaderName::from_static("x-tenant");
    let routes = vec![
        Route::prefix("/")
            .header(tenant.clone(), Some("blue".into()))
            .header(HeaderName::from_static("x-region"), None)
            .cluster(named_cluster("blue", &blue)),
        Route::prefix("/")
            .header(HeaderName::from_static("x-canary"), None)
            .cluster(named_cluster("canary", &canary)),
        Route::prefix("/").cluster(named_cluster("rest", &rest)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for (extra, expected) in [
        ("X-Tenant: blue\r\nX-Region: eu\r\n", "blue"),
        ("X-Tenant: blue\r\n", "rest"),
        ("X-Tenant: blue-ish\r\nX-Region: eu\r\n", "rest"),
        ("X-Tenant: blue\r\nX-Canary: \r\n", "canary"),
        ("X-Canary: 1\r\n", "canary"),
        ("", "rest"),
    ] {
        assert_eq!(
            served_by(proxy.addr, &get("/", extra)).await,
            expected,
            "{extra:?}"
        );
    }
}

/// A header condition sees the request as the client sent it, before the router strips
/// hop-by-hop headers: a route can match on `Upgrade`.
#[tokio::test]
async fn header_conditions_see_hop_by_hop_headers() {
    let (ws, plain) = (Answering::named("ws").await, Answering::named("plain").await);
    let routes = vec![
        Route::prefix("/")
            .header(http::header::UPGRADE, Some("foo".into()))
            .cluster(named_cluster("ws", &ws)),
        Route::prefix("/").cluster(named_cluster("plain", &plain)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    assert_eq!(served_by(proxy.addr, &foo_upgrade("/")).await, "ws");
    assert_eq!(served_by(proxy.addr, &get("/", "")).await, "plain");
}

#[tokio::test]
async fn exact_and_regex_paths() {
    let (exact, re, rest) = (
        Answering::named("exact").await,
        Answering::named("regex").await,
        Answering::named("rest").await,
    );
    let routes = vec![
        Route::path("/exact").cluster(named_cluster("exact", &exact)),
        Route::regex("^/room/[0-9]+$")
            .unwrap()
            .cluster(named_cluster("regex", &re)),
        Route::prefix("/").cluster(named_cluster("rest", &rest)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for (path, expected) in [
        ("/exact", "exact"),
        ("/exact?q=1", "exact"),
        ("/exact/", "rest"),
        ("/exactly", "rest"),
        ("/room/42", "regex"),
        ("/room/42?x=y", "regex"),
        ("/room/4x", "rest"),
        ("/lobby/room/42", "rest"),
    ] {
        assert_eq!(served_by(proxy.addr, &get(path, "")).await, expected, "{path}");
    }
}

/// A `path` or `regex` route's `prefix_rewrite` replaces the whole path.
#[tokio::test]
async fn whole_path_rewrite_on_regex_routes() {
    let mut up = Answering::named("up").await;
    let routes = vec![
        Route::regex("^/v[0-9]+/chat$")
            .unwrap()
            .prefix_rewrite("/chat")
            .cluster(named_cluster("up", &up)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    fetch(proxy.addr, &get("/v2/chat?x=1", "")).await;
    let seen = up.head().await;
    assert!(seen.starts_with("GET /chat?x=1 HTTP/1.1\r\n"), "{seen}");
    assert_eq!(header(&seen, "x-envoy-original-path"), Some("/v2/chat?x=1"));
}

/// No route: `404` and no upstream contact. A plain connection stays usable; an upgrade's
/// connection closes, since the client may already be sending tunnel bytes.
#[tokio::test]
async fn no_matching_route_is_a_404() {
    let up = Answering::named("up").await;
    let routes = vec![Route::prefix("/ws").cluster(named_cluster("up", &up))];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;

    let mut c = raw_client(proxy.addr, get("/other", "").as_bytes()).await;
    let (head, _) = read_head(&mut c).await;
    assert_eq!(status(&head), 404);
    assert!(header(&head, "connection").is_none(), "{head}");
    c.write_all(get("/ws", "").as_bytes()).await.unwrap();
    let (head, _) = read_head(&mut c).await;
    assert_eq!(status(&head), 200, "the connection was kept");

    let upgrade = format!("{}TUNNEL BYTES", foo_upgrade("/other"));
    let mut c = raw_client(proxy.addr, upgrade.as_bytes()).await;
    let (head, _) = read_head(&mut c).await;
    assert_eq!(status(&head), 404);
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    read_to_eof(&mut c).await;
    assert_eq!(up.hits(), 1, "only the plain request on /ws reached the upstream");
}

/// Route `upgrade_configs` against the listener's, through the whole stack: a route enables
/// a type the listener lacks, disables one the listener allows, or leaves the listener to
/// decide.
#[tokio::test]
async fn route_upgrade_settings_end_to_end() {
    let foo = Answering::new(FOO_101.to_vec()).await;
    let bar_101 = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: bar\r\n\r\n";
    let bar = Answering::new(bar_101.to_vec()).await;
    let router = UpgradeRouterLayer::builder()
        .upgrade_config(UpgradeConfig::new("bar"))
        .build()
        .unwrap();
    let routes = vec![
        Route::prefix("/on")
            .upgrade("foo", true)
            .cluster(named_cluster("foo", &foo)),
        Route::prefix("/off")
            .upgrade("bar", false)
            .cluster(named_cluster("bar", &bar)),
        Route::prefix("/foo").cluster(named_cluster("foo", &foo)),
        Route::prefix("/bar").cluster(named_cluster("bar", &bar)),
    ];
    let proxy = routed(routes, Runtime::new(), router).await;
    let bar_upgrade = |path: &str| get(path, "Connection: upgrade\r\nUpgrade: bar\r\n");
    for (request, expected, hits) in [
        (foo_upgrade("/on"), 101, 1),
        (foo_upgrade("/foo"), 403, 1),
        (bar_upgrade("/off"), 403, 1),
        (bar_upgrade("/bar"), 101, 2),
    ] {
        let mut client = raw_client(proxy.addr, request.as_bytes()).await;
        let (head, _) = read_head(&mut client).await;
        assert_eq!(status(&head), expected, "{request}");
        if expected == 403 {
            read_to_eof(&mut client).await;
        }
        assert_eq!(foo.hits() + bar.hits(), hits, "{request}");
    }
}

/// The route's `timeout` bounds the wait for the upstream's `101`.
#[tokio::test]
async fn route_timeout_bounds_the_handshake() {
    let raw = RawUpstream::bind().await;
    let routes = vec![
        Route::prefix("/")
            .timeout(Duration::from_millis(200))
            .cluster(cluster(raw.addr)),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    let mut client = raw_client(proxy.addr, foo_upgrade("/slow").as_bytes()).await;
    let _up = raw.accept().await; // accepts, never answers
    let (head, _) = read_head(&mut client).await;
    assert_eq!(status(&head), 504);
}

/// The route's `idle_timeout` ends its tunnels.
#[tokio::test]
async fn route_idle_timeout_ends_tunnels() {
    let raw = RawUpstream::bind().await;
    let events = Events::default();
    let router = UpgradeRouterLayer::builder()
        .upgrade("foo")
        .observer(events.observer())
        .build()
        .unwrap();
    let routes = vec![
        Route::prefix("/")
            .idle_timeout(Duration::from_millis(200))
            .cluster(cluster(raw.addr)),
    ];
    let proxy = routed(routes, Runtime::new(), router).await;
    let mut client = raw_client(proxy.addr, foo_upgrade("/idle").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(FOO_101).await.unwrap();
    read_head(&mut client).await;
    assert_eq!(read_to_eof(&mut client).await, b"");
    let (mode, stats) = events.closed(1).await;
    assert_eq!(mode, TunnelMode::Joined);
    assert_eq!(stats.end, TunnelEnd::IdleTimeout);
}
