//! Serving a stack on a TCP listener: HTTP/1.1 (with upgrades) and HTTP/2 prior knowledge on
//! one port, through hyper-util, with graceful shutdown.
//!
//! ```no_run
//! use switchback::{Cluster, Endpoint, Forward, UpgradeRouterLayer, server};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let stack = ServiceBuilder::new()
//!     .layer(UpgradeRouterLayer::builder().upgrade("websocket").build().unwrap())
//!     .service(Forward::new(Cluster::new("app", [Endpoint::new("127.0.0.1:8080")])));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10000").await?;
//! server::serve(listener, stack, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use crate::BoxError;

/// The client's address, put in every request's extensions by [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// How long [`serve`] waits for in-flight HTTP exchanges after shutdown starts. Upgraded
/// tunnels are not counted here: drain them with a [`Drain`](crate::Drain).
const GRACE: Duration = Duration::from_secs(30);

/// Accepts connections on `listener` and serves `service` on each until `shutdown` resolves,
/// then stops accepting and lets in-flight requests finish (up to 30 s).
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A proxy relays the upstream's head; it does not invent a `Date` the upstream didn't send.
    builder.http1().auto_date_header(false);
    builder.http2().auto_date_header(false).enable_connect_protocol();
    let graceful = GracefulShutdown::new();
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
        let conn =
            builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, client = %addr, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
    Ok(())
}
