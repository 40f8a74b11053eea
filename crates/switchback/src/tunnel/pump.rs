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
use crate::websocket::FrameTracker;

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
    // What an abort cut short of the data frame being written.
    let mut pending: Option<B::Data> = None;
    loop {
        if let Some(end) = link.aborted() {
            let ending = async {
                if end == TunnelEnd::Drain
                    && let Some(f) = &mut frames
                    && finish_frame(body.as_mut(), pending, &mut out, f, link, dir)
                        .await
                        .is_ok()
                {
                    let _ = out
                        .write_all(&super::going_away(dir == Direction::ToUpstream))
                        .await;
                    let _ = out.shutdown().await;
                    linger(body.as_mut(), f).await;
                } else {
                    let _ = out.shutdown().await;
                }
            };
            // Bounded: the peer may not be reading, the body may not be sending.
            let _ = tokio::time::timeout(Duration::from_secs(1), ending).await;
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
                let Ok(data) = frame.into_data() else { continue };
                let data = pending.insert(data);
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
                if !data.has_remaining() {
                    // Even an empty slice would keep the whole read buffer it came from.
                    pending = None;
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

/// On drain: writes the rest of the WebSocket frame in flight (what is `pending`, then from the
/// body), stopping exactly at its end, so that a close frame can follow. An error when the
/// frame can't be finished.
async fn finish_frame<B, W>(
    mut body: std::pin::Pin<&mut B>,
    mut pending: Option<B::Data>,
    out: &mut W,
    frames: &mut FrameTracker,
    link: &Link,
    dir: Direction,
) -> std::io::Result<()>
where
    B: HttpBody,
    W: AsyncWrite + Unpin,
{
    loop {
        let left = frames.to_boundary();
        if frames.at_boundary() {
            return Ok(());
        }
        let Some(data) = pending.as_mut().filter(|d| d.has_remaining()) else {
            match body.as_mut().frame().await {
                Some(Ok(frame)) => pending = frame.into_data().ok(),
                _ => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
            continue;
        };
        let chunk = data.chunk();
        let n = usize::try_from(left).map_or(chunk.len(), |left| left.min(chunk.len()));
        out.write_all(&chunk[..n]).await?;
        frames.feed(&chunk[..n]);
        data.advance(n);
        link.touch(dir, n);
    }
}

/// After a drain's close frame: reads and drops what the peer still sends until its own close
/// frame (the reply) or the end. Closing a connection with unread bytes resets it, and a
/// reset can destroy the close frame before the peer reads it.
async fn linger<B: HttpBody>(mut body: std::pin::Pin<&mut B>, frames: &mut FrameTracker) {
    while !frames.close_seen() {
        let Some(Ok(frame)) = body.as_mut().frame().await else {
            return;
        };
        if let Ok(mut data) = frame.into_data() {
            while data.has_remaining() {
                let n = data.chunk().len();
                frames.feed(data.chunk());
                data.advance(n);
            }
        }
    }
}
