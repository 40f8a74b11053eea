//! Upstream clusters: named sets of endpoints, picked by a load-balancing policy, with
//! outlier ejection and active health checks.
//!
//! ```
//! use std::time::Duration;
//! use switchback::{Cluster, Endpoint};
//!
//! let cluster = Cluster::new("echo", [
//!     Endpoint::new("127.0.0.1:9001"),
//!     Endpoint::new("127.0.0.1:9002").hostname("echo.internal"),
//! ])
//! .connect_timeout(Duration::from_millis(500));
//! assert_eq!(cluster.pick().unwrap().address(), "127.0.0.1:9001");
//! assert_eq!(cluster.pick().unwrap().address(), "127.0.0.1:9002");
//! ```

use std::fmt;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::Body;
use crate::tls::{ClientTls, UpstreamStream};

mod balance;
mod connect;
mod h2;

pub(crate) use h2::{Lease, StreamSlot};

pub(crate) use connect::refused_session;
mod dns;
mod health;

use balance::Balancer;
pub(crate) use balance::{Active, Carried, Outcome};
pub use balance::{EndpointStats, LbPolicy, OutlierDetection};
use dns::Discovery;
pub use dns::{Resolve, SystemResolver};
pub use health::HealthCheck;

/// One upstream address, with the hostname used by automatic host rewriting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    address: Arc<str>,
    hostname: Option<Arc<str>>,
}

impl Endpoint {
    /// An endpoint at `address` (`ip:port` or `name:port`).
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into().into(),
            hostname: None,
        }
    }

    /// Sets the hostname that `auto_host_rewrite` puts in `Host`.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into().into());
        self
    }

    /// The address connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The hostname for `Host` rewriting: the configured one, else the address's host part.
    pub fn host(&self) -> &str {
        match &self.hostname {
            Some(h) => h,
            None => self.address.rsplit_once(':').map_or(&*self.address, |(h, _)| h),
        }
    }
}

/// A named group of endpoints with its own connection pool for plain requests.
///
/// Cheap to clone. Put a `Cluster` in a request's extensions to send that request there
/// (this is what route matching does); otherwise [`Forward`](crate::Forward) uses its default.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    /// The endpoints now, with their counters; DNS discovery replaces them.
    members: Arc<RwLock<Arc<Members>>>,
    /// The endpoints as configured (names stay names).
    configured: Vec<Endpoint>,
    discovery: Option<Discovery>,
    connect_timeout: Duration,
    client: Client<connect::Connector, Body>,
    tls: Option<ClientTls>,
    /// `Some` for a cluster that speaks HTTP/2: its tunnels' connections, and the TLS they
    /// use (ALPN `h2`).
    http2: Option<Http2>,
    health_checks: Vec<HealthCheck>,
    close_on_health_failure: bool,
}

/// What an HTTP/2 cluster keeps for its tunnels.
struct Http2 {
    pool: h2::H2Pool,
    tls: Option<ClientTls>,
}

/// One generation of a cluster's endpoints and their counters.
struct Members {
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
}

