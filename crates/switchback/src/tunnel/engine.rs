//! The tunnel engine: both directions of one tunnel as one future, and every rule a tunnel
//! follows, written once for every kind of end ([`Leg`]).
//!
//! - Half-close: a direction whose source ends shuts its sink down (a FIN one way) while the
//!   other keeps flowing, for at most [`Settings::half_close_timeout`].
//! - Idle timeout: no byte moved either way for [`Settings::idle_timeout`].
//! - Longest life: a tunnel older than [`Settings::max_duration`] closes as on a drain.
//! - Drain: each WebSocket direction finishes the frame in flight, sends a `1001` close frame,
//!   shuts down and reads until the peer's reply (a close with unread bytes would reset the
//!   connection and could destroy the close frame); an opaque direction shuts down at once.
//!   After [`CLOSE_GRACE`] the tunnel ends whatever is left.
//! - Fairness: the directions take turns going first, so a flood one way can't use up the
//!   task's I/O budget and starve the other.
//! - Nothing read is dropped: a direction reads again only once what it holds is written.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::gate::{Gate, PONG_LEN, Verdict};
use super::held::Held;
use super::leg::Leg;
#[cfg(target_os = "linux")]
use super::splice;
use super::{CloseFrame, ClosedBy, TunnelEnd, TunnelStats};
use crate::websocket::{self, FrameTracker};
use crate::ws::{FrameBucket, WebSocketLimits};

/// Time a draining tunnel gets to finish the frame in flight, write its close frames and
/// read the peers' replies, before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frame payload shorter than this is copied rather than spliced: for small frames the
/// header reads would cost more than the splice saves.
#[cfg(target_os = "linux")]
const SPLICE_MIN: u64 = 16 * 1024;

/// Settings of one tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) half_close_timeout: Option<Duration>,
    /// The longest a tunnel may live (Envoy's `max_stream_duration`).
    pub(crate) max_duration: Option<Duration>,
    pub(crate) buffer_size: usize,
    /// Follow WebSocket frames (drain puts close frames between them).
    pub(crate) websocket: bool,
    /// Splice between bare sockets (Linux).
    pub(crate) splice: bool,
    /// WebSocket limits (with `websocket` only).
    pub(crate) limits: WebSocketLimits,
}

