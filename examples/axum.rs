//! An axum app whose `/ws/...` routes go through Switchback to a WebSocket upstream while
//! every other route is an ordinary axum handler, with tower-http's `TraceLayer` around both.
//! `/private/...` goes through the same proxy behind a bearer token, and Ctrl-C drains.
//!
//! ```sh
//! UPSTREAM=127.0.0.1:9001 cargo run -p switchback --example axum
//! ```
//!
//! Two questions this example answers:
//!
//! **Where does an auth layer go?** Above the router, as axum middleware on the proxied route
//! ([`app_with`]). There it sees the request head before Switchback does, a refusal never
//! reaches the upstream, and it costs the tunnel nothing: the request body it sees is axum's,
//! but Switchback takes the client's upgraded connection from hyper, not from that body, so
//! the two connections are still joined directly.
//!
//! Inside the chain (the layers below [`UpgradeRouterLayer`], e.g. a check for one upgrade
//! type only), requests carry [`switchback::Body`], and axum middleware takes
//! `Request<axum::body::Body>`, so the request body needs converting (the router and
//! [`Forward`] take any body type, so the middleware's answer and the request it passes on
//! need nothing more):
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(router)
//!     .map_request(|req: Request<switchback::Body>| req.map(axum::body::Body::new))
//!     .layer(axum::middleware::from_fn_with_state(token, require_token))
//!     .service(forward)
//! ```
//!
//! That works, at a price: boxed into axum's body type, the tunnel's bodies (the client's
//! bytes in the request, the upstream's in the `101`) are no longer ones Switchback
//! recognises, so the tunnel is pumped through the chain chunk by chunk instead of joined.
//! The benchmark's `switchback-chain` system, an identity wrapper in the same place, shows
//! what that costs: about 60% of the fast path's bulk throughput, 3.3x its CPU per GB, and
//! 4.3 KiB per idle tunnel instead of 1.6 (docs/performance.md). Inside the chain, write the
//! check as a tower layer that is generic over the body and passes it on untouched.
//!
//! **How does the drain pair with `axum::serve(..).with_graceful_shutdown`?** See [`main`]:
//! on the signal axum closes its listener, so a new client's connection is *refused* (not
//! answered with `503`), and the drain starts at the same moment for the tunnels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use switchback::{Cluster, Drain, Endpoint, Forward, UpgradeRouterLayer};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

/// How long tunnels may run on after Ctrl-C before they are closed (WebSocket ones with a
/// `1001 Going Away` close frame each way).
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The app with a drain of its own and a fixed token: what `tests/examples.rs` serves.
#[allow(dead_code)] // `main` uses `app_with`
pub fn app(upstream: SocketAddr) -> Router {
    app_with(upstream, Drain::new(), "example-token".into())
}

/// The app: Switchback under `/ws/` and, behind `Authorization: Bearer <token>`, under
/// `/private/`; axum handlers elsewhere; tracing around everything. The proxy's tunnels
/// register with `drain`.
pub fn app_with(upstream: SocketAddr, drain: Drain, token: Arc<str>) -> Router {
    let proxy = ServiceBuilder::new()
        .layer(
            UpgradeRouterLayer::builder()
                .upgrade("websocket")
                .drain(drain)
                .build()
                .expect("one upgrade type"),
        )
        .service(Forward::new(Cluster::new(
            "chat",
            [Endpoint::new(upstream.to_string())],
        )));
    Router::new()
        .route_service("/private/{*rest}", proxy.clone())
        // Above the router: the check runs on the request head, before any upstream contact,
        // and leaves the tunnel on the fast path. `route_layer` covers the routes above it.
        .route_layer(middleware::from_fn_with_state(token, require_token))
        .route_service("/ws/{*rest}", proxy)
        .route("/", get(|| async { "plain axum handler\n" }))
        .layer(TraceLayer::new_for_http())
}

/// axum middleware: `401` unless the request carries `Authorization: Bearer <token>`.
async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // A real check compares in constant time (e.g. the `subtle` crate).
    if presented == Some(&*token) {
        next.run(req).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
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
    let token: Arc<str> = std::env::var("TOKEN")
        .unwrap_or_else(|_| "example-token".into())
        .into();
    let drain = Drain::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://{}; WebSocket at ws://{0}/ws/ and, with the token, ws://{0}/private/",
        listener.local_addr()?
    );

    // On Ctrl-C two things start together:
    // - axum's graceful shutdown: it stops accepting and closes its listener, so a new
    //   client's connection is refused (there is no `503` to send without a connection);
    //   idle keep-alive connections close, and plain requests in flight finish.
    // - the drain: open tunnels run on until DRAIN_DEADLINE, then close (WebSocket: `1001`
    //   each way). An upgrade that still arrives on an open connection gets `503`.
    // Together, because axum waits for every connection it serves: an HTTP/1.1 tunnel has left
    // it with the `101`, but a WebSocket over HTTP/2 (RFC 8441, which axum::serve enables) is a
    // stream on a connection it still serves, and ends only when the drain closes it.
    //
    // To answer new upgrades with `503` instead of refusing connections (say, while a load
    // balancer takes this instance out), start the drain first and signal axum later: the
    // listener accepts meanwhile, upgrades get `503`, and plain requests are still served.
    let (started, draining) = tokio::sync::oneshot::channel();
    let shutdown = {
        let drain = drain.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = started.send(tokio::spawn(async move { drain.drain(DRAIN_DEADLINE).await }));
        }
    };
    axum::serve(listener, app_with(upstream, drain, token))
        .with_graceful_shutdown(shutdown)
        .await?;
    if let Ok(draining) = draining.await {
        let outcome = draining.await.map_err(std::io::Error::other)?;
        println!(
            "drained: {} tunnels ended by themselves, {} closed at the deadline",
            outcome.finished, outcome.closed
        );
    }
    Ok(())
}
