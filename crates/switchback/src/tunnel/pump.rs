//! The pumped tunnel: body frames in, socket writes out, one task a direction.
//!
//! Used when a layer wraps a body, so that the payload passes through it. The two directions
//! share a [`Link`]: activity for the idle timeout, half-close for its bound, and an abort that
//! ends both when either fails.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Buf;
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{TunnelEnd, TunnelStats};
use crate::BoxError;
use crate::websocket::{self, FrameTracker};

/// Which way a pump carries bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to upstream: request body frames.
    ToUpstream,
    /// Upstream to client: response body frames.
    ToClient,
}

/// State shared by the two pumps of one tunnel.
#[derive(Debug)]
pub(crate) struct Link {
    start: Instant,
    idle_timeout: Option<Duration>,
    half_close_timeout: Option<Duration>,
    websocket: bool,
    /// Milliseconds since `start` of the last byte moved.
    last_activity: AtomicU64,
    /// Milliseconds since `start` when the first direction finished, plus one (0: not yet).
    half_closed: AtomicU64,
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    /// Bit 0: to-upstream finished; bit 1: to-client finished.
    finished: AtomicU8,
    first_close: Mutex<Option<TunnelEnd>>,
    abort: Mutex<Option<TunnelEnd>>,
    changed: Notify,
}

impl Link {
    pub(crate) fn new(
        idle_timeout: Option<Duration>,
        half_close_timeout: Option<Duration>,
        websocket: bool,
    ) -> Self {
        Self {
            start: Instant::now(),
            idle_timeout,
            half_close_timeout,
            websocket,
            last_activity: AtomicU64::new(0),
            half_closed: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
            finished: AtomicU8::new(0),
            first_close: Mutex::new(None),
            abort: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    pub(crate) fn is_websocket(&self) -> bool {
        self.websocket
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self, dir: Direction, n: usize) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
        let counter = match dir {
            Direction::ToUpstream => &self.up_bytes,
            Direction::ToClient => &self.down_bytes,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Ends both directions; the first reason given wins.
    pub(crate) fn abort(&self, end: TunnelEnd) {
        let mut slot = self.abort.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(end);
        }
        drop(slot);
        self.changed.notify_waiters();
    }

    fn aborted(&self) -> Option<TunnelEnd> {
        *self.abort.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, dir: Direction, eof: bool) {
        if eof {
            let mut first = self.first_close.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(match dir {
                Direction::ToUpstream => TunnelEnd::ClientClosed,
                Direction::ToClient => TunnelEnd::UpstreamClosed,
            });
        }
        let bit = match dir {
            Direction::ToUpstream => 1,
            Direction::ToClient => 2,
        };
        self.finished.fetch_or(bit, Ordering::AcqRel);
        let _ = self
            .half_closed
            .compare_exchange(0, self.now_ms() + 1, Ordering::AcqRel, Ordering::Acquire);
        self.changed.notify_waiters();
    }

    fn all_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire) == 3
    }

    /// Resolves at the next change (an abort, or a direction finishing); call before checking
    /// the state so that no change is missed.
    fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The next timer deadline and what it means.
    fn deadline(&self) -> Option<(Instant, TunnelEnd)> {
        let idle = self.idle_timeout.map(|t| {
            let last = Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
            (self.start + last + t, TunnelEnd::IdleTimeout)
        });
        let half = match self.half_closed.load(Ordering::Acquire) {
            0 => None,
            at => self.half_close_timeout.map(|t| {
                (
                    self.start + Duration::from_millis(at - 1) + t,
                    TunnelEnd::HalfCloseTimeout,
                )
            }),
        };
        match (idle, half) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Sleeps until the next deadline, then aborts if it really passed (activity may have
    /// moved it on in the meantime).
    async fn watch_timers(&self) {
        loop {
            match self.deadline() {
                None => std::future::pending::<()>().await,
                Some((at, end)) => {
                    tokio::time::sleep_until(at).await;
                    if self
                        .deadline()
                        .is_some_and(|(now_at, _)| now_at <= Instant::now())
                    {
                        self.abort(end);
                        return;
                    }
                }
            }
        }
    }

    /// Waits until both directions are finished or the tunnel was aborted, then reports.
    pub(crate) async fn wait(&self) -> TunnelStats {
        loop {
            let changed = self.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.all_finished() || self.aborted().is_some() {
                break;
            }
            tokio::select! {
                () = &mut changed => {}
                () = self.watch_timers() => {}
            }
        }
        let first = *self.first_close.lock().unwrap_or_else(|e| e.into_inner());
        TunnelStats {
            end: self.aborted().or(first).unwrap_or(TunnelEnd::ClientClosed),
            upstream_bytes: self.up_bytes.load(Ordering::Relaxed),
            downstream_bytes: self.down_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Writes the data frames of `body` to `out` until the body ends (then shuts `out` down: a
/// half-close), the body fails, or the link is aborted.
pub(crate) async fn pump<B, W>(body: B, mut out: W, link: &Link, dir: Direction)
where
    B: HttpBody,
    B::Error: Into<BoxError>,
    W: AsyncWrite + Unpin,
{
    tokio::pin!(body);
    let mut frames = link.websocket.then(FrameTracker::new);
    loop {
        if let Some(end) = link.aborted() {
            close(&mut out, frames.as_ref(), dir, end).await;
            return;
        }
        let changed = link.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if link.aborted().is_some() {
            continue;
        }
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = &mut changed => continue,
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else { continue };
                while data.has_remaining() {
                    let chunk = data.chunk();
                    let write = out.write(chunk);
                    let n = tokio::select! {
                        n = write => n,
                        () = &mut changed => break,
                    };
                    match n {
                        Ok(0) | Err(_) => {
                            link.abort(TunnelEnd::Error);
                            break;
                        }
                        Ok(n) => {
                            if let Some(f) = &mut frames {
                                f.feed(&chunk[..n]);
                            }
                            data.advance(n);
                            link.touch(dir, n);
                        }
                    }
                }
                let _ = out.flush().await;
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                tracing::debug!(error = %e, ?dir, "tunnel: body failed, closing the tunnel");
                link.abort(TunnelEnd::Error);
            }
            None => {
                let _ = out.shutdown().await;
                link.finish(dir, true);
                return;
            }
        }
    }
}

/// Ends one direction after an abort: a `1001` close frame on drain when between frames, then
/// a shutdown. Both are bounded: the peer may not be reading.
async fn close<W: AsyncWrite + Unpin>(
    out: &mut W,
    frames: Option<&FrameTracker>,
    dir: Direction,
    end: TunnelEnd,
) {
    let polite = async {
        if end == TunnelEnd::Drain && frames.is_some_and(FrameTracker::at_boundary) {
            let _ = match dir {
                Direction::ToClient => {
                    out.write_all(&websocket::server_close_frame(websocket::GOING_AWAY))
                        .await
                }
                Direction::ToUpstream => {
                    out.write_all(&websocket::client_close_frame(
                        websocket::GOING_AWAY,
                        super::duplex::mask(),
                    ))
                    .await
                }
            };
        }
        let _ = out.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), polite).await;
}
