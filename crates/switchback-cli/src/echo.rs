//! The WebSocket echo upstream: `switchback echo`, and the demo's upstream.
//!
//! One small HTTP/1.1 server per address: a WebSocket handshake on any path gets every text
//! and binary message echoed back; `GET /` is [the demo page](PAGE), which does that from a
//! browser; any other `GET` is a line of text that says what this server is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::fatal::{self, Fatal, why_not_listening};
use crate::signals::Signals;

/// The demo page: a WebSocket client with live counters, self-contained (no external
/// resources), so it works offline and through any proxy that routes `/`.
const PAGE: &str = include_str!("../assets/echo.html");

/// What a plain `GET` other than `/` gets.
const ABOUT: &str = "switchback echo: a WebSocket echo server. \
    Open a WebSocket on any path and every message comes back; GET / is a page that tries it.\n";

/// `switchback echo`: serves on every address in `listen` until SIGTERM or SIGINT, printing
/// each bound address (port 0 resolved) on standard output.
pub(crate) async fn run(listen: &[SocketAddr]) -> Result<(), Fatal> {
    let mut signals = Signals::new()?;
    let mut listeners = Vec::with_capacity(listen.len());
    for &addr in listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Fatal::new(format!(
                "echo: cannot listen on {addr}: {}",
                why_not_listening(&e, "pick another --listen")
            ))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Fatal::new(format!("echo: the address bound for {addr}: {e}")))?;
        listeners.push((listener, bound));
    }
    // Bound everywhere before the first line: whoever reads it may connect to all of them.
    for (listener, bound) in listeners {
        tokio::spawn(serve(listener));
        fatal::print_out(&format!(
            "switchback echo: listening on {bound} (WebSocket messages to ws://{bound}/ come back; \
             open http://{bound}/ in a browser)"
        ));
    }
    let signal = signals.next().await;
    tracing::info!(signal, "echo: stopping");
    Ok(())
}

/// Starts the echo upstream on `addr` in the background and returns the address it bound.
pub(crate) async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(bound)
}

/// Accepts connections until the runtime ends.
async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream));
            }
            Err(e) => {
                // Out of descriptors, most likely: give the open connections time to end.
                tracing::warn!(error = %e, "echo: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One HTTP/1.1 connection, which may become a WebSocket.
async fn connection(stream: TcpStream) {
    // Small messages echoed one at a time: the page's round-trip times should not include
    // Nagle's delay.
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(|req| async { Ok::<_, Infallible>(answer(req)) });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "echo: connection failed");
    }
}

/// The answer to one request; a valid WebSocket handshake starts the echo.
fn answer(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if wants_websocket(req.headers()) {
        return match handshake_key(&req) {
            Some(key) => {
                let accept = derive_accept_key(key.as_bytes());
                tokio::spawn(echo(hyper::upgrade::on(&mut req)));
                switching(&accept)
            }
            None => text(
                StatusCode::BAD_REQUEST,
                "a WebSocket handshake is a GET with Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
            ),
        };
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/") => page(),
        (&Method::GET | &Method::HEAD, _) => text(StatusCode::OK, ABOUT),
        _ => {
            let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and WebSocket here\n");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            res
        }
    }
}

/// `Upgrade: websocket` with `upgrade` among the `Connection` tokens.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

/// The client's `Sec-WebSocket-Key`, when the rest of the handshake is RFC 6455's.
fn handshake_key(req: &Request<Incoming>) -> Option<&HeaderValue> {
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION)?;
    (req.method() == Method::GET && version == "13")
        .then(|| req.headers().get(header::SEC_WEBSOCKET_KEY))
        .flatten()
}

/// The `101` that accepts a WebSocket handshake.
fn switching(accept: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    res
}

/// Once the `101` is out: echoes text and binary messages; pings and closes are answered by
/// tungstenite.
async fn echo(upgrade: hyper::upgrade::OnUpgrade) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "echo: the upgrade failed");
            return;
        }
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// `GET /`: the demo page.
fn page() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // A newer binary's page should show on reload, not a cached one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A short plain-text answer.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(k, v)| (header::HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn a_websocket_upgrade_is_told_by_both_headers() {
        assert!(wants_websocket(&headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ])));
        assert!(!wants_websocket(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_websocket(&headers(&[
            ("upgrade", "foo"),
            ("connection", "upgrade"),
        ])));
        assert!(!wants_websocket(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.starts_with("<!doctype html>"));
        for external in ["src=", "@import", "url("] {
            assert!(!PAGE.contains(external), "the page loads nothing: {external}");
        }
        // The one link is the empty icon that keeps browsers from asking for /favicon.ico.
        assert_eq!(PAGE.matches("href=").count(), 1);
        assert!(PAGE.contains(r#"<link rel="icon" href="data:,">"#));
    }
}
