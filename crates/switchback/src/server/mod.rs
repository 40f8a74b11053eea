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
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::{Service, ServiceExt};

use crate::BoxError;
use crate::ext::ClientAddr;
use crate::reply::{self, Then};
use http::StatusCode;
use http_body_util::Either;

mod workers;

pub use workers::Workers;

/// How long [`serve`] waits for in-flight HTTP exchanges after shutdown starts. Upgraded
/// tunnels are not counted here: drain them with a [`Drain`](crate::Drain).
const GRACE: Duration = Duration::from_secs(30);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client may make a server wait for, or hold, while it sends a request head: the
/// bounds a proxy at the edge needs against slow, silent and oversized clients. The defaults
/// are Envoy's edge recommendations: 10 s for the whole head, 60 KiB, 100 header lines.
///
/// ```
/// use std::time::Duration;
/// use switchback::ClientLimits;
///
/// let limits = ClientLimits::new()
///     .request_headers_timeout(Duration::from_secs(5))
///     .max_request_headers(32 * 1024)
///     .max_headers(50);
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    request_headers_timeout: Duration,
    max_request_headers: usize,
    max_headers: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            request_headers_timeout: Duration::from_secs(10),
            max_request_headers: 60 * 1024,
            max_headers: 100,
        }
    }
}

impl ClientLimits {
    /// The defaults: 10 s, 60 KiB, 100 lines.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a client has to send a whole request head, counted from accept (a
    /// connection that sends nothing is closed then) or, on a kept-alive connection, from the
    /// end of the previous response.
    pub fn request_headers_timeout(mut self, timeout: Duration) -> Self {
        self.request_headers_timeout = timeout;
        self
    }

    /// The largest request head, in bytes (at least 8 KiB). A longer one is answered `431`
    /// and the connection closed; while a head is read, a connection holds no more than this.
    pub fn max_request_headers(mut self, bytes: usize) -> Self {
        self.max_request_headers = bytes.max(MIN_HEAD);
        self
    }

    /// The most header lines a request may have; more is answered `431`.
    pub fn max_headers(mut self, lines: usize) -> Self {
        self.max_headers = lines.max(1);
        self
    }
}

/// The size of an HTTP/1 request head as it came on the wire (request line, header lines,
/// blank line); HTTP/2 heads are bounded by their own framing.
fn head_len<B>(req: &Request<B>) -> usize {
    if req.version() == http::Version::HTTP_2 {
        return 0;
    }
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| "https://".len() + a.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    line + headers + 2
}

/// hyper's smallest read buffer.
const MIN_HEAD: usize = 8 * 1024;

/// Accepts connections on `listener` and serves `service` on each (within the default
/// [`ClientLimits`]; [`serve_with`] takes others) until `shutdown` resolves,
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
    serve_with(listener, service, shutdown, ClientLimits::default()).await
}

/// [`serve`] with these [`ClientLimits`].
pub async fn serve_with<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    limits: ClientLimits,
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
            // hyper's read buffer bounds the memory a head can take, to within one read; the
            // exact limit is checked here.
            let refused = (head_len(&req) > limits.max_request_headers).then(|| {
                reply::local(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "the request head is too large",
                    Then::Close,
                )
            });
            req.extensions_mut().insert(ClientAddr(addr));
            let served = refused.is_none().then(|| svc.clone().oneshot(req));
            async move {
                match (served, refused) {
                    (Some(served), _) => served.await.map(|res| res.map(Either::Left)),
                    (None, refused) => Ok(refused.unwrap_or_default().map(Either::Right)),
                }
            }
        });
        tokio::spawn(connection(
            stream,
            addr,
            TowerToHyperService::new(svc),
            stopping.clone(),
            limits,
        ));
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(GRACE, stop.closed()).await;
    Ok(())
}

/// Serves one connection until it ends, shutting it down gracefully when `stopping` flips.
async fn connection<S, B>(
    stream: TcpStream,
    addr: SocketAddr,
    svc: S,
    mut stopping: watch::Receiver<bool>,
    limits: ClientLimits,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(stream);
    // A client that sends nothing at all never gets past the preface peek: the head's time
    // limit starts at accept.
    let Ok(h2) = tokio::time::timeout(limits.request_headers_timeout, is_h2(io.inner())).await else {
        tracing::debug!(client = %addr, "closing a connection that sent nothing in time");
        return;
    };
    let result = if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .auto_date_header(false)
            .enable_connect_protocol()
            .max_header_list_size(u32::try_from(limits.max_request_headers).unwrap_or(u32::MAX))
            .timer(TokioTimer::new());
        // hyper has no head timer for HTTP/2: a connection whose first request never
        // completes (a HEADERS block left without its end) is sent away (GOAWAY) when the
        // request headers timeout passes.
        let first = Arc::new(Notify::new());
        let seen = first.clone();
        let svc = hyper::service::service_fn(move |req| {
            seen.notify_one();
            hyper::service::Service::call(&svc, req)
        });
        let give_up = async move {
            if tokio::time::timeout(limits.request_headers_timeout, first.notified())
                .await
                .is_ok()
            {
                std::future::pending::<()>().await;
            }
            tracing::debug!(client = %addr, "closing an HTTP/2 connection with no complete request in time");
        };
        let conn = builder.serve_connection(io, svc);
        drive(conn, &mut stopping, give_up, |c| c.graceful_shutdown()).await
    } else {
        let mut builder = http1::Builder::new();
        // A proxy relays the upstream's head; it does not invent a `Date` the upstream didn't
        // send. The read buffer bounds a head's size (hyper answers 431 past it).
        builder
            .auto_date_header(false)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_headers_timeout)
            .max_buf_size(limits.max_request_headers)
            .max_headers(limits.max_headers);
        let conn = builder.serve_connection(io, svc).with_upgrades();
        drive(conn, &mut stopping, std::future::pending(), |c| {
            c.graceful_shutdown()
        })
        .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, client = %addr, "connection ended with an error");
    }
}

/// Polls a connection to its end; on shutdown asks it to finish what is in flight first.
/// When `give_up` resolves the connection is asked to finish too, and gets a second at most.
async fn drive<C, E>(
    conn: C,
    stopping: &mut watch::Receiver<bool>,
    give_up: impl Future<Output = ()>,
    graceful: fn(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    let gave_up = tokio::select! {
        result = conn.as_mut() => return result,
        _ = stopping.wait_for(|s| *s) => false,
        () = give_up => true,
    };
    graceful(conn.as_mut());
    if !gave_up {
        return conn.await;
    }
    // A client that never finished its first request has nothing in flight worth waiting
    // for.
    tokio::time::timeout(Duration::from_secs(1), conn)
        .await
        .unwrap_or(Ok(()))
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
