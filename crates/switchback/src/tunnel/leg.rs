//! The two ends a joined tunnel relays between.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One end of a joined tunnel.
pub(crate) trait Leg: AsyncRead + AsyncWrite + Unpin {
    /// The plain TCP socket behind this end, when bytes can be spliced to or from it
    /// directly (nothing is buffered in front of it).
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl Leg for TcpStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Leg for TokioIo<Upgraded> {}

/// A socket with bytes already read from it (by hyper, past the HTTP head) that must come
/// first.
#[derive(Debug)]
pub(crate) struct Prefixed {
    pre: Bytes,
    io: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(pre: Bytes, io: TcpStream) -> Self {
        // `pre` is a slice of hyper's read buffer, and even an empty slice keeps the whole
        // buffer (8 KiB and up) alive for the tunnel's lifetime: keep a copy of what is left.
        let pre = if pre.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&pre)
        };
        Self { pre, io }
    }
}

impl Leg for Prefixed {
    fn socket(&self) -> Option<&TcpStream> {
        self.pre.is_empty().then_some(&self.io)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            if self.pre.is_empty() {
                // Let go of hyper's read buffer.
                self.pre = Bytes::new();
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
    upgraded
        .downcast::<TokioIo<TcpStream>>()
        .map(|parts| Prefixed::new(parts.read_buf, parts.io.into_inner()))
}
