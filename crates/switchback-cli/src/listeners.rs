//! The proxy's listeners: one set of workers per `listeners` entry (plaintext or TLS), run
//! and stopped together, and changed by a reload without touching the others.
//!
//! A reload [plans](Listeners::plan) first (reading every certificate, so that a broken file
//! refuses the reload before anything changes), then [applies](Listeners::apply) the plan:
//! a listener the new file keeps keeps its sockets and connections (its certificates are
//! swapped in); a new one is bound; a removed one stops accepting and its tunnels run on
//! until they end or `drain_timeout`; a changed one (TLS turned on or off, other ALPN or
//! versions) is served anew on the same sockets, its connections left to end as they would.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use switchback::Workers;
use switchback::tls::{CertResolver, Certificates, ServerTls};
use switchback_config::{Config, Listener};

/// Where a listener's workers get their sockets.
pub(crate) enum Sockets {
    /// New sockets bound on this address, one per worker.
    Bind(SocketAddr, NonZeroUsize),
    /// Sockets already listening (handed over by another process, or by the listener a
    /// reload changes).
    Given(Vec<std::net::TcpListener>),
}

/// Starts workers serving the proxy's stack on `Sockets`, with TLS if given.
pub(crate) type Starter = Arc<dyn Fn(Sockets, Option<ServerTls>) -> io::Result<Workers> + Send + Sync>;

/// One listener, served.
#[derive(Debug)]
struct Served {
    /// As the file says it (port 0 and all), to match it with the next file's.
    configured: Listener,
    workers: Workers,
    /// What its certificates are read into (TLS listeners only).
    resolver: Option<Arc<CertResolver>>,
    /// How many sockets it put in the last [`Listeners::take_listeners`].
    handed: usize,
}

/// Every listener of the running config.
pub(crate) struct Listeners {
    served: Vec<Served>,
    start: Starter,
    threads: NonZeroUsize,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

/// Why a listener could not start: which one, and the error.
pub(crate) struct StartError {
    pub(crate) index: usize,
    pub(crate) address: SocketAddr,
    pub(crate) error: String,
    pub(crate) bind: Option<io::Error>,
}

/// What a reload does to the listeners, decided before anything changes.
pub(crate) struct Plan {
    steps: Vec<Step>,
}

enum Step {
    /// Keeps the running listener at this place, with these certificates read again.
    Keep(usize, Option<Certificates>),
    /// Binds a new listener.
    Bind(Listener, Option<(Arc<CertResolver>, ServerTls)>),
    /// Serves the running listener at this place anew, on its sockets.
    Change(usize, Listener, Option<(Arc<CertResolver>, ServerTls)>),
}

impl Listeners {
    /// Starts the workers of every listener in `config` (`threads` each), on sockets handed
    /// over by a running process when `taken` has some for a listener's address (a listener
    /// on port 0 takes the first sockets no listener names), else bound here.
    pub(crate) fn start(
        config: &Config,
        threads: NonZeroUsize,
        start: Starter,
        taken: Option<Vec<std::net::TcpListener>>,
    ) -> Result<Self, StartError> {
        let mut groups = group_by_address(taken.unwrap_or_default());
        let mut this = Self {
            served: Vec::with_capacity(config.listeners.len()),
            start,
            threads,
        };
        for (index, listener) in config.listeners.iter().enumerate() {
            let fail = |error: String, bind: Option<io::Error>| StartError {
                index,
                address: listener.address,
                error,
                bind,
            };
            let tls = tls_of(listener, index).map_err(|e| fail(e, None))?;
            let unnamed = |a: &SocketAddr| !config.listeners.iter().any(|l| l.address == *a);
            let found = groups
                .iter()
                .position(|(a, _)| *a == listener.address)
                .or_else(|| {
                    (listener.address.port() == 0)
                        .then(|| groups.iter().position(|(a, _)| unnamed(a)))
                        .flatten()
                });
            let sockets = match found {
                Some(i) => Sockets::Given(groups.remove(i).1),
                None => Sockets::Bind(listener.address, threads),
            };
            let served = this
                .serve(listener.clone(), sockets, tls)
                .map_err(|e| fail(e.to_string(), Some(e)))?;
            this.served.push(served);
        }
        for (addr, _) in groups {
            tracing::warn!(%addr, "takeover: the running process listens on {addr}, which this config doesn't: closing it");
        }
        Ok(this)
    }

