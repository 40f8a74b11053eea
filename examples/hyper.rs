//! The Switchback stack under a bare hyper-util server, with graceful drain on Ctrl-C: stop
//! accepting, refuse new upgrades, give live tunnels ten seconds, then close them (WebSocket
//! tunnels get a `1001 Going Away` close frame each way).
//!
//! ```sh
//! UPSTREAM=127.0.0.1:9001 cargo run -p switchback --example hyper
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use switchback::{Cluster, Drain, Endpoint, Forward, UpgradeRouterLayer, serve};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// Serves the proxy on `listener` until `shutdown`, then drains tunnels for `grace`.
pub async fn run(
    listener: TcpListener,
    upstream: SocketAddr,
    shutdown: impl Future<Output = ()>,
    drain: Drain,
    grace: Duration,
) -> std::io::Result<()> {
    let router = UpgradeRouterLayer::builder()
        .upgrade("websocket")
        .drain(drain.clone())
        .build()
        .expect("one upgrade type");
    let stack = ServiceBuilder::new()
        .layer(router)
        .service(Forward::new(Cluster::new(
            "app",
            [Endpoint::new(upstream.to_string())],
        )));
    serve(listener, stack, shutdown).await?;
    let outcome = drain.drain(grace).await;
    tracing::info!(finished = outcome.finished, closed = outcome.closed, "drained");
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let upstream: SocketAddr = std::env::var("UPSTREAM")
        .unwrap_or_else(|_| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("UPSTREAM: {e}")))?;
    let listener = TcpListener::bind("127.0.0.1:10000").await?;
    println!(
        "proxying ws://{} to {upstream}; Ctrl-C drains",
        listener.local_addr()?
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run(listener, upstream, ctrl_c, Drain::new(), Duration::from_secs(10)).await
}