/// Why no connection to a cluster could be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The cluster has no endpoint.
    NoEndpoint,
    /// Connecting took longer than the cluster's connect timeout.
    Timeout,
    /// The connection failed (refused, unreachable, name not resolved).
    Io(io::Error),
    /// The TLS handshake failed: the endpoint's certificate didn't verify, or it refused ours.
    Tls(io::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEndpoint => f.write_str("no endpoint in the cluster"),
            Self::Timeout => f.write_str("connect timeout"),
            Self::Io(e) => write!(f, "connect failed: {e}"),
            Self::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl Cluster {
    /// A cluster with a 5 s connect timeout, round robin, and no outlier ejection.
    pub fn new(name: impl Into<String>, endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Self::build(Settings {
            name: name.into().into(),
            endpoints: endpoints.into_iter().collect(),
            discovery: None,
            connect_timeout: Duration::from_secs(5),
            policy: LbPolicy::RoundRobin,
            outlier: None,
            health_checks: Vec::new(),
            close_on_health_failure: false,
            tls: None,
            http2: false,
        })
    }

    fn build(s: Settings) -> Self {
        let balancer = Balancer::new(s.endpoints.len(), s.policy, s.outlier, s.close_on_health_failure);
        let members = Arc::new(RwLock::new(Arc::new(Members {
            endpoints: s.endpoints.clone(),
            balancer,
        })));
        let http2 = s.http2.then(|| Http2 {
            pool: h2::H2Pool::default(),
            tls: s.tls.as_ref().map(ClientTls::for_http2),
        });
        let connector = connect::Connector {
            cluster: s.name.clone(),
            timeout: s.connect_timeout,
            tls: http2.as_ref().map_or_else(|| s.tls.clone(), |h| h.tls.clone()),
            members: members.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(s.http2)
            .build(connector);
        Self {
            inner: Arc::new(Inner {
                members,
                name: s.name,
                configured: s.endpoints,
                discovery: s.discovery,
                connect_timeout: s.connect_timeout,
                client,
                tls: s.tls,
                http2,
                health_checks: s.health_checks,
                close_on_health_failure: s.close_on_health_failure,
            }),
        }
    }

    /// The settings this cluster was built with, to build a changed one.
    fn settings(&self) -> Settings {
        let inner = &self.inner;
        let members = self.members();
        Settings {
            name: inner.name.clone(),
            endpoints: inner.configured.clone(),
            discovery: inner.discovery.clone(),
            connect_timeout: inner.connect_timeout,
            policy: members.balancer.policy,
            outlier: members.balancer.outlier,
            health_checks: inner.health_checks.clone(),
            close_on_health_failure: inner.close_on_health_failure,
            tls: inner.tls.clone(),
            http2: inner.http2.is_some(),
        }
    }

    /// Speaks HTTP/2 to every endpoint (Envoy's `http2_protocol_options`; with TLS, ALPN
    /// `h2`): plain requests go as HTTP/2 through the pool, and each upgrade is a stream on a
    /// shared connection (RFC 8441 extended CONNECT with the upgrade token as `:protocol`,
    /// or a CONNECT), so thousands of tunnels take a few connections. Streams share a
    /// connection up to the endpoint's `SETTINGS_MAX_CONCURRENT_STREAMS`, then another is
    /// opened; one that says `GOAWAY` keeps its streams and takes no new one. Connections
    /// belong to the thread that opened them (a [`Workers`](crate::Workers) worker, as in
    /// Envoy's per-worker pools), so each thread that opens tunnels has its own. An upgrade
    /// needs the endpoint to allow extended CONNECT (`SETTINGS_ENABLE_CONNECT_PROTOCOL`),
    /// else it gets `502`. The legacy WebSocket mode and terminated CONNECTs stay raw TCP.
    pub fn http2(self, on: bool) -> Self {
        Self::build(Settings {
            http2: on,
            ..self.settings()
        })
    }

    /// Whether this cluster speaks TLS to its endpoints.
    pub(crate) fn has_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Whether this cluster speaks HTTP/2 ([`Cluster::http2`]).
    pub(crate) fn is_http2(&self) -> bool {
        self.inner.http2.is_some()
    }

    /// A place for one tunnel stream on an HTTP/2 connection to `endpoint`, opening one if
    /// none has room. `None` on a cluster that doesn't speak HTTP/2.
    pub(crate) async fn h2_lease(&self, endpoint: &Endpoint) -> Option<Result<Lease, ConnectError>> {
        let inner = &self.inner;
        let http2 = inner.http2.as_ref()?;
        let connect = self.connect_for_requests(endpoint);
        Some(
            http2
                .pool
                .lease(endpoint.address(), inner.connect_timeout, connect)
                .await,
        )
    }

    /// The HTTP/2 connections this cluster's tunnels use now (0 for an HTTP/1.1 cluster).
    pub fn http2_connections(&self) -> usize {
        self.inner.http2.as_ref().map_or(0, |h| h.pool.connections())
    }

    /// Speaks TLS to every endpoint (requests, upgrades and health checks), verified as
    /// [`ClientTls`] says: an endpoint whose certificate doesn't verify is a connect failure.
    pub fn tls(self, tls: ClientTls) -> Self {
        Self::build(Settings {
            tls: Some(tls),
            ..self.settings()
        })
    }

    /// Sets how long a TCP connect may take.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        Self::build(Settings {
            connect_timeout: timeout,
            ..self.settings()
        })
    }

    /// Sets how endpoints are picked (default: round robin).
    pub fn lb_policy(self, policy: LbPolicy) -> Self {
        Self::build(Settings {
            policy,
            ..self.settings()
        })
    }

    /// Ejects endpoints that keep failing (default: off).
    pub fn outlier_detection(self, outlier: OutlierDetection) -> Self {
        Self::build(Settings {
            outlier: Some(outlier),
            ..self.settings()
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The endpoints now: as configured, or as DNS discovery last found them.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.members().endpoints.clone()
    }

    /// The next endpoint by the cluster's policy, skipping ejected and unhealthy ones while
    /// others are left.
    pub fn pick(&self) -> Option<Endpoint> {
        let members = self.members();
        let i = members.balancer.pick(&[])?;
        Some(members.endpoints[i].clone())
    }

    /// Finds its endpoints by DNS (Envoy's `STRICT_DNS`): each endpoint given by name stands
    /// for every address the name resolves to, looked up every `refresh` by `resolver` once
    /// [`Cluster::discovery`] runs. Until the first lookup, and for a name whose lookup
    /// fails, the last addresses known stay (at first: the name, resolved by each connect).
    pub fn dns_discovery(self, resolver: impl Resolve, refresh: Duration) -> Self {
        Self::build(Settings {
            discovery: Some(Discovery {
                resolver: Arc::new(resolver),
                refresh,
            }),
            ..self.settings()
        })
    }

    fn members(&self) -> Arc<Members> {
        self.inner
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The endpoints now, for discovery to compare with what it finds.
    fn members_now(&self) -> Vec<Endpoint> {
        self.endpoints()
    }

    /// Replaces the endpoints: an address kept keeps its counters and health; one that left
    /// keeps its live tunnels.
    fn set_members(&self, endpoints: Vec<Endpoint>) {
        let mut members = self.inner.members.write().unwrap_or_else(|e| e.into_inner());
        let balancer = members.balancer.next_generation(&members.endpoints, &endpoints);
        *members = Arc::new(Members { endpoints, balancer });
    }

    /// Each endpoint's counters now: active requests and tunnels, health, ejection, failures.
    pub fn stats(&self) -> Vec<EndpointStats> {
        let members = self.members();
        (0..members.endpoints.len())
            .map(|i| members.balancer.stats(i, members.endpoints[i].address()))
            .collect()
    }

    /// Records the cluster's state as metrics: per endpoint, [`ENDPOINT_HEALTHY`],
    /// [`ENDPOINT_EJECTED`], [`ENDPOINT_ACTIVE`] and [`ENDPOINT_CONNECT_FAILURES`]; per
    /// cluster, [`CLUSTER_ENDPOINTS_AVAILABLE`]. Nothing on the request path records them:
    /// call this before a scrape (the health checker also does after each round).
    ///
    /// [`ENDPOINT_HEALTHY`]: crate::metrics::ENDPOINT_HEALTHY
    /// [`ENDPOINT_EJECTED`]: crate::metrics::ENDPOINT_EJECTED
    /// [`ENDPOINT_ACTIVE`]: crate::metrics::ENDPOINT_ACTIVE
    /// [`ENDPOINT_CONNECT_FAILURES`]: crate::metrics::ENDPOINT_CONNECT_FAILURES
    /// [`CLUSTER_ENDPOINTS_AVAILABLE`]: crate::metrics::CLUSTER_ENDPOINTS_AVAILABLE
    pub fn record_metrics(&self) {
        use crate::metrics::{
            CLUSTER_ENDPOINTS_AVAILABLE, ENDPOINT_ACTIVE, ENDPOINT_CONNECT_FAILURES, ENDPOINT_EJECTED,
            ENDPOINT_HEALTHY,
        };
        let cluster = self.name().to_owned();
        let mut available = 0;
        for s in self.stats() {
            let labels = [("cluster", cluster.clone()), ("endpoint", s.address)];
            let flag = |on: bool| if on { 1.0 } else { 0.0 };
            ::metrics::gauge!(ENDPOINT_HEALTHY, &labels).set(flag(!s.unhealthy));
            ::metrics::gauge!(ENDPOINT_EJECTED, &labels).set(flag(s.ejected));
            #[expect(clippy::cast_precision_loss, reason = "a gauge is an f64")]
            ::metrics::gauge!(ENDPOINT_ACTIVE, &labels).set(s.active as f64);
            ::metrics::counter!(ENDPOINT_CONNECT_FAILURES, &labels).absolute(s.connect_failures);
            available += usize::from(!s.unhealthy && !s.ejected);
        }
        #[expect(clippy::cast_precision_loss, reason = "a gauge is an f64")]
        ::metrics::gauge!(CLUSTER_ENDPOINTS_AVAILABLE, "cluster" => cluster).set(available as f64);
    }

    /// The next endpoint not in `tried` (indices into the endpoints now: a request's
    /// retries rarely straddle a DNS change, and then at worst try one endpoint twice),
    /// counted active until the guard drops.
    pub(crate) fn choose(&self, tried: &[usize]) -> Option<(usize, Endpoint, Active)> {
        let members = self.members();
        let i = members.balancer.pick(tried)?;
        Some((i, members.endpoints[i].clone(), members.balancer.activate(i)))
    }

    /// Records how an attempt at `active`'s endpoint went, for outlier ejection.
    pub(crate) fn report(&self, active: &Active, endpoint: &Endpoint, outcome: Outcome) {
        if self.members().balancer.report(active, outcome) {
            tracing::warn!(
                cluster = %self.name(),
                endpoint = endpoint.address(),
                "outlier detection ejected an endpoint"
            );
        }
    }

    /// Opens a fresh connection to `endpoint` (TCP, then TLS if the cluster has it), within
    /// the connect timeout.
    pub(crate) async fn connect(&self, endpoint: &Endpoint) -> Result<UpstreamStream, ConnectError> {
        let inner = &self.inner;
        connect::open(
            &inner.name,
            endpoint.address(),
            endpoint.host(),
            inner.connect_timeout,
            inner.tls.as_ref(),
        )
        .await
    }

    /// A fresh connection for HTTP requests to `endpoint`: as [`Cluster::connect`], but
    /// offering ALPN `h2` when the cluster speaks HTTP/2.
    pub(crate) async fn connect_for_requests(
        &self,
        endpoint: &Endpoint,
    ) -> Result<UpstreamStream, ConnectError> {
        let inner = &self.inner;
        let tls = match &inner.http2 {
            Some(http2) => http2.tls.as_ref(),
            None => inner.tls.as_ref(),
        };
        connect::open(
            &inner.name,
            endpoint.address(),
            endpoint.host(),
            inner.connect_timeout,
            tls,
        )
        .await
    }

    pub(crate) fn client(&self) -> &Client<connect::Connector, Body> {
        &self.inner.client
    }
}

/// What a cluster is built from.
struct Settings {
    name: Arc<str>,
    endpoints: Vec<Endpoint>,
    discovery: Option<Discovery>,
    connect_timeout: Duration,
    policy: LbPolicy,
    outlier: Option<OutlierDetection>,
    health_checks: Vec<HealthCheck>,
    close_on_health_failure: bool,
    tls: Option<ClientTls>,
    http2: bool,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.inner.name)
            .field("endpoints", &self.members().endpoints)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("health_checks", &self.inner.health_checks)
            .field("tls", &self.inner.tls)
            .field("http2", &self.is_http2())
            .finish()
    }
}
