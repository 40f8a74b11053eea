//! The proxy's listeners: one set of workers per `listeners` entry (plaintext or TLS), run
//! and stopped together.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use switchback::tls::CertResolver;
use switchback::{BoxError, ClientLimits, Server, Workers};
use switchback_config::Config;
use tower::Service;

/// One listener, served.
#[derive(Debug)]
struct Served {
    workers: Workers,
    /// What its certificates are read into (TLS listeners only).
    resolver: Option<Arc<CertResolver>>,
    /// How many sockets it put in the last [`Listeners::take_listeners`].
    handed: usize,
}

/// Every listener of the config.
#[derive(Debug)]
pub(crate) struct Listeners {
    served: Vec<Served>,
}

/// Why a listener could not start: which one, and the error.
pub(crate) struct StartError {
    pub(crate) index: usize,
    pub(crate) address: SocketAddr,
    pub(crate) error: String,
    pub(crate) bind: Option<io::Error>,
}

impl Listeners {
    /// Starts the workers of every listener in `config` (`threads` each), on sockets handed
    /// over by a running process when `taken` has some for a listener's address (or, in order,
    /// for listeners whose address isn't among them), else bound here.
    pub(crate) fn start<S, B>(
        config: &Config,
        threads: NonZeroUsize,
        limits: ClientLimits,
        service: &S,
        taken: Option<Vec<std::net::TcpListener>>,
    ) -> Result<Self, StartError>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut groups = group_by_address(taken.unwrap_or_default());
        let mut served = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            let fail = |error: String, bind: Option<io::Error>| StartError {
                index,
                address: listener.address,
                error,
                bind,
            };
            let mut server = Server::new(service.clone()).limits(limits);
            let resolver = match &listener.tls {
                Some(tls) => {
                    let (resolver, tls) = crate::tls::listener(tls, &format!("listeners[{index}].tls"))
                        .map_err(|e| fail(e, None))?;
                    server = server.tls(tls);
                    Some(resolver)
                }
                None => None,
            };
            // By address; a listener on port 0 takes the first sockets no listener names.
            let unnamed = |a: &SocketAddr| !config.listeners.iter().any(|l| l.address == *a);
            let found = groups
                .iter()
                .position(|(a, _)| *a == listener.address)
                .or_else(|| {
                    (listener.address.port() == 0)
                        .then(|| groups.iter().position(|(a, _)| unnamed(a)))
                        .flatten()
                });
            let given = found.map(|i| groups.remove(i).1);
            let workers = match given {
                Some(sockets) => server
                    .workers_from(sockets)
                    .map_err(|e| fail(format!("cannot serve the sockets handed over: {e}"), None))?,
                None => server
                    .workers(listener.address, threads)
                    .map_err(|e| fail(e.to_string(), Some(e)))?,
            };
            served.push(Served {
                workers,
                resolver,
                handed: 0,
            });
        }
        for (addr, _) in groups {
            tracing::warn!(%addr, "takeover: the running process listens on {addr}, which this config doesn't: closing it");
        }
        Ok(Self { served })
    }

    /// The addresses bound, in the config's order (port 0 resolved).
    pub(crate) fn addresses(&self) -> Vec<SocketAddr> {
        self.served.iter().map(|s| s.workers.local_addr()).collect()
    }

    /// Each listener's certificate resolver (`None` for plaintext ones), in the config's order.
    pub(crate) fn resolvers(&self) -> Vec<Option<Arc<CertResolver>>> {
        self.served.iter().map(|s| s.resolver.clone()).collect()
    }

    /// Resolves when every listener has stopped serving, or as soon as one fails.
    pub(crate) async fn stopped(&mut self) -> io::Result<()> {
        let mut pending: Vec<_> = self
            .served
            .iter_mut()
            .map(|s| Box::pin(s.workers.stopped()))
            .collect();
        std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < pending.len() {
                match pending[i].as_mut().poll(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        drop(pending.swap_remove(i));
                    }
                    Poll::Pending => i += 1,
                }
            }
            if pending.is_empty() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
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
