//! Serving a stack on TCP listeners: [`serve`](crate::serve) and [`Workers`](crate::Workers).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::body::{Body, BoxError};
use crate::ext::{ClientAddr, TlsSession};
use crate::reply::{self, Then};
use crate::tls::ServerTls;
use http::StatusCode;
use http_body_util::Either;

mod workers;

pub use workers::Workers;

use crate::body::Holding;
use crate::conn::{Admission, ClientConn, ClientIo as Io, Conns, Exchange, SeatedTunnel, Slot};

/// How long [`serve`] waits for in-flight HTTP exchanges after shutdown starts. Upgraded
/// tunnels are not counted here: drain them with a [`Drain`](crate::Drain).
const GRACE: Duration = Duration::from_secs(30);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client may make a server wait for, or hold: the bounds a proxy at the edge needs
/// against slow, silent, idle and oversized clients, and how many connections a listener
/// keeps. The defaults are Envoy's edge recommendations: 10 s for the whole head, an hour
/// idle, 60 KiB, 100 header lines; and as many connections as the descriptor limit allows.
///
/// ```
/// use std::time::Duration;
/// use switchback::ClientLimits;
///
/// let limits = ClientLimits::new()
///     .request_headers_timeout(Duration::from_secs(5))
///     .connection_idle_timeout(Duration::from_secs(300))
///     .max_request_headers(32 * 1024)
///     .max_headers(50)
///     .max_connections(10_000);
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    request_headers_timeout: Duration,
    connection_idle_timeout: Option<Duration>,
    max_request_headers: usize,
    max_headers: usize,
    max_connections: Option<usize>,
    max_concurrent_streams: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            request_headers_timeout: Duration::from_secs(10),
            connection_idle_timeout: Some(Duration::from_secs(3600)),
            max_request_headers: 60 * 1024,
            max_headers: HYPER_MAX_HEADERS,
            max_connections: None,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

impl ClientLimits {
    /// The defaults: 10 s, 1 h, 60 KiB, 100 lines, connections by the descriptor limit, 100
    /// HTTP/2 streams.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a client has to send a whole request head: counted from accept (a
    /// connection that sends nothing is closed then), or on a kept-alive connection from the
    /// head's first byte. On HTTP/2 it bounds the first request, counted from accept, and
    /// every later HEADERS block, counted from its first frame (GOAWAY, then close).
    pub fn request_headers_timeout(mut self, timeout: Duration) -> Self {
        self.request_headers_timeout = timeout;
        self
    }

    /// How long a connection may sit idle between requests, with nothing in flight, before
    /// it is closed (HTTP/2: GOAWAY, then close). Tunnels are not idle connections: their own
    /// idle timeout applies.
    pub fn connection_idle_timeout(mut self, timeout: Duration) -> Self {
        self.connection_idle_timeout = Some(timeout);
        self
    }

    /// Connections idle between requests stay open until the client closes them (or a full
    /// listener needs their place).
    pub fn no_connection_idle_timeout(mut self) -> Self {
        self.connection_idle_timeout = None;
        self
    }

    /// The most connections a listener keeps open, tunnels included (at least 1). At it, the
    /// listener leaves newcomers in the kernel's queue while a place may still come free (in
    /// a reconnect storm, the tunnels being replaced are closing). A newcomer then takes the
    /// place of a connection waiting for a request head or sitting idle, once that one has
    /// waited two seconds (one, when its worker looked and found it had sent nothing; a
    /// younger one is not evicted), and that one is closed; when every connection has stayed
    /// busy for half a second, newcomers are answered `503` and closed as they come, until a
    /// place frees. Workers racing for a place that just came free may take a newcomer or two
    /// over the cap rather than evict a young connection. The default is half the process's
    /// descriptor limit after a reserve of a quarter of it (at most 256): each client
    /// connection may need an upstream one, and 256 descriptors give 96 connections.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = Some(connections.max(1));
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

    /// The most streams (requests and tunnels) an HTTP/2 client may have open at once on one
    /// connection (at least 1; default 100, HAProxy's; nginx's is 128). The client learns it
    /// from the server's SETTINGS and a stream past it is reset (`REFUSED_STREAM`). Every
    /// HTTP/2 tunnel also takes a place under [`max_connections`](Self::max_connections), so
    /// one connection can't hold more upstream sockets than the listener has places.
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams.max(1);
        self
    }
}

