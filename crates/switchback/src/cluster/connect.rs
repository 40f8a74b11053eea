//! Opening connections to endpoints: TCP, then TLS when the cluster has it, within the
//! cluster's connect timeout. Upgrades connect through [`open`]; the pool through
//! [`Connector`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{ConnectError, Members};
use crate::tls::{ClientTls, UpstreamStream};

/// Connects to `address`, then starts TLS (verifying the endpoint as `host`) if `tls` says
/// so, all within `timeout`.
pub(super) async fn open(
    cluster: &str,
    address: &str,
    host: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<UpstreamStream, ConnectError> {
    let opening = async {
        let tcp = connect_tcp(address).await.map_err(ConnectError::Io)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        // Boxed: a TLS handshake's future holds the TLS session, which would make every
        // plain connect's future as large.
        Box::pin(tls.connect(tcp, host)).await.map_err(|e| {
            let reason = tls_reason(&e);
            ::metrics::counter!(crate::metrics::UPSTREAM_TLS_FAILURES, "cluster" => cluster.to_owned(), "reason" => reason)
                .increment(1);
            tracing::warn!(cluster, endpoint = address, name = host, error = %e, "upstream TLS handshake failed");
            ConnectError::Tls(e)
        })
    };
    tokio::time::timeout(timeout, opening)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

/// A TCP connection to `address`. To this host (a loopback address, as a sidecar's
/// upstream is) the handshake is over by the time `connect(2)` returns: the connection is
/// used at once, where waiting for the socket to turn writable would cost a trip through the
/// event loop. Anywhere else, or if the handshake is still on, it is awaited as usual, so a
/// failure is a connect failure either way.
async fn connect_tcp(address: &str) -> std::io::Result<TcpStream> {
    #[cfg(target_os = "linux")]
    if let Ok(addr) = address.parse::<std::net::SocketAddr>()
        && addr.ip().is_loopback()
    {
        return connect_local(addr).await;
    }
    TcpStream::connect(address).await
}

#[cfg(target_os = "linux")]
async fn connect_local(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::io::Errno;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = match addr {
        std::net::SocketAddr::V4(_) => AddressFamily::INET,
        std::net::SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(e) if e == Errno::INPROGRESS => {}
        Err(e) => return Err(e.into()),
    }
    let tcp = TcpStream::from_std(std::net::TcpStream::from(fd))?;
    // Connected if it has a peer; if not (still connecting, or refused), as tokio's connect.
    if rustix::net::getpeername(&tcp).is_err() {
        tcp.writable().await?;
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
        // Writable and no error, yet no peer: reset before it was used.
        rustix::net::getpeername(&tcp)?;
    }
    Ok(tcp)
}

/// Whether `error` (an exchange's, on a connection whose handshake looked done) is the
/// endpoint refusing the TLS session: with TLS 1.3 a server checks a client certificate after
/// the client's side of the handshake is over, so its refusal arrives as the first read.
/// Counted and logged as a TLS failure; `None` for anything else.
pub(crate) fn refused_session(
    cluster: &str,
    endpoint: &str,
    error: &(dyn std::error::Error + 'static),
) -> Option<std::io::Error> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(rustls::Error::AlertReceived(alert)) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            let refused = std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("the endpoint refused the TLS session: {alert:?}"),
            );
            ::metrics::counter!(crate::metrics::UPSTREAM_TLS_FAILURES, "cluster" => cluster.to_owned(), "reason" => "alert")
                .increment(1);
            tracing::warn!(cluster, endpoint, error = %refused, "upstream TLS session refused");
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// The `reason` label of an upstream TLS failure.
fn tls_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(_) => "handshake",
        None if e.kind() == std::io::ErrorKind::InvalidInput => "bad_name",
        None => "io",
    }
}

/// The pool's connector: the cluster's endpoints by the address in the request's URI (as
/// `Forward` writes it), TLS as the cluster says.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(super) cluster: Arc<str>,
    pub(super) timeout: Duration,
    pub(super) tls: Option<ClientTls>,
    pub(super) members: Arc<RwLock<Arc<Members>>>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let address = uri.authority().ok_or(ConnectError::NoEndpoint)?.as_str();
            let host = {
                let members = this.members.read().unwrap_or_else(|e| e.into_inner()).clone();
                members
                    .endpoints
                    .iter()
                    .find(|e| e.address() == address)
                    .map_or_else(
                        || uri.host().unwrap_or(address).to_owned(),
                        |e| e.host().to_owned(),
                    )
            };
            open(&this.cluster, address, &host, this.timeout, this.tls.as_ref())
                .await
                .map(TokioIo::new)
        })
    }
}
