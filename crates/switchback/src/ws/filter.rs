//! [`MessageFilterLayer`]: each whole WebSocket message, either way, through a service of
//! the user's.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::framing::{FilteredBody, Shared};
use crate::body::{Body, BoxError};
use crate::ext::Upgrading;
use crate::reply::{self, Then};

/// The extension header a filtered handshake loses: see [`MessageFilterLayer`].
const SEC_WEBSOCKET_EXTENSIONS: &str = "sec-websocket-extensions";
/// The only protocol version a filter can read (RFC 6455).
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";

/// Which way a [`Message`] is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the upstream.
    ToUpstream,
    /// From the upstream to the client.
    ToClient,
}

impl Direction {
    /// The other way.
    pub(crate) fn reverse(self) -> Self {
        match self {
            Self::ToUpstream => Self::ToClient,
            Self::ToClient => Self::ToUpstream,
        }
    }
}

/// Whether a [`Message`] is text (valid UTF-8, checked) or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A text message: its payload is valid UTF-8.
    Text,
    /// A binary message.
    Binary,
}

/// A whole WebSocket data message (all frames of a fragmented one, unmasked), as a
/// [`MessageFilterLayer`] hands it to its filter. Control frames (ping, pong, close) are
/// never messages: they pass untouched.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    direction: Direction,
    kind: MessageKind,
    payload: Bytes,
}

impl Message {
    /// A text message going `direction`.
    pub fn new_text(direction: Direction, text: impl Into<String>) -> Self {
        Self {
            direction,
            kind: MessageKind::Text,
            payload: Bytes::from(text.into()),
        }
    }

    /// A binary message going `direction`.
    pub fn new_binary(direction: Direction, payload: impl Into<Bytes>) -> Self {
        Self {
            direction,
            kind: MessageKind::Binary,
            payload: payload.into(),
        }
    }

    /// A message read off the wire; a text one has been checked to be UTF-8.
    pub(crate) fn checked(direction: Direction, kind: MessageKind, payload: Bytes) -> Self {
        Self {
            direction,
            kind,
            payload,
        }
    }

    /// The same message as text with `text` for payload (for [`Verdict::Replace`]).
    pub fn with_text(self, text: impl Into<String>) -> Self {
        Self::new_text(self.direction, text)
    }

    /// The same message as binary with `payload` (for [`Verdict::Replace`]).
    pub fn with_binary(self, payload: impl Into<Bytes>) -> Self {
        Self::new_binary(self.direction, payload)
    }

    /// Which way it is going.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Text or binary.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The payload, unmasked.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload as text, for a text message; `None` for a binary one.
    pub fn text(&self) -> Option<&str> {
        match self.kind {
            MessageKind::Text => std::str::from_utf8(&self.payload).ok(),
            MessageKind::Binary => None,
        }
    }

    /// The payload, taken out.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("direction", &self.direction)
            .field("kind", &self.kind)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// What a filter decides about a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it on as it came.
    Pass,
    /// Send this instead, the same way (its own [`Direction`] is not looked at).
    Replace(Message),
    /// Send nothing: the message is gone.
    Drop,
    /// End the tunnel: the message's sender gets a close frame with `code` and `reason`
    /// (cut to the 123 bytes a close frame holds, at a character boundary), the other side
    /// `1001 Going Away`. A code that may not be sent on the wire (below 1000, 1004-1006,
    /// 1015, 1016-2999 unassigned, or past 4999) is sent as `1008 Policy Violation`.
    Close {
        /// The close code.
        code: u16,
        /// Why, for the peer (may be empty).
        reason: String,
    },
}

impl Verdict {
    /// [`Verdict::Close`] with `code` and `reason`.
    pub fn close(code: u16, reason: impl Into<String>) -> Self {
        Self::Close {
            code,
            reason: reason.into(),
        }
    }
}

