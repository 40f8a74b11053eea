//! Real peers for the black-box tests: the proxy on a loopback port, a tokio-tungstenite echo
//! upstream, raw TCP upstreams and clients.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)] // test support: a panic is a failed assertion

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub mod h2_upstream;

use switchback::{Body, Cluster, Endpoint, TunnelEvent, TunnelMode, TunnelObserver, TunnelStats};

/// Every test gets this long at most for any single wait.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Drives a new HTTP/2 client connection until it has taken in the server's SETTINGS frame,
/// then spawns it. RFC 8441 lets a client send an extended CONNECT only once the server has
/// enabled it there (`SETTINGS_ENABLE_CONNECT_PROTOCOL`), and the handshake returns before
/// that frame arrives.
pub async fn spawn_once_extended_connect<T>(
    mut conn: hyper::client::conn::http2::Connection<
        T,
        http_body_util::Empty<bytes::Bytes>,
        hyper_util::rt::TokioExecutor,
    >,
) where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    within(async {
        // h2 applies the peer's settings on the poll after it reads them (when it writes the
        // acknowledgement), so the connection is polled again until the flag is set.
        while !conn.is_extended_connect_protocol_enabled() {
            tokio::select! {
                ended = &mut conn => panic!("the HTTP/2 connection ended before extended CONNECT was enabled: {ended:?}"),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    })
    .await;
    tokio::spawn(conn);
}

/// An HTTP/2 client connection to `proxy`, ready for extended CONNECT.
pub async fn h2_client(
    proxy: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    spawn_once_extended_connect(conn).await;
    sender
}

/// An RFC 8441 WebSocket request for `proxy`'s `/chat`.
pub fn h2_websocket(proxy: SocketAddr) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::connect(format!("http://{proxy}/chat"))
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// Asks for `n` WebSocket streams at once on `sender`'s connection; each one that opens
/// comes out of the receiver (and stays open while it is held).
pub fn h2_tunnels(
    sender: &hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    proxy: SocketAddr,
    n: usize,
) -> mpsc::UnboundedReceiver<hyper::upgrade::Upgraded> {
    let (open_tx, open_rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let (mut sender, open_tx, req) = (sender.clone(), open_tx.clone(), h2_websocket(proxy));
        tokio::spawn(async move {
            if let Ok(mut res) = sender.send_request(req).await
                && res.status() == 200
                && let Ok(stream) = hyper::upgrade::on(&mut res).await
            {
                let _ = open_tx.send(stream);
            }
        });
    }
    open_rx
}

/// A running proxy; dropping it stops accepting.
pub struct Proxy {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub async fn start<S, B>(service: S) -> Proxy
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<switchback::BoxError>,
{
    start_with(service, switchback::ClientLimits::default()).await
}

/// [`start`] with these limits on clients.
pub async fn start_with<S, B>(service: S, limits: switchback::ClientLimits) -> Proxy
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<switchback::BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(switchback::serve_with(
        listener,
        service,
        async {
            let _ = stopped.await;
        },
        limits,
    ));
    Proxy { addr, _stop: stop }
}

pub fn cluster(addr: SocketAddr) -> Cluster {
    Cluster::new("test", [Endpoint::new(addr.to_string())]).connect_timeout(Duration::from_secs(2))
}

/// Records tunnel events for assertions.
#[derive(Clone, Default)]
pub struct Events {
    opened: Arc<Mutex<Vec<TunnelMode>>>,
    closed: Arc<Mutex<Vec<(TunnelMode, TunnelStats)>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Events {
    pub fn observer(&self) -> TunnelObserver {
        let this = self.clone();
        TunnelObserver::new(move |e| {
            match e {
                TunnelEvent::Opened(info) => this.opened.lock().unwrap().push(info.mode),
                TunnelEvent::Closed(info, stats, _) => this.closed.lock().unwrap().push((info.mode, **stats)),
            }
            this.notify.notify_waiters();
        })
    }

    pub fn opened(&self) -> Vec<TunnelMode> {
        self.opened.lock().unwrap().clone()
    }

    /// Waits for the `n`th tunnel to close and returns its mode and stats.
    pub async fn closed(&self, n: usize) -> (TunnelMode, TunnelStats) {
        within(async {
            loop {
                let notified = self.notify.notified();
                if let Some(c) = self.closed.lock().unwrap().get(n - 1) {
                    return *c;
                }
                notified.await;
            }
        })
        .await
    }
}

// === WebSocket echo upstream ===

/// What the echo upstream saw: close codes it received from clients.
pub struct WsEcho {
    pub addr: SocketAddr,
    pub close_codes: mpsc::UnboundedReceiver<u16>,
}

/// A tokio-tungstenite server that echoes every data message. A text message
/// `close:<code>` makes it close the connection with that code.
pub async fn ws_echo() -> WsEcho {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, close_codes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.starts_with("close:") => {
                            let code: u16 = t[6..].parse().unwrap();
                            let frame = CloseFrame {
                                code: CloseCode::from(code),
                                reason: "server".into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                        }
                        data @ (Message::Text(_) | Message::Binary(_)) => {
                            let echoed = ws.send(data).await;
                            if echoed.is_err() {
                                return;
                            }
                        }
                        Message::Close(frame) => {
                            let _ = tx.send(frame.map_or(1005, |f| u16::from(f.code)));
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    WsEcho { addr, close_codes }
}

// === raw TCP ===

/// A TCP listener whose accepted connections the test handles itself.
pub struct RawUpstream {
    pub addr: SocketAddr,
    listener: TcpListener,
}

impl RawUpstream {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self {
            addr: listener.local_addr().unwrap(),
            listener,
        }
    }

    pub async fn accept(&self) -> TcpStream {
        within(self.listener.accept()).await.unwrap().0
    }

    /// Fails the test (naming `case`) if a connection comes within 50 ms: for checking that
    /// a refused request never reached the upstream.
    pub async fn assert_untouched(&self, case: &str) {
        let contacted = tokio::time::timeout(Duration::from_millis(50), self.listener.accept()).await;
        assert!(contacted.is_err(), "{case}: the upstream was contacted");
    }
}

/// A raw TCP server that echoes each connection until the client's FIN, then writes `bye`
/// and closes: it shows half-close travelling both ways.
pub async fn echo_then_bye() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Reads an HTTP head (through the blank line); returns it and any bytes read past it.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8(buf).unwrap(), rest);
        }
        let n = within(r.read(&mut chunk)).await.unwrap();
        assert!(
            n > 0,
            "connection closed before a full head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a chunked body through its last chunk, starting with the bytes already in `have`;
/// returns its data.
pub async fn read_chunked<R: AsyncRead + Unpin>(r: &mut R, mut have: Vec<u8>) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    while !have.ends_with(b"0\r\n\r\n") {
        let n = within(r.read(&mut chunk)).await.unwrap();
        assert!(
            n > 0,
            "EOF inside a chunked body: {:?}",
            String::from_utf8_lossy(&have)
        );
        have.extend_from_slice(&chunk[..n]);
    }
    let (mut data, mut rest) = (Vec::new(), &have[..]);
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            return data;
        }
        data.extend_from_slice(&rest[line + 2..line + 2 + size]);
        rest = &rest[line + 2 + size + 2..];
    }
}

