//! [`Body`]: the body type of every request and response that passes through Switchback.
//!
//! Besides ordinary bodies, it carries upgraded connections as body data: on an upgrade the
//! request body continues with the bytes the client sends after the `101`, and the `101`
//! response's body is the bytes the upstream sends. A layer that reads or wraps bodies thereby
//! sees the tunnel payload, as an Envoy filter sees WebSocket data.
//!
//! ```
//! use http_body_util::BodyExt;
//! use switchback::Body;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let body = Body::from("hello");
//! let bytes = body.collect().await.unwrap().to_bytes();
//! assert_eq!(bytes, "hello");
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf, ReadHalf};
use tokio::sync::oneshot;

use crate::BoxError;
use crate::tunnel::pool;
use crate::tunnel::pump::{self, Direction, Link};

/// The read half of an upgraded connection.
pub(crate) type TunnelRead = ReadHalf<TokioIo<Upgraded>>;

/// Size of the chunks read from a tunnel when it is pumped through body-aware layers.
const CHUNK: usize = 16 * 1024;

/// A streaming body: an ordinary HTTP body, or an upgraded connection read as body data.
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
    Upstream(Box<Upstream>),
}

/// The request body of an upgrade: the HTTP body sent with the request, then (after the
/// `101`) the client's tunnel bytes.
pub(crate) struct Downstream {
    /// The body sent with the upgrade request, if it declared one.
    pub(crate) pre: Option<Body>,
    /// An empty trailers frame marks the end of `pre` when it existed: it tells the forwarder
    /// where the HTTP body stops and the tunnel starts, through any layer that passes frames on.
    separator: bool,
    rx: Option<oneshot::Receiver<TunnelRead>>,
    reader: Option<TunnelRead>,
}

/// The response body of a `101`: the upstream's tunnel bytes.
pub(crate) enum Upstream {
    /// Nobody has read it yet: the router may still join the connections directly.
    Joinable(Join),
    Reading {
        reader: TunnelRead,
    },
    /// Between the two: never observed by a poll.
    Switching,
}

/// What the fast path needs: the upstream's upgraded connection and the request body that
/// would have carried the client's bytes (polled only if the pumped path takes over).
pub(crate) struct Join {
    pub(crate) upstream: Upgraded,
    pub(crate) client: Body,
    pub(crate) link: Arc<Link>,
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

    pub(crate) fn downstream(pre: Option<Body>, rx: oneshot::Receiver<TunnelRead>) -> Self {
        Self {
            kind: Kind::Downstream(Box::new(Downstream {
                separator: pre.is_some(),
                pre,
                rx: Some(rx),
                reader: None,
            })),
        }
    }

    pub(crate) fn joinable(join: Join) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(Upstream::Joinable(join))),
        }
    }

    pub(crate) fn upstream_reader(reader: TunnelRead) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(Upstream::Reading { reader })),
        }
    }

    /// If this is an untouched upgrade request body, takes its pre-upgrade HTTP body out (the
    /// forwarder sends it as the upstream request's body) and says yes.
    pub(crate) fn take_pre_upgrade(&mut self) -> Option<Option<Body>> {
        match &mut self.kind {
            Kind::Downstream(d) => {
                d.separator = false;
                Some(d.pre.take())
            }
            _ => None,
        }
    }

    /// If this is an untouched `101` body, takes the parts for joining the connections.
    pub(crate) fn take_join(&mut self) -> Option<Join> {
        if !matches!(&self.kind, Kind::Upstream(u) if matches!(**u, Upstream::Joinable(_))) {
            return None;
        }
        match std::mem::replace(&mut self.kind, Kind::Empty) {
            Kind::Upstream(u) => match *u {
                Upstream::Joinable(join) => Some(join),
                Upstream::Reading { .. } | Upstream::Switching => None,
            },
            _ => None,
        }
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
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
            Kind::Downstream(d) => d.poll_frame(cx),
            Kind::Upstream(u) => u.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
            Kind::Downstream(_) | Kind::Upstream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
            Kind::Downstream(_) | Kind::Upstream(_) => SizeHint::default(),
        }
    }
}

impl Downstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(pre) = &mut self.pre {
            match ready!(Pin::new(pre).poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_data() => return Poll::Ready(Some(Ok(frame))),
                Some(Ok(_trailers)) => return Poll::Ready(Some(Ok(Frame::trailers(HeaderMap::new())))),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.pre = None;
                    if std::mem::take(&mut self.separator) {
                        return Poll::Ready(Some(Ok(Frame::trailers(HeaderMap::new()))));
                    }
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

impl Upstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Upstream::Joinable(_) = self {
            // A layer is reading the `101` body, so the connections can't be joined: start
            // pumping the client's bytes upstream and read the upstream as a body.
            let Upstream::Joinable(join) = std::mem::replace(self, Upstream::Switching) else {
                return Poll::Ready(None);
            };
            let (reader, writer) = tokio::io::split(TokioIo::new(join.upstream));
            let (client, link) = (join.client, join.link);
            tokio::spawn(async move { pump::pump(client, writer, &link, Direction::ToUpstream).await });
            *self = Upstream::Reading { reader };
        }
        match self {
            Upstream::Reading { reader } => poll_read_chunk(reader, cx),
            Upstream::Joinable(_) | Upstream::Switching => Poll::Ready(None),
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