/// HTTP/2 streams a client may open at once on one connection, by default.
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

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
    Server::new(service)
        .limits(limits)
        .serve(listener, shutdown)
        .await
}

/// A stack and how to serve it: the [`ClientLimits`] and, for a TLS listener, its
/// [`ServerTls`]. [`serve`], [`serve_with`] and [`Workers::start`] are its shorthands.
///
/// Over TLS, ALPN decides the protocol (`h2`: HTTP/2 with extended CONNECT; anything else:
/// HTTP/1.1), the TLS handshake counts against the request headers timeout, and a failed
/// handshake is counted ([`TLS_HANDSHAKE_FAILURES`](crate::metrics::TLS_HANDSHAKE_FAILURES))
/// and logged at debug level only. Requests carry a [`TlsSession`].
///
/// ```no_run
/// use std::sync::Arc;
/// use switchback::tls::{CertResolver, Certificates, ServerTls};
/// use switchback::{ClientLimits, Cluster, Endpoint, Forward, Server, UpgradeRouterLayer};
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let certs = Certificates::new().default_key(Certificates::load("cert.pem", "key.pem")?);
/// let tls = ServerTls::builder(Arc::new(CertResolver::new(certs))).build()?;
/// let stack = ServiceBuilder::new()
///     .layer(UpgradeRouterLayer::builder().upgrade("websocket").build()?)
///     .service(Forward::new(Cluster::new("app", [Endpoint::new("127.0.0.1:8080")])));
/// let threads = std::thread::available_parallelism()?;
/// let workers = Server::new(stack)
///     .limits(ClientLimits::new().max_connections(10_000))
///     .tls(tls)
///     .workers("0.0.0.0:443".parse()?, threads)?;
/// # drop(workers); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Server<S> {
    service: S,
    options: Options,
}

/// What every connection of a listener is served with.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) limits: ClientLimits,
    pub(crate) tls: Option<ServerTls>,
}

impl<S> Server<S> {
    /// Serves `service` within the default [`ClientLimits`], without TLS.
    pub fn new(service: S) -> Self {
        Self {
            service,
            options: Options {
                limits: ClientLimits::default(),
                tls: None,
            },
        }
    }

    /// Serves within these limits.
    pub fn limits(mut self, limits: ClientLimits) -> Self {
        self.options.limits = limits;
        self
    }

    /// Terminates TLS on every connection.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.options.tls = Some(tls);
        self
    }
}

impl<S, B> Server<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Accepts connections on `listener` until `shutdown` resolves, on the caller's runtime,
    /// as [`serve`] does.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let conns = Conns::new(self.options.limits.max_connections);
        serve_on(listener, self.service, shutdown, self.options, conns).await
    }

    /// Serves on `threads` workers listening on `addr`, as [`Workers::start`] does.
    pub fn workers(self, addr: SocketAddr, threads: std::num::NonZeroUsize) -> io::Result<Workers> {
        let (addr, sources) = Workers::bound(addr, threads)?;
        Workers::start_on(addr, sources, self.options, self.service)
    }

    /// Serves one worker on each of `listeners`, as [`Workers::start_from`] does.
    pub fn workers_from(self, listeners: Vec<std::net::TcpListener>) -> io::Result<Workers> {
        let (addr, sources) = Workers::given(listeners)?;
        Workers::start_on(addr, sources, self.options, self.service)
    }
}

