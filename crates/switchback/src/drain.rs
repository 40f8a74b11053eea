//! Graceful drain of live tunnels.
//!
//! A [`Drain`] is shared by everything that opens tunnels. Draining stops new upgrades (they
//! get `503`), lets open tunnels run until a deadline, then closes what is left; WebSocket
//! tunnels are sent a `1001 Going Away` close frame each way first.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use switchback::Drain;
//!
//! let drain = Drain::new();
//! assert!(!drain.is_draining());
//! let outcome = drain.drain(Duration::from_secs(1)).await;
//! assert!(drain.is_draining());
//! assert_eq!(outcome.closed, 0);
//! # }
//! ```

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// A handle on the set of live tunnels. Cheap to clone; all clones share one state.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    closing: AtomicBool,
    active: AtomicUsize,
    /// Woken when `closing` is set. In an `Arc` so that a tunnel task can hold a waiter of
    /// its own ([`Closing`]) rather than a future borrowing the drain. Set before the wake.
    close: Arc<Notify>,
    /// Woken when a tunnel ends.
    ended: Notify,
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
        self.inner.active.load(Ordering::Acquire)
    }

    /// Stops new upgrades, waits up to `deadline` for open tunnels to end, then closes the
    /// rest and waits (briefly) for them to go.
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        self.inner.draining.store(true, Ordering::Release);
        let at_start = self.active();
        let _ = tokio::time::timeout(deadline, self.wait_idle()).await;
        let closed = self.active();
        if closed > 0 {
            self.inner.closing.store(true, Ordering::Release);
            self.inner.close.notify_waiters();
            // Closing writes at most a close frame each way; give it a moment.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait_idle()).await;
        }
        DrainOutcome {
            finished: at_start.saturating_sub(closed),
            closed,
        }
    }

    async fn wait_idle(&self) {
        loop {
            let ended = self.inner.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Registers a tunnel; it counts as live until the guard is dropped.
    pub(crate) fn track(&self) -> TunnelGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        TunnelGuard { drain: self.clone() }
    }
}

/// Held by a live tunnel. Dropping it unregisters the tunnel.
#[derive(Debug)]
pub(crate) struct TunnelGuard {
    drain: Drain,
}

impl TunnelGuard {
    /// A waiter for the drain deadline, to poll with [`Closing::poll_closing`].
    pub(crate) fn closing(&self) -> Closing {
        Closing {
            notified: Arc::clone(&self.drain.inner.close).notified_owned(),
            registered: false,
        }
    }

    /// Resolves when the tunnel must close because the drain deadline passed.
    pub(crate) async fn closed(&self) {
        let closing = self.closing();
        tokio::pin!(closing);
        std::future::poll_fn(|cx| closing.as_mut().poll_closing(self, cx)).await;
    }
}

pin_project! {
    /// A tunnel task's waiter for the drain deadline. Owned (no borrow of the drain), so that
    /// it can live next to the relay in the task.
    pub(crate) struct Closing {
        #[pin]
        notified: OwnedNotified,
        registered: bool,
    }
}

impl Closing {
    /// Ready once `guard`'s drain has passed its deadline.
    ///
    /// Polled on every wake of its task, so after the first registration only the flag is
    /// read: polling the waiter again would take the lock that every tunnel's waiter shares.
    /// That relies on the task's waker staying the same, which holds for a tokio task, the
    /// only thing that polls this.
    pub(crate) fn poll_closing(self: Pin<&mut Self>, guard: &TunnelGuard, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if guard.drain.inner.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if *this.registered {
            return Poll::Pending;
        }
        // Made before the flag was set (with the task), so a drain starting since then makes
        // this ready rather than missed.
        let polled = this.notified.poll(cx);
        *this.registered = polled.is_pending();
        polled
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.drain.inner.active.fetch_sub(1, Ordering::AcqRel);
        self.drain.inner.ended.notify_waiters();
    }
}
