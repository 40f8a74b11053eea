//! The task of a joined tunnel, from the client's upgrade to the end of the relay.
//!
//! Written out by hand rather than as an `async fn`: an async fn keeps its arguments for its
//! whole life and every nested one adds its own, which made an idle tunnel's task 1.9 KiB.
//! This one holds the relay, the drain waiter and what the tunnel reports (1 KiB).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::upgrade::{OnUpgrade, Upgraded};
use pin_project_lite::pin_project;

use super::duplex::{Relay, Settings};
use super::opened::Opened;
use super::{TunnelInfo, TunnelObserver, TunnelStats};
use crate::drain::{Closing, TunnelGuard};

pin_project! {
    /// Waits for the client's connection to upgrade (the server writes the `101` first), then
    /// relays between it and `upstream` until the tunnel ends. Spawn it.
    pub(crate) struct JoinedTask {
        #[pin]
        stage: Stage,
        #[pin]
        closing: Closing,
        // Counts the tunnel as live until the task ends.
        guard: TunnelGuard,
        report: Report,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage {
        Upgrading { on_upgrade: OnUpgrade, upstream: Option<(Upgraded, Settings)> },
        Relaying { #[pin] relay: Relay },
    }
}

/// Reporting starts when bytes may flow (the client upgraded) and ends with the stats.
enum Report {
    Waiting(TunnelInfo, Option<TunnelObserver>),
    Open(Opened),
    Done,
}

impl JoinedTask {
    pub(crate) fn new(
        on_upgrade: OnUpgrade,
        upstream: Upgraded,
        settings: Settings,
        guard: TunnelGuard,
        info: TunnelInfo,
        observer: Option<TunnelObserver>,
    ) -> Self {
        Self {
            stage: Stage::Upgrading {
                on_upgrade,
                upstream: Some((upstream, settings)),
            },
            closing: guard.closing(),
            guard,
            report: Report::Waiting(info, observer),
        }
    }
}

impl Future for JoinedTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let StageProj::Upgrading { on_upgrade, upstream } = this.stage.as_mut().project() {
            let client = match ready!(Pin::new(on_upgrade).poll(cx)) {
                Ok(client) => client,
                Err(e) => {
                    tracing::debug!(error = %e, "client connection did not upgrade");
                    return Poll::Ready(());
                }
            };
            let Some((upstream, settings)) = upstream.take() else {
                return Poll::Ready(());
            };
            this.stage.set(Stage::Relaying {
                relay: Relay::new(client, upstream, settings),
            });
            this.report.open();
        }
        let StageProj::Relaying { mut relay } = this.stage.project() else {
            return Poll::Ready(());
        };
        if this.closing.poll_closing(this.guard, cx).is_ready() {
            relay.as_mut().start_drain();
        }
        let stats = ready!(relay.poll(cx));
        this.report.finish(stats);
        Poll::Ready(())
    }
}

impl Report {
    fn open(&mut self) {
        if let Self::Waiting(info, observer) = std::mem::replace(self, Self::Done) {
            *self = Self::Open(Opened::new(info, observer));
        }
    }

    fn finish(&mut self, stats: TunnelStats) {
        if let Self::Open(opened) = std::mem::replace(self, Self::Done) {
            opened.finish(stats);
        }
    }
}
