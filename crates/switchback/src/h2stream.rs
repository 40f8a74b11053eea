//! One HTTP/2 stream to an upstream, as a tunnel's byte stream (`H2Stream`) or a refusal's
//! body (`H2Body`): DATA frames each way, flow control as backpressure.
//!
//! Received bytes give their window back only when the tunnel takes them, so a client that
//! reads slowly stalls its own stream's window and never the connection's (whose window is
//! as large as HTTP/2 allows). Sent bytes go out only as the peer's window allows, so nothing
//! piles up on our side either.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cluster::StreamSlot;

/// The most bytes asked of the peer's window for one write.
const MAX_WRITE: usize = 64 * 1024;

/// A tunnel over one HTTP/2 stream: RFC 8441's extended CONNECT, or a CONNECT.
///
/// Dropped before both sides ended, the stream is reset (`CANCEL`); a reset from the peer
/// fails the next read or write, which ends the tunnel and closes the client's side.
pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    unread: Bytes,
    /// Our half is closed (END_STREAM sent).
    ended: bool,
    /// The stream's place on its connection, given back when the tunnel ends.
    _slot: StreamSlot,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream", &self.send.stream_id().as_u32())
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, slot: StreamSlot) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            ended: false,
            _slot: slot,
        }
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    match e.reason() {
        Some(reason) if e.is_reset() => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("the upstream reset the stream: {reason}"),
        ),
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window opens as the tunnel takes the bytes, not before.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.unread = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        if this.unread.is_empty() {
            // Even an empty slice keeps h2's whole read buffer alive: an idle tunnel holds none.
            this.unread = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.send;
        send.reserve_capacity(buf.len().min(MAX_WRITE));
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_error)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the upstream stream is closed",
                    )));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what was sent.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// A refusal's body from an HTTP/2 upstream, giving each chunk's window back as it goes.
pub(crate) struct H2Body {
    recv: RecvStream,
    _slot: StreamSlot,
}

impl H2Body {
    pub(crate) fn new(recv: RecvStream, slot: StreamSlot) -> Self {
        Self { recv, _slot: slot }
    }
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let recv = &mut self.recv;
        match ready!(recv.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => match ready!(recv.poll_trailers(cx)) {
                Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(None) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
