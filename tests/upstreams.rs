//! Upstreams that fail or are uneven, over real sockets: retries on other endpoints (plain
//! requests and upgrades), a stale pooled connection, least-request balancing and outlier
//! ejection.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod route_support;
mod support;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use route_support::*;
use support::*;
use switchback::{
    Cluster, Endpoint, LbPolicy, OutlierDetection, Resolve, RetryOn, RetryPolicy, Route, Runtime,
    UpgradeRouterLayer,
};

fn foo_router() -> UpgradeRouterLayer {
    UpgradeRouterLayer::builder().upgrade("foo").build().unwrap()
}

fn cluster_of(addrs: &[SocketAddr]) -> Cluster {
    Cluster::new("c", addrs.iter().map(|a| Endpoint::new(a.to_string())))
}

/// The next request head on a kept-alive connection, or `None` at its end.
async fn next_head(tcp: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    String::from_utf8(buf).ok()
}

/// A `foo` upstream that answers every upgrade `101` and then writes its `name`, and
/// answers plain requests (kept alive) `200` with its name as the body.
async fn named_foo(name: &'static str) -> SocketAddr {
    named_foo_at(name, "127.0.0.1:0".parse().unwrap()).await
}

/// [`named_foo`] on `addr`.
async fn named_foo_at(name: &'static str, addr: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some(head) = next_head(&mut tcp).await {
                    if head.to_ascii_lowercase().contains("upgrade: foo") {
                        let switch =
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
                        let _ = tcp.write_all(format!("{switch}{name}").as_bytes()).await;
                        // Hold the tunnel until the proxy closes it.
                        read_to_eof(&mut tcp).await;
                        return;
                    }
                    let ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}", name.len());
                    let _ = tcp.write_all(ok.as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// Opens a `foo` tunnel and returns the client end and the name of the upstream it reached.
async fn tunnel(proxy: SocketAddr) -> (TcpStream, String) {
    let mut client = raw_client(proxy, foo_upgrade("/").as_bytes()).await;
    let (head, rest) = within(read_head(&mut client)).await;
    assert_eq!(status(&head), 101, "{head}");
    let name = read_n(&mut client, rest, 1).await;
    (client, String::from_utf8(name).unwrap())
}

/// With one dead endpoint of two, every upgrade and every plain request still succeeds: a
/// connect failure is retried on the other endpoint (by default, twice).
#[tokio::test]
async fn a_dead_endpoint_costs_no_upgrade_and_no_request() {
    let live = named_foo("L").await;
    let routes = vec![Route::prefix("/").cluster(cluster_of(&[dead_addr().await, live]))];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for _ in 0..6 {
        let (_client, name) = tunnel(proxy.addr).await;
        assert_eq!(name, "L");
        assert_eq!(served_by(proxy.addr, &get("/", "")).await, "L");
    }
}

/// `retry_on: 5xx`: an endpoint that answers `503` is tried no more for that request, for
/// plain requests and upgrades alike; with no retries the `503` reaches the client.
#[tokio::test]
async fn a_5xx_answer_is_retried_on_another_endpoint_when_the_policy_says_so() {
    let failing = Answering::new(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    let good = named_foo("G").await;
    let five_xx = RetryPolicy::new()
        .retry_on("connect-failure,5xx".parse::<RetryOn>().unwrap())
        .num_retries(1);
    let routes = vec![
        Route::prefix("/retried")
            .retry_policy(five_xx)
            .cluster(cluster_of(&[failing.addr, good])),
        Route::prefix("/")
            .retry_policy(RetryPolicy::none())
            .cluster(cluster_of(&[failing.addr, good])),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for _ in 0..4 {
        assert_eq!(served_by(proxy.addr, &get("/retried", "")).await, "G");
        let mut client = raw_client(proxy.addr, foo_upgrade("/retried").as_bytes()).await;
        let (head, _) = within(read_head(&mut client)).await;
        assert_eq!(status(&head), 101, "{head}");
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(served_by(proxy.addr, &get("/", "")).await);
    }
    assert!(answers.contains(&"503".to_owned()), "{answers:?}");
    assert!(
        failing.hits() >= 8,
        "the failing endpoint was tried {} times",
        failing.hits()
    );
}

/// An upstream that answers the first request on each connection and closes the
/// connection, without a word, when a second one comes: what a keep-alive upstream does when
/// it closes an idle connection just as the proxy reuses it.
async fn closes_reused_connections() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_head(&mut tcp).await;
                tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                read_head(&mut tcp).await;
                // Closed before any byte of an answer.
            });
        }
    });
    addr
}

