//! Tunnels: what happens after a `101 Switching Protocols`.
//!
//! Every tunnel is born in one place, [`open`], and run by one engine (`engine`), whatever
//! carries its bytes:
//!
//! - **Joined**: no layer touched either body, so the client's and the upstream's upgraded
//!   connections are relayed into each other: spliced between bare sockets (Linux), else
//!   copied through a buffer lent only while bytes are in flight.
//! - **Pumped**: a layer wraps a body, so client bytes are read as request body frames and
//!   upstream bytes as response body frames (each a [`leg::BodyLeg`] over the connection's
//!   read half), and written to the other connection's write half.
//! - **Legacy**: a `use_websocket` route; joined, and reported as such.
//!
//! The engine's rules hold for all three: half-close (FIN one way while the other keeps
//! flowing, bounded by [`TunnelConfig::half_close_timeout`]), the idle timeout (counting both
//! directions), the drain (WebSocket tunnels close with `1001` frames at frame boundaries), and
//! fairness between the directions. [`Forward`](crate::Forward) and the legacy service never
//! start a task: they hand the upstream's upgraded connection back in the `101`'s extensions
//! (`handoff`), and the router calls [`open`].

mod ends;
mod engine;
mod gate;
mod held;
mod leg;
mod opened;
#[cfg(target_os = "linux")]
mod splice;
mod task;

use std::fmt;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;

use crate::drain::TunnelGuard;
use crate::tunnel_info::TunnelInfo;
pub(crate) use ends::{Ends, UpstreamWriter};
pub(crate) use engine::Settings;
pub(crate) use leg::Prefixed;
pub use task::TunnelHandle;
pub(crate) use task::next_id;

/// How tunnels behave once open.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) half_close_timeout: Option<Duration>,
    pub(crate) max_stream_duration: Option<Duration>,
    pub(crate) buffer_size: usize,
    pub(crate) splice: bool,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(300)),
            half_close_timeout: Some(Duration::from_secs(30)),
            max_stream_duration: None,
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

    /// Ends a tunnel when no byte moved either way for this long.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Tunnels never end for being idle.
    pub fn no_idle_timeout(mut self) -> Self {
        self.idle_timeout = None;
        self
    }

    /// How long one direction may stay open after the other has closed.
    pub fn half_close_timeout(mut self, timeout: Duration) -> Self {
        self.half_close_timeout = Some(timeout);
        self
    }

    /// A half-closed tunnel waits for its other direction forever.
    pub fn no_half_close_timeout(mut self) -> Self {
        self.half_close_timeout = None;
        self
    }

    /// The longest a tunnel may live (Envoy's `max_stream_duration`); then it closes as on a
    /// drain (WebSocket: `1001` each way at frame boundaries). Default: no limit; a route's
    /// [`Route::max_stream_duration`](crate::Route::max_stream_duration) overrides it.
    pub fn max_stream_duration(mut self, longest: Duration) -> Self {
        self.max_stream_duration = Some(longest);
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

    /// The settings of one tunnel: `idle` is the request's idle timeout (a route's, or this
    /// config's own); `longest` a route's longest life, if it set one.
    pub(crate) fn settings(
        &self,
        idle: Option<Duration>,
        longest: Option<Duration>,
        websocket: bool,
    ) -> Settings {
        Settings {
            idle_timeout: idle,
            half_close_timeout: self.half_close_timeout,
            max_duration: longest.or(self.max_stream_duration),
            buffer_size: self.buffer_size,
            websocket,
            splice: self.splice,
            limits: crate::ws::WebSocketLimits::default(),
        }
    }
}

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
    /// The drain deadline passed, or the tunnel was closed on request.
    Drain,
    /// The tunnel reached its longest life (a route's `max_stream_duration`).
    MaxDuration,
    /// The client sent frames faster than its [`WebSocketLimits`](crate::ws::WebSocketLimits)
    /// allow: it got `1008`, the upstream `1001`.
    RateLimited,
    /// The client sent a message larger than its limit: it got `1009`, the upstream `1001`,
    /// and the message was not delivered whole.
    ClientMessageTooBig,
    /// The upstream sent a message larger than its limit: it got `1009`, the client `1001`.
    UpstreamMessageTooBig,
    /// The client didn't answer Switchback's keepalive ping in time.
    PongTimeout,
    /// A read or write failed, or a layer's body failed (e.g. a body limit).
    Error,
}

