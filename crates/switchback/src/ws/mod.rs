//! WebSocket-aware layers: limits and keepalive that read frame headers only
//! ([`WebSocketLimits`]), and message filters that see whole messages
//! ([`MessageFilterLayer`]).
//!
//! The tunnel engine follows every WebSocket frame's header on every path (spliced, copied,
//! pumped through layers, legacy), so limits that need only headers cost next to nothing and
//! keep the joined (splice) path. A limit that is passed closes the tunnel the way a drain
//! does: each direction finishes the frame in flight, then gets a close frame, never one
//! inside a frame.
//!
//! ```
//! use switchback::ws::WebSocketLimits;
//! use switchback::{Route, UpgradeConfig};
//!
//! // At most 100 frames a second from each client, in bursts of up to 200; messages of at
//! // most 1 MiB from clients and 16 MiB from the upstream (Kong's defaults).
//! let limits = WebSocketLimits::new()
//!     .max_frames_per_second(100)
//!     .frame_burst(200)
//!     .max_message_size(1 << 20)
//!     .max_upstream_message_size(16 << 20)
//!     // A ping to clients quiet for 30 s; no pong within 10 s closes the tunnel.
//!     .ping_interval(std::time::Duration::from_secs(30))
//!     .pong_timeout(std::time::Duration::from_secs(10));
//! let ws = UpgradeConfig::new("websocket").websocket(limits);
//! // A route's own limits override the type's, field by field.
//! let chat = Route::prefix("/chat").websocket(WebSocketLimits::new().max_frames_per_second(10));
//! # let _ = (ws, chat);
//! ```
//!
//! A message filter needs the payload, so its tunnels are pumped through the chain: each
//! whole message (a fragmented one reassembled) goes to a `tower::Service` of yours, which
//! passes, replaces or drops it, or closes the tunnel. See [`MessageFilterLayer`] for what it
//! guarantees and costs.
//!
//! ```
//! use switchback::ws::{Message, MessageFilterLayer, Verdict};
//! use switchback::{Chain, Cluster, Endpoint, Forward, UpgradeConfig};
//! use tower::{ServiceBuilder, service_fn};
//!
//! // Upstream-bound text mentioning "password" never reaches the upstream.
//! let filter = service_fn(|msg: Message| async move {
//!     let secret = msg.text().is_some_and(|t| t.contains("password"));
//!     Ok::<_, std::convert::Infallible>(if secret { Verdict::Drop } else { Verdict::Pass })
//! });
//! let forward = Forward::new(Cluster::new("chat", [Endpoint::new("127.0.0.1:9001")]));
//! let chain = Chain::new(ServiceBuilder::new().layer(MessageFilterLayer::new(filter)).service(forward));
//! let ws = UpgradeConfig::new("websocket").chain(chain);
//! # let _ = ws;
//! ```

mod filter;
mod framing;
mod limits;

pub use filter::{
    Direction, Message, MessageFilter, MessageFilterLayer, MessageKind, ResponseFuture, Verdict,
};
pub(crate) use limits::FrameBucket;
pub use limits::WebSocketLimits;
