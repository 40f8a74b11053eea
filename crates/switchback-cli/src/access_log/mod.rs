//! The access log: one JSON object per line, to standard output or appended to a file.
//!
//! Three kinds of line, told apart by `event`:
//!
//! - `request`: a request that did not become a tunnel, written when its response body has
//!   been sent (or the client went away). `end` is `complete`, `client_close` (the connection
//!   went away before the body was sent) or `error` (the body failed).
//! - `tunnel_open`: an upgrade answered `101` (a CONNECT: its 2xx), written when the tunnel
//!   starts.
//! - `tunnel_close`: written when the tunnel has ended, with the bytes relayed each way, its
//!   duration and `end`: `client_close`, `upstream_close`, `idle_timeout`,
//!   `half_close_timeout`, `drain` or `error`; on a WebSocket tunnel also the messages
//!   relayed each way (`messages_received` from the client, `messages_sent` to it; a
//!   fragmented message counts once, control frames not at all) and `close_code`, the first
//!   close frame's code whoever sent it (the proxy's own `1001` on a drain included; `null`
//!   when none came or it carried no code).
//!
//! Every line has the same keys (`null` when unknown):
//!
//! ```json
//! {"time":"2026-01-02T03:04:05.678Z","event":"tunnel_close",
//!  "request_id":"3f0c5a8e-6b1d-4c2f-9a7e-0d4b8c6e2f11",
//!  "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","client":"127.0.0.1:50514",
//!  "protocol":"HTTP/1.1","tls":true,"sni":"chat.example.com",
//!  "method":"GET","path":"/ws","route":"routes[0]","upgrade":"websocket","mode":"joined",
//!  "status":101,"upstream":"127.0.0.1:9001","upstream_protocol":"HTTP/1.1",
//!  "bytes_received":12,"bytes_sent":12,
//!  "duration_ms":1532,"end":"client_close","messages_received":1,"messages_sent":1,
//!  "close_code":1000}
//! ```
//!
//! `time` is when the line was written (RFC 3339, UTC); `bytes_received` counts bytes from
//! the client (request body, or tunnel payload towards the upstream) and `bytes_sent` bytes
//! to the client; `path` is the request path without the query, as the client sent it;
//! `protocol` is the client's (`HTTP/1.1`, `HTTP/2`: Envoy's `%PROTOCOL%`), `tls` whether
//! its connection was TLS and `sni` the server name it asked for; `upstream_protocol` the
//! upstream leg's (`HTTP/1.1`, `HTTP/2` for a stream on a shared connection, `TCP` for a
//! terminated CONNECT; `null` when no upstream answered); a CONNECT's `path` is its target;
//! `request_id` is the `X-Request-Id` that went upstream (a tunnel's two lines carry its
//! upgrade request's), `null` when the request had none and none was generated; `trace_id`
//! the W3C trace the request belongs to (the client's, or the one the proxy started).
//!
//! A tunnel's lines come from the router's [`TunnelObserver`]; the route, method and path
//! come from the request, matched by the client's address (an HTTP/1.1 connection carries at
//! most one tunnel, so the address names it while it lives).
//!
//! Each line is formatted first and then written whole with one `write(2)`, without a lock:
//! workers never wait for each other to log, and a line (a few hundred bytes) written in one
//! call is never interleaved with another, to a file or to a pipe.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use jiff::Timestamp;
use pin_project_lite::pin_project;
use switchback::trace::{TraceContext, TraceId};
use switchback::{ClientAddr, TlsSession};
use switchback::{MatchedRoute, RequestId, TunnelEvent, TunnelInfo, TunnelObserver, UpstreamAddr};
use switchback_config::AccessLog as Destination;
use tower::{Layer, Service};

use crate::fatal::Fatal;
use line::Line;

mod line;

/// Counter: every response sent to a client, local replies (403, 404, 503...) included
/// (`status`). The library's `switchback_requests_total` counts the filter chains' answers.
pub(crate) const DOWNSTREAM_RESPONSES: &str = "switchback_downstream_responses_total";

/// An upgrade whose `101` went out but whose tunnel never opened is forgotten after this.
const STALE: Duration = Duration::from_secs(60);

/// The fewest remembered upgrades at which stale ones are swept.
const SWEEP_FROM: usize = 1024;

/// The access log writer, shared by the request layer and the tunnel observer.
#[derive(Clone)]
pub(crate) struct AccessLog {
    inner: Arc<Inner>,
}

