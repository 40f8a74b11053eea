//! [`Body`](crate::Body): the body type of everything that passes through Switchback.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

use crate::handoff::{Handoff, TunnelRead, UpstreamRead};
use crate::pool;

/// The error type of bodies and chains: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Size of the chunks read from a tunnel when it is pumped through body-aware layers.
const CHUNK: usize = 16 * 1024;

/// The body type of every request and response that passes through Switchback.
///
/// Besides ordinary bodies, it carries upgraded connections as body data: on an upgrade the
/// request body continues with the bytes the client sends after the `101`, and the `101`
/// response's body is the bytes the upstream sends. A layer that reads or wraps bodies thereby
/// sees the tunnel payload, as an Envoy filter sees WebSocket data.
///
/// ```
/// use http_body_util::BodyExt;
/// use switchback::Body;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let body = Body::from("hello");
/// let bytes = body.collect().await.unwrap().to_bytes();
/// assert_eq!(bytes, "hello");
/// # }
/// ```
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// The request side of an upgrade.
    Downstream(Box<Downstream>),
    /// The response side of an upgrade.
    Upstream(Box<UpstreamTunnel>),
    /// A body still in other hands (sending an upgrade's own HTTP body upstream); it comes
    /// back when that is done.
    Returning(oneshot::Receiver<Body>),
}

/// The request body of an upgrade: the HTTP body sent with the request, then (after the
/// `101`) the client's tunnel bytes.
struct Downstream {
    /// The body sent with the upgrade request, if it declared one.
    pre: Option<Body>,
    /// Marked when `pre` has ended (see [`PreBodyEnd`]).
    pre_end: PreBodyEnd,
    rx: Option<oneshot::Receiver<TunnelRead>>,
    reader: Option<TunnelRead>,
}

/// Where an upgrade request's own HTTP body ends and its tunnel bytes begin.
///
/// Shared by the request body (which marks it when its HTTP part is over) and the forwarder
/// (which sends the request body upstream up to there). A mark beside the stream, not in it:
/// no layer that maps, limits or drops frames can move or lose it. The forwarder takes the
/// HTTP body to be over when the mark is set and the layers' body has nothing more to give
/// for now (the tunnel bytes only start after the `101`, which needs the body sent first).
#[derive(Clone, Debug, Default)]
pub(crate) struct PreBodyEnd(Arc<AtomicBool>);

impl PreBodyEnd {
    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn reached(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    /// Wraps any body. A [`Body`] is kept as it is (so Switchback can still recognise its own
    /// tunnel bodies); anything else is boxed.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut slot = Some(body);
        if let Some(own) = (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<Body>>()
            .and_then(Option::take)
        {
            return own;
        }
        if let Some(incoming) = (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<Incoming>>()
            .and_then(Option::take)
        {
            return Self {
                kind: Kind::Incoming(incoming),
            };
        }
        match slot {
            Some(body) => Self {
                kind: Kind::Boxed(body.map_err(Into::into).boxed_unsync()),
            },
            None => Self::empty(),
        }
    }

    /// An upgrade request's body: `pre` (its own HTTP body, if it declared one), then the
    /// client's tunnel bytes from the read half `rx` delivers.
    pub(crate) fn downstream(
        pre: Option<Body>,
        pre_end: PreBodyEnd,
        rx: oneshot::Receiver<TunnelRead>,
    ) -> Self {
        if pre.is_none() {
            pre_end.mark();
        }
        Self {
            kind: Kind::Downstream(Box::new(Downstream {
                pre,
                pre_end,
                rx: Some(rx),
                reader: None,
            })),
        }
    }

    /// A `101`'s body: the upstream's tunnel bytes.
    pub(crate) fn upstream_tunnel(handoff: Handoff<Body>) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(UpstreamTunnel::Unread(handoff))),
        }
    }

    /// The body `rx` gives back.
    pub(crate) fn returning(rx: oneshot::Receiver<Body>) -> Self {
        Self {
            kind: Kind::Returning(rx),
        }
    }

    /// If this is an untouched upgrade request body, takes its pre-upgrade HTTP body out (the
    /// forwarder sends it as the upstream request's body; empty when it declared none).
    pub(crate) fn take_pre_upgrade(&mut self) -> Option<Body> {
        match &mut self.kind {
            Kind::Downstream(d) => {
                d.pre_end.mark();
                Some(d.pre.take().unwrap_or_default())
            }
            _ => None,
        }
    }

    /// Whether this is a `101`'s body that no layer wrapped and nobody read: the connections
    /// can be joined directly.
    pub(crate) fn is_unread_tunnel(&self) -> bool {
        matches!(&self.kind, Kind::Upstream(u) if matches!(**u, UpstreamTunnel::Unread(_)))
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)),
        }
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Incoming(_) => "incoming",
            Kind::Boxed(_) => "boxed",
            Kind::Downstream(_) => "downstream tunnel",
            Kind::Upstream(_) => "upstream tunnel",
            Kind::Returning(_) => "returning",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Kind::Returning(rx) = &mut this.kind {
            this.kind = match ready!(Pin::new(rx).poll(cx)) {
                Ok(body) => body.kind,
                Err(_) => Kind::Empty,
            };
        }
        match &mut this.kind {
            Kind::Empty | Kind::Returning(_) => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
            Kind::Downstream(d) => d.poll_frame(cx),
            Kind::Upstream(u) => match u.reader() {
                Some(reader) => poll_read_chunk(reader, cx),
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
            Kind::Downstream(_) | Kind::Upstream(_) | Kind::Returning(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
            Kind::Downstream(_) | Kind::Upstream(_) | Kind::Returning(_) => SizeHint::default(),
        }
    }
}