impl TunnelEnd {
    /// Every end, in declaration order (`end as usize` indexes it).
    pub(crate) const ALL: [Self; 11] = [
        Self::ClientClosed,
        Self::UpstreamClosed,
        Self::IdleTimeout,
        Self::HalfCloseTimeout,
        Self::Drain,
        Self::MaxDuration,
        Self::RateLimited,
        Self::ClientMessageTooBig,
        Self::UpstreamMessageTooBig,
        Self::PongTimeout,
        Self::Error,
    ];

    /// A short snake_case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_close",
            Self::UpstreamClosed => "upstream_close",
            Self::IdleTimeout => "idle_timeout",
            Self::HalfCloseTimeout => "half_close_timeout",
            Self::Drain => "drain",
            Self::MaxDuration => "max_stream_duration",
            Self::RateLimited => "rate_limited",
            Self::ClientMessageTooBig => "client_message_too_big",
            Self::UpstreamMessageTooBig => "upstream_message_too_big",
            Self::PongTimeout => "pong_timeout",
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
    /// WebSocket messages (text or binary; all frames of a fragmented one count once)
    /// relayed from the client to the upstream; 0 for other upgrade types.
    pub upstream_messages: u64,
    /// WebSocket messages relayed from the upstream to the client.
    pub downstream_messages: u64,
    /// The first WebSocket close frame of the tunnel, whoever sent it; `None` when none did
    /// (or the upgrade isn't WebSocket).
    pub close: Option<CloseFrame>,
}

/// A WebSocket close frame a tunnel carried or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame {
    /// Who sent it.
    pub by: ClosedBy,
    /// Its status code (RFC 6455 §7.4); `None` for a close frame without one.
    pub code: Option<u16>,
}

/// Who sent a WebSocket close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client.
    Client,
    /// The upstream.
    Upstream,
    /// Switchback itself (`1001` on a drain or at a tunnel's longest life, `1008` to a client
    /// past its frame rate).
    Proxy,
}

impl ClosedBy {
    /// `client`, `upstream` or `proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Proxy => "proxy",
        }
    }
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

/// Whom a close frame Switchback makes goes to: the upstream gets a masked (client's) frame,
/// as RFC 6455 requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseFrameFor {
    Upstream,
    Client,
}

/// A close frame of Switchback's with `code`: masked towards the upstream (Switchback is its
/// client), not towards the client.
pub(crate) fn close_frame(to: CloseFrameFor, code: u16) -> bytes::Bytes {
    use crate::websocket::{client_close_frame, server_close_frame};
    match to {
        CloseFrameFor::Upstream => bytes::Bytes::copy_from_slice(&client_close_frame(code, rand::random())),
        CloseFrameFor::Client => bytes::Bytes::copy_from_slice(&server_close_frame(code)),
    }
}

/// What a tunnel needs besides its two ends.
pub(crate) struct Opening {
    pub(crate) info: TunnelInfo,
    pub(crate) settings: Settings,
    pub(crate) observer: Option<TunnelObserver>,
    pub(crate) guard: TunnelGuard,
    /// Places under the tunnel caps and the listener's connection cap, kept for its life.
    pub(crate) holds: crate::cap::Holds,
}

/// Starts a tunnel: the one place tunnels are born. Its task waits for the client's connection
/// to upgrade (the server writes the `101` first), then relays `ends` until the tunnel ends.
/// The handle goes in the `101`'s extensions.
/// An HTTP/1 client connection served by this crate's server (`seat`) runs the task on its
/// own task once hyper lets go of it; any other gets a task of its own.
pub(crate) fn open(
    client: OnUpgrade,
    ends: Ends,
    opening: Opening,
    seat: Option<std::sync::Arc<crate::conn::Slot>>,
) -> TunnelHandle {
    let (task, handle) = task::TunnelTask::new(client, ends, opening);
    // Boxed, as the connection's task is: tokio moves a task's future on spawn and at each
    // stage change.
    let task = Box::pin(task);
    match seat {
        Some(conn) => conn.seat_tunnel(task),
        None => drop(tokio::spawn(task)),
    }
    handle
}