impl Settings {
    /// These settings with WebSocket `limits`.
    pub(crate) fn with_limits(mut self, limits: WebSocketLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// Which way a direction carries bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

pin_project! {
    /// Both directions of a tunnel as one future, ending with what it relayed.
    pub(crate) struct Duplex<C, U> {
        client: C,
        upstream: U,
        to_upstream: Half,
        to_client: Half,
        idle_timeout: Option<Duration>,
        half_close_timeout: Option<Duration>,
        last_activity: Instant,
        half_closed_at: Option<Instant>,
        first_close: Option<TunnelEnd>,
        // The first WebSocket close frame either way, the proxy's own included.
        close_frame: Option<CloseFrame>,
        // The client's frame budget, when its rate is limited.
        frame_budget: Option<FrameBucket>,
        // Pings to a quiet client, when on.
        keepalive: Option<Keepalive>,
        life: Life,
        down_first: bool,
        #[pin]
        timer: Sleep,
    }
}

/// Where a tunnel stands: running (until `expires`, its longest life, if it has one), or
/// closing.
#[derive(Debug, Clone, Copy)]
enum Life {
    Running {
        expires: Option<Instant>,
    },
    /// Closing for `why` (a drain, or the longest life reached); ends at `deadline` whatever
    /// is left.
    Closing {
        deadline: Instant,
        why: TunnelEnd,
    },
}

impl<C: Leg, U: Leg> Duplex<C, U> {
    pub(crate) fn new(client: C, upstream: U, settings: Settings) -> Self {
        let now = Instant::now();
        let keepalive = settings.limits.keepalive().filter(|_| settings.websocket);
        // What `next_deadline` and `keepalive_deadline` will say on the first poll.
        let first = [
            settings.idle_timeout,
            settings.max_duration,
            keepalive.map(|(interval, _)| interval),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|after| now + after);
        Self {
            client,
            upstream,
            to_upstream: Half::new(&settings, Direction::ToUpstream),
            to_client: Half::new(&settings, Direction::ToClient),
            idle_timeout: settings.idle_timeout,
            half_close_timeout: settings.half_close_timeout,
            last_activity: now,
            half_closed_at: None,
            first_close: None,
            close_frame: None,
            frame_budget: settings
                .websocket
                .then(|| settings.limits.frame_bucket())
                .flatten(),
            keepalive: keepalive.map(|(interval, timeout)| Keepalive {
                interval,
                timeout,
                heard: 0,
                quiet_since: now,
                ping_sent: None,
            }),
            life: Life::Running {
                expires: settings.max_duration.map(|d| now + d),
            },
            down_first: false,
            // Armed at its first deadline from the start (a timer not yet polled is not in the
            // timer wheel), rather than re-armed by the first poll.
            timer: tokio::time::sleep_until(first.unwrap_or(now + Duration::from_secs(3600))),
        }
    }

    /// Starts closing the tunnel for a drain (see the module docs).
    pub(crate) fn start_drain(self: Pin<&mut Self>) {
        self.project().life.close(TunnelEnd::Drain);
    }

    /// Bytes relayed so far: from the client, to the client.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (self.to_upstream.bytes, self.to_client.bytes)
    }

    fn stats(&self, end: TunnelEnd) -> TunnelStats {
        let messages = |half: &Half| half.frames.as_ref().map_or(0, FrameTracker::messages);
        TunnelStats {
            end,
            upstream_bytes: self.to_upstream.bytes,
            downstream_bytes: self.to_client.bytes,
            upstream_messages: messages(&self.to_upstream),
            downstream_messages: messages(&self.to_client),
            close: self.close_frame,
        }
    }

    fn next_deadline(&self) -> Option<(Instant, TunnelEnd)> {
        let idle = self
            .idle_timeout
            .map(|t| (self.last_activity + t, TunnelEnd::IdleTimeout));
        let half = self
            .half_closed_at
            .zip(self.half_close_timeout)
            .map(|(at, t)| (at + t, TunnelEnd::HalfCloseTimeout));
        let life = match self.life {
            Life::Running { expires } => expires.map(|at| (at, TunnelEnd::MaxDuration)),
            Life::Closing { deadline, why } => Some((deadline, why)),
        };
        [idle, half, life].into_iter().flatten().min_by_key(|(at, _)| *at)
    }

    /// When the keepalive next has something to do (send a ping, or give up on its pong).
    fn keepalive_deadline(&self) -> Option<Instant> {
        let k = self.keepalive.as_ref()?;
        Some(match k.ping_sent {
            None => k.quiet_since + k.interval,
            Some(sent) => sent + k.timeout,
        })
    }
}

/// Pings to a client that has gone quiet.
#[derive(Debug)]
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    /// The client's bytes relayed when it was last heard from.
    heard: u64,
    quiet_since: Instant,
    /// When the unanswered ping went out.
    ping_sent: Option<Instant>,
}

