//! The request and response extensions that carry values between the layers of a stack:
//! what the server knows of the client, what a route asks of the forwarder and the tunnel,
//! and what the forwarder tells about the upstream.
//!
//! They live here, below every layer, so that data flows down the stack (server, route,
//! router, chain, forward, tunnel) and no module imports from a layer above it.
//!
//! ```
//! use std::time::Duration;
//! use switchback::{IdleTimeout, ResponseTimeout};
//!
//! // What a route of your own could set on a request, above the `UpgradeRouter`:
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(IdleTimeout(Some(Duration::from_secs(60))));
//! req.extensions_mut().insert(ResponseTimeout(None)); // no limit on the upstream's answer
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::UpgradeType;
use crate::body::PreBodyEnd;

/// The client's address, put in every request's extensions by
/// [`serve`](crate::serve) and [`Workers`](crate::Workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Overrides the idle timeout of tunnels opened by this request (a per-route setting).
///
/// Put it in the request extensions above the [`UpgradeRouter`](crate::UpgradeRouter);
/// `IdleTimeout(None)` turns the timeout off for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeout(pub Option<Duration>);

/// The longest a tunnel opened by this request may live (Envoy's route
/// `max_stream_duration`); then it closes as on a drain. Routes set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStreamDuration(pub Duration);

/// Per-request override of how long the upstream may take to send its response head (or
/// `101`). Routes set it; `ResponseTimeout(None)` disables the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTimeout(pub Option<Duration>);

/// Marks a request whose `Host` becomes the chosen endpoint's
/// [`Endpoint::host`](crate::Endpoint::host) (Envoy's `auto_host_rewrite`). Routes set it;
/// the endpoint is only known to the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AutoHostRewrite;

/// The route that took a request, in the request's extensions and (for access logs) in the
/// response's. Set by [`RouteLayer`](crate::RouteLayer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRoute {
    /// The route's [`name`](crate::Route::name).
    pub name: Arc<str>,
}

/// The upstream endpoint that served a response, in the response extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr(pub String);

/// Put in the request extensions by the router for an allowed upgrade; read by the forwarder.
#[derive(Clone, Debug)]
pub(crate) struct Upgrading {
    pub(crate) ty: UpgradeType,
    /// The request declared an HTTP body of its own (sent before the tunnel starts).
    pub(crate) has_body: bool,
    /// Where that body ends and the tunnel bytes begin.
    pub(crate) pre_body_end: PreBodyEnd,
}
