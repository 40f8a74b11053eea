//! The joined tunnel: one task copies both directions between two upgraded connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::ReadBuf;
use tokio::time::{Instant, Sleep};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use super::leg::{self, Leg, Prefixed};
#[cfg(target_os = "linux")]
use super::splice;
use super::{TunnelEnd, TunnelStats, pool};
use crate::websocket::{self, FrameTracker};

/// Time a draining tunnel gets to finish the frame in flight, write its close frames and
/// read the peers' replies, before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Settings of one joined tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) half_close_timeout: Option<Duration>,
    pub(crate) buffer_size: usize,
    pub(crate) websocket: bool,
    /// Splice between bare sockets (Linux).
    pub(crate) splice: bool,
}

pin_project! {
    /// A joined tunnel's relay, whatever its two ends turned out to be: bare sockets (then
    /// splice applies) or hyper's wrappers (e.g. under another server).
    #[project = RelayProj]
    pub(crate) enum Relay {
        Sockets { #[pin] duplex: Duplex<Prefixed, Prefixed> },
        UpstreamWrapped { #[pin] duplex: Duplex<Prefixed, TokioIo<Upgraded>> },
        Wrapped { #[pin] duplex: Duplex<TokioIo<Upgraded>, TokioIo<Upgraded>> },
    }
}

impl Relay {
    /// Joins two upgraded connections, recovering their sockets when it can.
    pub(crate) fn new(client: Upgraded, upstream: Upgraded, settings: Settings) -> Self {
        match leg::unwrap_socket(client) {
            Ok(client) => match leg::unwrap_socket(upstream) {
                Ok(upstream) => Self::Sockets {
                    duplex: Duplex::new(client, upstream, settings),
                },
                Err(upstream) => Self::UpstreamWrapped {
                    duplex: Duplex::new(client, TokioIo::new(upstream), settings),
                },
            },
            Err(client) => Self::Wrapped {
                duplex: Duplex::new(TokioIo::new(client), TokioIo::new(upstream), settings),
            },
        }
    }

    /// See [`Duplex::start_drain`].
    pub(crate) fn start_drain(self: Pin<&mut Self>) {
        match self.project() {
            RelayProj::Sockets { duplex } => duplex.start_drain(),
            RelayProj::UpstreamWrapped { duplex } => duplex.start_drain(),
            RelayProj::Wrapped { duplex } => duplex.start_drain(),
        }
    }
}

impl Future for Relay {
    type Output = TunnelStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        match self.project() {
            RelayProj::Sockets { duplex } => duplex.poll(cx),
            RelayProj::UpstreamWrapped { duplex } => duplex.poll(cx),
            RelayProj::Wrapped { duplex } => duplex.poll(cx),
        }
    }
}

pin_project! {
    /// Both directions of a tunnel as one future.
    pub(crate) struct Duplex<C, U> {
        client: C,
        upstream: U,
        to_upstream: Half,
        to_client: Half,
        settings: Settings,
        last_activity: Instant,
        half_closed_at: Option<Instant>,
        first_close: Option<TunnelEnd>,
        draining: bool,
        // Set on drain: the relay ends here even if a peer does not read its close frame.
        drain_deadline: Option<Instant>,
        down_first: bool,
        #[pin]
        timer: Sleep,
    }
}

impl<C: Leg, U: Leg> Duplex<C, U> {
    pub(crate) fn new(client: C, upstream: U, settings: Settings) -> Self {
        let now = Instant::now();
        Self {
            client,
            upstream,
            to_upstream: Half::new(&settings, true),
            to_client: Half::new(&settings, false),
            settings,
            last_activity: now,
            half_closed_at: None,
            first_close: None,
            draining: false,
            drain_deadline: None,
            down_first: false,
            timer: tokio::time::sleep_until(now + Duration::from_secs(3600)),
        }
    }

    /// Drains: each WebSocket direction finishes the frame in flight, sends a `1001` close
    /// frame, shuts down and reads until the peer's reply; an opaque direction shuts down at
    /// once. After [`CLOSE_GRACE`] the relay ends whatever is left.
    pub(crate) fn start_drain(self: Pin<&mut Self>) {
        let this = self.project();
        if !*this.draining {
            *this.draining = true;
            *this.drain_deadline = Some(Instant::now() + CLOSE_GRACE);
        }
    }

    fn stats(&self, end: TunnelEnd) -> TunnelStats {
        TunnelStats {
            end,
            upstream_bytes: self.to_upstream.bytes,
            downstream_bytes: self.to_client.bytes,
        }
    }

    fn next_deadline(&self) -> Option<(Instant, TunnelEnd)> {
        let idle = self
            .settings
            .idle_timeout
            .map(|t| (self.last_activity + t, TunnelEnd::IdleTimeout));
        let half = self
            .half_closed_at
            .zip(self.settings.half_close_timeout)
            .map(|(at, t)| (at + t, TunnelEnd::HalfCloseTimeout));
        let drain = self.drain_deadline.map(|at| (at, TunnelEnd::Drain));
        [idle, half, drain]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }
}

impl<C: Leg, U: Leg> Future for Duplex<C, U> {
    type Output = TunnelStats;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        let mut moved = false;
        let this = self.as_mut().project();
        let draining = *this.draining;
        // Each direction goes first every other time: one that always has bytes (a flood)
        // would otherwise use up the task's I/O budget on every poll and starve the other.
        *this.down_first = !*this.down_first;
        let (mut up, mut down) = (Poll::Pending, Poll::Pending);
        for upstream_turn in [!*this.down_first, *this.down_first] {
            if upstream_turn {
                up = this.to_upstream.poll_copy(
                    cx,
                    Pin::new(&mut *this.client),
                    Pin::new(&mut *this.upstream),
                    draining,
                    &mut moved,
                );
            } else {
                down = this.to_client.poll_copy(
                    cx,
                    Pin::new(&mut *this.upstream),
                    Pin::new(&mut *this.client),
                    draining,
                    &mut moved,
                );
            }
        }
        if let Poll::Ready(Err(e)) = &up {
            tracing::debug!(error = %e, "tunnel: client to upstream failed");
            return Poll::Ready(self.stats(TunnelEnd::Error));
        }
        if let Poll::Ready(Err(e)) = &down {
            tracing::debug!(error = %e, "tunnel: upstream to client failed");
            return Poll::Ready(self.stats(TunnelEnd::Error));
        }
        let now = Instant::now();
        if moved {
            *this.last_activity = now;
        }
        if this.first_close.is_none() {
            if this.to_upstream.eof {
                *this.first_close = Some(TunnelEnd::ClientClosed);
            } else if this.to_client.eof {
                *this.first_close = Some(TunnelEnd::UpstreamClosed);
            }
        }
        match (up.is_ready(), down.is_ready()) {
            (true, true) => {
                let end = if draining {
                    TunnelEnd::Drain
                } else {
                    this.first_close.unwrap_or(TunnelEnd::ClientClosed)
                };
                return Poll::Ready(self.stats(end));
            }
            (true, false) | (false, true) if this.half_closed_at.is_none() => {
                *this.half_closed_at = Some(now);
            }
            _ => {}
        }

        loop {
            let Some((deadline, end)) = self.next_deadline() else {
                return Poll::Pending;
            };
            if deadline <= now {
                return Poll::Ready(self.stats(end));
            }
            let mut timer = self.as_mut().project().timer;
            // Activity only ever moves the idle deadline later: leave the timer where it is
            // and re-arm it when it fires early, rather than touch the timer wheel on every
            // read.
            if timer.deadline() > deadline || timer.is_elapsed() {
                timer.as_mut().reset(deadline);
            }
            if timer.poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// One direction: read from one side, write to the other, through a buffer lent while it
/// holds bytes or, between two sockets, through a spliced pipe.
struct Half {
    /// Lent from the pool while it holds unwritten bytes (or for one read attempt).
    buf: Option<Box<[u8]>>,
    size: usize,
    pos: usize,
    cap: usize,
    /// Lent while it holds spliced bytes not yet written.
    #[cfg(target_os = "linux")]
    pipe: Option<splice::Pipe>,
    splice: bool,
    /// The last WebSocket frame seen was large: peek at the next header to splice it whole.
    /// Small frames go through the buffer, many per read, without a peek each.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    bulk: bool,
    /// The reader reached end of stream.
    eof: bool,
    /// The writer was shut down.
    shut: bool,
    /// This direction is finished.
    done: bool,
    need_flush: bool,
    /// The bytes in `buf[pos..cap]` are a close frame Switchback made, not relayed payload.
    injected: bool,
    close_queued: bool,
    bytes: u64,
    frames: Option<FrameTracker>,
    /// Whether this direction goes to the upstream (a client-to-server WebSocket direction,
    /// whose frames are masked).
    to_upstream: bool,
}

/// Frame payload shorter than this is copied rather than spliced: for small frames the
/// header reads would cost more than the splice saves.
const SPLICE_MIN: u64 = 16 * 1024;

impl Half {
    fn new(settings: &Settings, to_upstream: bool) -> Self {
        Self {
            buf: None,
            size: settings.buffer_size,
            pos: 0,
            cap: 0,
            #[cfg(target_os = "linux")]
            pipe: None,
            splice: settings.splice,
            bulk: false,
            eof: false,
            shut: false,
            done: false,
            need_flush: false,
            injected: false,
            close_queued: false,
            bytes: 0,
            frames: settings.websocket.then(FrameTracker::new),
            to_upstream,
        }
    }

    fn poll_copy<R: Leg, W: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        draining: bool,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_write_buf(cx, writer.as_mut(), moved))?;
            #[cfg(target_os = "linux")]
            ready!(self.poll_write_pipe(cx, writer.socket(), moved))?;

            // Draining stops reading at the next frame boundary (a frame in flight is
            // finished, so that the close frame can follow it), or at once on opaque streams.
            let limit = match &self.frames {
                Some(f) if draining && !self.eof && !self.close_queued => f.to_boundary(),
                _ if draining => 0,
                _ => u64::MAX,
            };
            if self.eof || limit == 0 {
                if draining
                    && !self.close_queued
                    && self.frames.as_ref().is_some_and(FrameTracker::at_boundary)
                {
                    self.queue_close();
                    continue;
                }
                if !self.shut {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    // The peer may already be gone; a failed FIN changes nothing for the tunnel.
                    let _ = ready!(writer.as_mut().poll_shutdown(cx));
                    self.shut = true;
                }
                if draining {
                    ready!(self.poll_linger(cx, reader.as_mut()));
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }

            #[cfg(target_os = "linux")]
            if let (true, Some(from), Some(_)) = (self.splice, reader.socket(), writer.socket()) {
                match self.poll_splice_in(cx, from) {
                    Poll::Ready(Ok(true)) => continue,
                    Poll::Ready(Ok(false)) => {} // small frames: copy them
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.poll_idle(cx, writer),
                }
            }

            let buf = self.buf.get_or_insert_with(|| pool::take(self.size));
            let len = usize::try_from(limit).map_or(buf.len(), |l| l.min(buf.len()));
            let mut read = ReadBuf::new(&mut buf[..len]);
            let polled = reader.as_mut().poll_read(cx, &mut read);
            let n = read.filled().len();
            if n == 0 {
                // Nothing to hold on to: an idle direction keeps no buffer.
                if let Some(buf) = self.buf.take() {
                    pool::give(buf);
                }
            }
            match polled {
                Poll::Ready(Ok(())) if n == 0 => self.eof = true,
                Poll::Ready(Ok(())) => self.cap = n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.poll_idle(cx, writer),
            }
        }
    }

    /// After a drain's close frame: reads and drops what the peer still sends until its own
    /// close frame (the reply) or end of stream. Closing a socket with unread bytes resets the
    /// connection, and a reset can destroy the close frame before the peer reads it.
    fn poll_linger<R: Leg>(&mut self, cx: &mut Context<'_>, mut reader: Pin<&mut R>) -> Poll<()> {
        while !self.eof && !self.frames.as_ref().is_some_and(FrameTracker::close_seen) {
            let buf = self.buf.get_or_insert_with(|| pool::take(self.size));
            let mut read = ReadBuf::new(buf);
            let polled = reader.as_mut().poll_read(cx, &mut read);
            if let Some(frames) = &mut self.frames {
                frames.feed(read.filled());
            }
            let n = read.filled().len();
            if let Some(buf) = self.buf.take() {
                pool::give(buf);
            }
            match polled {
                Poll::Ready(Ok(())) if n == 0 => self.eof = true,
                Poll::Ready(Ok(())) => {}
                // A reset peer has nothing more to say.
                Poll::Ready(Err(_)) => self.eof = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    /// Nothing to read: flush what was written, give back an empty pipe, wait.
    fn poll_idle<W: Leg>(&mut self, cx: &mut Context<'_>, mut writer: Pin<&mut W>) -> Poll<io::Result<()>> {
        #[cfg(target_os = "linux")]
        if let Some(pipe) = self.pipe.take_if(|p| p.held == 0) {
            pipe.give();
        }
        if self.need_flush {
            ready!(writer.as_mut().poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Pending
    }

    /// Writes out the buffer's bytes, then gives the buffer back.
    fn poll_write_buf<W: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        let Some(buf) = &self.buf else {
            return Poll::Ready(Ok(()));
        };
        while self.pos < self.cap {
            let n = ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if !self.injected {
                if let Some(frames) = &mut self.frames {
                    frames.feed(&buf[self.pos..self.pos + n]);
                    // A large frame began in the buffer: splice its rest, and peek at the next.
                    self.bulk = frames.payload_left() >= SPLICE_MIN;
                }
                self.bytes += n as u64;
                *moved = true;
            }
            self.pos += n;
            self.need_flush = true;
        }
        self.pos = 0;
        self.cap = 0;
        self.injected = false;
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
        Poll::Ready(Ok(()))
    }

    /// Writes out what the pipe holds.
    #[cfg(target_os = "linux")]
    fn poll_write_pipe(
        &mut self,
        cx: &mut Context<'_>,
        to: Option<&tokio::net::TcpStream>,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        let (Some(pipe), Some(to)) = (&mut self.pipe, to) else {
            return Poll::Ready(Ok(()));
        };
        while pipe.held > 0 {
            // The frame tracker counted these bytes on their way in.
            let n = ready!(pipe.poll_drain(cx, to))?;
            self.bytes += n as u64;
            *moved = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Splices the next bytes from `from` into the pipe, if they should be spliced: `Ok(true)`
    /// when something was taken in (or the stream ended), `Ok(false)` when the next bytes are
    /// better copied (a small WebSocket frame).
    ///
    /// An opaque stream is spliced as it comes. A WebSocket stream is spliced only as far as
    /// frame lengths are known: at a frame boundary the next header is peeked, and a large
    /// frame is spliced whole, header and payload in one call (the tracker is fed the peeked
    /// header), so that the pipe never holds the start of a frame it can't see the end of.
    #[cfg(target_os = "linux")]
    fn poll_splice_in(
        &mut self,
        cx: &mut Context<'_>,
        from: &tokio::net::TcpStream,
    ) -> Poll<io::Result<bool>> {
        let mut head = [0u8; 14];
        let mut header = None;
        let max = match &self.frames {
            None => splice::CHUNK,
            Some(f) if f.at_boundary() => {
                if !self.bulk {
                    return Poll::Ready(Ok(false));
                }
                let Some((len, payload)) = ready!(self.poll_peek_header(cx, from, &mut head))? else {
                    return Poll::Ready(Ok(false));
                };
                header = Some(len);
                usize::try_from(payload)
                    .ok()
                    .and_then(|p| p.checked_add(len))
                    .map_or(splice::CHUNK, |n| n.min(splice::CHUNK))
            }
            Some(f) if f.payload_left() >= SPLICE_MIN => {
                usize::try_from(f.payload_left()).map_or(splice::CHUNK, |n| n.min(splice::CHUNK))
            }
            Some(_) => return Poll::Ready(Ok(false)),
        };
        let pipe = match self.pipe.take() {
            Some(p) => p,
            None => splice::Pipe::take()?,
        };
        let pipe = self.pipe.insert(pipe);
        let n = match ready!(pipe.poll_fill(cx, from, max))? {
            0 => {
                self.eof = true;
                return Poll::Ready(Ok(true));
            }
            n => n,
        };
        if let Some(frames) = &mut self.frames {
            // The peeked header went in first; the tracker sees it as if copied (a short
            // splice leaves it mid-header, and the copy path reads the rest).
            let fed = header.map_or(0, |len| len.min(n));
            frames.feed(&head[..fed]);
            frames.skip((n - fed) as u64);
        }
        Poll::Ready(Ok(true))
    }

    /// At a frame boundary: peeks the next header. `None` when it is better copied: the
    /// stream ended, the header isn't all there yet, or the frame is small (which also ends
    /// the peeking until a large frame shows up in the buffer again).
    #[cfg(target_os = "linux")]
    fn poll_peek_header(
        &mut self,
        cx: &mut Context<'_>,
        from: &tokio::net::TcpStream,
        head: &mut [u8; 14],
    ) -> Poll<io::Result<Option<(usize, u64)>>> {
        let mut peeked = ReadBuf::new(head);
        let n = ready!(from.poll_peek(cx, &mut peeked))?;
        Poll::Ready(Ok(match websocket::header_len(&head[..n]) {
            Some((len, payload)) if payload >= SPLICE_MIN => Some((len, payload)),
            Some(_) => {
                self.bulk = false;
                None
            }
            None => None,
        }))
    }

    fn queue_close(&mut self) {
        self.close_queued = true;
        self.injected = true;
        let frame = super::going_away(self.to_upstream);
        let buf = self.buf.get_or_insert_with(|| pool::take(self.size));
        buf[..frame.len()].copy_from_slice(&frame);
        self.pos = 0;
        self.cap = frame.len();
    }
}