impl<C: Leg, U: Leg> Future for Duplex<C, U> {
    type Output = TunnelStats;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelStats> {
        let mut moved = false;
        let this = self.as_mut().project();
        let closing = match this.life {
            Life::Closing { why, .. } => Some(*why),
            Life::Running { .. } => None,
        };
        // Each direction goes first every other time: one that always has bytes (a flood)
        // would otherwise use up the task's I/O budget on every poll and starve the other.
        *this.down_first = !*this.down_first;
        let (mut up, mut down) = (Poll::Pending, Poll::Pending);
        for upstream_turn in [!*this.down_first, *this.down_first] {
            if upstream_turn {
                let last = this.to_client.finished_by_its_source();
                let peer_closed = this.to_client.close_relayed();
                up = this.to_upstream.poll_relay(
                    cx,
                    &mut *this.client,
                    &mut *this.upstream,
                    Turn {
                        closing,
                        last,
                        peer_closed,
                    },
                    &mut moved,
                );
            } else {
                let last = this.to_upstream.finished_by_its_source();
                let peer_closed = this.to_upstream.close_relayed();
                down = this.to_client.poll_relay(
                    cx,
                    &mut *this.upstream,
                    &mut *this.client,
                    Turn {
                        closing,
                        last,
                        peer_closed,
                    },
                    &mut moved,
                );
            }
        }
        for (polled, way) in [(&up, "client to upstream"), (&down, "upstream to client")] {
            if let Poll::Ready(Err(e)) = polled {
                tracing::debug!(error = %e, "tunnel: {way} failed");
                return Poll::Ready(self.stats(TunnelEnd::Error));
            }
        }
        if moved {
            *this.last_activity = Instant::now();
        }
        // A message past its limit: the direction that carried it has stopped before it; the
        // tunnel closes as a drain does (`1009` to its sender).
        for (half, why) in [
            (&*this.to_upstream, TunnelEnd::ClientMessageTooBig),
            (&*this.to_client, TunnelEnd::UpstreamMessageTooBig),
        ] {
            if half.gate.as_ref().is_some_and(|g| g.too_big) {
                close_for_limit(this.life, this.close_frame, why, websocket::MESSAGE_TOO_BIG, cx);
            }
        }
        if let (Some(budget), Some(frames)) = (this.frame_budget.as_mut(), &this.to_upstream.frames)
            && !budget.allows(frames.frames())
        {
            // Past its frame rate, the client is closed as a drain closes: frames in flight
            // finish, then `1008` to it and `1001` upstream.
            *this.frame_budget = None;
            let why = TunnelEnd::RateLimited;
            close_for_limit(this.life, this.close_frame, why, websocket::POLICY_VIOLATION, cx);
        }
        if let Some(k) = this.keepalive.as_mut() {
            let now = Instant::now();
            // Any byte from the client, or its pong, says it is there.
            if this.to_upstream.bytes != k.heard || std::mem::take(&mut this.to_upstream.pong_seen) {
                k.heard = this.to_upstream.bytes;
                k.quiet_since = now;
                k.ping_sent = None;
                if let Some(gate) = &mut this.to_upstream.gate {
                    gate.pong = None;
                }
            }
            match k.ping_sent {
                _ if !matches!(this.life, Life::Running { .. }) => *this.keepalive = None,
                None if now >= k.quiet_since + k.interval => {
                    let payload: [u8; 8] = rand::random();
                    this.to_client.inject = Some(ping_frame(payload));
                    if let Some(gate) = &mut this.to_upstream.gate {
                        gate.pong = Some(payload);
                    }
                    k.ping_sent = Some(now);
                    cx.waker().wake_by_ref();
                }
                Some(sent) if now >= sent + k.timeout => {
                    *this.keepalive = None;
                    this.life.close(TunnelEnd::PongTimeout);
                    cx.waker().wake_by_ref();
                }
                _ => {}
            }
        }
        if this.close_frame.is_none() {
            *this.close_frame = first_close_frame(this.to_upstream, this.to_client);
        }
        if this.first_close.is_none() {
            if this.to_upstream.source_ended {
                *this.first_close = Some(TunnelEnd::ClientClosed);
            } else if this.to_client.source_ended {
                *this.first_close = Some(TunnelEnd::UpstreamClosed);
            }
        }
        // A WebSocket whose closing handshake is over (a close frame relayed each way) ends
        // when either peer closes its connection: nothing more may come from the other, and
        // as the client's server Switchback closes first (RFC 6455 §7.1.1), without a
        // half-close and a wait for the client's own end.
        let shaken = this.to_upstream.close_relayed() && this.to_client.close_relayed();
        let ended_after_handshake = shaken
            && matches!(this.life, Life::Running { .. })
            && ((up.is_ready() && this.to_upstream.finished_by_its_source())
                || (down.is_ready() && this.to_client.finished_by_its_source()));
        match (up.is_ready(), down.is_ready()) {
            (true, true) => {
                let end = match this.life {
                    Life::Closing { why, .. } => *why,
                    Life::Running { .. } => this.first_close.unwrap_or(TunnelEnd::ClientClosed),
                };
                return Poll::Ready(self.stats(end));
            }
            _ if ended_after_handshake => {
                let end = this.first_close.unwrap_or(TunnelEnd::ClientClosed);
                return Poll::Ready(self.stats(end));
            }
            (true, false) | (false, true) if this.half_closed_at.is_none() => {
                *this.half_closed_at = Some(Instant::now());
            }
            _ => {}
        }

        loop {
            let tick = self.keepalive_deadline();
            let Some((deadline, end)) = self.next_deadline() else {
                if let Some(tick) = tick {
                    let mut timer = self.as_mut().project().timer;
                    if timer.deadline() > tick || timer.is_elapsed() {
                        timer.as_mut().reset(tick);
                    }
                    if timer.poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                }
                return Poll::Pending;
            };
            // The keepalive's next step comes first: wake for it (it is handled above).
            if let Some(tick) = tick.filter(|&t| t < deadline) {
                let mut timer = self.as_mut().project().timer;
                if timer.deadline() > tick || timer.is_elapsed() {
                    timer.as_mut().reset(tick);
                }
                if timer.poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            // Read the clock on every turn: a timer that fired means time has moved on.
            if deadline <= Instant::now() {
                let life = self.as_mut().project().life;
                if let (TunnelEnd::MaxDuration, Life::Running { .. }) = (end, *life) {
                    // The longest life closes the tunnel as a drain does, frames kept whole:
                    // poll again, closing.
                    life.close(TunnelEnd::MaxDuration);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
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

/// A ping as a server sends it (unmasked), with `payload`.
fn ping_frame(payload: [u8; 8]) -> bytes::Bytes {
    let mut frame = vec![0x89, 0x08];
    frame.extend_from_slice(&payload);
    frame.into()
}

/// A limit was passed (`why`): the tunnel closes as a drain does, once, and the close frame
/// that says so (`code`, to the peer past the limit) is the one reported, unless a peer
/// closed first. The `1001` the stopped direction may already have queued towards the other
/// side is not the news.
fn close_for_limit(
    life: &mut Life,
    first: &mut Option<CloseFrame>,
    why: TunnelEnd,
    code: u16,
    cx: &Context<'_>,
) {
    if !matches!(life, Life::Running { .. }) {
        return;
    }
    life.close(why);
    if first.is_none_or(|f| f.by == ClosedBy::Proxy) {
        *first = Some(CloseFrame {
            by: ClosedBy::Proxy,
            code: Some(code),
        });
    }
    cx.waker().wake_by_ref();
}

/// The tunnel's first close frame so far: a peer's, else one of Switchback's (the client's
/// first: it says why, where the upstream's is always `1001`).
fn first_close_frame(to_upstream: &Half, to_client: &Half) -> Option<CloseFrame> {
    let peer = |half: &Half, by| {
        Some(CloseFrame {
            by,
            code: half.frames.as_ref()?.close_code()?,
        })
    };
    let ours = |half: &Half| {
        half.sent_close.map(|code| CloseFrame {
            by: ClosedBy::Proxy,
            code: Some(code),
        })
    };
    peer(to_upstream, ClosedBy::Client)
        .or_else(|| peer(to_client, ClosedBy::Upstream))
        .or_else(|| ours(to_client))
        .or_else(|| ours(to_upstream))
}

impl Life {
    fn close(&mut self, why: TunnelEnd) {
        if let Life::Running { .. } = self {
            *self = Life::Closing {
                deadline: Instant::now() + CLOSE_GRACE,
                why,
            };
        }
    }
}

/// What a direction's turn knows of the tunnel.
#[derive(Debug, Clone, Copy)]
struct Turn {
    /// The tunnel is closing (for a drain, its longest life, or a limit): why.
    closing: Option<TunnelEnd>,
    /// The other direction ended with its source: this one is the last.
    last: bool,
    /// The other direction relayed a peer's whole WebSocket close frame: once this one has
    /// too, the closing handshake is over and nothing more may come either way.
    peer_closed: bool,
}

/// What one direction is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading from the source and writing to the sink.
    Copying,
    /// Draining: writing the `1001` close frame that `held` holds.
    Closing,
    /// Flushing and shutting the sink down (a FIN); then lingering, or done.
    ShuttingDown {
        linger: bool,
    },
    /// After a drain's close frame: reading the source until the peer's own close frame.
    Lingering,
    Done,
}

/// One direction: read from one end, write to the other, through what it holds (a lent
/// buffer or a body's chunk) or, between two sockets, through a spliced pipe.
#[derive(Debug)]
struct Half {
    phase: Phase,
    direction: Direction,
    held: Held,
    /// Lent while it holds spliced bytes not yet written.
    #[cfg(target_os = "linux")]
    pipe: Option<splice::Pipe>,
    splice: bool,
    /// The last WebSocket frame seen was large: peek at the next header to splice it whole.
    /// Small frames go through the buffer, many per read, without a peek each.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    bulk: bool,
    /// Relay buffers' size (at most 4 GiB: kept small, one of these sits in every tunnel).
    size: u32,
    /// The source reached its end (rather than a drain or an error ending this direction).
    source_ended: bool,
    /// The code of the close frame of Switchback's this direction's sink got.
    sent_close: Option<u16>,
    /// The code of the close frame this direction sends when the tunnel closes.
    close_code: u16,
    need_flush: bool,
    bytes: u64,
    frames: Option<FrameTracker>,
    /// The message size limit of what this direction carries, when there is one (and, on
    /// the client's direction with keepalive on, the pong watch).
    gate: Option<Gate>,
    /// A control frame of Switchback's (a ping) to write at the next frame boundary.
    inject: Option<bytes::Bytes>,
    /// What is held is Switchback's own frame, not relayed bytes.
    ours: bool,
    /// The client's pong to Switchback's ping was taken out of the stream.
    pong_seen: bool,
}

impl Half {
    fn new(settings: &Settings, direction: Direction) -> Self {
        Self {
            phase: Phase::Copying,
            direction,
            held: Held::Empty,
            #[cfg(target_os = "linux")]
            pipe: None,
            splice: settings.splice,
            bulk: false,
            size: u32::try_from(settings.buffer_size).unwrap_or(u32::MAX),
            source_ended: false,
            sent_close: None,
            close_code: websocket::GOING_AWAY,
            need_flush: false,
            bytes: 0,
            frames: settings.websocket.then(FrameTracker::new),
            gate: {
                let (client, upstream) = settings.limits.message_limits();
                let max = match direction {
                    Direction::ToUpstream => client,
                    Direction::ToClient => upstream,
                };
                // With keepalive on, the client's direction walks frames ahead of the writer
                // to take out the pongs to Switchback's pings, limit or not.
                let pongs = direction == Direction::ToUpstream && settings.limits.keepalive().is_some();
                match max {
                    Some(max) => Some(Gate::new(max)),
                    None if pongs => Some(Gate::new(u64::MAX)),
                    None => None,
                }
                .filter(|_| settings.websocket)
            },
            inject: None,
            ours: false,
            pong_seen: false,
        }
    }

    /// Whether this direction has relayed a peer's whole WebSocket close frame and holds
    /// nothing more to write.
    fn close_relayed(&self) -> bool {
        #[cfg(target_os = "linux")]
        let piped = self.pipe.as_ref().is_some_and(|p| p.held > 0);
        #[cfg(not(target_os = "linux"))]
        let piped = false;
        self.frames
            .as_ref()
            .is_some_and(|f| f.close_code().is_some() && f.to_boundary() == 0)
            && self.held.is_empty()
            && self.inject.is_none()
            && !piped
    }

    /// Whether this direction is over because its source ended (not a drain, not an error):
    /// its peer has sent everything it will, and nothing is left unread from it.
    fn finished_by_its_source(&self) -> bool {
        self.phase == Phase::Done && self.source_ended
    }

    /// Moves this direction on as far as it can; ready when it is done.
    fn poll_relay<R: Leg, W: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        turn: Turn,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        let Turn {
            closing,
            last,
            peer_closed,
        } = turn;
        let draining = closing.is_some();
        // A client past its limit is told so; everyone else is going away.
        self.close_code = match (closing, self.direction) {
            (Some(TunnelEnd::RateLimited), Direction::ToClient) => websocket::POLICY_VIOLATION,
            (Some(TunnelEnd::ClientMessageTooBig), Direction::ToClient)
            | (Some(TunnelEnd::UpstreamMessageTooBig), Direction::ToUpstream) => websocket::MESSAGE_TOO_BIG,
            _ => websocket::GOING_AWAY,
        };
        loop {
            match self.phase {
                Phase::Done => return Poll::Ready(Ok(())),
                Phase::Copying => ready!(self.poll_copy(cx, reader, writer, draining, moved))?,
                Phase::Closing => {
                    ready!(self.poll_write_held(cx, writer, false, &mut false))?;
                    self.phase = Phase::ShuttingDown {
                        linger: !self.source_ended,
                    };
                }
                // The last direction to end between two plain sockets: the tunnel closes both
                // next, and the close sends this FIN (nothing is left unread on either, so it
                // is a FIN, not a reset). A shutdown first would be one more system call.
                Phase::ShuttingDown { linger: false }
                    if (last || (peer_closed && closing.is_none() && self.close_relayed()))
                        && writer.socket().is_some() =>
                {
                    self.phase = Phase::Done;
                }
                Phase::ShuttingDown { linger } => {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    // The peer may already be gone; a failed FIN changes nothing here.
                    let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                    self.phase = if linger { Phase::Lingering } else { Phase::Done };
                }
                Phase::Lingering => {
                    ready!(self.poll_linger(cx, reader));
                    self.phase = Phase::Done;
                }
            }
        }
    }

    /// The copying phase, until it moves to another (ready) or waits (pending).
    fn poll_copy<R: Leg, W: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        draining: bool,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_held(cx, writer, draining, moved))?;
            #[cfg(target_os = "linux")]
            ready!(self.poll_write_pipe(cx, writer.socket(), moved))?;
            // A ping of Switchback's goes out between two frames.
            if !draining
                && self.held.is_empty()
                && self.frames.as_ref().is_some_and(FrameTracker::at_boundary)
                && let Some(ping) = self.inject.take()
            {
                self.held = Held::Chunk(ping);
                self.ours = true;
                continue;
            }
            // Draining stops reading at the next frame boundary (a frame in flight is
            // finished, so that the close frame can follow it), or at once on opaque streams.
            let limit = match &self.frames {
                Some(f) if draining => f.to_boundary(),
                None if draining => 0,
                _ => u64::MAX,
            };
            if limit == 0 || !self.held.is_empty() {
                self.stop_for_drain();
                return Poll::Ready(Ok(()));
            }

            #[cfg(target_os = "linux")]
            if let (true, Some(from), Some(_)) = (self.splice, reader.socket(), writer.socket()) {
                match self.poll_splice_in(cx, from) {
                    Poll::Ready(Ok(true)) if self.source_ended => return self.end_of_source(draining),
                    Poll::Ready(Ok(true)) => continue,
                    Poll::Ready(Ok(false)) => {} // small frames: copy them
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.poll_idle(cx, writer),
                }
            }

            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            match reader.poll_fill(cx, &mut self.held, self.size as usize, limit) {
                Poll::Ready(Ok(())) if self.held.is_empty() => {
                    // A frame header cut short by the end of the stream goes out as it came.
                    if let Some(gate) = self.gate.as_mut().filter(|g| !g.carry.is_empty()) {
                        let carry = std::mem::take(&mut gate.carry);
                        gate.admitted = carry.len();
                        self.held = Held::Chunk(carry.into());
                        continue;
                    }
                    self.source_ended = true;
                    return self.end_of_source(draining);
                }
                Poll::Ready(Ok(())) => self.join_carry(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.poll_idle(cx, writer),
            }
        }
    }

    /// A frame header kept back (cut by the previous read) goes in front of what was just
    /// read.
    fn join_carry(&mut self) {
        if let Some(gate) = self.gate.as_mut().filter(|g| !g.carry.is_empty()) {
            let mut joined = std::mem::take(&mut gate.carry);
            joined.extend_from_slice(self.held.bytes());
            self.held.release();
            self.held = Held::Chunk(joined.into());
        }
    }

    /// At a frame boundary (or at once, opaque) during a drain: anything held past the
    /// boundary is never sent, though the tracker sees it (a close frame in it is the peer's
    /// reply); a WebSocket direction then sends its close frame.
    fn stop_for_drain(&mut self) {
        match &mut self.frames {
            Some(frames) => {
                if let Some(gate) = &mut self.gate {
                    frames.feed(&std::mem::take(&mut gate.carry));
                }
                frames.feed(self.held.bytes());
                self.held.release();
                self.queue_close();
            }
            None => {
                self.held.release();
                self.phase = Phase::ShuttingDown { linger: false };
            }
        }
    }

    /// The source ended: shut the sink down, after a close frame if a drain wants one here.
    fn end_of_source(&mut self, draining: bool) -> Poll<io::Result<()>> {
        self.source_ended = true;
        if draining && self.frames.as_ref().is_some_and(FrameTracker::at_boundary) {
            self.queue_close();
        } else {
            self.phase = Phase::ShuttingDown { linger: false };
        }
        Poll::Ready(Ok(()))
    }

    fn queue_close(&mut self) {
        self.sent_close = Some(self.close_code);
        self.held.release();
        let to = match self.direction {
            Direction::ToUpstream => super::CloseFrameFor::Upstream,
            Direction::ToClient => super::CloseFrameFor::Client,
        };
        self.held = Held::Chunk(super::close_frame(to, self.close_code));
        self.phase = Phase::Closing;
    }

    /// After a drain's close frame: reads and drops what the peer still sends until its own
    /// close frame (the reply) or end of stream. Closing a socket with unread bytes resets the
    /// connection, and a reset can destroy the close frame before the peer reads it.
    fn poll_linger<R: Leg>(&mut self, cx: &mut Context<'_>, reader: &mut R) -> Poll<()> {
        while !self.source_ended && !self.frames.as_ref().is_some_and(FrameTracker::close_seen) {
            let polled = reader.poll_fill(cx, &mut self.held, self.size as usize, usize::MAX);
            if let Some(frames) = &mut self.frames {
                frames.feed(self.held.bytes());
            }
            let read = !self.held.is_empty();
            self.held.release();
            match polled {
                Poll::Ready(Ok(())) if !read => self.source_ended = true,
                Poll::Ready(Ok(())) => {}
                // A reset peer has nothing more to say.
                Poll::Ready(Err(_)) => self.source_ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    /// Nothing to read: flush what was written, give back an empty pipe, wait.
    fn poll_idle<W: Leg>(&mut self, cx: &mut Context<'_>, writer: &mut W) -> Poll<io::Result<()>> {
        #[cfg(target_os = "linux")]
        if let Some(pipe) = self.pipe.take_if(|p| p.held == 0) {
            pipe.give();
        }
        if self.need_flush {
            ready!(Pin::new(writer).poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Pending
    }

    /// Writes what is held. Draining, a WebSocket direction stops at the next frame boundary
    /// and keeps the rest. Relayed bytes are counted and fed to the frame tracker; a close
    /// frame of Switchback's (`Closing`) is not.
    fn poll_write_held<W: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        draining: bool,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        let relayed = self.phase == Phase::Copying && !self.ours;
        while !self.held.is_empty() {
            let bytes = self.held.bytes();
            let mut len = match &self.frames {
                Some(f) if draining && relayed => {
                    usize::try_from(f.to_boundary()).map_or(bytes.len(), |l| l.min(bytes.len()))
                }
                _ => bytes.len(),
            };
            // Only what the size gate admitted goes out; a header cut by the read waits for
            // its rest, out of the way (the next read goes in after it).
            if let Some(gate) = self.gate.as_mut().filter(|_| relayed) {
                let verdict = gate.admit(bytes);
                len = len.min(gate.admitted);
                if len == 0 && verdict == Verdict::Partial {
                    gate.carry = bytes.to_vec();
                    self.held.release();
                    break;
                }
                if len == 0 && verdict == Verdict::Pong {
                    // The client's answer to our ping: never written, never counted.
                    gate.pong = None;
                    self.pong_seen = true;
                    self.held.consume(PONG_LEN);
                    continue;
                }
            }
            if len == 0 {
                break;
            }
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, &bytes[..len]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if let Some(gate) = self.gate.as_mut().filter(|_| relayed) {
                gate.admitted -= n;
            }
            if relayed {
                if let Some(frames) = &mut self.frames {
                    frames.feed(&bytes[..n]);
                    // A large frame began in the buffer: splice its rest, and peek at the next.
                    #[cfg(target_os = "linux")]
                    {
                        self.bulk = frames.payload_left() >= SPLICE_MIN;
                    }
                }
                self.bytes += n as u64;
                *moved = true;
            }
            self.held.consume(n);
            self.need_flush = true;
        }
        if self.held.is_empty() {
            self.ours = false;
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
    /// when something was taken in (or the stream ended, then `source_ended` is set),
    /// `Ok(false)` when the next bytes are better copied (a small WebSocket frame).
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
        // A header kept back for its rest is copied, with its rest.
        if self.gate.as_ref().is_some_and(|g| !g.carry.is_empty()) {
            return Poll::Ready(Ok(false));
        }
        let max = match &self.frames {
            None => splice::CHUNK,
            Some(f) if f.at_boundary() => {
                if !self.bulk {
                    return Poll::Ready(Ok(false));
                }
                let Some((len, payload)) = ready!(self.poll_peek_header(cx, from, &mut head))? else {
                    return Poll::Ready(Ok(false));
                };
                // A frame past the size limit is not spliced: the copy path stops before it.
                if self
                    .gate
                    .as_ref()
                    .is_some_and(|g| !g.admits_peeked(head[0], payload))
                {
                    return Poll::Ready(Ok(false));
                }
                header = Some((len, payload));
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
                self.source_ended = true;
                return Poll::Ready(Ok(true));
            }
            n => n,
        };
        if let Some(frames) = &mut self.frames {
            // The peeked header went in first; the tracker sees it as if copied (a short
            // splice leaves it mid-header, and the copy path reads the rest).
            let fed = header.map_or(0, |(len, _)| len.min(n));
            frames.feed(&head[..fed]);
            frames.skip((n - fed) as u64);
            if let Some(gate) = &mut self.gate {
                let (len, payload) = header.unwrap_or((0, 0));
                gate.spliced(&head[..len], payload, fed, (n - fed) as u64);
            }
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
        let mut peeked = tokio::io::ReadBuf::new(head);
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
}
