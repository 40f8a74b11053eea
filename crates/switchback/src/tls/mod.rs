//! TLS on both legs, with rustls (on the *ring* provider): [`ServerTls`] terminates client
//! connections for [`Server`](crate::Server) and [`Workers`](crate::Workers), picking a
//! certificate by SNI from a [`CertResolver`] that can be swapped while the server runs;
//! [`ClientTls`] makes a [`Cluster`](crate::Cluster)'s connections TLS, always verified.
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchback::tls::{CertResolver, Certificates, ClientTls, ServerTls};
//! use switchback::{Cluster, Endpoint, Forward, Server, UpgradeRouterLayer};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Serve wss:// and HTTP/2 (with extended CONNECT) on one port...
//! let key = Certificates::load("example.pem", "example.key")?;
//! let resolver = Arc::new(CertResolver::new(Certificates::new().default_key(key)));
//! let tls = ServerTls::builder(resolver.clone()).build()?;
//! // ...to an upstream that must present a certificate for `chat.internal`.
//! let upstream = ClientTls::builder().trusted_ca_file("internal-ca.pem")?.build()?;
//! let cluster = Cluster::new("chat", [Endpoint::new("10.0.0.5:8443").hostname("chat.internal")])
//!     .tls(upstream);
//! let stack = ServiceBuilder::new()
//!     .layer(UpgradeRouterLayer::builder().upgrade("websocket").build()?)
//!     .service(Forward::new(cluster));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! Server::new(stack)
//!     .tls(tls)
//!     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! // Elsewhere, on a certificate change: new handshakes use the new one.
//! resolver.replace(Certificates::new().default_key(Certificates::load("new.pem", "new.key")?));
//! # Ok(()) }
//! ```
//!
//! Tunnels over TLS use the engine's copy path: `splice(2)` moves bytes between plain sockets
//! only, and kernel TLS can't yet follow a TLS 1.3 key update on a long-lived tunnel.

mod client;
mod files;
mod server;

pub use client::{ClientTls, ClientTlsBuilder};
pub use files::TlsError;
pub use server::{CertResolver, Certificates, ServerTls, ServerTlsBuilder, TlsVersion};

pub(crate) use client::UpstreamStream;
pub(crate) use server::accepted_info;

use std::sync::Arc;

/// The crypto provider every TLS config here is built on.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
