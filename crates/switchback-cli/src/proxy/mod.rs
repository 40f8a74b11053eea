//! The running proxy and its one owner, [`Proxy`].
//!
//! `Proxy` holds everything that lives as long as the process serves: the listeners and
//! their workers, the admin endpoint, the reloader, the takeover socket it offers and the
//! drain. Other tasks never touch these: the admin endpoint, the signals and `--watch` ask
//! through a [`Control`], and the owner acts on each request in its own loop, so a reload,
//! a takeover and the drain never overlap.
//!
//! Its life, one [`Phase`] at a time, each entered by one method:
//!
//! ```text
//! start ─► Serving ─┬─ reload ─────► Reloading ─────► Serving
//!                   ├─ hand_over ──► HandingOver ─┬─► Serving        (the new process failed)
//!                   │                             └─► Draining       (it accepts now)
//!                   └─ drain ──────► Draining ─── stop ─► Stopped
//! ```
//!
//! `run::run` walks it: [`Proxy::start`], [`Proxy::announce`], [`Proxy::follow`],
//! [`Proxy::serve`] (which reloads and hands over as asked), [`Proxy::drain`],
//! [`Proxy::stop`].

mod control;
mod startup;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchback::{Drain, Server};
use switchback_config::Config;
use tokio::sync::mpsc;

pub(crate) use self::control::{Asked, Control, Requests, Shutdown};

use crate::admin::{self, Admin};
use crate::fatal::Fatal;
use crate::listeners::{Listeners, Sockets, Starter};
use crate::ready::ReadyFile;
use crate::reload::{self, ClusterTasks, Current, Loaded, Reload, Reloadable, Reloader, SharedView, View};
use crate::run::Origin;
use crate::signals::Signals;
use crate::{demo, stack, takeover};

/// How long plain HTTP exchanges may outlive `drain_timeout` before the process exits anyway.
const EXCHANGE_MARGIN: Duration = Duration::from_secs(1);

/// Where the proxy is in its life (see the module documentation for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepting on every listener; the only phase that reloads or hands over.
    Serving,
    /// Building and swapping in a new stack, and changing the listeners.
    Reloading,
    /// Sending the listening sockets to a new process, and waiting for it to accept.
    HandingOver,
    /// No longer accepting: exchanges and tunnels finish until `drain_timeout`.
    Draining,
    /// The workers' runtimes are gone.
    Stopped,
}

impl Phase {
    /// Whether the proxy may go from this phase to `next`.
    fn may_become(self, next: Self) -> bool {
        use Phase::{Draining, HandingOver, Reloading, Serving, Stopped};
        matches!(
            (self, next),
            (Serving, Reloading | HandingOver | Draining)
                | (Reloading | HandingOver, Serving)
                | (HandingOver, Draining)
                | (Draining, Stopped)
        )
    }
}

/// Why serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A signal or the admin endpoint asked for the drain.
    Asked,
    /// A new process accepts on the sockets now.
    HandedOver,
}

/// The owner of the running proxy.
#[derive(Debug)]
pub(crate) struct Proxy {
    phase: Phase,
    /// The config as started, the bound ports filled in.
    config: Config,
    listeners: Listeners,
    /// Whatever the stack's type, a reload goes through it.
    reloader: Box<dyn Reload>,
    admin: Option<admin::Served>,
    /// New processes asking for the sockets (with `takeover_socket`).
    takeovers: Option<mpsc::Receiver<UnixStream>>,
    /// The handle the owner gives out (and keeps, so its requests never close by accident).
    control: Control,
    requests: Requests,
    drain: Drain,
    /// Removed when the proxy is dropped.
    ready: Option<ReadyFile>,
}