/// [`Server::serve`], counting connections in `conns` (which [`Workers`] share).
async fn serve_on<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    options: Options,
    conns: Arc<Conns>,
) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (stop, stopping) = watch::channel(false);
    let refusing = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        // A full listener leaves newcomers queued for a moment before it takes one (and
        // evicts or refuses): places come free fast when tunnels are being replaced.
        tokio::select! {
            () = conns.room() => {}
            () = &mut shutdown => break,
        }
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
        let slot = match conns.admit() {
            Admission::Admitted(slot) => slot,
            Admission::Full => {
                tracing::warn!(client = %addr, "listener full of busy connections: refusing one");
                // A TLS client can't read a plaintext 503, and a TLS handshake is the work
                // a full listener can't take on: it is closed. So is a newcomer when this
                // worker's refusals in flight already hold as many descriptors as it may
                // spend on them: a crowd that doesn't hang up must not take the last ones.
                if options.tls.is_none() && refusing.load(Relaxed) < MAX_REFUSING {
                    refusing.fetch_add(1, Relaxed);
                    let refusing = refusing.clone();
                    tokio::spawn(async move {
                        refuse(stream).await;
                        refusing.fetch_sub(1, Relaxed);
                    });
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            addr,
            slot,
            limits: options.limits,
        };
        // Not boxed: the task's future is small, its HTTP boxed inside it (tokio moves a
        // task's future on spawn and at each stage change).
        tokio::spawn(connection(
            stream,
            accepted,
            service.clone(),
            options.tls.clone(),
            stopping.clone(),
        ));
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(GRACE, stop.closed()).await;
    Ok(())
}

/// A connection the listener took.
struct Accepted {
    addr: SocketAddr,
    slot: Arc<Slot>,
    limits: ClientLimits,
}

impl Accepted {
    fn parts(&self) -> (SocketAddr, Arc<Slot>, ClientLimits) {
        (self.addr, self.slot.clone(), self.limits)
    }
}

/// A response as the server sends it: the stack's, or a refusal of its own, tracked.
type Served<B> = Response<Holding<Either<B, Body>, Exchange>>;

/// The per-connection service: checks the head's exact size, tells the request where it came
/// from, and keeps the connection busy until the response is sent.
fn exchange_service<S, B>(
    svc: S,
    (addr, slot, limits): (SocketAddr, Arc<Slot>, ClientLimits),
    tls: Option<TlsSession>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Served<B>,
    Error = Infallible,
    Future = impl Future<Output = Result<Served<B>, Infallible>> + Send,
> + Send
+ 'static
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let exchange = slot.begin(req.version() != http::Version::HTTP_2);
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
        req.extensions_mut().insert(ClientConn(slot.clone()));
        if let Some(tls) = &tls {
            req.extensions_mut().insert(tls.clone());
        }
        let served = refused.is_none().then(|| svc.clone().oneshot(req));
        async move {
            let res = match (served, refused) {
                (Some(served), _) => served.await.map(|res| res.map(Either::Left)),
                (None, refused) => Ok(refused.unwrap_or_default().map(Either::Right)),
            };
            res.map(|res| res.map(|body| Holding::new(body, exchange)))
        }
    })
}

/// hyper's default limit on a head's header lines (and this server's).
const HYPER_MAX_HEADERS: usize = 100;

/// Refusals (`503`s waiting for their client to hang up) one worker keeps in flight at most.
const MAX_REFUSING: usize = 16;

