//! Serving a stack on TCP listeners: [`serve`](crate::serve) and [`Workers`](crate::Workers).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::BoxError;
use crate::ext::ClientAddr;

mod workers;

pub use workers::Workers;

/// How long [`serve`] waits for in-flight HTTP exchanges after shutdown starts. Upgraded
/// tunnels are not counted here: drain them with a [`Drain`](crate::Drain).
const GRACE: Duration = Duration::from_secs(30);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts connections on `listener` and serves `service` on each until `shutdown` resolves,
/// then stops accepting and lets in-flight requests finish (up to 30 s): HTTP/1.1 (with
/// upgrades) and HTTP/2 prior knowledge on one port, on the caller's runtime. [`Workers`]
/// runs the same on one single-threaded runtime per CPU, as the `switchback` binary does.
///
/// HTTP/1.1 connections are served on the bare TCP stream, so that an upgraded connection
/// can be recovered as a socket and spliced without any wrapper; HTTP/2 prior knowledge is
/// recognised by its preface.
///
/// ```no_run
/// use switchback::{Cluster, Endpoint, Forward, UpgradeRouterLayer, serve};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let stack = ServiceBuilder::new()
///     .layer(UpgradeRouterLayer::builder().upgrade("websocket").build().unwrap())
///     .service(Forward::new(Cluster::new("app", [Endpoint::new("127.0.0.1:8080")])));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:10000").await?;
/// serve(listener, stack, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = service.clone();
        let svc = tower::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(addr));
            svc.clone().oneshot(req)
        });
        tokio::spawn(connection(
            stream,
            addr,
            TowerToHyperService::new(svc),
            stopping.clone(),
        ));
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(GRACE, stop.closed()).await;
    Ok(())
}

/// Serves one connection until it ends, shutting it down gracefully when `stopping` flips.
async fn connection<S, B>(stream: TcpStream, addr: SocketAddr, svc: S, mut stopping: watch::Receiver<bool>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(stream);
    let result = if is_h2(io.inner()).await {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .auto_date_header(false)
            .enable_connect_protocol()
            .timer(TokioTimer::new());
        let conn = builder.serve_connection(io, svc);
        drive(conn, &mut stopping, |c| c.graceful_shutdown()).await
    } else {
        let mut builder = http1::Builder::new();
        // A proxy relays the upstream's head; it does not invent a `Date` the upstream didn't
        // send. The timer bounds how long a client may take to send a request head.
        builder.auto_date_header(false).timer(TokioTimer::new());
        let conn = builder.serve_connection(io, svc).with_upgrades();
        drive(conn, &mut stopping, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, client = %addr, "connection ended with an error");
    }
}

/// Polls a connection to its end; on shutdown asks it to finish what is in flight first.
async fn drive<C, E>(
    conn: C,
    stopping: &mut watch::Receiver<bool>,
    graceful: fn(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = stopping.wait_for(|s| *s) => graceful(conn.as_mut()),
    }
    conn.await
}

/// Whether the client opens with the HTTP/2 preface (prior knowledge).
async fn is_h2(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    // The preface comes in one segment in practice; a few short waits cover a split one.
    for _ in 0..50 {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