impl Proxy {
    /// Builds the stack from `loaded`, starts every listener (on the sockets of the process
    /// it takes over, with `takeover`), the admin endpoint and the takeover offer: the
    /// proxy serves from here on.
    pub(crate) async fn start(loaded: Loaded, origin: &Origin, takeover: bool) -> Result<Self, Fatal> {
        let Loaded { mut config, digest } = loaded;
        let metrics = match config.admin {
            Some(_) => Some(admin::install_metrics()?),
            None => None,
        };
        if let Some(tracing) = &config.tracing {
            crate::otlp::install(tracing);
        }
        let shared = stack::Shared::new(&config)?;
        let clusters = stack::clusters(&config).map_err(Fatal::new)?;
        let current = Current::new(stack::build(&config, &clusters, &shared)?);
        let tasks = ClusterTasks::start(&clusters);
        let loaded = config.clone();

        // Before any socket is received or bound: each tunnel takes two descriptors.
        startup::raise_descriptor_limit();
        let taken = startup::take_sockets(&config, takeover)?;
        let served = Reloadable::new(current.clone());
        let limits = startup::client_limits(&config);
        // How every listener, now or after a reload, serves the newest stack.
        let start: Starter = Arc::new(move |sockets, tls| {
            let mut server = Server::new(served.clone()).limits(limits);
            if let Some(tls) = tls {
                server = server.tls(tls);
            }
            match sockets {
                Sockets::Bind(addr, threads) => server.workers(addr, threads),
                Sockets::Given(listeners) => server.workers_from(listeners),
            }
        });
        let listeners = startup::start_listeners(&config, origin, start, taken.workers)?;
        // From here on the config says what is bound (port 0 resolved), for `GET /config` too.
        for (listener, bound) in config.listeners.iter_mut().zip(listeners.addresses()) {
            listener.address = bound;
        }
        let admin_listener = startup::admin_listener(&mut config, origin, taken.admin).await?;

        let view = SharedView::new(View {
            config: config.clone(),
            clusters,
            generation: 1,
            digest,
        });
        let (control, requests) = Control::new();
        let admin = admin_listener.zip(metrics).map(|(listener, metrics)| {
            let door = admin::Door::new(config.admin.as_ref().and_then(|a| a.token.clone()));
            let runtime = shared.runtime.clone();
            Admin::new(
                metrics,
                shared.drain.clone(),
                runtime,
                view.clone(),
                control.clone(),
            )
            .spawn(listener, door)
        });
        let path = match origin {
            Origin::File(path) => Some(path.clone()),
            Origin::Demo => None,
        };
        let drain = shared.drain.clone();
        let reloader = Reloader::new(path, current, stack::build, shared, loaded, view, tasks);

        // The old process, once this one serves on its sockets, stops accepting and drains.
        if let Some(stream) = taken.confirm {
            takeover::confirm(stream).map_err(|e| Fatal::new(format!("takeover: cannot confirm: {e}")))?;
            tracing::info!("took the listening sockets over from the running process");
        }
        // Offer takeovers in turn.
        let takeovers = config
            .takeover_socket
            .as_deref()
            .map(startup::offer_takeovers)
            .transpose()?;
        Ok(Self {
            phase: Phase::Serving,
            config,
            listeners,
            reloader: Box::new(reloader),
            admin,
            takeovers,
            control,
            requests,
            drain,
            ready: None,
        })
    }

    /// Says where the proxy listens: the log, the demo's banner, and last `ready_file`
    /// (whoever waits for it may connect to every listener at once).
    pub(crate) fn announce(&mut self, origin: &Origin, ready_file: Option<&Path>) -> Result<(), Fatal> {
        for listener in &self.config.listeners {
            let scheme = if listener.tls.is_some() { "https" } else { "http" };
            tracing::info!(
                listen = %listener.address,
                scheme,
                workers = self.config.workers,
                "switchback is listening"
            );
        }
        if let Origin::Demo = origin {
            // Standard error, with the diagnostics: standard output is the access log's, and
            // the banner must neither get lost among its lines nor break a reader of them.
            crate::fatal::print_err(&demo::banner(self.config.listeners[0].address));
        }
        if let Some(path) = ready_file {
            let admin = self.config.admin.as_ref().map(|a| a.address);
            self.ready = Some(ReadyFile::write(path, &self.listeners.addresses(), admin)?);
        }
        Ok(())
    }

    /// Takes requests from outside from now on: SIGTERM and SIGINT drain, SIGHUP reloads,
    /// and so does a change to `watched` (`--watch`).
    pub(crate) fn follow(&self, signals: Signals, watched: Option<PathBuf>) {
        if let Some(path) = watched {
            tokio::spawn(reload::watch(path, self.control.clone()));
        }
        self.control.on_hangups();
        self.control.on_signals(signals, self.config.drain_timeout);
    }

