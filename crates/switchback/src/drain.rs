//! Graceful drain of live tunnels: see [`Drain`](crate::Drain).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::tunnel_info::TunnelInfo;

/// A handle on the set of live tunnels, to drain them gracefully. Cheap to clone; all clones
/// share one state.
///
/// A [`Drain`] is shared by everything that opens tunnels. Draining stops new upgrades (they
/// get `503`), lets open tunnels run until a deadline, then closes what is left; WebSocket
/// tunnels are sent a `1001 Going Away` close frame each way first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use switchback::Drain;
///
/// let drain = Drain::new();
/// assert!(!drain.is_draining());
/// let outcome = drain.drain(Duration::from_secs(1)).await;
/// assert!(drain.is_draining());
/// assert_eq!(outcome.closed, 0);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    /// Counts live tunnels and wakes [`Drain::drain`] when the last one ends.
    tunnels: TaskTracker,
    /// Cancelled at the drain deadline: what is still open closes.
    closing: CancellationToken,
    /// Over how long, in milliseconds, the tunnels still open at the deadline close.
    close_window_ms: AtomicU64,
    /// The live tunnels by id, for a drain made with [`Drain::listing`].
    list: Option<Mutex<HashMap<u64, Arc<Live>>>>,
}

/// A listed tunnel: what it was when it opened, and what it has relayed since.
#[derive(Debug)]
struct Live {
    info: TunnelInfo,
    started: SystemTime,
    since: Instant,
    from_client: AtomicU64,
    to_client: AtomicU64,
    /// This tunnel's own closing token (a child of the drain's).
    close: CancellationToken,
    /// Somebody asked for this tunnel to close ([`Drain::close`]): at once, not spread.
    closed_by_request: AtomicBool,
}

/// A live tunnel, as [`Drain::tunnels`] lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LiveTunnel {
    /// What was known when it opened.
    pub info: TunnelInfo,
    /// When it opened (its `101` went to the client).
    pub started: SystemTime,
    /// How long it has been open.
    pub age: Duration,
    /// Bytes relayed from the client to the upstream so far.
    pub bytes_from_client: u64,
    /// Bytes relayed from the upstream to the client so far.
    pub bytes_to_client: u64,
}

/// What [`Drain::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Tunnels that ended by themselves before the deadline.
    pub finished: usize,
    /// Tunnels still open at the deadline, which were closed.
    pub closed: usize,
}

impl Drain {
    /// A handle with no tunnels, not draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// A drain that also lists its live tunnels ([`Drain::tunnels`]) and closes one on
    /// request ([`Drain::close`]), as an admin endpoint wants. A listed tunnel costs about
    /// 0.3 KiB more (its entry, its own closing token and live byte counts).
    pub fn listing() -> Self {
        Self {
            inner: Arc::new(Inner {
                list: Some(Mutex::default()),
                ..Inner::default()
            }),
        }
    }

    /// The live tunnels, oldest first; empty unless this drain was made with
    /// [`Drain::listing`].
    pub fn tunnels(&self) -> Vec<LiveTunnel> {
        let Some(list) = &self.inner.list else {
            return Vec::new();
        };
        let mut tunnels: Vec<LiveTunnel> = lock(list)
            .values()
            .map(|live| LiveTunnel {
                info: live.info.clone(),
                started: live.started,
                age: live.since.elapsed(),
                bytes_from_client: live.from_client.load(Ordering::Relaxed),
                bytes_to_client: live.to_client.load(Ordering::Relaxed),
            })
            .collect();
        tunnels.sort_by_key(|t| t.info.id);
        tunnels
    }

    /// Closes the live tunnel `id` as a drain closes tunnels at its deadline (a WebSocket
    /// tunnel gets a `1001` close frame each way, at frame boundaries). `false` when there is
    /// no such tunnel (or this drain doesn't list its tunnels).
    pub fn close(&self, id: u64) -> bool {
        let Some(list) = &self.inner.list else {
            return false;
        };
        let Some(live) = lock(list).get(&id).cloned() else {
            return false;
        };
        live.closed_by_request.store(true, Ordering::Release);
        live.close.cancel();
        true
    }

    /// Spreads the closing of the tunnels still open at a drain's deadline over `window`,
    /// each tunnel at its own moment within it, so that their clients' reconnects don't
    /// arrive as one spike (default: zero, all at once).
    pub fn set_close_window(&self, window: Duration) {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.inner.close_window_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether a drain has started; new upgrades are refused from then on.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Tunnels open now.
    pub fn active(&self) -> usize {
        self.inner.tunnels.len()
    }

    /// Stops new upgrades, waits up to `deadline` for open tunnels to end, then closes the
    /// rest and waits (briefly) for them to go.
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        self.inner.draining.store(true, Ordering::Release);
        // Closed, the tracker's `wait` ends when no tunnel is left (tunnels opened by requests
        // already in flight are still counted).
        self.inner.tunnels.close();
        let at_start = self.active();
        let _ = tokio::time::timeout(deadline, self.inner.tunnels.wait()).await;
        let closed = self.active();
        if closed > 0 {
            self.inner.closing.cancel();
            // Closing writes at most a close frame each way; give it a moment past the window.
            let window = Duration::from_millis(self.inner.close_window_ms.load(Ordering::Relaxed));
            let _ = tokio::time::timeout(window + Duration::from_secs(5), self.inner.tunnels.wait()).await;
        }
        DrainOutcome {
            finished: at_start.saturating_sub(closed),
            closed,
        }
    }