struct Inner {
    out: Out,
    /// Upgrades answered `101`, by client address, until their tunnel closes.
    tunnels: Mutex<Tunnels>,
    /// A write error is reported once, not once per line.
    failed: AtomicBool,
}

/// Upgrades answered `101`, by client address.
struct Tunnels {
    map: HashMap<SocketAddr, Tracked>,
    /// The size at which stale entries are swept next: twice what a sweep left, so that with
    /// thousands of live tunnels a new one doesn't scan them all (amortized O(1)).
    sweep_at: usize,
}

/// An upgrade answered `101`, until its tunnel closes.
struct Tracked {
    /// Shared with the tunnel's open line, not copied.
    upgrade: Arc<Upgrade>,
    since: Instant,
    opened: bool,
}

/// What the request told about a tunnel.
#[derive(Debug)]
struct Upgrade {
    request_id: Option<RequestId>,
    trace_id: Option<TraceId>,
    protocol: &'static str,
    tls: Option<TlsSession>,
    method: Method,
    path: String,
    route: Option<Arc<str>>,
    /// What the tunnel was opened with: `101`, or a CONNECT's 2xx.
    status: u16,
}

/// The request's protocol as Envoy's `%PROTOCOL%` writes it.
fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

/// Where lines go.
enum Out {
    /// A file or standard output: each line is one `write(2)`, from any worker at once,
    /// without a lock (a line is a few hundred bytes: a write that size to a pipe or to a
    /// file is never interleaved with another), so workers never wait for each other here.
    Fd(std::fs::File),
    /// Anything else (tests), under a lock.
    #[cfg(test)]
    Writer(Mutex<Box<dyn Write + Send>>),
}

