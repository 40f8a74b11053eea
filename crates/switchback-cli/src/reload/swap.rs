//! The newest stack ([`Current`]) and the service the workers serve it through
//! ([`Reloadable`]): a reload swaps a stack in; each worker's clone takes it before its next
//! request, with one atomic load per request to notice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tower::Service;

/// The newest stack, for every clone of a [`Reloadable`] to take before its next request.
#[derive(Debug)]
pub(crate) struct Current<S> {
    generation: AtomicU64,
    stack: RwLock<S>,
}

impl<S: Clone> Current<S> {
    /// `stack` as generation 1.
    pub(crate) fn new(stack: S) -> Arc<Self> {
        Arc::new(Self {
            generation: AtomicU64::new(1),
            stack: RwLock::new(stack),
        })
    }

    /// Puts `stack` in place for new requests; returns its generation.
    pub(crate) fn swap(&self, stack: S) -> u64 {
        *self.stack.write().unwrap_or_else(|e| e.into_inner()) = stack;
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn get(&self) -> (u64, S) {
        let stack = self.stack.read().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), stack.clone())
    }
}

/// The service the workers serve: the newest stack, checked with one atomic load per request.
#[derive(Debug)]
pub(crate) struct Reloadable<S> {
    current: Arc<Current<S>>,
    local: S,
    seen: u64,
}

impl<S: Clone> Reloadable<S> {
    /// Serves whatever stack `current` holds.
    pub(crate) fn new(current: Arc<Current<S>>) -> Self {
        let (seen, local) = current.get();
        Self { current, local, seen }
    }
}

impl<S: Clone> Clone for Reloadable<S> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            local: self.local.clone(),
            seen: self.seen,
        }
    }
}

impl<S, R> Service<R> for Reloadable<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.current.generation.load(Ordering::Acquire) != self.seen {
            (self.seen, self.local) = self.current.get();
        }
        self.local.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.local.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test]
    async fn clones_take_the_newest_stack_before_their_next_request() {
        let answer = |n: u32| tower::service_fn(move |()| async move { Ok::<_, Infallible>(n) });
        let current = Current::new(answer(1));
        let served = Reloadable::new(current.clone());
        let held = served.clone();
        assert_eq!(served.clone().oneshot(()).await, Ok(1));
        assert_eq!(current.swap(answer(2)), 2);
        assert_eq!(served.clone().oneshot(()).await, Ok(2));
        assert_eq!(held.oneshot(()).await, Ok(2));
    }
}
