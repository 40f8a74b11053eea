//! Tunnels: what happens after a `101 Switching Protocols`.
//!
//! Two ways to carry the bytes:
//!
//! - **Joined** (`duplex`): no layer touched either body, so the client's and the upstream's
//!   upgraded connections are copied into each other by one task, with one reusable buffer per
//!   direction and no allocation per chunk.
//! - **Pumped** (`pump`): a layer wraps a body, so client bytes are read as request body
//!   frames and upstream bytes as response body frames, and each side is written by its own
//!   task.
//!
//! Both propagate half-close (FIN one way while the other way keeps flowing, bounded by
//! [`TunnelConfig::half_close_timeout`]), end idle tunnels ([`TunnelConfig::idle_timeout`],
//! counting both directions), and close WebSocket tunnels on drain with `1001` frames.

pub(crate) mod duplex;
pub(crate) mod joined;
pub(crate) mod leg;
pub(crate) mod opened;
pub(crate) mod pool;
pub(crate) mod pump;
#[cfg(target_os = "linux")]
mod splice;

use std::fmt;
use std::time::Duration;

/// How tunnels behave once open.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) half_close_timeout: Option<Duration>,
    pub(crate) buffer_size: usize,
    pub(crate) splice: bool,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(300)),
            half_close_timeout: Some(Duration::from_secs(30)),
            buffer_size: 16 * 1024,
            splice: cfg!(target_os = "linux"),
        }
    }
}

impl TunnelConfig {
    /// Defaults: idle timeout 5 minutes (as Envoy's stream idle timeout), half-closed state
    /// bounded to 30 seconds, 16 KiB buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends a tunnel when no byte moved either way for this long; `None` turns it off.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long one direction may stay open after the other has closed; `None` waits forever.
    pub fn half_close_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.half_close_timeout = timeout;
        self
    }

    /// Whether joined tunnels between two plain TCP sockets move bytes with `splice(2)`
    /// (Linux; default on there). Off, they are copied through a buffer.
    pub fn splice(mut self, on: bool) -> Self {
        self.splice = on && cfg!(target_os = "linux");
        self
    }

    /// Size of the relay buffer for each direction (at least 1 KiB). Buffers are lent from a
    /// pool only while bytes are in flight.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes.max(1024);
        self
    }
}

/// Overrides the idle timeout of tunnels opened by this request (a per-route setting).
///
/// Put it in the request extensions above the [`UpgradeRouter`](crate::UpgradeRouter);
/// `IdleTimeout(None)` turns the timeout off for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeout(pub Option<Duration>);

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The client closed (both directions then finished).
    ClientClosed,
    /// The upstream closed (both directions then finished).
    UpstreamClosed,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// One side stayed half-closed longer than allowed.
    HalfCloseTimeout,
    /// The drain deadline passed.
    Drain,
    /// A read or write failed, or a layer's body failed (e.g. a body limit).
    Error,
}

impl TunnelEnd {
    /// A short snake_case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_close",
            Self::UpstreamClosed => "upstream_close",
            Self::IdleTimeout => "idle_timeout",
            Self::HalfCloseTimeout => "half_close_timeout",
            Self::Drain => "drain",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for TunnelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished tunnel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStats {
    /// How it ended.
    pub end: TunnelEnd,
    /// Bytes relayed from the client to the upstream.
    pub upstream_bytes: u64,
    /// Bytes relayed from the upstream to the client.
    pub downstream_bytes: u64,
}

/// Put in the request extensions by the router for an allowed upgrade; read by the forwarder.
#[derive(Clone, Debug)]
pub(crate) struct Upgrading {
    pub(crate) ty: crate::UpgradeType,
    pub(crate) link: std::sync::Arc<pump::Link>,
    /// The request declared an HTTP body of its own (sent before the tunnel starts).
    pub(crate) has_body: bool,
}

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
    /// The upgrade type.
    pub upgrade: crate::UpgradeType,
    /// How the bytes are carried.
    pub mode: TunnelMode,
    /// The client's address, when the server put a [`ClientAddr`](crate::server::ClientAddr)
    /// in the request.
    pub client: Option<std::net::SocketAddr>,
    /// The request path.
    pub path: String,
    /// The upstream endpoint, when [`Forward`](crate::Forward) made the connection.
    pub upstream: Option<String>,
}

/// A tunnel opened or closed.
#[derive(Debug, Clone, Copy)]
pub enum TunnelEvent<'a> {
    /// The `101` went to the client and bytes may flow.
    Opened(&'a TunnelInfo),
    /// The tunnel ended; both connections are closed.
    Closed(&'a TunnelInfo, &'a TunnelStats, Duration),
}

/// A callback told of every tunnel opening and closing (access logs, tests, custom stats).
#[derive(Clone)]
pub struct TunnelObserver(std::sync::Arc<dyn Fn(&TunnelEvent<'_>) + Send + Sync>);

impl TunnelObserver {
    /// Wraps a callback. It runs on the tunnel's task: keep it short.
    pub fn new(f: impl Fn(&TunnelEvent<'_>) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    pub(crate) fn notify(&self, event: &TunnelEvent<'_>) {
        (self.0)(event)
    }
}

impl fmt::Debug for TunnelObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelObserver")
    }
}

/// The `1001 Going Away` close frame Switchback sends each way on drain: masked when it goes
/// upstream (a client's frame), as RFC 6455 requires.
pub(crate) fn going_away(to_upstream: bool) -> Vec<u8> {
    if to_upstream {
        crate::websocket::client_close_frame(crate::websocket::GOING_AWAY, mask()).to_vec()
    } else {
        crate::websocket::server_close_frame(crate::websocket::GOING_AWAY).to_vec()
    }
}

/// A masking key for a close frame Switchback sends upstream. RFC 6455 wants it unpredictable
/// to stop cache poisoning through naive intermediaries; the std hasher's random seed is enough
/// for four bytes on a frame whose content is fixed.
fn mask() -> [u8; 4] {
    use std::hash::{BuildHasher, RandomState};
    let v = RandomState::new().hash_one(std::time::SystemTime::now());
    (v as u32).to_ne_bytes()
}