/// A layer that hands every whole WebSocket message, each way, to `filter`: a
/// `tower::Service<Message, Response = Verdict>` (write one with `tower::service_fn`).
///
/// **What it guarantees.**
///
/// - One filter per tunnel: each tunnel gets its own clone of `filter`, called for both
///   directions, one message at a time in each direction (the next message in that direction
///   waits for the verdict), so a filter may keep per-tunnel state in itself (whether the
///   client has sent its token yet, say).
/// - Fragmented messages are reassembled before the filter sees them and sent on as one
///   frame (RFC 6455 §5.4 lets an intermediary change fragmentation when no extension is in
///   use). Upstream-bound frames are re-masked with a fresh key.
/// - Control frames (ping, pong, close) pass untouched and in order with the messages around
///   them; one sent in the middle of a fragmented message goes on at once.
/// - A message larger than [`max_message_size`](Self::max_message_size) (1 MiB unless set)
///   is never buffered whole: its sender gets `1009 Message Too Big`, the other side `1001`.
///   Text that is not UTF-8 gets `1007`, and a frame that breaks RFC 6455 (reserved bits or
///   opcodes, a client frame without a mask, an upstream frame with one, a fragmented or
///   oversized control frame, fragments out of order) gets `1002`, each as soon as it is
///   seen. A filter's error closes with `1011` to the sender.
/// - After a close frame of its own, the proxy relays nothing more that way and waits for the
///   peer to close its side (so nothing is cut mid-frame and no reset is sent). A close frame
///   goes each way at most once, whether a peer's (relayed) or the proxy's.
///
/// **With [`WebSocketLimits`](super::WebSocketLimits) on the same tunnel**, the limits and
/// the keepalive see the frames the filter writes, not the ones it reads: a frame rate counts
/// the messages the filter lets through, and a client's pong waits behind a verdict still
/// pending. Closes the filter sends are reported (metrics, `TunnelStats::close`) as if the
/// side whose stream carries them had sent them.
///
/// **What it changes in the handshake.** Compression (`permessage-deflate`) and any other
/// extension would change what the payload means, so the client's `Sec-WebSocket-Extensions`
/// offer is removed: client and upstream agree on none, and messages travel uncompressed. An
/// upstream that answers with extensions anyway is a `502`. A handshake for an older
/// protocol version than 13, whose frames this layer cannot read, gets `426` with
/// `Sec-WebSocket-Version: 13`, and one that carries an HTTP body of its own gets `400`.
///
/// **What it costs.** Its tunnels leave the joined (splice) path for the pumped one, and each
/// payload byte is copied (and unmasked) into a message, then copied (and masked) into the
/// frame sent on. Other requests, and upgrades other than WebSocket, pass through untouched.
/// Legacy `use_websocket` routes never reach a layer (they are raw TCP).
#[derive(Clone)]
pub struct MessageFilterLayer<F> {
    filter: F,
    max_message_size: u64,
}

/// The largest message a filter buffers unless told otherwise: Kong's default for clients.
/// A tunnel can make the proxy hold up to twice this (a message each way).
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1 << 20;

impl<F> MessageFilterLayer<F> {
    /// Hands every message to `filter`.
    pub fn new(filter: F) -> Self {
        Self {
            filter,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// The largest message (in payload bytes, either way) the filter is given; a larger one
    /// closes the tunnel with `1009` to its sender. Default 1 MiB; 0 admits empty messages
    /// only. Messages are held whole while the filter looks at them, so each tunnel may hold
    /// up to twice this.
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = bytes;
        self
    }
}

impl<F> fmt::Debug for MessageFilterLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageFilterLayer")
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

impl<S, F: Clone> Layer<S> for MessageFilterLayer<F> {
    type Service = MessageFilter<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageFilter {
            inner,
            filter: self.filter.clone(),
            max_message_size: self.max_message_size,
        }
    }
}

/// The service of [`MessageFilterLayer`].
#[derive(Clone)]
pub struct MessageFilter<S, F> {
    inner: S,
    filter: F,
    max_message_size: u64,
}

impl<S: fmt::Debug, F> fmt::Debug for MessageFilter<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageFilter")
            .field("inner", &self.inner)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

