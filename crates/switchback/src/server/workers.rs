//! [`Workers`]: one stack on several threads, each with a runtime and a listener of its own.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};

use super::{ClientLimits, Options};
use crate::conn::Conns;
use std::sync::Arc;
use tower::Service;

use crate::body::BoxError;

/// How far the workers are along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// No new connections; exchanges in flight finish, tunnels keep running.
    Stopping,
    /// The runtimes stop, and every task still running with them.
    Exit,
}

/// One stack served by several threads, each with a single-threaded runtime and a listener of
/// its own on the same address (`SO_REUSEPORT`: the kernel spreads new connections over
/// them). A connection, its upgrade and its tunnel stay on the thread that accepted it, so no
/// task is ever handed from one thread to another: less work per connection than a
/// work-stealing runtime, and the model of Envoy's worker threads and nginx's workers.
///
/// ```no_run
/// use std::num::NonZeroUsize;
/// use switchback::{Cluster, Endpoint, Forward, UpgradeRouterLayer, Workers};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let stack = ServiceBuilder::new()
///     .layer(UpgradeRouterLayer::builder().upgrade("websocket").build().unwrap())
///     .service(Forward::new(Cluster::new("app", [Endpoint::new("127.0.0.1:8080")])));
/// let threads = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
/// let mut workers = Workers::start("127.0.0.1:10000".parse().unwrap(), threads, stack)?;
/// let _ = tokio::signal::ctrl_c().await;
/// workers.shutdown(); // stop accepting; requests in flight finish
/// workers.stopped().await?;
/// workers.stop(); // and the tunnels still open go with the threads
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Workers {
    addr: SocketAddr,
    /// A duplicate of each worker's listening socket, to hand to a process taking over
    /// ([`Workers::take_listeners`]); dropped at shutdown, so that a stopped listener
    /// refuses connections.
    #[cfg(unix)]
    listeners: Vec<std::os::fd::OwnedFd>,
    phase: watch::Sender<Phase>,
    /// Each worker's [`serve`](super::serve) result, once it stopped serving.
    served: mpsc::UnboundedReceiver<io::Result<()>>,
    pending: usize,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `threads` workers serving `service` on `addr` (port 0: one free port, shared by
    /// all). Returns once every worker listens, so that an address in use is an error here.
    /// Another process already listening on `addr` is refused even if it set
    /// `SO_REUSEPORT` too, so two proxies started by mistake never share a port. Without
    /// `SO_REUSEPORT` (outside Unix) one worker serves, whatever `threads` says.
    pub fn start<S, B>(addr: SocketAddr, threads: NonZeroUsize, service: S) -> io::Result<Self>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::start_with(addr, threads, ClientLimits::default(), service)
    }

    /// [`Workers::start`] with these [`ClientLimits`]. [`Server::workers`](super::Server::workers)
    /// adds TLS.
    pub fn start_with<S, B>(
        addr: SocketAddr,
        threads: NonZeroUsize,
        limits: ClientLimits,
        service: S,
    ) -> io::Result<Self>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        super::Server::new(service).limits(limits).workers(addr, threads)
    }

    /// Starts one worker on each of `listeners`, already bound and listening (sockets
    /// handed over by another process, for instance: see [`Workers::take_listeners`]).
    /// [`Server::workers_from`](super::Server::workers_from) adds TLS.
    pub fn start_from<S, B>(
        listeners: Vec<std::net::TcpListener>,
        limits: ClientLimits,
        service: S,
    ) -> io::Result<Self>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        super::Server::new(service).limits(limits).workers_from(listeners)
    }

    /// New `SO_REUSEPORT` sockets on `addr`, one per thread (checked free first).
    pub(super) fn bound(addr: SocketAddr, threads: NonZeroUsize) -> io::Result<(SocketAddr, Vec<Source>)> {
        #[cfg(not(unix))]
        let threads = NonZeroUsize::MIN;
        if addr.port() != 0 {
            // A plain bind fails on any listener, whatever its options.
            drop(std::net::TcpListener::bind(addr)?);
        }
        Ok((addr, (0..threads.get()).map(|_| Source::Bind).collect()))
    }

    /// Sockets already listening, one worker each.
    pub(super) fn given(listeners: Vec<std::net::TcpListener>) -> io::Result<(SocketAddr, Vec<Source>)> {
        let addr = listeners
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener to serve"))?
            .local_addr()?;
        Ok((addr, listeners.into_iter().map(Source::Given).collect()))
    }

    pub(super) fn start_on<S, B>(
        addr: SocketAddr,
        sources: Vec<Source>,
        options: Options,
        service: S,
    ) -> io::Result<Self>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (phase, _) = watch::channel(Phase::Serving);
        // One listener, whatever the number of sockets: `max_connections` counts them all.
        let conns = Conns::new(options.limits.max_connections);
        let (done, served) = mpsc::unbounded_channel();
        let mut workers = Self {
            addr,
            #[cfg(unix)]
            listeners: Vec::with_capacity(sources.len()),
            phase,
            served,
            pending: 0,
            threads: Vec::with_capacity(sources.len()),
        };
        for (i, source) in sources.into_iter().enumerate() {
            let (bound, ready) = std::sync::mpsc::channel();
            let (service, phase, done) = (service.clone(), workers.phase.subscribe(), done.clone());
            let (addr, conns, options) = (workers.addr, conns.clone(), options.clone());
            let thread = std::thread::Builder::new()
                .name(format!("switchback-worker-{i}"))
                .spawn(move || worker((addr, source), service, (options, conns), phase, bound, done))?;
            workers.threads.push(thread);
            match ready.recv() {
                Ok(Ok(listening)) => {
                    workers.addr = listening.addr;
                    #[cfg(unix)]
                    workers.listeners.push(listening.fd);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a worker thread died while starting")),
            }
            workers.pending += 1;
        }
        Ok(workers)
    }

    /// The workers' listening sockets (duplicates), for a process taking over to accept on:
    /// passed over a unix socket (`SCM_RIGHTS`), they keep every connection waiting in their
    /// queues. Taken once; call [`Workers::shutdown`] after the new process accepts.
    #[cfg(unix)]
    pub fn take_listeners(&mut self) -> Vec<std::os::fd::OwnedFd> {
        std::mem::take(&mut self.listeners)
    }

    /// Takes back what [`Workers::take_listeners`] gave when the takeover failed, for the
    /// next one.
    #[cfg(unix)]
    pub fn give_back_listeners(&mut self, listeners: Vec<std::os::fd::OwnedFd>) {
        self.listeners = listeners;
    }

    /// The address every worker listens on (the actual port when started with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections on every worker. Exchanges in flight may finish (up to 30
    /// s, as with [`serve`](super::serve)); upgraded tunnels keep running until
    /// [`Workers::stop`]: drain them with a [`Drain`](crate::Drain) in between.
    pub fn shutdown(&mut self) {
        // Without these duplicates the sockets close with the workers' listeners, and new
        // connections are refused rather than left waiting.
        #[cfg(unix)]
        self.listeners.clear();
        self.phase.send_if_modified(|p| advance(p, Phase::Stopping));
    }

    /// Resolves once every worker has stopped serving (after [`Workers::shutdown`]), or as
    /// soon as one fails, with its error.
    pub async fn stopped(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_stopped(cx)).await
    }

    /// [`Workers::stopped`] as a poll, for a caller that keeps its workers behind a lock.
    pub fn poll_stopped(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.pending > 0 {
            match std::task::ready!(self.served.poll_recv(cx)) {
                Some(result) => {
                    self.pending -= 1;
                    if let Err(e) = result {
                        return Poll::Ready(Err(e));
                    }
                }
                None => return Poll::Ready(Err(io::Error::other("a worker thread died"))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Stops the workers' runtimes, with every connection and tunnel still open on them, and
    /// waits for the threads to end.
    pub fn stop(mut self) {
        self.phase.send_if_modified(|p| advance(p, Phase::Exit));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    /// Tells the workers to exit (without waiting for them, unlike [`Workers::stop`]).
    fn drop(&mut self) {
        self.phase.send_if_modified(|p| advance(p, Phase::Exit));
    }
}

fn advance(phase: &mut Phase, to: Phase) -> bool {
    let moved = *phase < to;
    *phase = (*phase).max(to);
    moved
}

/// One worker thread: bind, report, serve until told to stop, then keep the runtime (and the
/// tunnels on it) until told to exit, which ends everything at once.
fn worker<S, B>(
    (addr, source): (SocketAddr, Source),
    service: S,
    (options, conns): (Options, Arc<Conns>),
    phase: watch::Receiver<Phase>,
    bound: std::sync::mpsc::Sender<io::Result<Listening>>,
    done: mpsc::UnboundedSender<io::Result<()>>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match source {
            Source::Bind => bind(addr),
            Source::Given(listener) => listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener)),
        };
        let listening = listener.and_then(|listener| {
            let addr = listener.local_addr()?;
            #[cfg(unix)]
            let fd = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?;
            Ok((
                listener,
                Listening {
                    addr,
                    #[cfg(unix)]
                    fd,
                },
            ))
        });
        let listener = match listening {
            Ok((listener, listening)) => {
                let _ = bound.send(Ok(listening));
                listener
            }
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let serving = async {
            let stopping = reached(phase.clone(), Phase::Stopping);
            let served = super::serve_on(listener, service, stopping, options, conns).await;
            let _ = done.send(served);
            // Tunnels live on this runtime: keep it until told to exit.
            std::future::pending::<()>().await;
        };
        // Exit may come while exchanges are still finishing: it wins.
        tokio::select! {
            () = serving => {}
            () = reached(phase.clone(), Phase::Exit) => {}
        }
    });
}

/// Where a worker's listener comes from.
pub(super) enum Source {
    /// A new `SO_REUSEPORT` socket on the workers' address.
    Bind,
    /// A socket already listening (handed over by another process).
    Given(std::net::TcpListener),
}

/// A worker's listener, as reported to [`Workers`].
struct Listening {
    addr: SocketAddr,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
}

/// A listener on `addr` that the other workers' listeners share.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted proxy needn't wait for TIME_WAIT to pass.
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // The deepest accept queue the kernel allows (it caps this at `net.core.somaxconn`): in
    // a reconnect storm a full listener leaves newcomers there for a while, and a SYN
    // that finds the queue full is retried only after a second.
    socket.listen(u32::from(u16::MAX))
}

/// Resolves once the phase reaches `at` (or the handle is gone: then everything stops).
async fn reached(mut phase: watch::Receiver<Phase>, at: Phase) {
    let _ = phase.wait_for(|p| *p >= at).await;
}