impl AccessLog {
    /// Opens the destination: standard output, or `path` for appending (created if missing).
    pub(crate) fn open(destination: &Destination) -> Result<Self, Fatal> {
        let file =
            match destination {
                Destination::Stdout => {
                    use std::os::fd::AsFd as _;
                    let fd = io::stdout()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| Fatal::new(format!("access_log: standard output: {e}")))?;
                    std::fs::File::from(fd)
                }
                Destination::File(path) => OpenOptions::new().create(true).append(true).open(path).map_err(
                    |e| {
                        Fatal::new(format!(
                            "access_log: cannot open {} for appending: {e}; fix the path or its permissions",
                            path.display()
                        ))
                    },
                )?,
            };
        Ok(Self::with(Out::Fd(file)))
    }

    /// A log writing to `out`.
    #[cfg(test)]
    pub(crate) fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Self::with(Out::Writer(Mutex::new(out)))
    }

    fn with(out: Out) -> Self {
        Self {
            inner: Arc::new(Inner {
                out,
                tunnels: Mutex::new(Tunnels {
                    map: HashMap::new(),
                    sweep_at: SWEEP_FROM,
                }),
                failed: AtomicBool::new(false),
            }),
        }
    }

    /// The layer that logs plain requests and remembers upgrades for the tunnel lines.
    pub(crate) fn layer(&self) -> AccessLogLayer {
        AccessLogLayer { log: self.clone() }
    }

    /// The observer to give the upgrade router: it writes the tunnel lines.
    pub(crate) fn observer(&self) -> TunnelObserver {
        let log = self.clone();
        TunnelObserver::new(move |event| log.tunnel_event(event))
    }

    fn write(&self, line: &Line<'_>) {
        // Room for a whole line at once.
        let mut buf = Vec::with_capacity(512);
        line.write_to(&mut buf);
        let result = match &self.inner.out {
            Out::Fd(file) => (&*file).write_all(&buf),
            #[cfg(test)]
            Out::Writer(out) => {
                let mut out = lock(out);
                out.write_all(&buf).and_then(|()| out.flush())
            }
        };
        if let Err(e) = result
            && !self.inner.failed.swap(true, Ordering::Relaxed)
        {
            tracing::error!(error = %e, "access log: write failed; further failures are not reported");
        }
    }

    /// Remembers an upgrade answered `101` until its tunnel closes.
    fn upgraded(&self, client: SocketAddr, upgrade: Upgrade) {
        let tracked = Tracked {
            upgrade: Arc::new(upgrade),
            since: Instant::now(),
            opened: false,
        };
        let mut tunnels = lock(&self.inner.tunnels);
        if tunnels.map.len() >= tunnels.sweep_at {
            tunnels.map.retain(|_, t| t.opened || t.since.elapsed() < STALE);
            tunnels.sweep_at = (tunnels.map.len() * 2).max(SWEEP_FROM);
        }
        tunnels.map.insert(client, tracked);
    }

    fn tunnel_event(&self, event: &TunnelEvent<'_>) {
        match *event {
            TunnelEvent::Opened(info) => {
                let upgrade = info.client.and_then(|c| {
                    lock(&self.inner.tunnels).map.get_mut(&c).map(|t| {
                        t.opened = true;
                        t.upgrade.clone()
                    })
                });
                self.tunnel_line("tunnel_open", info, upgrade.as_deref(), None, Duration::ZERO);
            }
            TunnelEvent::Closed(info, stats, elapsed) => {
                let upgrade = info
                    .client
                    .and_then(|c| lock(&self.inner.tunnels).map.remove(&c))
                    .map(|t| t.upgrade);
                self.tunnel_line("tunnel_close", info, upgrade.as_deref(), Some(stats), elapsed);
            }
        }
    }

    fn tunnel_line(
        &self,
        event: &'static str,
        info: &TunnelInfo,
        upgrade: Option<&Upgrade>,
        stats: Option<&switchback::TunnelStats>,
        elapsed: Duration,
    ) {
        // Message counts and close codes mean something on WebSocket tunnels only.
        let websocket = stats.filter(|_| info.upgrade.is_websocket());
        self.write(&Line {
            time: Timestamp::now(),
            event,
            request_id: upgrade.and_then(|u| u.request_id.as_ref()).map(RequestId::as_str),
            trace_id: upgrade
                .and_then(|u| u.trace_id)
                .or_else(|| info.trace.as_ref().map(TraceContext::trace_id)),
            client: info.client,
            protocol: upgrade.map_or("HTTP/1.1", |u| u.protocol),
            tls: upgrade.is_some_and(|u| u.tls.is_some()),
            sni: upgrade.and_then(|u| u.tls.as_ref()?.server_name.as_deref()),
            method: upgrade.map_or("GET", |u| u.method.as_str()),
            path: upgrade.map_or(info.path.as_str(), |u| u.path.as_str()),
            route: upgrade.and_then(|u| u.route.as_deref()),
            upgrade: Some(info.upgrade.as_str()),
            mode: Some(info.mode.as_str()),
            status: upgrade.map_or(StatusCode::SWITCHING_PROTOCOLS.as_u16(), |u| u.status),
            upstream: info.upstream.as_deref(),
            upstream_protocol: info.upstream_protocol,
            bytes_received: stats.map_or(0, |s| s.upstream_bytes),
            bytes_sent: stats.map_or(0, |s| s.downstream_bytes),
            duration_ms: millis(elapsed),
            end: stats.map(|s| s.end.as_str()),
            messages_received: websocket.map(|s| s.upstream_messages),
            messages_sent: websocket.map(|s| s.downstream_messages),
            close_code: websocket.and_then(|s| s.close?.code),
        });
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The upgrade a request offers, for the log: the `Upgrade` value (lowercase) when
/// `Connection` has the `upgrade` token, or `connect` for a CONNECT.
fn offered_upgrade(method: &Method, headers: &HeaderMap) -> Option<String> {
    if method == Method::CONNECT {
        return Some("connect".to_owned());
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    let value = headers.get(header::UPGRADE)?.to_str().ok()?;
    Some(value.trim().to_ascii_lowercase())
}

// === impl AccessLogLayer ===

/// Logs every request that passes; see the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct AccessLogLayer {
    log: AccessLog,
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLogService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLogService {
            inner,
            log: self.log.clone(),
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub(crate) struct AccessLogService<S> {
    inner: S,
    log: AccessLog,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AccessLogService<S>
where
    S: Service<Request<CountBody<ReqB>>, Response = Response<ResB>>,
    ResB: http_body::Body,
{
    type Response = Response<LogBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let received = Arc::new(AtomicU64::new(0));
        let entry = Entry {
            log: self.log.clone(),
            start: Instant::now(),
            request_id: req.extensions().get::<RequestId>().cloned(),
            trace_id: req.extensions().get::<TraceContext>().map(TraceContext::trace_id),
            client: req.extensions().get::<ClientAddr>().map(|a| a.0),
            protocol: protocol(req.version()),
            tls: req.extensions().get::<TlsSession>().cloned(),
            method: req.method().clone(),
            // A CONNECT has no path: its target is the authority.
            path: match req.uri().path() {
                "" => req.uri().authority().map_or_else(String::new, |a| a.to_string()),
                path => path.to_owned(),
            },
            upgrade: req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_ascii_lowercase())
                .or_else(|| offered_upgrade(req.method(), req.headers())),
            received: received.clone(),
            status: 0,
            route: None,
            upstream: None,
            upstream_protocol: None,
        };
        let req = req.map(|inner| CountBody {
            inner,
            count: received,
        });
        ResponseFuture {
            inner: self.inner.call(req),
            entry: Some(Box::new(entry)),
        }
    }
}

/// A request on its way, until its line is written.
struct Entry {
    log: AccessLog,
    start: Instant,
    request_id: Option<RequestId>,
    trace_id: Option<TraceId>,
    client: Option<SocketAddr>,
    protocol: &'static str,
    tls: Option<TlsSession>,
    method: Method,
    path: String,
    upgrade: Option<String>,
    received: Arc<AtomicU64>,
    status: u16,
    route: Option<Arc<str>>,
    upstream: Option<String>,
    /// The upstream's HTTP version, when an upstream answered.
    upstream_protocol: Option<&'static str>,
}

impl Entry {
    fn finish(self, end: &str, sent: u64) {
        self.log.write(&Line {
            time: Timestamp::now(),
            event: "request",
            request_id: self.request_id.as_ref().map(RequestId::as_str),
            trace_id: self.trace_id,
            client: self.client,
            protocol: self.protocol,
            tls: self.tls.is_some(),
            sni: self.tls.as_ref().and_then(|t| t.server_name.as_deref()),
            method: self.method.as_str(),
            path: &self.path,
            route: self.route.as_deref(),
            upgrade: self.upgrade.as_deref(),
            mode: None,
            status: self.status,
            upstream: self.upstream.as_deref(),
            upstream_protocol: self.upstream_protocol,
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent: sent,
            duration_ms: millis(self.start.elapsed()),
            end: Some(end),
            messages_received: None,
            messages_sent: None,
            close_code: None,
        });
    }
}

pin_project! {
    /// The response future of [`AccessLogService`].
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        entry: Option<Box<Entry>>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<LogBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut entry) = this.entry.take() else {
            // Polled again after completion: nothing left to log.
            return Poll::Ready(result.map(|res| res.map(LogBody::unlogged)));
        };
        let res = match result {
            Ok(res) => res,
            Err(e) => {
                entry.status = StatusCode::INTERNAL_SERVER_ERROR.as_u16();
                entry.finish("error", 0);
                return Poll::Ready(Err(e));
            }
        };
        let status = res.status();
        ::metrics::counter!(DOWNSTREAM_RESPONSES, "status" => status.as_str().to_owned()).increment(1);
        entry.status = status.as_u16();
        entry.route = res.extensions().get::<MatchedRoute>().map(|m| m.name.clone());
        entry.upstream = res.extensions().get::<UpstreamAddr>().map(|a| a.0.clone());
        // The upstream's answer keeps its own version until the server writes it.
        entry.upstream_protocol = entry.upstream.as_ref().map(|_| protocol(res.version()));
        // A `101`, or a 2xx to a CONNECT (HTTP/2 extended CONNECT's included): the stream is
        // now a tunnel.
        let tunnel = status == StatusCode::SWITCHING_PROTOCOLS
            || (status.is_success() && entry.method == Method::CONNECT);
        if tunnel {
            // The tunnel writes its own lines; remember what only the request knows.
            if let Some(client) = entry.client {
                entry.log.upgraded(
                    client,
                    Upgrade {
                        request_id: entry.request_id.take(),
                        trace_id: entry.trace_id,
                        protocol: entry.protocol,
                        tls: entry.tls.take(),
                        method: entry.method.clone(),
                        path: std::mem::take(&mut entry.path),
                        route: entry.route.take(),
                        // An HTTP/2 WebSocket's 200 stands for the 101 of its HTTP/1.1 twin.
                        status: match entry.upgrade.as_deref() == Some("connect") {
                            true => status.as_u16(),
                            false => StatusCode::SWITCHING_PROTOCOLS.as_u16(),
                        },
                    },
                );
            }
            return Poll::Ready(Ok(res.map(LogBody::unlogged)));
        }
        if http_body::Body::is_end_stream(res.body()) {
            entry.finish("complete", 0);
            return Poll::Ready(Ok(res.map(LogBody::unlogged)));
        }
        Poll::Ready(Ok(res.map(|inner| LogBody {
            inner,
            entry: Some(entry),
            sent: 0,
        })))
    }
}

