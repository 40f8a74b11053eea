//! The two ends a tunnel relays between, as byte sources and sinks.
//!
//! An end is written like a connection ([`AsyncWrite`]) and read through [`Leg::poll_fill`]:
//! a connection reads into a buffer lent by the pool, a [`BodyLeg`] hands on its body's data
//! frames as they are. The engine (`engine`) knows only this trait, so every rule it applies
//! holds for joined and pumped tunnels alike.

use crate::conn::ClientIo;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body as _;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::held::Held;
use crate::body::Body;
use crate::handoff::UpstreamIo;
use crate::tls::UpstreamStream;

/// One end of a tunnel.
pub(crate) trait Leg: AsyncWrite + Unpin {
    /// Reads this end's next bytes into `held` (empty on entry): at most `limit` of them when
    /// they go into a buffer of `size`. `held` left empty means the end of the stream.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        held: &mut Held,
        size: usize,
        limit: usize,
    ) -> Poll<io::Result<()>>;

    /// The plain TCP socket behind this end, when bytes can be spliced to or from it
    /// directly (nothing is buffered in front of it and nothing wraps it).
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// Ends read into a buffer lent by the pool, with no socket to splice behind them.
macro_rules! buffered_legs {
    ($($ty:ty),+) => {$(
        impl Leg for $ty {
            fn poll_fill(
                &mut self,
                cx: &mut Context<'_>,
                held: &mut Held,
                size: usize,
                limit: usize,
            ) -> Poll<io::Result<()>> {
                held.poll_read_from(cx, Pin::new(self), size, limit)
            }
        }
    )+};
}

buffered_legs!(TokioIo<Upgraded>, UpstreamIo);

/// A socket with bytes already read from it (by hyper, past the HTTP head) that must come
/// first.
#[derive(Debug)]
pub(crate) struct Prefixed {
    /// What is left to read of the bytes that came first (`None` once read).
    pre: Option<(Box<[u8]>, usize)>,
    io: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(pre: Bytes, io: TcpStream) -> Self {
        // `pre` is a slice of hyper's read buffer, and even an empty slice keeps the whole
        // buffer (8 KiB and up) alive for the tunnel's lifetime: keep a copy of what is left.
        let pre = (!pre.is_empty()).then(|| (Box::from(&pre[..]), 0));
        Self { pre, io }
    }
}

impl Leg for Prefixed {
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        held: &mut Held,
        size: usize,
        limit: usize,
    ) -> Poll<io::Result<()>> {
        held.poll_read_from(cx, Pin::new(self), size, limit)
    }

    fn socket(&self) -> Option<&TcpStream> {
        self.pre.is_none().then_some(&self.io)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((pre, pos)) = &mut self.pre {
            let n = (pre.len() - *pos).min(buf.remaining());
            buf.put_slice(&pre[*pos..*pos + n]);
            *pos += n;
            if *pos == pre.len() {
                self.pre = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Recovers the socket behind an upgraded connection made on a bare `TcpStream` (Switchback's
/// own server and forwarder do that); anything else stays as it is.
pub(crate) fn unwrap_socket(upgraded: Upgraded) -> Result<Prefixed, Upgraded> {
    match upgraded.downcast::<TokioIo<ClientIo>>() {
        Ok(parts) => {
            let (unread, tcp) = parts.io.into_inner().into_inner();
            // What hyper read ahead came from before what it never read.
            let pre = if unread.is_empty() {
                parts.read_buf
            } else {
                [&parts.read_buf[..], &unread[..]].concat().into()
            };
            Ok(Prefixed::new(pre, tcp))
        }
        Err(upgraded) => upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map(|parts| Prefixed::new(parts.read_buf, parts.io.into_inner())),
    }
}

/// The socket behind an upstream connection when it is plain TCP (a raw one, or one hyper
/// switched on a bare `TcpStream`); anything else stays as it is.
pub(crate) fn unwrap_upstream(upstream: UpstreamIo) -> Result<Prefixed, UpstreamIo> {
    match upstream {
        UpstreamIo::Raw(UpstreamStream::Plain(tcp)) => Ok(Prefixed::new(Bytes::new(), tcp)),
        UpstreamIo::Spliceable(io) => Ok(io),
        UpstreamIo::Switched(io) => {
            unwrap_socket(io.into_inner()).map_err(|u| UpstreamIo::Switched(TokioIo::new(u)))
        }
        other @ (UpstreamIo::Raw(UpstreamStream::Tls(_)) | UpstreamIo::Multiplexed(_)) => Err(other),
    }
}

/// An end of a pumped tunnel: its bytes are read as the data frames of a body (a layer's
/// wrapper over the connection's read half) and written to the connection's write half.
#[derive(Debug)]
pub(crate) struct BodyLeg<W> {
    source: Body,
    sink: W,
}

impl<W> BodyLeg<W> {
    pub(crate) fn new(source: Body, sink: W) -> Self {
        Self { source, sink }
    }
}

impl<W: AsyncWrite + Unpin> Leg for BodyLeg<W> {
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        held: &mut Held,
        _: usize,
        _: usize,
    ) -> Poll<io::Result<()>> {
        loop {
            match std::task::ready!(Pin::new(&mut self.source).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers have no place in a byte stream; empty frames carry nothing.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        *held = Held::Chunk(data);
                        return Poll::Ready(Ok(()));
                    }
                }
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for BodyLeg<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sink).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sink).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sink).poll_shutdown(cx)
    }
}
