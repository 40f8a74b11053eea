//! DNS discovery (Envoy's `STRICT_DNS`): a cluster endpoint given by name stands for every
//! address the name resolves to, looked up at start and again every refresh, never on a
//! request's path.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, Endpoint};

/// Resolves names for DNS discovery. [`SystemResolver`] asks the operating system; tests and
/// applications with their own service discovery implement it.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `host` resolves to, with `port`.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The operating system's resolver (`getaddrinfo`, on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// How a cluster discovers its endpoints by name.
#[derive(Clone)]
pub(crate) struct Discovery {
    pub(crate) resolver: Arc<dyn Resolve>,
    pub(crate) refresh: Duration,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

/// A configured endpoint's name and port, when its host is a name rather than an address.
pub(crate) fn named(endpoint: &Endpoint) -> Option<(&str, u16)> {
    if endpoint.address().parse::<SocketAddr>().is_ok() {
        return None;
    }
    let (host, port) = endpoint.address().rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

impl Discovery {
    /// One round of lookups: each name becomes its addresses (keeping the hostname, for
    /// `Host` rewriting); a failed lookup keeps what `last` had for that name.
    pub(crate) async fn round(&self, configured: &[Endpoint], last: &[Endpoint]) -> Vec<Endpoint> {
        let mut members = Vec::new();
        for endpoint in configured {
            let Some((host, port)) = named(endpoint) else {
                members.push(endpoint.clone());
                continue;
            };
            let hostname = endpoint.host().to_owned();
            match self.resolver.resolve(host, port).await {
                Ok(addrs) if !addrs.is_empty() => {
                    for addr in addrs {
                        let found = Endpoint::new(addr.to_string()).hostname(hostname.clone());
                        if !members.contains(&found) {
                            members.push(found);
                        }
                    }
                }
                result => {
                    let why = result
                        .err()
                        .map_or_else(|| "no address".to_owned(), |e| e.to_string());
                    tracing::warn!(name = host, error = %why, "DNS lookup failed; keeping the last addresses");
                    members.extend(last.iter().filter(|e| e.host() == hostname).cloned());
                }
            }
        }
        members
    }
}

impl Cluster {
    /// Runs DNS discovery for this cluster until the cluster is dropped everywhere else:
    /// a lookup round at once, then one every refresh. Spawn it (the `switchback` binary
    /// does); without it, a named endpoint is resolved by each connect instead. Resolves at
    /// once for a cluster without discovery.
    pub fn discovery(&self) -> impl Future<Output = ()> + Send + 'static {
        let weak = Arc::downgrade(&self.inner);
        let discovery = self.inner.discovery.clone();
        async move {
            let Some(discovery) = discovery else { return };
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let cluster = Cluster { inner };
                let last = cluster.members_now();
                let members = discovery.round(&cluster.inner.configured, &last).await;
                if members != last {
                    tracing::info!(
                        cluster = %cluster.name(),
                        endpoints = ?members.iter().map(Endpoint::address).collect::<Vec<_>>(),
                        "DNS discovery changed the endpoints"
                    );
                    cluster.set_members(members);
                }
                drop(cluster);
                tokio::time::sleep(discovery.refresh).await;
            }
        }
    }
}
