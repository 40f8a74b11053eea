//! The upstream side: a cluster's TLS client config, and the connection it makes.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::files::{self, TlsError};

/// TLS to a cluster's endpoints, verified against trusted roots: a certificate that doesn't
/// verify fails the connect. The name checked (and sent as SNI) is [`ClientTls::sni`]'s, else
/// the endpoint's [`hostname`](crate::Endpoint::hostname), else its address's host. Cheap to
/// clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    connector: tokio_rustls::TlsConnector,
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A client trusting Mozilla's root certificates (webpki-roots), with no client
    /// certificate; [`ClientTlsBuilder`] changes these.
    pub fn builder() -> ClientTlsBuilder {
        ClientTlsBuilder {
            roots: None,
            identity: None,
        }
    }

    /// TLS with a rustls config of the caller's own (its verifier decides; ALPN, if set,
    /// should offer `http/1.1`: upgrades are HTTP/1.1).
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        Self {
            connector: tokio_rustls::TlsConnector::from(config.clone()),
            config,
            sni: None,
        }
    }

    /// The same TLS, offering ALPN `h2` alone: for a cluster that speaks HTTP/2.
    pub(crate) fn for_http2(&self) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        Self {
            connector: tokio_rustls::TlsConnector::from(config.clone()),
            config,
            sni: self.sni.clone(),
        }
    }

    /// Checks (and sends as SNI) `name` whatever the endpoint.
    pub fn sni(mut self, name: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| TlsError::other(format_args!("`{name}` is not a server name: {e}")))?;
        self.sni = Some(name);
        Ok(self)
    }

    /// Starts TLS on `tcp` to an endpoint whose name (hostname or address host) is `host`.
    pub(crate) async fn connect(&self, tcp: TcpStream, host: &str) -> io::Result<UpstreamStream> {
        let name = match &self.sni {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let stream = self.connector.connect(name, tcp).await?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    }
}

/// Builds a [`ClientTls`].
#[derive(Debug)]
pub struct ClientTlsBuilder {
    roots: Option<RootCertStore>,
    identity: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
}

impl ClientTlsBuilder {
    /// Trusts the CA certificates in this PEM file instead of the public roots.
    pub fn trusted_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let mut roots = RootCertStore::empty();
        for cert in files::cert_chain(path)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::file(path, format_args!("not a usable CA certificate: {e}")))?;
        }
        self.roots = Some(roots);
        Ok(self)
    }

    /// Presents this certificate chain (PEM, leaf first) and key to upstreams that ask for
    /// one (mutual TLS).
    pub fn client_auth_files(
        mut self,
        cert_chain_file: impl AsRef<Path>,
        private_key_file: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let chain = files::cert_chain(cert_chain_file.as_ref())?;
        let key = files::private_key(private_key_file.as_ref())?;
        self.identity = Some((chain, key));
        Ok(self)
    }

    /// The client config: TLS 1.2 and 1.3, ALPN `http/1.1`, session resumption.
    pub fn build(self) -> Result<ClientTls, TlsError> {
        let roots = self.roots.unwrap_or_else(|| RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::other)?
            .with_root_certificates(roots);
        let mut config = match self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::other(format_args!("unusable client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls::from_config(Arc::new(config)))
    }
}

/// A connection to an endpoint: plain, so that a tunnel over it can be spliced, or TLS.
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl hyper_util::client::legacy::connect::Connection for UpstreamStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}
