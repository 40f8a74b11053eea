//! [`TunnelCap`]: the most tunnels that may be open at once, on a router or a route.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A count of open tunnels with a ceiling. A place is taken when an upgrade is let through
/// (before any upstream is contacted) and given back when its handshake fails or its tunnel
/// ends, so handshakes in flight count too.
#[derive(Debug, Clone)]
pub(crate) struct TunnelCap(Arc<Count>);

#[derive(Debug)]
struct Count {
    max: usize,
    open: AtomicUsize,
}

impl TunnelCap {
    pub(crate) fn new(max: usize) -> Self {
        Self(Arc::new(Count {
            max,
            open: AtomicUsize::new(0),
        }))
    }

    /// A place, unless all are taken.
    pub(crate) fn take(&self) -> Option<CapPlace> {
        let count = &self.0;
        count
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < count.max).then_some(n + 1)
            })
            .ok()
            .map(|_| CapPlace(self.0.clone()))
    }

    pub(crate) fn max(&self) -> usize {
        self.0.max
    }
}

/// One tunnel's place under a [`TunnelCap`], given back on drop.
#[derive(Debug)]
pub(crate) struct CapPlace(Arc<Count>);

impl Drop for CapPlace {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a tunnel holds while it lives: its places under the router's and the route's caps,
/// and its client connection's place in the listener.
#[derive(Debug, Default)]
#[expect(dead_code, reason = "held for what their drops give back")]
pub(crate) struct Holds {
    pub(crate) router: Option<CapPlace>,
    pub(crate) route: Option<CapPlace>,
    pub(crate) conn: Option<crate::conn::Hold>,
    /// The upstream endpoint's count (least-request balancing sees the tunnel).
    pub(crate) upstream: Option<crate::cluster::Active>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back() {
        let cap = TunnelCap::new(2);
        let a = cap.take().unwrap();
        let _b = cap.take().unwrap();
        assert!(cap.take().is_none());
        drop(a);
        assert!(cap.take().is_some());
    }
}
