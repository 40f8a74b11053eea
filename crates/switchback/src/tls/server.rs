//! The listener's side: certificates by SNI, swappable, and the rustls config around them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;

use super::files::{self, TlsError};
use crate::ext::TlsSession;

/// A set of certificates, each with its private key, and the server names (SNI) it serves.
///
/// A name is exact (`example.com`) or a wildcard for one label (`*.example.com` matches
/// `a.example.com`, not `example.com` nor `a.b.example.com`); exact names win. A client whose
/// name matches none, or that sends none, gets the default certificate; without a default, its
/// handshake fails (rustls sends an alert).
#[derive(Debug, Clone, Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    /// No certificate yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, SEC1 or
    /// PKCS#1), and checks that they belong together.
    pub fn load(
        cert_chain_file: impl AsRef<Path>,
        private_key_file: impl AsRef<Path>,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let (chain_path, key_path) = (cert_chain_file.as_ref(), private_key_file.as_ref());
        let chain = files::cert_chain(chain_path)?;
        let key = files::private_key(key_path)?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| TlsError::file(key_path, format_args!("unsupported private key: {e}")))?;
        let certified = CertifiedKey::new(chain, key);
        certified.keys_match().map_err(|e| {
            TlsError::file(
                key_path,
                format_args!(
                    "the key doesn't match the certificate in {}: {e}",
                    chain_path.display()
                ),
            )
        })?;
        Ok(Arc::new(certified))
    }

    /// Serves `key` to clients asking for any of `names` (case-insensitive).
    pub fn add<I, N>(mut self, key: Arc<CertifiedKey>, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        for name in names {
            let name = name.as_ref().trim_end_matches('.').to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.insert(suffix.to_owned(), key.clone()),
                None => self.exact.insert(name, key.clone()),
            };
        }
        self
    }

    /// Serves `key` to clients whose name matches no other certificate, or who send none.
    pub fn default_key(mut self, key: Arc<CertifiedKey>) -> Self {
        self.default = Some(key);
        self
    }

    /// Whether there is no certificate at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        found.or(self.default.as_ref()).cloned()
    }
}

/// Picks a connection's certificate by its SNI from the [`Certificates`] in place now, which
/// [`CertResolver::replace`] swaps: new handshakes use the new ones, established connections
/// (and their tunnels) are untouched.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<Certificates>>,
}

impl CertResolver {
    /// A resolver serving `certs`.
    pub fn new(certs: Certificates) -> Self {
        Self {
            current: RwLock::new(Arc::new(certs)),
        }
    }

    /// Puts `certs` in place for every handshake from now on.
    pub fn replace(&self, certs: Certificates) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certs);
    }

    /// The certificates in place now.
    pub fn certificates(&self) -> Arc<Certificates> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = self.certificates().pick(hello.server_name());
        if picked.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "TLS: no certificate for this server name");
        }
        picked
    }
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// A listener's TLS: what [`Server::tls`](crate::Server::tls) and the workers accept
/// connections with. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("alpn", &self.acceptor.config().alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS with certificates from `resolver`, ALPN `h2` and `http/1.1`, TLS 1.2 and up;
    /// [`ServerTlsBuilder`] changes these.
    pub fn builder(resolver: Arc<CertResolver>) -> ServerTlsBuilder {
        ServerTlsBuilder {
            resolver,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            min_version: TlsVersion::Tls12,
        }
    }

    /// TLS with a rustls config of the caller's own. Its ALPN list decides the protocol: a
    /// connection that agrees on `h2` is served HTTP/2, any other HTTP/1.1.
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        Self {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        }
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// Builds a [`ServerTls`] around a [`CertResolver`].
#[derive(Debug)]
pub struct ServerTlsBuilder {
    resolver: Arc<CertResolver>,
    alpn: Vec<Vec<u8>>,
    min_version: TlsVersion,
}

impl ServerTlsBuilder {
    /// The application protocols offered, in order of preference (`h2`, `http/1.1`). Without
    /// `h2`, clients speak HTTP/1.1.
    pub fn alpn<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.alpn = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// The lowest TLS version accepted.
    pub fn min_version(mut self, version: TlsVersion) -> Self {
        self.min_version = version;
        self
    }

    /// The rustls config: session tickets (stateless, so any worker can resume any session)
    /// and a session cache for TLS 1.2 clients without tickets.
    pub fn build(self) -> Result<ServerTls, TlsError> {
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(versions)
            .map_err(TlsError::other)?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver);
        config.alpn_protocols = self.alpn;
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::other)?;
        config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
        Ok(ServerTls::from_config(Arc::new(config)))
    }
}

/// What a request's extensions say about the TLS connection it came over.
pub(crate) fn accepted_info(conn: &rustls::ServerConnection) -> TlsSession {
    TlsSession {
        server_name: conn.server_name().map(Arc::from),
        version: match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let signer = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .expect("params")
            .self_signed(&signer)
            .expect("a certificate");
        let der = rustls::pki_types::PrivateKeyDer::try_from(signer.serialize_der()).expect("der");
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).expect("signer");
        Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))
    }

    #[test]
    fn exact_names_win_over_wildcards_and_wildcards_cover_one_label() {
        let (exact, wild, fallback) = (key(), key(), key());
        let certs = Certificates::new()
            .add(exact.clone(), ["API.example.com"])
            .add(wild.clone(), ["*.example.com"])
            .default_key(fallback.clone());
        let is = |name: Option<&str>, want: &Arc<CertifiedKey>| {
            assert!(
                Arc::ptr_eq(&certs.pick(name).expect("a certificate"), want),
                "{name:?}"
            );
        };
        is(Some("api.example.com"), &exact);
        is(Some("api.example.com."), &exact);
        is(Some("chat.example.com"), &wild);
        is(Some("example.com"), &fallback);
        is(Some("a.b.example.com"), &fallback);
        is(None, &fallback);
        let strict = Certificates::new().add(exact, ["api.example.com"]);
        assert!(strict.pick(Some("other.example.com")).is_none());
        assert!(strict.pick(None).is_none());
    }
}
