//! Switchback brings Envoy's HTTP Upgrade proxying to tower: WebSocket and any other upgrade
//! token, through the HTTP filter chain you already have.
//!
//! A stack is an [`UpgradeRouter`] (which upgrade types are accepted, and which chain each
//! takes) above ordinary tower layers, ending in [`Forward`] (the "router" that talks to the
//! upstream). The upgraded byte stream is a [`Body`]: a layer that looks at request or
//! response bodies sees the tunnel payload too. When no layer does, the two upgraded
//! connections are joined directly and the payload costs one copy.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchback::{Cluster, Drain, Endpoint, Forward, TunnelConfig, UpgradeRouterLayer, server};
//! use tower::ServiceBuilder;
//! use tower_http::trace::TraceLayer;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let drain = Drain::new();
//! let upstream = Cluster::new("chat", [Endpoint::new("127.0.0.1:9001")]);
//! let stack = ServiceBuilder::new()
//!     .layer(TraceLayer::new_for_http())
//!     .layer(
//!         UpgradeRouterLayer::builder()
//!             .upgrade("websocket")
//!             .tunnel(TunnelConfig::new().idle_timeout(Some(Duration::from_secs(60))))
//!             .drain(drain.clone())
//!             .build()
//!             .expect("valid upgrade config"),
//!     )
//!     .service(Forward::new(upstream));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10000").await?;
//! server::serve(listener, stack, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! drain.drain(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod body;
pub mod cluster;
pub mod detect;
pub mod drain;
mod ext;
pub mod forward;
mod hop;
pub mod legacy;
pub mod metrics;
mod reply;
pub mod route;
pub mod router;
pub mod server;
pub mod tunnel;
pub mod websocket;

pub use body::Body;
pub use cluster::{Cluster, Endpoint};
pub use detect::{IgnoreUpgrades, UpgradeType};
pub use drain::Drain;
pub use ext::{AutoHostRewrite, ClientAddr, IdleTimeout, ResponseTimeout, UpstreamAddr};
pub use forward::Forward;
pub use legacy::LegacyConfig;
pub use route::{MatchedRoute, Route, RouteLayer, Runtime};
pub use router::{Chain, RouteUpgrades, UpgradeConfig, UpgradeRouter, UpgradeRouterLayer};
pub use tunnel::{
    TunnelConfig, TunnelEnd, TunnelEvent, TunnelHandle, TunnelInfo, TunnelMode, TunnelObserver, TunnelStats,
};

/// The error type of bodies and chains: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn metrics_status(status: http::StatusCode) {
    ::metrics::counter!(metrics::REQUESTS, "status" => status.as_str().to_owned()).increment(1);
}