impl<S, F> Service<Request<Body>> for MessageFilter<S, F>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    F: Service<Message, Response = Verdict> + Clone + Send + 'static,
    F::Error: Into<BoxError>,
    F::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(upgrading) = req
            .extensions()
            .get::<Upgrading>()
            .filter(|u| u.ty.is_websocket())
        else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        if let Some(refusal) = filterable(&req, upgrading) {
            return ResponseFuture::ready(refusal);
        }
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(SEC_WEBSOCKET_EXTENSIONS);
        let shared = Arc::new(Shared::new(self.filter.clone(), self.max_message_size));
        let body = FilteredBody::new(body, Direction::ToUpstream, shared.clone());
        let req = Request::from_parts(parts, Body::new(body));
        ResponseFuture::inner(self.inner.call(req), Some(shared))
    }
}

/// The answer to a WebSocket handshake whose frames cannot be filtered; `None` when they can.
fn filterable(req: &Request<Body>, upgrading: &Upgrading) -> Option<Response<Body>> {
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut res = reply::local(
            StatusCode::UPGRADE_REQUIRED,
            "this route filters WebSocket messages: protocol version 13 only",
            Then::Close,
        );
        res.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Some(res);
    }
    upgrading.has_body.then(|| {
        reply::local(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake with a body cannot have its messages filtered",
            Then::Close,
        )
    })
}

pin_project! {
    /// The response future of [`MessageFilter`].
    pub struct ResponseFuture<Fut, F> {
        #[pin]
        inner: Option<Fut>,
        ready: Option<Response<Body>>,
        shared: Option<Arc<Shared<F>>>,
    }
}

impl<Fut, F> ResponseFuture<Fut, F> {
    fn inner(fut: Fut, shared: Option<Arc<Shared<F>>>) -> Self {
        Self {
            inner: Some(fut),
            ready: None,
            shared,
        }
    }

    fn ready(res: Response<Body>) -> Self {
        Self {
            inner: None,
            ready: Some(res),
            shared: None,
        }
    }
}

impl<Fut, F> fmt::Debug for ResponseFuture<Fut, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<Fut, E, F> Future for ResponseFuture<Fut, F>
where
    Fut: Future<Output = Result<Response<Body>, E>>,
    F: Service<Message, Response = Verdict> + Send + 'static,
    F::Error: Into<BoxError>,
    F::Future: Send + 'static,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(fut) = this.inner.as_pin_mut() else {
            let res = this.ready.take().unwrap_or_else(|| {
                reply::local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "polled after completion",
                    Then::Close,
                )
            });
            return Poll::Ready(Ok(res));
        };
        let res = ready!(fut.poll(cx))?;
        let Some(shared) = this.shared.take() else {
            return Poll::Ready(Ok(res));
        };
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Poll::Ready(Ok(res));
        }
        if res.headers().contains_key(SEC_WEBSOCKET_EXTENSIONS) {
            // Nothing was offered, so nothing may be accepted (RFC 6455 §9.1); dropping the
            // `101` closes the upstream connection.
            tracing::warn!("the upstream accepted WebSocket extensions nobody offered");
            return Poll::Ready(Ok(reply::local(
                StatusCode::BAD_GATEWAY,
                "the upstream answered with WebSocket extensions that were not offered",
                Then::Close,
            )));
        }
        Poll::Ready(Ok(res.map(|body| {
            Body::new(FilteredBody::new(body, Direction::ToClient, shared))
        })))
    }
}

/// A filter's verdict, or the error it failed with.
pub(crate) type Judged = Result<Verdict, BoxError>;

/// A boxed verdict on its way.
pub(crate) type Judging = Pin<Box<dyn Future<Output = Judged> + Send>>;

/// Starts `filter` on `msg` (once its `poll_ready` said it is ready).
pub(crate) fn judge<F>(filter: &mut F, msg: Message) -> Judging
where
    F: Service<Message, Response = Verdict>,
    F::Error: Into<BoxError>,
    F::Future: Send + 'static,
{
    let fut = filter.call(msg);
    Box::pin(async move { fut.await.map_err(Into::into) })
}