    fn serve(
        &self,
        configured: Listener,
        sockets: Sockets,
        tls: Option<(Arc<CertResolver>, ServerTls)>,
    ) -> io::Result<Served> {
        let (resolver, server_tls) = tls.unzip();
        Ok(Served {
            configured,
            workers: (self.start)(sockets, server_tls)?,
            resolver,
            handed: 0,
        })
    }

    /// No listener (what is left once they are stopped).
    pub(crate) fn none() -> Self {
        Self {
            served: Vec::new(),
            start: Arc::new(|_, _| Err(io::Error::other("stopped"))),
            threads: NonZeroUsize::MIN,
        }
    }

    /// The addresses bound, in the config's order (port 0 resolved).
    pub(crate) fn addresses(&self) -> Vec<SocketAddr> {
        self.served.iter().map(|s| s.workers.local_addr()).collect()
    }

    /// What `new` changes, with every certificate it names read: errors name the field and
    /// file, and nothing has changed yet.
    pub(crate) fn plan(&self, new: &Config) -> Result<Plan, Vec<String>> {
        let mut matched = vec![false; self.served.len()];
        let mut steps = Vec::with_capacity(new.listeners.len());
        let mut errors = Vec::new();
        for (j, listener) in new.listeners.iter().enumerate() {
            // The same place with the same address first: several listeners may say port 0.
            let same = |i: usize| !matched[i] && self.served[i].configured.address == listener.address;
            let found = (j < self.served.len() && same(j))
                .then_some(j)
                .or_else(|| (0..self.served.len()).find(|&i| same(i)));
            let path = format!("listeners[{j}].tls");
            let step = match found {
                Some(i) => {
                    matched[i] = true;
                    let running = &self.served[i];
                    if same_protocols(&running.configured, listener) {
                        match listener
                            .tls
                            .as_ref()
                            .map(|tls| crate::tls::certificates(tls, &path))
                            .transpose()
                        {
                            Ok(certs) => Step::Keep(i, certs),
                            Err(e) => {
                                errors.push(e);
                                continue;
                            }
                        }
                    } else {
                        match tls_of(listener, j) {
                            Ok(tls) => Step::Change(i, listener.clone(), tls),
                            Err(e) => {
                                errors.push(e);
                                continue;
                            }
                        }
                    }
                }
                None => match tls_of(listener, j) {
                    Ok(tls) => Step::Bind(listener.clone(), tls),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
            };
            steps.push(step);
        }
        if errors.is_empty() {
            Ok(Plan { steps })
        } else {
            Err(errors)
        }
    }

    /// Carries `plan` out. New listeners are bound first: if one can't be, nothing changes.
    /// Listeners left behind stop accepting; their workers run their tunnels for up to
    /// `drain_timeout` more. Returns the names of what changed, for the log.
    pub(crate) fn apply(&mut self, plan: Plan, drain_timeout: Duration) -> Result<Vec<String>, String> {
        // Everything that can fail, first.
        let mut started = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let fresh = match step {
                Step::Bind(listener, tls) => Some(
                    self.serve(
                        listener.clone(),
                        Sockets::Bind(listener.address, self.threads),
                        tls.clone(),
                    )
                    .map_err(|e| format!("cannot listen on {}: {e}", listener.address)),
                ),
                Step::Change(i, listener, tls) => Some(self.rebind(*i, listener, tls.clone())),
                Step::Keep(..) => None,
            };
            match fresh.transpose() {
                Ok(fresh) => started.push(fresh),
                Err(e) => {
                    for s in started.into_iter().flatten() {
                        retire(s.workers, Duration::ZERO);
                    }
                    return Err(e);
                }
            }
        }
        let mut old: Vec<Option<Served>> = std::mem::take(&mut self.served).into_iter().map(Some).collect();
        let mut changes = Vec::new();
        for (step, fresh) in plan.steps.into_iter().zip(started) {
            match (step, fresh) {
                (Step::Keep(i, certs), _) => {
                    let Some(kept) = old[i].take() else { continue };
                    if let (Some(resolver), Some(certs)) = (&kept.resolver, certs) {
                        resolver.replace(certs);
                    }
                    self.served.push(kept);
                }
                (Step::Change(i, ..), Some(fresh)) => {
                    if let Some(replaced) = old[i].take() {
                        changes.push(format!("changed {}", fresh.workers.local_addr()));
                        retire(replaced.workers, drain_timeout);
                    }
                    self.served.push(fresh);
                }
                (_, Some(fresh)) => {
                    changes.push(format!("added {}", fresh.workers.local_addr()));
                    self.served.push(fresh);
                }
                (_, None) => {}
            }
        }
        for removed in old.into_iter().flatten() {
            changes.push(format!("removed {}", removed.workers.local_addr()));
            retire(removed.workers, drain_timeout);
        }
        Ok(changes)
    }

