//! Upstream clusters: named sets of endpoints, picked round robin.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use crate::Body;

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
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    connect_timeout: Duration,
    client: Client<HttpConnector, Body>,
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
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEndpoint => f.write_str("no endpoint in the cluster"),
            Self::Timeout => f.write_str("connect timeout"),
            Self::Io(e) => write!(f, "connect failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl Cluster {
    /// A cluster with a 5 s connect timeout.
    pub fn new(name: impl Into<String>, endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Self::build(
            name.into().into(),
            endpoints.into_iter().collect(),
            Duration::from_secs(5),
        )
    }

    fn build(name: Arc<str>, endpoints: Vec<Endpoint>, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            inner: Arc::new(Inner {
                name,
                endpoints,
                next: AtomicUsize::new(0),
                connect_timeout,
                client,
            }),
        }
    }

    /// Sets how long a TCP connect may take.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        Self::build(self.inner.name.clone(), self.inner.endpoints.clone(), timeout)
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.inner.endpoints
    }

    /// The next endpoint, round robin.
    pub fn pick(&self) -> Option<&Endpoint> {
        let eps = &self.inner.endpoints;
        if eps.is_empty() {
            return None;
        }
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % eps.len();
        Some(&eps[i])
    }

    /// Opens a fresh TCP connection to `endpoint`, within the connect timeout.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<TcpStream, ConnectError> {
        let connect = TcpStream::connect(endpoint.address());
        let stream = match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Picks endpoints round robin and connects, trying up to `attempts` of them.
    pub async fn connect_any(&self, attempts: usize) -> Result<(TcpStream, Endpoint), ConnectError> {
        let mut last = ConnectError::NoEndpoint;
        for _ in 0..attempts.max(1) {
            let Some(endpoint) = self.pick().cloned() else {
                break;
            };
            match self.connect(&endpoint).await {
                Ok(s) => return Ok((s, endpoint)),
                Err(e) => {
                    tracing::debug!(cluster = %self.name(), endpoint = endpoint.address(), error = %e, "connect failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    pub(crate) fn client(&self) -> &Client<HttpConnector, Body> {
        &self.inner.client
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.inner.name)
            .field("endpoints", &self.inner.endpoints)
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish()
    }
}
