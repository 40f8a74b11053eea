//! A real HTTP/2 upstream (hyper's server, extended CONNECT enabled or not) for the tests of
//! clusters that speak HTTP/2.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A hyper HTTP/2 server: extended CONNECT WebSockets echo, plain CONNECTs echo raw bytes (`/refuse` gets a `403`, `/reset`
/// opens and then resets its stream, `/flood` writes without end), plain requests answer with
/// their version.
pub struct H2Server {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// What each extended CONNECT carried: `:protocol`, path, and whether a WebSocket key.
    pub seen: Arc<std::sync::Mutex<Vec<(String, String, bool)>>>,
    /// Sends every open connection a GOAWAY (hyper's graceful shutdown).
    pub goaway: Arc<Notify>,
    /// Bytes `/flood` streams got out.
    pub flooded: Arc<AtomicUsize>,
}

/// The server on plain TCP (HTTP/2 with prior knowledge).
pub async fn h2_server(max_streams: u32, extended_connect: bool) -> H2Server {
    h2_server_on(max_streams, extended_connect, None).await
}

/// The server behind TLS with `config` (which should offer ALPN `h2`); `alpn` is set to the
/// protocol each client negotiated.
pub async fn h2_server_tls(config: Arc<rustls::ServerConfig>) -> H2Server {
    h2_server_on(100, true, Some(tokio_rustls::TlsAcceptor::from(config))).await
}

async fn h2_server_on(
    max_streams: u32,
    extended_connect: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> H2Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let goaway = Arc::new(Notify::new());
    let flooded = Arc::new(AtomicUsize::new(0));
    let server = H2Server {
        addr,
        connections: connections.clone(),
        seen: seen.clone(),
        goaway: goaway.clone(),
        flooded: flooded.clone(),
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (seen, goaway, flooded) = (seen.clone(), goaway.clone(), flooded.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        // Only an `h2` session is served: HTTP/1.1 would fail here.
                        Ok(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => Box::new(tls),
                        _ => return,
                    },
                };
                let service =
                    hyper::service::service_fn(move |req| answer(req, seen.clone(), flooded.clone()));
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder.max_concurrent_streams(max_streams);
                if extended_connect {
                    builder.enable_connect_protocol();
                }
                let conn = builder.serve_connection(TokioIo::new(io), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = goaway.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    server
}

/// A connection, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

async fn answer(
    mut req: Request<Incoming>,
    seen: Arc<std::sync::Mutex<Vec<(String, String, bool)>>>,
    flooded: Arc<AtomicUsize>,
) -> Result<Response<Full<bytes::Bytes>>, Infallible> {
    let Some(protocol) = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_owned())
    else {
        if req.method() == http::Method::CONNECT {
            // A plain CONNECT (an upstream proxy's view): the stream echoes raw bytes, and
            // the target is recorded as its path.
            let target = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
            seen.lock().unwrap().push(("CONNECT".to_owned(), target, false));
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
                }
            });
            return Ok(Response::new(Full::default()));
        }
        let body = format!("{:?}", req.version());
        return Ok(Response::new(Full::from(body)));
    };
    let path = req.uri().path().to_owned();
    seen.lock().unwrap().push((
        protocol,
        path.clone(),
        req.headers().contains_key("sec-websocket-key"),
    ));
    if path == "/refuse" {
        let mut res = Response::new(Full::from("no"));
        *res.status_mut() = StatusCode::FORBIDDEN;
        return Ok(res);
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        if path == "/flood" {
            // Writes as fast as the stream's window lets it, counting what got out.
            let mut io = TokioIo::new(upgraded);
            let chunk = vec![0x42u8; 64 * 1024];
            loop {
                match tokio::io::AsyncWriteExt::write(&mut io, &chunk).await {
                    Ok(n) if n > 0 => {
                        flooded.fetch_add(n, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }
        if path == "/reset" {
            // Dropping an open stream resets it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(upgraded);
            return;
        }
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                return;
            }
        }
    });
    Ok(Response::new(Full::default()))
}
