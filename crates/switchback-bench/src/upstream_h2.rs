//! The `upstream --h2` role: the bench's echo upstream as an HTTP/2 server (hyper's, with
//! extended CONNECT enabled and its default stream limit), for proxies whose cluster speaks
//! HTTP/2. Each RFC 8441 stream echoes its bytes, or, for the path `/flood`, writes without
//! end, as the HTTP/1.1 upstream does on its connections.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Context, Result};

/// Serves HTTP/2 (prior knowledge) on `listener` until the process ends.
pub(crate) async fn serve(listener: tokio::net::TcpListener) -> Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("upstream: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.enable_connect_protocol();
            let service = hyper::service::service_fn(stream);
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// One stream: `200` to an extended CONNECT, then the echo (or the flood) on its own task.
async fn stream(mut req: Request<Incoming>) -> std::result::Result<Response<Empty<Bytes>>, Infallible> {
    if req.extensions().get::<hyper::ext::Protocol>().is_none() {
        return Ok(Response::new(Empty::new()));
    }
    let flood = req.uri().path() == "/flood";
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        if flood {
            while io.write_all(&super::upstream::FLOOD).await.is_ok() {}
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = io.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(Response::new(Empty::new()))
}

/// Binds `listen` for [`serve`].
pub(crate) async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .context(format_args!("upstream --h2: binding {listen}"))
}