/// Answers a connection the full listener can't take: `503`, then close once the client
/// has read it (or after a second).
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
        content-length: 35\r\nconnection: close\r\n\r\nthe proxy is at its connection cap\n";
    let linger = async {
        stream.write_all(FULL).await?;
        stream.shutdown().await?;
        // Reading what the client sent lets the close be a FIN, not a reset that could
        // destroy the 503 before the client reads it.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

/// A connection's task: its HTTP, then the tunnel an HTTP/1 upgrade left for it. HTTP runs
/// boxed and the box goes when HTTP ends, so an idle tunnel keeps this small future and the
/// tunnel's own, not hyper's connection state.
async fn connection<S, B>(
    stream: TcpStream,
    accepted: Accepted,
    svc: S,
    tls: Option<ServerTls>,
    stopping: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let tunnel = Box::pin(http(stream, accepted, svc, tls, stopping)).await;
    if let Some(tunnel) = tunnel {
        tunnel.await;
    }
}

/// Serves one connection's HTTP until it ends, shutting it down gracefully when `stopping`
/// flips. Returns the tunnel an HTTP/1 upgrade left on the connection, if any, for the task
/// to run without the connection's place in the listener (the tunnel holds its own) or
/// anything else of the connection's.
async fn http<S, B>(
    stream: TcpStream,
    accepted: Accepted,
    svc: S,
    tls: Option<ServerTls>,
    stopping: watch::Receiver<bool>,
) -> Option<SeatedTunnel>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (addr, limits) = (accepted.addr, accepted.limits);
    let _unseat = Unseat(accepted.slot.clone());
    // A client that sends nothing at all never gets past its first read (or the TLS
    // handshake): the head's time limit starts at accept, and a full listener may close it
    // here.
    let opening = async {
        match &tls {
            None => {
                let mut stream = stream;
                let sniffed = sniff(&mut stream).await;
                sniffed.map(|(h2, first)| Opened::Plain(stream, h2, first))
            }
            // Boxed: the handshake's future holds the TLS session, and would make every
            // connection's future (plain ones too) as large.
            Some(tls) => Box::pin(tls.acceptor().accept(stream))
                .await
                .map(|s| Opened::Tls(Box::new(s))),
        }
    };
    let opening = noting_silence(&accepted.slot, opening);
    let opened = tokio::select! {
        opened = tokio::time::timeout(limits.request_headers_timeout, opening) => opened,
        () = accepted.slot.evicted() => return None,
    };
    let result = match opened {
        Ok(Ok(Opened::Plain(stream, h2, first))) => {
            let svc = exchange_service(svc, accepted.parts(), None);
            serve_io(stream, first, h2, &accepted, svc, stopping).await
        }
        Ok(Ok(Opened::Tls(stream))) => {
            let conn = stream.get_ref().1;
            let h2 = conn.alpn_protocol() == Some(b"h2");
            let svc = exchange_service(svc, accepted.parts(), Some(crate::tls::accepted_info(conn)));
            serve_io(stream, Bytes::new(), h2, &accepted, svc, stopping).await
        }
        Ok(Err(e)) if tls.is_none() => {
            tracing::debug!(client = %addr, error = %e, "connection closed before a request");
            return None;
        }
        Ok(Err(e)) => {
            let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
                "closed"
            } else {
                "handshake"
            };
            ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
            tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            if tls.is_some() {
                ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES, "reason" => "timeout")
                    .increment(1);
            }
            tracing::debug!(client = %addr, "closing a connection that sent nothing in time");
            return None;
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, client = %addr, "connection ended with an error");
    }
    accepted.slot.take_tunnel()
}

/// Drops a tunnel still seated on its connection when the connection's HTTP is dropped before
/// handing it over (its task cancelled): once upgraded, the seated tunnel holds the client's
/// connection, which holds the slot that holds the tunnel, and none of it would ever be freed.
struct Unseat(Arc<Slot>);

impl Drop for Unseat {
    fn drop(&mut self) {
        drop(self.0.take_tunnel());
    }
}

/// Runs a new connection's opening (its first read, or its TLS handshake), telling its slot
/// when the first look finds nothing sent yet: a full listener lets such a connection give
/// way sooner.
async fn noting_silence<F: Future>(slot: &Slot, opening: F) -> F::Output {
    let mut opening = std::pin::pin!(opening);
    let mut first = true;
    std::future::poll_fn(|cx| {
        let polled = opening.as_mut().poll(cx);
        if std::mem::take(&mut first) && polled.is_pending() {
            slot.found_nothing();
        }
        polled
    })
    .await
}

/// A connection ready for HTTP: a plain one, whether it opened with the HTTP/2 preface and
/// the bytes read to tell; or a TLS stream.
enum Opened {
    Plain(TcpStream, bool, Bytes),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Serves HTTP/2 (`h2`) or HTTP/1.1 with upgrades on `stream`, whose `first` bytes were
/// read already.
async fn serve_io<T, S, B>(
    stream: T,
    first: Bytes,
    h2: bool,
    accepted: &Accepted,
    svc: S,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (slot, limits) = (&accepted.slot, &accepted.limits);
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .auto_date_header(false)
            .enable_connect_protocol()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_request_headers).unwrap_or(u32::MAX))
            .timer(TokioTimer::new());
        let io = TokioIo::new(Io::http2(stream, slot.clone()).with_prefix(first));
        let conn = builder.serve_connection(io, svc);
        // Boxed: HTTP/2's connection is twice HTTP/1's, and would size every connection's
        // future.
        Box::pin(drive(
            conn,
            slot,
            limits,
            &mut stopping,
            |c| c.graceful_shutdown(),
            true,
        ))
        .await
    } else {
        let mut builder = http1::Builder::new();
        // A proxy relays the upstream's head; it does not invent a `Date` the upstream didn't
        // send. The read buffer bounds a head's size (hyper answers 431 past it). The head's
        // time limit is ours: hyper's would also close a connection idle between requests.
        builder
            .auto_date_header(false)
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(limits.max_request_headers);
        // Set only when it differs from hyper's own 100: given any count, hyper allocates and
        // fills two arrays of that many entries for every head it parses.
        if limits.max_headers != HYPER_MAX_HEADERS {
            builder.max_headers(limits.max_headers);
        }
        let io = TokioIo::new(Io::http1(stream, slot.clone()).with_prefix(first));
        let conn = builder.serve_connection(io, svc).with_upgrades();
        drive(
            conn,
            slot,
            limits,
            &mut stopping,
            |c| c.graceful_shutdown(),
            false,
        )
        .await
    }
}

