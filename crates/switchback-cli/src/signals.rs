//! [`Signals`]: SIGTERM and SIGINT, the signals that stop switchback.

use crate::fatal::Fatal;

/// SIGTERM and SIGINT (Ctrl-C elsewhere than Unix).
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening for both signals.
    #[cfg(unix)]
    pub(crate) fn new() -> Result<Self, Fatal> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Fatal::new(format!("cannot listen for {name}: {e}")))
        };
        Ok(Self {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Nothing to set up: Ctrl-C is listened for when waited on.
    #[cfg(not(unix))]
    pub(crate) fn new() -> Result<Self, Fatal> {
        Ok(Self {})
    }

    /// The next signal's name.
    #[cfg(unix)]
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// Ctrl-C, the one signal every platform has.
    #[cfg(not(unix))]
    pub(crate) async fn next(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(_) => std::future::pending().await,
        }
    }
}
