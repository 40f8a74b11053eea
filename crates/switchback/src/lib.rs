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
//! use switchback::{Cluster, Drain, Endpoint, Forward, TunnelConfig, UpgradeRouterLayer, serve};
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
//!             .tunnel(TunnelConfig::new().idle_timeout(Duration::from_secs(60)))
//!             .drain(drain.clone())
//!             .build()
//!             .expect("valid upgrade config"),
//!     )
//!     .service(Forward::new(upstream));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10000").await?;
//! serve(listener, stack, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! drain.drain(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! ## What is here
//!
//! - **Layers and services.** [`UpgradeRouterLayer`] builds the [`UpgradeRouter`]: which
//!   upgrade types are accepted ([`UpgradeConfig`]) and which [`Chain`] each takes.
//!   [`RouteLayer`] matches [`Route`]s once and tells the layers below (clusters, rewrites,
//!   timeouts, per-route upgrade switches in [`RouteUpgrades`], Envoy's legacy
//!   `use_websocket` mode in [`LegacyConfig`]). [`Forward`] is the terminal service that talks
//!   to a [`Cluster`] of [`Endpoint`]s.
//! - **Serving.** [`serve`] runs a stack on your runtime; [`Workers`] runs it on one
//!   single-threaded runtime per CPU, as the `switchback` binary does.
//! - **Tunnels.** [`TunnelConfig`] sets their timeouts and buffers; [`Drain`] ends them
//!   gracefully; a [`TunnelObserver`] hears of every one, and the [`TunnelHandle`] in a `101`'s
//!   extensions says how one ended.
//! - **Forwarded identity.** [`ForwardedLayer`] sets `X-Forwarded-For`, `X-Forwarded-Proto`
//!   and `X-Request-Id` as Envoy does, on plain requests and upgrades.
//! - **Extensions** that carry values between layers: [`ClientAddr`], [`TrustedClientAddr`],
//!   [`RequestId`], [`IdleTimeout`], [`ResponseTimeout`], [`AutoHostRewrite`], [`MatchedRoute`],
//!   [`UpstreamAddr`], [`TunnelHandle`].
//! - [`ws`]: WebSocket-aware limits and keepalive (frame headers only, kept on the joined
//!   path) and message filters (whole messages through a `tower::Service` of yours).
//! - [`trace`]: W3C trace context through every request and tunnel, and a span per request.
//! - [`metrics`]: the names of the metrics Switchback records.

#![forbid(unsafe_code)]

mod body;
mod cap;
mod cluster;
mod conn;
mod connect;
mod detect;
mod drain;
mod ext;
mod forward;
mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
mod h2stream;
mod handoff;
mod hop;
mod host;
mod legacy;
pub mod metrics;
mod pool;
mod reply;
mod retry;
mod route;
mod router;
mod server;
pub mod tls;
pub mod trace;
mod tunnel;
mod tunnel_info;
#[doc(hidden)]
pub mod websocket;
pub mod ws;

#[doc(inline)]
pub use body::{Body, BoxError};
#[doc(inline)]
pub use cluster::{
    Cluster, ConnectError, Endpoint, EndpointStats, HealthCheck, LbPolicy, OutlierDetection, Resolve,
    SystemResolver,
};
#[doc(inline)]
pub use connect::ConnectConfig;
#[doc(inline)]
pub use detect::{IgnoreUpgrades, UpgradeType};
#[doc(inline)]
pub use drain::{Drain, DrainOutcome, LiveTunnel};
#[doc(inline)]
pub use ext::{
    AutoHostRewrite, ClientAddr, IdleTimeout, MatchedRoute, MaxStreamDuration, RequestId, ResponseTimeout,
    TlsSession, TrustedClientAddr, UpstreamAddr,
};
#[doc(inline)]
pub use forward::Forward;
#[doc(inline)]
pub use forwarded::{Forwarded, ForwardedLayer};
#[doc(inline)]
pub use legacy::LegacyConfig;
pub use retry::{RetryOn, RetryPolicy, UnknownRetryOn};
#[doc(inline)]
pub use route::{Route, RouteLayer, RouteService, Runtime};
#[doc(inline)]
pub use router::{
    Chain, DuplicateUpgradeType, RouteUpgrades, UpgradeConfig, UpgradeRouter, UpgradeRouterBuilder,
    UpgradeRouterLayer,
};
#[doc(inline)]
pub use server::{ClientLimits, Server, Workers, serve, serve_with};
#[doc(inline)]
pub use tunnel::{
    CloseFrame, ClosedBy, TunnelConfig, TunnelEnd, TunnelEvent, TunnelHandle, TunnelObserver, TunnelStats,
};
#[doc(inline)]
pub use tunnel_info::{TunnelInfo, TunnelMode};

/// The response futures of the services above, named apart.
pub mod future {
    #[doc(inline)]
    pub use crate::forward::ResponseFuture as ForwardFuture;
    #[doc(inline)]
    pub use crate::route::ResponseFuture as RouteFuture;
    #[doc(inline)]
    pub use crate::router::ResponseFuture as UpgradeRouterFuture;
}

/// The README's Rust code, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
