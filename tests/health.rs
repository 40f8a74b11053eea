//! Active health checks over real sockets: an upstream whose `/healthz` turns `503` and back,
//! a dead endpoint found by a TCP check, and tunnels closed (or not) when their endpoint
//! turns unhealthy.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use support::*;
use switchback::{Cluster, Endpoint, Forward, HealthCheck, UpgradeRouterLayer};

/// An upstream that names itself in `x-served-by`, answers `/healthz` with the status the
/// test sets, and accepts `foo` upgrades (then echoes bytes).
struct Upstream {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    /// `/healthz` requests answered so far.
    probes: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(AtomicU16::new(200));
        let probes = Arc::new(AtomicUsize::new(0));
        let (status, probed) = (health.clone(), probes.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (status, probed) = (status.clone(), probed.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let health = status.load(Ordering::Relaxed);
                    if req.uri().path() == "/healthz" {
                        probed.fetch_add(1, Ordering::Relaxed);
                    }
                    async move { Ok::<_, Infallible>(answer(name, health, req)) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades(),
                );
            }
        });
        Self { addr, health, probes }
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }
}

fn answer(name: &'static str, health: u16, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(name)));
    if req.uri().path() == "/healthz" {
        *res.status_mut() = StatusCode::from_u16(health).unwrap();
    } else if req.headers().contains_key("upgrade") {
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut().insert("connection", "upgrade".parse().unwrap());
        res.headers_mut().insert("upgrade", "foo".parse().unwrap());
        *res.body_mut() = Full::default();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
    res.headers_mut().insert("x-served-by", name.parse().unwrap());
    res
}

async fn proxy(cluster: Cluster) -> Proxy {
    let router = UpgradeRouterLayer::builder().upgrade("foo").build().unwrap();
    start(ServiceBuilder::new().layer(router).service(Forward::new(cluster))).await
}

/// Who served a plain `GET /` through the proxy.
async fn served_by(proxy: SocketAddr) -> String {
    let mut c = raw_client(
        proxy,
        b"GET / HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n",
    )
    .await;
    let all = String::from_utf8(within(read_to_eof(&mut c)).await).unwrap();
    assert_eq!(status(&all), 200, "{all}");
    header(&all, "x-served-by").unwrap().to_owned()
}

/// Opens a `foo` tunnel through the proxy; returns the client's end and who serves it.
async fn tunnel(proxy: SocketAddr) -> (tokio::net::TcpStream, String) {
    let mut c = raw_client(proxy, foo_upgrade("/t").as_bytes()).await;
    let (head, _) = read_head(&mut c).await;
    assert_eq!(status(&head), 101, "{head}");
    let by = header(&head, "x-served-by").unwrap().to_owned();
    (c, by)
}

/// Waits until `check` holds of the cluster's endpoint stats.
async fn until(cluster: &Cluster, what: &str, check: impl Fn(&[switchback::EndpointStats]) -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !check(&cluster.stats()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out waiting for {what}: {:?}",
        cluster.stats()
    );
}

fn quick(check: HealthCheck) -> HealthCheck {
    check
        .interval(Duration::from_millis(40))
        .timeout(Duration::from_millis(500))
        .unhealthy_threshold(2)
        .healthy_threshold(2)
}

/// `/healthz` answering `503` takes the endpoint out at once: plain requests and upgrades go
/// to the other one. Two `200`s in a row bring it back.
#[tokio::test]
async fn an_http_check_takes_an_endpoint_out_and_brings_it_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let cluster = Cluster::new(
        "pair",
        [
            Endpoint::new(a.addr.to_string()),
            Endpoint::new(b.addr.to_string()),
        ],
    )
    .health_check(quick(HealthCheck::http("/healthz")));
    let checker = tokio::spawn(cluster.health_checker());
    let proxy = proxy(cluster.clone()).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(served_by(proxy.addr).await);
    }
    assert!(
        seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
        "{seen:?}"
    );
    // A few rounds of passing probes flip nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        cluster.stats().iter().all(|s| !s.unhealthy),
        "{:?}",
        cluster.stats()
    );

    a.set_health(503);
    until(&cluster, "a unhealthy", |s| s[0].unhealthy).await;
    for _ in 0..6 {
        assert_eq!(served_by(proxy.addr).await, "b");
    }
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let (c, by) = tunnel(proxy.addr).await;
        assert_eq!(by, "b");
        tunnels.push(c);
    }

    a.set_health(200);
    until(&cluster, "a healthy again", |s| !s[0].unhealthy).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(served_by(proxy.addr).await);
    }
    assert!(seen.contains(&"a".to_owned()), "{seen:?}");
    checker.abort();
}

/// A TCP check finds an endpoint nobody listens on, after its first probe: from then on
/// requests and upgrades never try it, so no request pays for a failed connect.
#[tokio::test]
async fn a_tcp_check_takes_a_dead_endpoint_out() {
    let live = Upstream::start("live").await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cluster = Cluster::new(
        "half",
        [
            Endpoint::new(dead.to_string()),
            Endpoint::new(live.addr.to_string()),
        ],
    )
    .health_check(quick(HealthCheck::tcp()));
    let checker = tokio::spawn(cluster.health_checker());
    until(&cluster, "the dead endpoint unhealthy", |s| {
        s[0].unhealthy && !s[1].unhealthy
    })
    .await;

    let proxy = proxy(cluster.clone()).await;
    for _ in 0..4 {
        assert_eq!(served_by(proxy.addr).await, "live");
        assert_eq!(tunnel(proxy.addr).await.1, "live");
    }
    assert_eq!(cluster.stats()[0].connect_failures, 0, "never tried by traffic");
    checker.abort();
}

/// With `close_connections_on_host_health_failure`, a tunnel to an endpoint that turns
/// unhealthy is closed; without it, the tunnel runs on.
#[tokio::test]
async fn tunnels_close_on_health_failure_only_when_asked() {
    for close in [true, false] {
        let up = Upstream::start("only").await;
        let cluster = Cluster::new("one", [Endpoint::new(up.addr.to_string())])
            .health_check(quick(HealthCheck::http("/healthz")))
            .close_connections_on_host_health_failure(close);
        let checker = tokio::spawn(cluster.health_checker());
        let proxy = proxy(cluster.clone()).await;
        // The first round is in: the endpoint counts as checked and healthy. A round starts
        // only after the last one's verdicts are recorded, so a second probe means the first
        // one's verdict is in.
        within(async {
            while up.probes.load(Ordering::Relaxed) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let (mut c, _) = tunnel(proxy.addr).await;
        c.write_all(b"ping").await.unwrap();
        assert_eq!(read_n(&mut c, Vec::new(), 4).await, b"ping");

        up.set_health(503);
        until(&cluster, "unhealthy", |s| s[0].unhealthy).await;
        if close {
            let rest = within(read_to_eof(&mut c)).await;
            assert!(rest.is_empty(), "{rest:?}");
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.write_all(b"pong").await.unwrap();
            assert_eq!(read_n(&mut c, Vec::new(), 4).await, b"pong", "the tunnel runs on");
        }
        checker.abort();
    }
}
