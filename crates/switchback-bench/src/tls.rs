//! TLS for the TLS workloads: one certificate for every proxy, and the bench client's rustls
//! configuration.
//!
//! The certificate: a self-signed ECDSA P-256 CA and a leaf it signs for `localhost` and
//! `127.0.0.1`, made with rcgen once per run and written as PEM files into the run's scratch
//! directory. Every proxy serves the same leaf (alone: the client trusts the CA directly, so
//! no intermediate is sent) with the same key.
//!
//! The client: tokio-rustls on the *ring* provider, restricted to TLS 1.3,
//! `TLS_AES_128_GCM_SHA256` and X25519, offering ALPN `http/1.1` (as a browser does for a
//! WebSocket). Whatever each server would prefer, this is then what every one of them
//! negotiates, so the figures compare the same cryptography. The servers are configured the
//! same way where they can be (nginx and HAProxy); Switchback's listener is TLS 1.3 only and
//! has no suite setting, and the client's offer decides.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Context, Result};

/// The name the client asks for (SNI) and checks the certificate against.
pub(crate) const SERVER_NAME: &str = "localhost";

/// Sessions a client keeps for resumption (rustls's default store size).
const SESSIONS: usize = 256;

/// The run's certificate: PEM files for the proxies, the CA for the client.
#[derive(Debug, Clone)]
pub(crate) struct Certs {
    /// The leaf certificate (the whole chain the proxies send), PEM.
    pub(crate) chain_pem: PathBuf,
    /// The leaf's private key, PKCS#8 PEM.
    pub(crate) key_pem: PathBuf,
    /// The leaf certificate followed by its key, PEM: HAProxy's `crt` file.
    pub(crate) combined_pem: PathBuf,
    /// The CA certificate the client trusts.
    ca: CertificateDer<'static>,
}

impl Certs {
    /// Makes the CA and the leaf and writes the PEM files into `dir`.
    pub(crate) fn generate(dir: &Path) -> Result<Self> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "switchback-bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).context("CA certificate")?;

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("leaf key")?;
        let mut leaf_params = CertificateParams::new(vec![
            SERVER_NAME.to_owned(),
            IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
        ])
        .context("leaf parameters")?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca)
            .context("leaf certificate")?;

        let certs = Self {
            chain_pem: dir.join("leaf-chain.pem"),
            key_pem: dir.join("leaf.key"),
            combined_pem: dir.join("leaf-and-key.pem"),
            ca: ca.der().clone(),
        };
        let cert_pem = leaf.pem();
        let key_pem = leaf_key.serialize_pem();
        for (path, text) in [
            (&certs.chain_pem, cert_pem.clone()),
            (&certs.key_pem, key_pem.clone()),
            (&certs.combined_pem, format!("{cert_pem}{key_pem}")),
        ] {
            std::fs::write(path, text).context(format_args!("writing {}", path.display()))?;
        }
        std::fs::write(dir.join("ca.pem"), ca.pem()).context("writing ca.pem")?;
        Ok(certs)
    }

    /// A client configuration trusting this CA, with resumption on (`resume`) or off. Each
    /// call with `resume` gets a session store of its own: one client, reconnecting.
    pub(crate) fn client(&self, resume: bool) -> Result<Client> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).context("trusting the bench CA")?;
        let provider = CryptoProvider {
            cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
            kx_groups: vec![ring::kx_group::X25519],
            ..ring::default_provider()
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("client TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if resume {
            Resumption::in_memory_sessions(SESSIONS)
        } else {
            Resumption::disabled()
        };
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

/// A TLS client: its configuration and, with resumption, its session store.
#[derive(Clone)]
pub(crate) struct Client {
    connector: TlsConnector,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tls::Client")
    }
}

/// How a TLS handshake went, for counting resumptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A full handshake.
    Full,
    /// A full handshake after a HelloRetryRequest (the server wanted another group).
    Retried,
    /// A resumed session (TLS 1.3 PSK).
    Resumed,
}

impl Client {
    /// Opens a TCP connection to `addr` and completes a TLS handshake on it.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<(TlsStream<TcpStream>, Kind)> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME).context("server name")?;
        let stream = self.connector.connect(name, tcp).await.context("TLS handshake")?;
        let kind = match stream.get_ref().1.handshake_kind() {
            Some(HandshakeKind::Resumed) => Kind::Resumed,
            Some(HandshakeKind::FullWithHelloRetryRequest) => Kind::Retried,
            _ => Kind::Full,
        };
        Ok((stream, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PEM files hold what each proxy expects: one certificate, a PKCS#8 key, both.
    #[test]
    fn writes_the_pem_files_each_proxy_reads() {
        let dir = std::env::temp_dir().join(format!("switchback-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let certs = Certs::generate(&dir).expect("certificates");
        let chain = std::fs::read_to_string(&certs.chain_pem).expect("chain");
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 1);
        let key = std::fs::read_to_string(&certs.key_pem).expect("key");
        assert!(key.contains("BEGIN PRIVATE KEY"), "{key}");
        let both = std::fs::read_to_string(&certs.combined_pem).expect("combined");
        assert!(both.starts_with("-----BEGIN CERTIFICATE") && both.contains("BEGIN PRIVATE KEY"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A rustls server with the files' certificate and key: the client trusts it, negotiates
    /// the one suite, and resumes only when asked to.
    #[test]
    fn clients_handshake_and_resume_against_the_certificate() {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let dir = std::env::temp_dir().join(format!("switchback-bench-tls2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let certs = Certs::generate(&dir).expect("certificates");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.chain_pem)
            .expect("chain file")
            .collect::<Result<_, _>>()
            .expect("chain PEM");
        let key = PrivateKeyDer::from_pem_file(&certs.key_pem).expect("key PEM");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.expect("accept");
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let mut tls = acceptor.accept(tcp).await.expect("server handshake");
                        let suite = tls.get_ref().1.negotiated_cipher_suite().expect("suite");
                        assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
                        tls.write_all(b"x").await.expect("write");
                        tls.shutdown().await.expect("close_notify");
                    });
                }
            });
            for (resume, second) in [(false, Kind::Full), (true, Kind::Resumed)] {
                let client = certs.client(resume).expect("client");
                for expected in [Kind::Full, second] {
                    let (mut tls, kind) = client.connect(addr).await.expect("client handshake");
                    assert_eq!(kind, expected, "resume: {resume}");
                    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
                    // Reading to the end takes in the session tickets.
                    let mut all = Vec::new();
                    tls.read_to_end(&mut all).await.expect("read");
                    assert_eq!(all, b"x");
                }
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