    /// Registers a tunnel; it counts as live (and is listed, for a listing drain) until the
    /// guard is dropped.
    pub(crate) fn track(&self, info: &TunnelInfo) -> TunnelGuard {
        let thread = self.thread_closing();
        let (closing, listed) = match &self.inner.list {
            None => (thread, None),
            Some(list) => {
                let live = Arc::new(Live {
                    info: info.clone(),
                    started: SystemTime::now(),
                    since: Instant::now(),
                    from_client: AtomicU64::new(0),
                    to_client: AtomicU64::new(0),
                    close: thread.child_token(),
                    closed_by_request: AtomicBool::new(false),
                });
                lock(list).insert(info.id, live.clone());
                (live.close.clone(), Some((live, self.clone())))
            }
        };
        // This tunnel's moment within the close window, drawn now so that closing needs no
        // randomness (a fraction in thousandths).
        let spread = rand::random_range(0..1000u16);
        TunnelGuard {
            _live: self.inner.tunnels.token(),
            closing: closing.cancelled_owned(),
            host_failure: None,
            spread,
            delay: None,
            drain: self.inner.clone(),
            listed,
        }
    }

    /// This thread's child of the closing token. A tunnel's task polls its token on every
    /// wake, and polling takes the token's locks: one token for all would have every worker
    /// thread take the same locks, and one per tunnel would cost an allocation per tunnel.
    /// One per thread is neither (a worker's tunnels stay on their thread).
    fn thread_closing(&self) -> CancellationToken {
        CLOSING.with_borrow_mut(|tokens| {
            // Forget the drains that are gone, so that a new one at the same address can't
            // be taken for them.
            tokens.retain(|(drain, _)| drain.strong_count() > 0);
            let mine = Arc::as_ptr(&self.inner);
            if let Some((_, token)) = tokens.iter().find(|(drain, _)| drain.as_ptr() == mine) {
                return token.clone();
            }
            let token = self.inner.closing.child_token();
            tokens.push((Arc::downgrade(&self.inner), token.clone()));
            token
        })
    }
}

thread_local! {
    /// Per thread, a child of each live drain's closing token (see [`Drain::thread_closing`]).
    static CLOSING: RefCell<Vec<(Weak<Inner>, CancellationToken)>> = const { RefCell::new(Vec::new()) };
}

pin_project_lite::pin_project! {
    /// Held by a live tunnel: it counts as live until this is dropped, and
    /// [`TunnelGuard::poll_closing`] says when the drain deadline has passed.
    #[derive(Debug)]
    pub(crate) struct TunnelGuard {
        _live: TaskTrackerToken,
        #[pin]
        closing: WaitForCancellationFutureOwned,
        // Set when the upstream endpoint's cluster closes tunnels to an endpoint that turns
        // unhealthy (rare: boxed).
        host_failure: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        // Where in the drain's close window this tunnel closes, in thousandths.
        spread: u16,
        // Running once the drain deadline passed, until this tunnel's moment (boxed: only
        // at a drain).
        delay: Option<Pin<Box<tokio::time::Sleep>>>,
        drain: Arc<Inner>,
        // For a listing drain: the tunnel's entry, and the drain to take it out of.
        listed: Option<(Arc<Live>, Drain)>,
    }

    impl PinnedDrop for TunnelGuard {
        fn drop(this: Pin<&mut Self>) {
            if let Some((live, drain)) = this.project().listed.take()
                && let Some(list) = &drain.inner.list
            {
                lock(list).remove(&live.info.id);
            }
        }
    }
}

impl TunnelGuard {
    /// Also closes the tunnel when `token` is cancelled (its upstream endpoint turned
    /// unhealthy).
    pub(crate) fn close_on(mut self, token: Option<CancellationToken>) -> Self {
        self.host_failure = token.map(|t| Box::pin(t.cancelled_owned()));
        self
    }

    /// Ready once the tunnel must close: the drain deadline has passed, (listing drain)
    /// somebody closed this tunnel, or its upstream endpoint failed its health checks.
    pub(crate) fn poll_closing(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if let Some(host) = this.host_failure
            && host.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(());
        }
        if this.delay.is_none() {
            std::task::ready!(this.closing.poll(cx));
            let asked = this
                .listed
                .as_ref()
                .is_some_and(|(live, _)| live.closed_by_request.load(Ordering::Acquire));
            let window = this.drain.close_window_ms.load(Ordering::Relaxed);
            if asked || window == 0 {
                return Poll::Ready(());
            }
            let at = window.saturating_mul(u64::from(*this.spread)) / 1000;
            *this.delay = Some(Box::pin(tokio::time::sleep(Duration::from_millis(at))));
        }
        match this.delay {
            Some(delay) => delay.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }

    /// What the tunnel has relayed so far, for a listing drain (nothing to do otherwise).
    pub(crate) fn relayed(&self, from_client: u64, to_client: u64) {
        if let Some((live, _)) = &self.listed {
            live.from_client.store(from_client, Ordering::Relaxed);
            live.to_client.store(to_client, Ordering::Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
