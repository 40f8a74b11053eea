//! [`ClientIo`]: a client's socket, watched for where request heads begin (and, on HTTP/2,
//! end), which is what the request headers timeout counts.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Slot;
use super::key_bytes::{DECLARATION, KeyBytes};

/// A client connection's socket as hyper serves it. Upgraded connections are unwrapped back
/// to the bare socket (see `tunnel::leg::unwrap_socket`), so this costs nothing in a tunnel.
/// `S` is the plain socket, or a TLS stream over it.
#[derive(Debug)]
pub(crate) struct ClientIo<S = TcpStream> {
    stream: S,
    /// Bytes read from the stream before it was wrapped (to tell HTTP/2 from HTTP/1), to be
    /// read first.
    prefix: Bytes,
    slot: Arc<Slot>,
    /// HTTP/2 only: where the frames are.
    frames: Option<Frames>,
    /// HTTP/1 only: a draft-76 WebSocket head's undeclared key bytes.
    key_bytes: KeyBytes,
}

impl<S> ClientIo<S> {
    pub(crate) fn http1(stream: S, slot: Arc<Slot>) -> Self {
        Self {
            stream,
            prefix: Bytes::new(),
            slot,
            frames: None,
            key_bytes: KeyBytes::default(),
        }
    }

    pub(crate) fn http2(stream: S, slot: Arc<Slot>) -> Self {
        Self {
            frames: Some(Frames::default()),
            ..Self::http1(stream, slot)
        }
    }

    /// Bytes already read from the stream, which come before anything read from it now.
    pub(crate) fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.prefix = prefix;
        self
    }

    /// The stream, and what is left of the prefix (hyper takes it whole on its first read,
    /// so this is nearly always empty).
    pub(crate) fn into_inner(self) -> (Bytes, S) {
        (self.prefix, self.stream)
    }

    /// Follows the bytes hyper is given; for an HTTP/1 head that must declare its body,
    /// returns where in `bytes` the declaration goes.
    fn observe(&mut self, bytes: &[u8]) -> Option<usize> {
        if !bytes.is_empty() {
            self.slot.bytes_came();
        }
        match &mut self.frames {
            // An HTTP/1 head begins with the first byte that arrives while nothing is in
            // flight (bytes while busy are a body's, or a pipelined head hyper reads next).
            None => {
                if !bytes.is_empty() && self.slot.is_idle() {
                    self.slot.head_started();
                    self.key_bytes.head_started();
                }
                self.key_bytes.scan(bytes)
            }
            Some(frames) => {
                frames.scan(bytes, &self.slot);
                None
            }
        }
    }

    /// Moves what it can of the prefix into `buf`.
    fn take_prefix(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        if n == self.prefix.len() {
            // Even an empty slice would keep the whole first read's buffer alive.
            self.prefix = Bytes::new();
        } else {
            self.prefix = self.prefix.slice(n..);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut from = buf.filled().len();
        if self.prefix.is_empty() {
            if Pin::new(&mut self.stream).poll_read(cx, buf)?.is_pending() {
                self.slot.found_nothing();
                return Poll::Pending;
            }
        } else {
            self.take_prefix(buf);
        }
        let this = &mut *self;
        while let Some(at) = this.observe(&buf.filled()[from..]) {
            // The declaration goes in after the line that called for it; what followed that
            // line comes after it, from the prefix, and is observed as it is handed over
            // (at least one byte, the line's end, stays in `buf`: never an empty read).
            let at = from + at;
            let mut rest =
                BytesMut::with_capacity(DECLARATION.len() + buf.filled().len() - at + this.prefix.len());
            rest.extend_from_slice(DECLARATION);
            rest.extend_from_slice(&buf.filled()[at..]);
            rest.extend_from_slice(&this.prefix);
            buf.set_filled(at);
            this.prefix = rest.freeze();
            this.take_prefix(buf);
            from = at;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The HTTP/2 frame layout of a client's byte stream (RFC 9113 §4.1), followed just far
/// enough to see HEADERS blocks begin and end: hyper can't say when a HEADERS frame came
/// without END_HEADERS and its CONTINUATION never followed.
#[derive(Debug, Default)]
struct Frames {
    /// Preface bytes still to pass.
    preface_seen: usize,
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
}

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl Frames {
    fn scan(&mut self, mut bytes: &[u8], slot: &Slot) {
        while !bytes.is_empty() {
            if self.preface_seen < PREFACE_LEN {
                let n = bytes.len().min(PREFACE_LEN - self.preface_seen);
                self.preface_seen += n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left);
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = bytes.len().min(9 - self.header_len);
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    if kind == HEADERS || kind == CONTINUATION {
                        if flags & END_HEADERS != 0 {
                            slot.head_ended();
                        } else {
                            slot.head_started();
                        }
                    }
                }
            }
        }
    }
}