/// A bodiless idempotent request on a pooled connection the upstream has dropped is tried
/// once more on a new connection, and the client never sees the failure.
#[tokio::test]
async fn a_stale_pooled_connection_is_retried_without_the_client_seeing_it() {
    let upstream = closes_reused_connections().await;
    let routes = vec![
        Route::prefix("/")
            .retry_policy(RetryPolicy::none())
            .cluster(cluster_of(&[upstream])),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for i in 0..5 {
        let (head, body) = fetch(proxy.addr, &get("/", "")).await;
        assert_eq!((status(&head), body.as_str()), (200, "ok"), "request {i}: {head}");
    }
    // A POST with a body is not replayed: the failure reaches the client.
    let post = "POST / HTTP/1.1\r\nHost: front\r\nContent-Length: 2\r\n\r\nhi";
    let statuses: Vec<u16> = futures_util::future::join_all((0..2).map(|_| async {
        let (head, _) = fetch(proxy.addr, post).await;
        status(&head)
    }))
    .await;
    assert!(statuses.iter().all(|s| [200, 502].contains(s)), "{statuses:?}");
}

/// `least_request`: once the tunnels on one endpoint have ended, new tunnels go there
/// until the endpoints are even again (round robin would alternate).
#[tokio::test]
async fn least_request_sends_new_tunnels_to_the_emptier_endpoint() {
    let (a, b) = (named_foo("A").await, named_foo("B").await);
    let cluster = cluster_of(&[a, b]).lb_policy(LbPolicy::LeastRequest);
    let routes = vec![Route::prefix("/").cluster(cluster.clone())];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(tunnel(proxy.addr).await);
    }
    let on_a = open.iter().filter(|(_, n)| n == "A").count();
    assert_eq!(on_a, 2, "{:?}", open.iter().map(|(_, n)| n).collect::<Vec<_>>());
    // End the tunnels on A.
    let (ended, kept): (Vec<_>, Vec<_>) = open.into_iter().partition(|(_, n)| n == "A");
    for (mut client, _) in ended {
        client.shutdown().await.unwrap();
        within(read_to_eof(&mut client)).await;
    }
    within(async {
        while cluster.stats()[0].active > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (_c1, first) = tunnel(proxy.addr).await;
    let (_c2, second) = tunnel(proxy.addr).await;
    assert_eq!((first.as_str(), second.as_str()), ("A", "A"));
    assert_eq!(cluster.stats()[1].active, 2);
    drop(kept);
}

/// Outlier detection: an endpoint that keeps answering `503` is ejected after
/// `consecutive_gateway_failure` answers and gets nothing new; the cluster's stats say so.
#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_ejected() {
    let failing = Answering::new(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    let good = named_foo("G").await;
    let cluster = cluster_of(&[failing.addr, good]).outlier_detection(
        OutlierDetection::new()
            .consecutive_gateway_failure(2)
            .base_ejection_time(Duration::from_secs(60)),
    );
    let routes = vec![
        Route::prefix("/")
            .retry_policy(RetryPolicy::none())
            .cluster(cluster.clone()),
    ];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;
    for _ in 0..4 {
        served_by(proxy.addr, &get("/", "")).await;
    }
    assert_eq!(failing.hits(), 2);
    assert!(cluster.stats()[0].ejected, "{:?}", cluster.stats());
    for _ in 0..6 {
        assert_eq!(served_by(proxy.addr, &get("/", "")).await, "G");
        let (_client, name) = tunnel(proxy.addr).await;
        assert_eq!(name, "G");
    }
    assert_eq!(failing.hits(), 2);
}

/// A resolver the test drives: the addresses a name has now, or a failing lookup.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<HashMap<String, Option<Vec<IpAddr>>>>>);

impl Table {
    fn set(&self, name: &str, ips: Option<Vec<IpAddr>>) {
        self.0.lock().unwrap().insert(name.to_owned(), ips);
    }
}

impl Resolve for Table {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        let found = self.0.lock().unwrap().get(host).cloned().flatten();
        Box::pin(async move {
            found
                .map(|ips| ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
                .ok_or_else(|| io::Error::other("no such name"))
        })
    }
}

/// Waits until the cluster's endpoints are `want`.
async fn endpoints_become(cluster: &Cluster, want: &[SocketAddr]) {
    let want: Vec<String> = want.iter().map(ToString::to_string).collect();
    within(async {
        loop {
            let now: Vec<String> = cluster
                .endpoints()
                .iter()
                .map(|e| e.address().to_owned())
                .collect();
            if now == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// DNS discovery: a name's addresses become the endpoints, a change moves new tunnels to
/// the new address while a tunnel to the old one lives on, and a failed lookup keeps the
/// last addresses.
#[tokio::test]
async fn dns_discovery_follows_a_name_and_leaves_live_tunnels_alone() {
    let a = named_foo("A").await;
    let Ok(b) = tokio::net::TcpListener::bind(("127.0.0.2", a.port()))
        .await
        .map(|l| {
            let addr = l.local_addr().unwrap();
            drop(l);
            addr
        })
    else {
        panic!(
            "127.0.0.2:{} is taken; loopback aliases are needed for this test",
            a.port()
        );
    };
    named_foo_at("B", b).await;
    let table = Table::default();
    table.set("svc.test", Some(vec![a.ip()]));
    let cluster = Cluster::new("c", [Endpoint::new(format!("svc.test:{}", a.port()))])
        .dns_discovery(table.clone(), Duration::from_millis(30));
    let discovery = tokio::spawn(cluster.discovery());
    let routes = vec![Route::prefix("/").cluster(cluster.clone())];
    let proxy = routed(routes, Runtime::new(), foo_router()).await;

    endpoints_become(&cluster, &[a]).await;
    let (mut old, name) = tunnel(proxy.addr).await;
    assert_eq!(name, "A");
    assert_eq!(cluster.endpoints()[0].host(), "svc.test");

    table.set("svc.test", Some(vec![b.ip()]));
    endpoints_become(&cluster, &[b]).await;
    let (_new, name) = tunnel(proxy.addr).await;
    assert_eq!(name, "B");
    // The tunnel to the address that left DNS is still open.
    let mut buf = [0u8; 1];
    let still = tokio::time::timeout(Duration::from_millis(100), old.read(&mut buf)).await;
    assert!(still.is_err(), "the old tunnel ended: {still:?}");

    table.set("svc.test", None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cluster.endpoints().len(), 1);
    assert_eq!(served_by(proxy.addr, &get("/", "")).await, "B");
    discovery.abort();
}
