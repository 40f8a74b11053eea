//! What is known about a tunnel: [`TunnelInfo`] and [`TunnelMode`], shared by the router
//! that opens a tunnel, the tunnel itself, the drain that tracks it and the observers told
//! of it, so that none of them depends on another for it.

use crate::detect::UpgradeType;

/// How a tunnel carries its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// The two upgraded connections joined directly (no layer touched a body).
    Joined,
    /// Body frames pumped through the layers that wrap the bodies.
    Pumped,
    /// A legacy `use_websocket` route: raw TCP to the upstream.
    Legacy,
}

impl TunnelMode {
    /// `joined`, `pumped` or `legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joined => "joined",
            Self::Pumped => "pumped",
            Self::Legacy => "legacy",
        }
    }
}

/// What is known about a tunnel when it opens.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    /// Unique among the tunnels of this process, and the same as its [`TunnelHandle::id`](crate::TunnelHandle::id).
    pub id: u64,
    /// The upgrade type.
    pub upgrade: UpgradeType,
    /// How the bytes are carried.
    pub mode: TunnelMode,
    /// The client's address, when the server put a [`ClientAddr`](crate::ClientAddr)
    /// in the request.
    pub client: Option<std::net::SocketAddr>,
    /// The request path (a CONNECT's: its target, `host:port`).
    pub path: String,
    /// The name of the route that took the request, when a [`RouteLayer`](crate::RouteLayer)
    /// matched one.
    pub route: Option<std::sync::Arc<str>>,
    /// The client's HTTP version: `HTTP/1.1` for an upgrade, `HTTP/2` for an extended CONNECT.
    pub version: http::Version,
    /// The upstream endpoint, when [`Forward`](crate::Forward) made the connection.
    pub upstream: Option<String>,
    /// How the tunnel reaches its upstream: `HTTP/1.1` (a connection of its own, switched by
    /// a `101` or a CONNECT's 2xx), `HTTP/2` (a stream on a shared connection) or `TCP` (a
    /// terminated CONNECT's raw connection). `None` when [`Forward`](crate::Forward) didn't
    /// make the connection.
    pub upstream_protocol: Option<&'static str>,
    /// The request's trace context, when a [`TraceContextLayer`](crate::trace::TraceContextLayer)
    /// gave it one: its span records the tunnel's end.
    pub trace: Option<crate::trace::TraceContext>,
}
