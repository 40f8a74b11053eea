//! The bytes one direction has read and not yet written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};

use crate::pool;

/// Read but unwritten bytes: in a buffer lent by the pool (read from a connection), or a
/// body's data frame (pumped tunnels), which is written as it is, without a copy.
#[derive(Debug, Default)]
pub(crate) enum Held {
    /// Nothing: an idle direction holds no buffer.
    #[default]
    Empty,
    /// `buf[pos..end]` is unwritten.
    Lent { buf: Box<[u8]>, pos: usize, end: usize },
    /// A data frame, or a close frame Switchback made.
    Chunk(Bytes),
}

impl Held {
    /// The unwritten bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::Lent { buf, pos, end } => &buf[*pos..*end],
            Self::Chunk(b) => b,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// Marks `n` bytes written; a buffer emptied goes back to the pool.
    pub(crate) fn consume(&mut self, n: usize) {
        match self {
            Self::Empty => {}
            Self::Lent { pos, .. } => *pos += n,
            Self::Chunk(b) => b.advance(n),
        }
        if self.is_empty() {
            self.release();
        }
    }

    /// Drops what is held; a lent buffer goes back to the pool.
    pub(crate) fn release(&mut self) {
        if let Self::Lent { buf, .. } = std::mem::take(self) {
            pool::give(buf);
        }
    }

    /// Reads from `reader` into a buffer of `size` bytes (at most `limit` of them) lent for
    /// the attempt. Left empty on end of stream, and on `Pending`, so that waiting holds no
    /// buffer.
    pub(crate) fn poll_read_from<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        size: usize,
        limit: usize,
    ) -> Poll<io::Result<()>> {
        debug_assert!(self.is_empty());
        let mut buf = pool::take(size);
        let len = limit.min(buf.len());
        let mut read = ReadBuf::new(&mut buf[..len]);
        let polled = reader.poll_read(cx, &mut read);
        let end = read.filled().len();
        if end == 0 {
            pool::give(buf);
        } else {
            *self = Self::Lent { buf, pos: 0, end };
        }
        polled
    }
}
