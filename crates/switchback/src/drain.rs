//! Graceful drain of live tunnels: see [`Drain`](crate::Drain).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

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
            // Closing writes at most a close frame each way; give it a moment.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tunnels.wait()).await;
        }
        DrainOutcome {
            finished: at_start.saturating_sub(closed),
            closed,
        }
    }

    /// Registers a tunnel; it counts as live until the guard is dropped.
    pub(crate) fn track(&self) -> TunnelGuard {
        TunnelGuard {
            _live: self.inner.tunnels.token(),
            closing: self.thread_closing().cancelled_owned(),
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
    }
}

impl TunnelGuard {
    /// Ready once the drain deadline has passed and the tunnel must close.
    pub(crate) fn poll_closing(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().closing.poll(cx)
    }
}
