//! The joined tunnel: one task copies both directions between two upgraded connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::ReadBuf;
use tokio::time::{Instant, Sleep};

use super::leg::{self, Leg};
#[cfg(target_os = "linux")]
use super::splice;
use super::{TunnelEnd, TunnelStats, pool};
use crate::drain::TunnelGuard;
use crate::websocket::{self, FrameTracker};

/// Time a draining tunnel gets to write its close frames before it is dropped.
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

/// Relays between `client` and `upstream` until both directions are closed, a timer fires or
/// the drain deadline passes.
pub(crate) async fn run<C, U>(client: C, upstream: U, settings: Settings, guard: &TunnelGuard) -> TunnelStats
where
    C: Leg,
    U: Leg,
{
    let duplex = Duplex::new(client, upstream, settings);
    tokio::pin!(duplex);
    tokio::select! {
        stats = duplex.as_mut() => stats,
        () = guard.closing() => {
            duplex.as_mut().start_drain();
            match tokio::time::timeout(CLOSE_GRACE, duplex.as_mut()).await {
                Ok(stats) => stats,
                Err(_) => duplex.stats(TunnelEnd::Drain),
            }
        }
    }
}

/// Relays between two upgraded connections, as bare sockets when both can be recovered (then
/// splice applies), through hyper's wrappers otherwise (e.g. under another server).
pub(crate) async fn join(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    settings: Settings,
    guard: &TunnelGuard,
) -> TunnelStats {
    use hyper_util::rt::TokioIo;
    match leg::unwrap_socket(client) {
        Ok(client) => match leg::unwrap_socket(upstream) {
            Ok(upstream) => run(client, upstream, settings, guard).await,
            Err(upstream) => run(client, TokioIo::new(upstream), settings, guard).await,
        },
        Err(client) => run(TokioIo::new(client), TokioIo::new(upstream), settings, guard).await,
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
            timer: tokio::time::sleep_until(now + Duration::from_secs(3600)),
        }
    }

    /// Stops reading; each direction flushes what it holds, sends a WebSocket close frame if
    /// it is between frames, and shuts down.
    pub(crate) fn start_drain(self: Pin<&mut Self>) {
        *self.project().draining = true;
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
        match (idle, half) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

impl<C: Leg, U: Leg> Future for Duplex<C, U> {
    type Output = TunnelStats;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        let mut moved = false;
        let this = self.as_mut().project();
        let draining = *this.draining;
        let up = this.to_upstream.poll_copy(
            cx,
            Pin::new(this.client),
            Pin::new(this.upstream),
            draining,
            &mut moved,
        );
        let down = this.to_client.poll_copy(
            cx,
            Pin::new(this.upstream),
            Pin::new(this.client),
            draining,
            &mut moved,
        );
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
            if timer.deadline() != deadline {
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
    /// The writer was shut down; this direction is finished.
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

            if self.eof || draining {
                if draining
                    && !self.close_queued
                    && self.frames.as_ref().is_some_and(FrameTracker::at_boundary)
                {
                    self.queue_close();
                    continue;
                }
                ready!(writer.as_mut().poll_flush(cx))?;
                // The peer may already be gone; a failed FIN changes nothing for the tunnel.
                let _ = ready!(writer.as_mut().poll_shutdown(cx));
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
            let mut read = ReadBuf::new(buf);
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
    /// An opaque stream is spliced as it comes. A WebSocket stream is spliced only inside
    /// frame payload whose length is known: at a frame boundary the next header is peeked, and
    /// for a large frame exactly the header is read (the tracker sees it) and put in the pipe
    /// ahead of its payload, so that the two leave in one splice.
    #[cfg(target_os = "linux")]
    fn poll_splice_in(
        &mut self,
        cx: &mut Context<'_>,
        from: &tokio::net::TcpStream,
    ) -> Poll<io::Result<bool>> {
        let mut took_header = false;
        if self.frames.as_ref().is_some_and(FrameTracker::at_boundary) {
            if !self.bulk || !ready!(self.poll_read_header(cx, from))? {
                return Poll::Ready(Ok(false));
            }
            took_header = true;
        }
        let max = match &self.frames {
            None => splice::CHUNK,
            Some(f) if f.payload_left() >= SPLICE_MIN || (took_header && f.payload_left() > 0) => {
                usize::try_from(f.payload_left()).map_or(splice::CHUNK, |n| n.min(splice::CHUNK))
            }
            Some(_) => return Poll::Ready(Ok(took_header)),
        };
        let pipe = match self.pipe.take() {
            Some(p) => p,
            None => splice::Pipe::take()?,
        };
        let pipe = self.pipe.insert(pipe);
        match pipe.poll_fill(cx, from, max) {
            Poll::Ready(Ok(0)) => self.eof = true,
            Poll::Ready(Ok(n)) => {
                if let Some(frames) = &mut self.frames {
                    frames.skip(n as u64);
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            // The header waits in the pipe for its payload, or goes alone if that is slow.
            Poll::Pending if took_header => {}
            Poll::Pending => return Poll::Pending,
        }
        Poll::Ready(Ok(true))
    }

    /// At a frame boundary: peeks the next header, and for a frame worth splicing reads the
    /// header into the pipe.
    #[cfg(target_os = "linux")]
    fn poll_read_header(
        &mut self,
        cx: &mut Context<'_>,
        from: &tokio::net::TcpStream,
    ) -> Poll<io::Result<bool>> {
        let mut head = [0u8; 14];
        let mut peeked = ReadBuf::new(&mut head);
        let n = ready!(from.poll_peek(cx, &mut peeked))?;
        if n == 0 {
            // End of stream: the copy path reads it as such.
            return Poll::Ready(Ok(false));
        }
        let Some((len, payload)) = websocket::header_len(&head[..n]) else {
            return Poll::Ready(Ok(false));
        };
        if payload < SPLICE_MIN {
            self.bulk = false;
            return Poll::Ready(Ok(false));
        }
        // The header is in the socket's queue: this read takes exactly it.
        let read = match from.try_read(&mut head[..len]) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Ready(Ok(false)),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Some(frames) = &mut self.frames {
            frames.feed(&head[..read]);
        }
        let mut pipe = match self.pipe.take() {
            Some(p) => p,
            None => splice::Pipe::take()?,
        };
        pipe.push(&head[..read])?;
        self.pipe = Some(pipe);
        Poll::Ready(Ok(true))
    }

    fn queue_close(&mut self) {
        self.close_queued = true;
        self.injected = true;
        let frame: &[u8] = if self.to_upstream {
            &websocket::client_close_frame(websocket::GOING_AWAY, mask())
        } else {
            &websocket::server_close_frame(websocket::GOING_AWAY)
        };
        let buf = self.buf.get_or_insert_with(|| pool::take(self.size));
        buf[..frame.len()].copy_from_slice(frame);
        self.pos = 0;
        self.cap = frame.len();
    }
}

/// A masking key for a close frame Switchback sends upstream. RFC 6455 wants it unpredictable
/// to stop cache poisoning through naive intermediaries; the std hasher's random seed is enough
/// for four bytes on a frame whose content is fixed.
pub(crate) fn mask() -> [u8; 4] {
    use std::hash::{BuildHasher, RandomState};
    let v = RandomState::new().hash_one(std::time::SystemTime::now());
    (v as u32).to_ne_bytes()
}