    /// New workers on the sockets of the listener at `i` (duplicates: the old workers keep
    /// theirs until they retire, and no connection waiting in the queue is lost).
    fn rebind(
        &mut self,
        i: usize,
        listener: &Listener,
        tls: Option<(Arc<CertResolver>, ServerTls)>,
    ) -> Result<Served, String> {
        let running = &mut self.served[i];
        let fds = running.workers.take_listeners();
        let copies: io::Result<Vec<std::net::TcpListener>> = fds
            .iter()
            .map(|fd| fd.try_clone().map(std::net::TcpListener::from))
            .collect();
        running.workers.give_back_listeners(fds);
        let copies =
            copies.map_err(|e| format!("cannot change the listener on {}: {e}", listener.address))?;
        self.serve(listener.clone(), Sockets::Given(copies), tls)
            .map_err(|e| format!("cannot change the listener on {}: {e}", listener.address))
    }

    /// Polls for every listener to stop serving; ready early when one fails.
    pub(crate) fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = false;
        for s in &mut self.served {
            match s.workers.poll_stopped(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Stops accepting on every listener.
    pub(crate) fn shutdown(&mut self) {
        for s in &mut self.served {
            s.workers.shutdown();
        }
    }

    /// Every listening socket, for a process taking over.
    pub(crate) fn take_listeners(&mut self) -> Vec<std::os::fd::OwnedFd> {
        let mut all = Vec::new();
        for s in &mut self.served {
            let fds = s.workers.take_listeners();
            s.handed = fds.len();
            all.extend(fds);
        }
        all
    }

    /// Takes back what [`Listeners::take_listeners`] gave, after a failed takeover.
    pub(crate) fn give_back_listeners(&mut self, mut fds: Vec<std::os::fd::OwnedFd>) {
        for s in &mut self.served {
            let rest = fds.split_off(s.handed.min(fds.len()));
            s.workers.give_back_listeners(std::mem::replace(&mut fds, rest));
        }
    }

    /// Stops every listener's runtimes, with whatever is still open on them.
    pub(crate) fn stop(self) {
        for s in self.served {
            s.workers.stop();
        }
    }
}

/// Whether a reload can keep a running listener as it is: the same protocols (TLS or not,
/// the same ALPN list and lowest version); certificates can change under it.
fn same_protocols(running: &Listener, new: &Listener) -> bool {
    let protocols = |l: &Listener| l.tls.as_ref().map(|t| (t.alpn.clone(), t.min_version));
    protocols(running) == protocols(new)
}

/// A listener's TLS, its certificates read.
fn tls_of(listener: &Listener, index: usize) -> Result<Option<(Arc<CertResolver>, ServerTls)>, String> {
    listener
        .tls
        .as_ref()
        .map(|tls| crate::tls::listener(tls, &format!("listeners[{index}].tls")))
        .transpose()
}

/// Workers a reload left behind: no new connections; what they serve may run for `grace`,
/// then their runtimes stop (a process shutdown drains them before that).
fn retire(mut workers: Workers, grace: Duration) {
    workers.shutdown();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
    });
}

/// Sockets handed over, grouped by the address they listen on, in the order first seen.
fn group_by_address(sockets: Vec<std::net::TcpListener>) -> Vec<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut groups: Vec<(SocketAddr, Vec<std::net::TcpListener>)> = Vec::new();
    for socket in sockets {
        let Ok(addr) = socket.local_addr() else { continue };
        match groups.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, group)) => group.push(socket),
            None => groups.push((addr, vec![socket])),
        }
    }
    groups
}