/// Reads exactly `n` bytes, starting with those already in `have`.
pub async fn read_n<R: AsyncRead + Unpin>(r: &mut R, mut have: Vec<u8>, n: usize) -> Vec<u8> {
    let mut chunk = vec![0u8; 64 * 1024];
    while have.len() < n {
        let got = within(r.read(&mut chunk)).await.unwrap();
        assert!(got > 0, "EOF after {} of {n} bytes", have.len());
        have.extend_from_slice(&chunk[..got]);
    }
    have
}

/// Reads until EOF (or an error such as a reset, which also ends the stream).
pub async fn read_to_eof<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match within(r.read(&mut chunk)).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Connects a raw client and writes `bytes`.
pub async fn raw_client(proxy: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(bytes).await.unwrap();
    c
}

/// The value of header `name` in a raw head, if present (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn status(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A request for a generic upgrade to `foo`.
pub fn foo_upgrade(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
}

pub const FOO_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";

/// Wraps bodies in a new type without changing them, forcing the pumped path.
pub fn touch_bodies<S>(
    svc: S,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<
        impl http_body::Body<Data = bytes::Bytes, Error = switchback::BoxError> + Send + 'static,
    >,
    Error = S::Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    svc.map_request(|req: http::Request<Body>| req.map(|b| Body::new(b.map_frame(|f| f))))
        .map_response(|res: http::Response<Body>| res.map(|b| b.map_frame(|f| f)))
}

// === peer programs ===

/// A program a test drives as a real peer (curl, say), found on `PATH`; `None` when it is
/// missing, said once on standard error. With `SWITCHBACK_BROWSER_TESTS=required` (which
/// `.ci/run` sets after installing every peer) a missing one fails the test instead.
pub fn peer_tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = format!("`{name}` is not on PATH; install Debian's {name} package");
        assert!(
            std::env::var("SWITCHBACK_BROWSER_TESTS").as_deref() != Ok("required"),
            "SWITCHBACK_BROWSER_TESTS=required, but {why}"
        );
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED a test that drives {name}: {why}");
    }
    found
}