// === impl LogBody ===

pin_project! {
    /// A response body that writes the request's line when it ends or is dropped.
    pub(crate) struct LogBody<B> {
        #[pin]
        inner: B,
        entry: Option<Box<Entry>>,
        sent: u64,
    }

    impl<B> PinnedDrop for LogBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(entry) = this.entry.take() {
                entry.finish("client_close", *this.sent);
            }
        }
    }
}

impl<B> LogBody<B> {
    fn unlogged(inner: B) -> Self {
        Self {
            inner,
            entry: None,
            sent: 0,
        }
    }
}

impl<B: http_body::Body> http_body::Body for LogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let end = match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    *this.sent += data.remaining() as u64;
                }
                // hyper stops polling once the body says it has ended.
                this.inner.is_end_stream().then_some("complete")
            }
            Some(Err(_)) => Some("error"),
            None => Some("complete"),
        };
        if let Some(end) = end
            && let Some(entry) = this.entry.take()
        {
            entry.finish(end, *this.sent);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl CountBody ===

pin_project! {
    /// A request body that counts the bytes read from it.
    pub(crate) struct CountBody<B> {
        #[pin]
        inner: B,
        count: Arc<AtomicU64>,
    }
}

impl<B: http_body::Body> http_body::Body for CountBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
            && let Some(data) = data
        {
            this.count.fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        }
    }

    #[tokio::test]
    async fn a_request_line_after_the_body() {
        let out = Shared::default();
        let log = AccessLog::to_writer(Box::new(out.clone()));
        let svc = log.layer().layer(tower::service_fn(
            |req: Request<CountBody<Full<bytes::Bytes>>>| async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut res = Response::new(Full::new(bytes::Bytes::from(format!("got {}", body.len()))));
                *res.status_mut() = StatusCode::CREATED;
                res.extensions_mut().insert(UpstreamAddr("10.0.0.1:80".into()));
                Ok::<_, std::convert::Infallible>(res)
            },
        ));
        let mut req = Request::post("/up?secret=1")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "Foo")
            .body(Full::new(bytes::Bytes::from_static(b"hello")))
            .unwrap();
        req.extensions_mut()
            .insert(ClientAddr("127.0.0.1:5000".parse().unwrap()));
        req.extensions_mut().insert(RequestId("req-1".into()));
        let res = svc.oneshot(req).await.unwrap();
        assert!(out.lines().is_empty(), "written only once the body is sent");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "got 5");
        let lines = out.lines();
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["event"], "request");
        assert_eq!(l["request_id"], "req-1");
        assert_eq!(l["client"], "127.0.0.1:5000");
        assert_eq!(l["method"], "POST");
        assert_eq!(l["path"], "/up");
        assert_eq!(l["upgrade"], "foo");
        assert_eq!(l["status"], 201);
        assert_eq!(l["upstream"], "10.0.0.1:80");
        assert_eq!(l["bytes_received"], 5);
        assert_eq!(l["bytes_sent"], 5);
        assert_eq!(l["end"], "complete");
        assert!(l["route"].is_null());
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn a_dropped_body_is_a_client_close() {
        let out = Shared::default();
        let log = AccessLog::to_writer(Box::new(out.clone()));
        let svc = log.layer().layer(tower::service_fn(
            |_: Request<CountBody<Full<bytes::Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"abc"))))
            },
        ));
        let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
        drop(res);
        let lines = out.lines();
        assert_eq!(lines[0]["end"], "client_close");
        assert_eq!(lines[0]["bytes_sent"], 0);
        assert!(lines[0]["upgrade"].is_null());
        assert_eq!(
            lines[0].get("request_id"),
            Some(&serde_json::Value::Null),
            "no RequestId: null, the key still there"
        );
    }

    #[test]
    fn offered_upgrades() {
        let mut h = HeaderMap::new();
        assert_eq!(offered_upgrade(&Method::GET, &h), None);
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        assert_eq!(offered_upgrade(&Method::GET, &h), None, "no Connection: upgrade");
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        assert_eq!(offered_upgrade(&Method::GET, &h).as_deref(), Some("websocket"));
        assert_eq!(
            offered_upgrade(&Method::CONNECT, &HeaderMap::new()).as_deref(),
            Some("connect")
        );
    }
}
