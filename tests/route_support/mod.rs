//! Peers for the routing and legacy tests, on top of `support`: upstreams that answer every
//! connection the same way and count them, dead addresses, and a routed proxy.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceBuilder;

use crate::support::{self, Proxy, read_head, read_n, status};
use switchback::{Forward, Route, RouteLayer, Runtime, UpgradeRouterLayer};

/// An upstream that reads each connection's request head, writes a fixed answer and closes.
pub struct Answering {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    heads: mpsc::UnboundedReceiver<String>,
}

impl Answering {
    /// Answers `answer` to every request.
    pub async fn new(answer: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (tx, heads) = mpsc::unbounded_channel();
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (counter, tx, answer) = (counter.clone(), tx.clone(), answer.clone());
                tokio::spawn(async move {
                    let (head, _) = read_head(&mut tcp).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(head);
                    let _ = tcp.write_all(&answer).await;
                });
            }
        });
        Self { addr, hits, heads }
    }

    /// Answers `200` with its `name` as the body.
    pub async fn named(name: &str) -> Self {
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
            name.len()
        );
        Self::new(answer.into_bytes()).await
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The next request head it read.
    pub async fn head(&mut self) -> String {
        support::within(self.heads.recv()).await.unwrap()
    }
}

/// An address nobody listens on: bound, then released.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The stack under test: routes, then the upgrade router, then `Forward::routed()`.
pub async fn routed(routes: Vec<Route>, runtime: Runtime, router: UpgradeRouterLayer) -> Proxy {
    support::start(
        ServiceBuilder::new()
            .layer(RouteLayer::new(routes, runtime).unwrap())
            .layer(router)
            .service(Forward::routed()),
    )
    .await
}

/// Sends one raw request on a fresh connection; returns the response head and its
/// `Content-Length` body.
pub async fn fetch(proxy: SocketAddr, request: &str) -> (String, String) {
    let mut c = support::raw_client(proxy, request.as_bytes()).await;
    let (head, rest) = read_head(&mut c).await;
    let len = support::header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let body = read_n(&mut c, rest, len).await;
    (head, String::from_utf8(body[..len].to_vec()).unwrap())
}

/// `GET path` with the given extra header lines (each ending in `\r\n`).
pub fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: front\r\n{extra}\r\n")
}

/// Which upstream served `path`: the body of a [`Answering::named`] upstream, or the status.
pub async fn served_by(proxy: SocketAddr, request: &str) -> String {
    let (head, body) = fetch(proxy, request).await;
    match status(&head) {
        200 => body,
        s => s.to_string(),
    }
}
