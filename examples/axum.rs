//! An axum app whose `/ws/...` routes go through Switchback to a WebSocket upstream while
//! every other route is an ordinary axum handler, with tower-http's `TraceLayer` around both.
//!
//! ```sh
//! UPSTREAM=127.0.0.1:9001 cargo run -p switchback --example axum
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use switchback::{Cluster, Endpoint, Forward, UpgradeRouterLayer};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

/// The app: Switchback under `/ws/`, axum handlers elsewhere, tracing around everything.
pub fn app(upstream: SocketAddr) -> Router {
    let proxy = ServiceBuilder::new()
        .layer(
            UpgradeRouterLayer::builder()
                .upgrade("websocket")
                .build()
                .expect("one upgrade type"),
        )
        .service(Forward::new(Cluster::new(
            "chat",
            [Endpoint::new(upstream.to_string())],
        )));
    Router::new()
        .route_service("/ws/{*rest}", proxy)
        .route("/", get(|| async { "plain axum handler\n" }))
        .layer(TraceLayer::new_for_http())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,tower_http=debug")
        .init();
    let upstream: SocketAddr = std::env::var("UPSTREAM")
        .unwrap_or_else(|_| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("UPSTREAM: {e}")))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://{}; WebSocket at ws://{0}/ws/",
        listener.local_addr()?
    );
    axum::serve(listener, app(upstream)).await
}