    /// Serving: reloads and hands over as asked, until a drain is asked for or a new
    /// process has taken the sockets over. An error when a listener fails.
    pub(crate) async fn serve(&mut self) -> Result<Ending, Fatal> {
        loop {
            let takeovers = &mut self.takeovers;
            let takeover = async {
                match takeovers {
                    Some(requests) => requests.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                failed = std::future::poll_fn(|cx| self.listeners.poll_stopped(cx)) => {
                    return Err(Fatal::new(match failed {
                        Ok(()) => "the listener stopped unexpectedly".to_owned(),
                        Err(e) => format!("the listener failed: {e}"),
                    }));
                }
                Some(stream) = takeover => {
                    if self.hand_over(stream).await {
                        return Ok(Ending::HandedOver);
                    }
                }
                asked = self.requests.next() => match asked {
                    Asked::Drain => return Ok(Ending::Asked),
                    Asked::Reload(reply) => {
                        // The caller may have given up waiting; the reload stands.
                        let _ = reply.send(self.reload());
                    }
                },
            }
        }
    }

    /// Serving → reloading → serving: re-reads the config file (see [`crate::reload`]). On
    /// this thread: reading a few files, building a stack and binding take milliseconds,
    /// the proxy itself runs on the workers' runtimes, and the admin endpoint and signals
    /// wait no longer than that.
    fn reload(&mut self) -> reload::Outcome {
        self.enter(Phase::Reloading);
        let outcome = self.reloader.reload(&mut self.listeners);
        self.enter(Phase::Serving);
        outcome
    }

    /// Serving → handing over, then on to draining once the new process confirms (the caller
    /// drains), or back to serving when it doesn't: the sockets stay this process's, and so
    /// does the next takeover's chance. Returns whether the sockets are the new process's now.
    async fn hand_over(&mut self, stream: UnixStream) -> bool {
        self.enter(Phase::HandingOver);
        let sockets = self.listeners.take_listeners();
        let admin = self.admin.as_mut().and_then(admin::Served::lend_socket);
        // Blocking socket calls, waiting up to 30 s for the new process.
        let handed = tokio::task::spawn_blocking(move || {
            let handed = takeover::hand_over(stream, &sockets, admin.as_ref());
            (handed, sockets, admin)
        })
        .await;
        match handed {
            Ok((Ok(()), _, _)) => {
                tracing::info!(
                    "taken over: a new process accepts on the sockets; draining: open tunnels may run for up to {}",
                    switchback_config::format_duration(self.config.drain_timeout)
                );
                if let Some(admin) = self.admin.take() {
                    admin.stop();
                }
                true
            }
            Ok((Err(e), sockets, admin)) => {
                tracing::error!(error = %e, "takeover failed; serving on");
                self.listeners.give_back_listeners(sockets);
                if let Some(served) = &mut self.admin {
                    served.return_socket(admin);
                }
                self.enter(Phase::Serving);
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "takeover failed; serving on");
                self.enter(Phase::Serving);
                false
            }
        }
    }

    /// Draining: no new connections (or, after a takeover, none here), no more reloads;
    /// exchanges and tunnels finish until `drain_timeout`, or until a second signal.
    pub(crate) async fn drain(&mut self, ending: Ending) {
        self.enter(Phase::Draining);
        self.requests.refuse_reloads();
        self.listeners.shutdown();
        let timeout = self.config.drain_timeout;
        let Self {
            listeners,
            requests,
            drain,
            ..
        } = self;
        if ending == Ending::HandedOver {
            // The connections accepted before the handover are served to the end (an
            // upgrade on one still opens its tunnel here); only then do upgrades stop.
            tokio::select! {
                _ = std::future::poll_fn(|cx| listeners.poll_stopped(cx)) => {}
                () = requests.asked(Shutdown::Now) => {}
            }
        }
        let mut outcome = None;
        let tunnels = async { outcome = Some(drain.drain(timeout).await) };
        let exchanges = async {
            tokio::select! {
                served = std::future::poll_fn(|cx| listeners.poll_stopped(cx)) => if let Err(e) = served {
                    tracing::warn!(error = %e, "the listener failed while draining");
                },
                () = tokio::time::sleep(timeout + EXCHANGE_MARGIN) => {
                    tracing::warn!("requests still in flight after drain_timeout; closing them");
                }
            }
        };
        tokio::select! {
            ((), ()) = futures_util::future::join(tunnels, exchanges) => {}
            () = requests.asked(Shutdown::Now) => {}
        }
        match outcome {
            Some(outcome) => tracing::info!(
                finished = outcome.finished,
                closed = outcome.closed,
                "drained; exiting"
            ),
            None => tracing::info!("drain cut short; exiting"),
        }
    }

    /// Stopped: the workers' runtimes end, and whatever is still open on them; then the
    /// ready file goes.
    pub(crate) async fn stop(mut self) {
        self.enter(Phase::Stopped);
        let listeners = std::mem::replace(&mut self.listeners, Listeners::none());
        // Stopping joins the workers' threads: off the runtime's thread.
        let _ = tokio::task::spawn_blocking(move || listeners.stop()).await;
    }

    /// Moves to `next`, which must follow the current phase.
    fn enter(&mut self, next: Phase) {
        debug_assert!(
            self.phase.may_become(next),
            "{:?} cannot become {next:?}",
            self.phase
        );
        tracing::debug!(from = ?self.phase, to = ?next, "proxy phase");
        self.phase = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_lifecycle() {
        use Phase::{Draining, HandingOver, Reloading, Serving, Stopped};
        for (from, to) in [
            (Serving, Reloading),
            (Reloading, Serving),
            (Serving, HandingOver),
            (HandingOver, Serving),
            (HandingOver, Draining),
            (Serving, Draining),
            (Draining, Stopped),
        ] {
            assert!(from.may_become(to), "{from:?} -> {to:?}");
        }
        for (from, to) in [
            (Draining, Serving),
            (Draining, Reloading),
            (Reloading, HandingOver),
            (Stopped, Serving),
            (Serving, Stopped),
        ] {
            assert!(!from.may_become(to), "{from:?} -> {to:?}");
        }
    }
}
