//! [`Control`]: what the admin endpoint, the signals and `--watch` may ask of the proxy's
//! owner; [`Requests`]: the owner's end. [`Shutdown`] says how far the process has been asked
//! to stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::reload;
use crate::signals::Signals;

/// How far the process has been asked to stop. It only ever rises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Shutdown {
    /// Serve on.
    NotAsked,
    /// `POST /drain?after=..`: `/ready` fails now; the drain starts once `after` is over.
    Announced,
    /// Drain: stop accepting, let exchanges and tunnels finish until `drain_timeout` (a first
    /// SIGTERM or SIGINT, or an announced drain whose delay is over).
    Drain,
    /// Stop waiting: close everything now (a second signal).
    Now,
}

/// A reload asked of the owner, and where its outcome goes.
type ReloadRequest = oneshot::Sender<reload::Outcome>;

/// A handle on the proxy's owner; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    shutdown: Arc<watch::Sender<Shutdown>>,
    reloads: mpsc::Sender<ReloadRequest>,
}

/// The owner's end of [`Control`]: the shutdown asked for, and the reloads to run.
#[derive(Debug)]
pub(crate) struct Requests {
    shutdown: watch::Receiver<Shutdown>,
    reloads: mpsc::Receiver<ReloadRequest>,
}

impl Control {
    /// A control and the owner's end of it.
    pub(crate) fn new() -> (Self, Requests) {
        let (shutdown_tx, shutdown) = watch::channel(Shutdown::NotAsked);
        // One at a time: a caller waits for its outcome anyway.
        let (reloads_tx, reloads) = mpsc::channel(1);
        let control = Self {
            shutdown: Arc::new(shutdown_tx),
            reloads: reloads_tx,
        };
        (control, Requests { shutdown, reloads })
    }

    /// How far the process has been asked to stop.
    pub(crate) fn shutdown(&self) -> Shutdown {
        *self.shutdown.borrow()
    }

    /// Asks for at least `to`; a lower request than the current one changes nothing.
    pub(crate) fn ask(&self, to: Shutdown) {
        self.shutdown.send_if_modified(|now| {
            let raise = *now < to;
            if raise {
                *now = to;
            }
            raise
        });
    }

    /// `/ready` fails now; the drain starts `after` from now unless something started it
    /// already.
    pub(crate) fn announce_drain(&self, after: Duration) {
        self.ask(Shutdown::Announced);
        let control = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            control.ask(Shutdown::Drain);
        });
    }

    /// Asks the owner to reload the config file and waits for the outcome; `None` once the
    /// owner no longer reloads (it drains, or has stopped).
    pub(crate) async fn reload(&self) -> Option<reload::Outcome> {
        let (tx, rx) = oneshot::channel();
        self.reloads.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Turns SIGTERM and SIGINT into shutdown requests: the first drains, the second stops
    /// now. A drain the admin endpoint started doesn't make the next signal a second one
    /// (the SIGTERM that follows a preStop hook's drain is a first).
    pub(crate) fn on_signals(&self, mut signals: Signals, drain_timeout: Duration) {
        let control = self.clone();
        let pretty_timeout = switchback_config::format_duration(drain_timeout);
        tokio::spawn(async move {
            let first = signals.next().await;
            tracing::info!(
                signal = first,
                "draining: no new connections or upgrades; open tunnels may run for up to {pretty_timeout}"
            );
            control.ask(Shutdown::Drain);
            let second = signals.next().await;
            tracing::warn!(signal = second, "second signal: closing everything now");
            control.ask(Shutdown::Now);
        });
    }

    /// SIGHUP reloads the config file, from now on (until now it ends the process).
    pub(crate) fn on_hangups(&self) {
        #[cfg(unix)]
        if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            let control = self.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the config file");
                    if control.reload().await.is_none() {
                        tracing::info!("SIGHUP: no reload while draining");
                    }
                }
            });
        }
    }
}

/// What the owner is asked to do while it serves.
#[derive(Debug)]
pub(crate) enum Asked {
    /// Drain (at least).
    Drain,
    /// Reload, and send the outcome here.
    Reload(oneshot::Sender<reload::Outcome>),
}

impl Requests {
    /// Resolves once the process has been asked for at least `level`.
    pub(crate) async fn asked(&mut self, level: Shutdown) {
        reached(&mut self.shutdown, level).await;
    }

    /// The next thing asked of a serving owner.
    pub(crate) async fn next(&mut self) -> Asked {
        tokio::select! {
            () = reached(&mut self.shutdown, Shutdown::Drain) => Asked::Drain,
            Some(reply) = self.reloads.recv() => Asked::Reload(reply),
        }
    }

    /// No more reloads: those asked for and those asked later get `None`.
    pub(crate) fn refuse_reloads(&mut self) {
        self.reloads.close();
        while self.reloads.try_recv().is_ok() {}
    }
}

/// Resolves once `shutdown` is at least `level`.
async fn reached(shutdown: &mut watch::Receiver<Shutdown>, level: Shutdown) {
    // The owner holds a `Control` to the end, so the sender outlives this wait.
    if shutdown.wait_for(|now| *now >= level).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_only_rises() {
        let (control, mut requests) = Control::new();
        control.ask(Shutdown::Drain);
        control.ask(Shutdown::Announced);
        assert_eq!(control.shutdown(), Shutdown::Drain);
        requests.asked(Shutdown::Drain).await;
        control.announce_drain(Duration::ZERO);
        tokio::task::yield_now().await;
        assert_eq!(
            control.shutdown(),
            Shutdown::Drain,
            "a late announcement lowers nothing"
        );
        control.ask(Shutdown::Now);
        requests.asked(Shutdown::Now).await;
    }

    #[tokio::test]
    async fn reloads_are_answered_until_refused() {
        let (control, mut requests) = Control::new();
        let owner = tokio::spawn(async move {
            let Asked::Reload(reply) = requests.next().await else {
                panic!("a reload was asked for");
            };
            let _ = reply.send(Err(vec!["no".to_owned()]));
            requests.refuse_reloads();
            requests
        });
        assert_eq!(control.reload().await, Some(Err(vec!["no".to_owned()])));
        let _requests = owner.await.unwrap();
        assert_eq!(control.reload().await, None);
    }
}