/// Why a connection's driver stopped polling it as usual.
enum Interrupted {
    Stopping,
    /// Its head or idle timer expired.
    TimedOut,
    /// A newcomer took its place.
    Evicted,
}

/// Polls a connection to its end, under its head and idle timers. On shutdown it is asked to
/// finish what is in flight first. When a timer expires or the listener evicts it, an HTTP/2
/// connection is sent away (GOAWAY) and gets a second; an HTTP/1 one (with nothing in flight)
/// is closed.
async fn drive<C, E>(
    conn: C,
    slot: &Slot,
    limits: &ClientLimits,
    stopping: &mut watch::Receiver<bool>,
    graceful: fn(Pin<&mut C>),
    goaway: bool,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = pin!(conn);
    let mut stop = pin!(stopping.wait_for(|s| *s));
    let mut evicted = pin!(slot.evicted());
    // Armed at the first deadline the slot gives (the head's, from accept).
    let mut timer = pin!(tokio::time::sleep_until(
        Instant::now() + Duration::from_secs(365 * 24 * 3600)
    ));
    let mut stop_seen = false;
    let interrupted = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Err(result));
        }
        if !stop_seen && stop.as_mut().poll(cx).is_ready() {
            stop_seen = true;
        }
        // A connection accepted just before the shutdown has a request on its way: it is
        // served (within the head timer) rather than closed under the client. HTTP/1 waits
        // for the exchange in flight to end too: hyper's graceful shutdown would turn its
        // answer's `Connection` to `close`, a `101`'s included.
        if stop_seen && !slot.is_fresh() && (goaway || slot.is_idle()) {
            return Poll::Ready(Ok(Interrupted::Stopping));
        }
        if evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(Interrupted::Evicted));
        }
        // The state may have changed while the connection was polled: re-arm first. With no
        // deadline (an exchange in flight, an upgrade) the timer is left alone rather than
        // moved to a far one: an earlier deadline still armed wakes the task once, for nothing.
        if let Some(deadline) = slot.deadline(limits.request_headers_timeout, limits.connection_idle_timeout)
        {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Interrupted::TimedOut));
            }
        }
        Poll::Pending
    })
    .await;
    let why = match interrupted {
        Err(result) => return result,
        Ok(why) => why,
    };
    graceful(conn.as_mut());
    match why {
        Interrupted::Stopping => conn.await,
        Interrupted::TimedOut | Interrupted::Evicted => {
            tracing::debug!(
                evicted = matches!(why, Interrupted::Evicted),
                "closing a connection that waited too long for a head or sat idle"
            );
            if !goaway {
                return Ok(());
            }
            // Nothing in flight is worth waiting for beyond the GOAWAY's delivery.
            tokio::time::timeout(Duration::from_secs(1), conn)
                .await
                .unwrap_or(Ok(()))
        }
    }
}

/// Reads the client's first bytes, and as many more as it takes to tell whether they are
/// the HTTP/2 preface (prior knowledge). Reading rather than peeking: the bytes go to hyper
/// as they are, and a connection costs one system call less.
async fn sniff(stream: &mut TcpStream) -> io::Result<(bool, Bytes)> {
    use tokio::io::AsyncReadExt as _;
    // hyper's first read buffer: hyper takes these bytes as it would have read them (and a
    // head this size needs no read of its own), so a long head meets its limits the same way.
    let mut first = bytes::BytesMut::with_capacity(8192);
    loop {
        // `read_buf` rather than `try_read_buf`: a short read tells tokio the socket is
        // drained, so hyper's next read waits for readiness instead of failing with EAGAIN.
        if stream.read_buf(&mut first).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
            return Ok((n == H2_PREFACE.len() && first[..n] == *H2_PREFACE, first.freeze()));
        }
    }
}