impl Downstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        while let Some(pre) = &mut self.pre {
            match ready!(Pin::new(pre).poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_data() => return Poll::Ready(Some(Ok(frame))),
                // The HTTP body's trailers can't go upstream in the middle of a stream.
                Some(Ok(_trailers)) => {}
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.pre = None;
                    self.pre_end.mark();
                }
            }
        }
        if self.reader.is_none() {
            let Some(rx) = &mut self.rx else {
                return Poll::Ready(None);
            };
            match ready!(Pin::new(rx).poll(cx)) {
                Ok(reader) => self.reader = Some(reader),
                // The client's connection never upgraded: there is no tunnel to read.
                Err(_) => {
                    self.rx = None;
                    return Poll::Ready(None);
                }
            }
        }
        match &mut self.reader {
            Some(reader) => poll_read_chunk(reader, cx),
            None => Poll::Ready(None),
        }
    }
}

/// Reads the next chunk of a tunnel into a buffer lent by the relay pool. While nothing
/// arrives the buffer goes back, so an idle pumped tunnel holds none; data is handed on in the
/// buffer it was read into, without a copy.
fn poll_read_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let mut buf = pool::take(CHUNK);
    let mut read = ReadBuf::new(&mut buf);
    let res = Pin::new(reader).poll_read(cx, &mut read);
    let n = read.filled().len();
    match res {
        Poll::Ready(Ok(())) if n > 0 => {
            let mut data = buf.into_vec();
            data.truncate(n);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
        }
        res => {
            pool::give(buf);
            match res {
                Poll::Ready(Ok(())) => Poll::Ready(None),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps `held` until it is dropped: a count that must last while the body is
    /// sent (the connection's exchange in flight, the upstream endpoint's active request).
    /// hyper drops a body once it has written it.
    #[derive(Debug)]
    pub(crate) struct Holding<B, T> {
        #[pin]
        body: B,
        held: T,
    }
}

impl<B, T> Holding<B, T> {
    pub(crate) fn new(body: B, held: T) -> Self {
        Self { body, held }
    }
}

impl<B: http_body::Body<Data = Bytes>, T> http_body::Body for Holding<B, T> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The `101`'s body: the upstream's tunnel bytes, read only if a layer reads it (else the
/// connections are joined and it is dropped unread).
#[derive(Debug)]
pub(crate) enum UpstreamTunnel {
    Unread(Handoff<Body>),
    Reading(UpstreamRead),
    /// The connection's read half is gone (taken by another reader).
    Gone,
}

impl UpstreamTunnel {
    /// The read half to read from, splitting the connection on the first read.
    pub(crate) fn reader(&mut self) -> Option<&mut UpstreamRead> {
        if let Self::Unread(handoff) = self {
            *self = match handoff.take_read() {
                Some(read) => Self::Reading(read),
                None => Self::Gone,
            };
        }
        match self {
            Self::Reading(read) => Some(read),
            Self::Unread(_) | Self::Gone => None,
        }
    }
}
