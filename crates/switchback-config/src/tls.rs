//! `listeners` (each optionally with `tls`) and a cluster's `tls`: reading, checking and the
//! effective settings.
//!
//! ```yaml
//! listeners:                       # instead of `listen`; both at once is an error
//!   - address: 0.0.0.0:443
//!     tls:
//!       certificates:
//!         - cert_chain_file: example.pem       # PEM, leaf first; relative to the config file
//!           private_key_file: example.key
//!           server_names: [example.com, "*.example.com"]   # none: the default certificate
//!       alpn: [h2, http/1.1]       # the default
//!       min_version: "1.2"         # or "1.3"
//!   - address: 0.0.0.0:80
//! clusters:
//!   - name: chat
//!     endpoints: [{ address: 10.0.0.5:8443, hostname: chat.internal }]
//!     tls:
//!       sni: chat.internal         # default: the endpoint's hostname (else its address)
//!       trusted_ca_file: ca.pem    # default: Mozilla's roots
//!       cert_chain_file: client.pem   # optional client certificate (mutual TLS)
//!       private_key_file: client.key
//! ```
//!
//! Files are checked here as far as reading them: each exists and holds PEM blocks of the
//! right kind. The binary parses them (and matches each key with its certificate) when it
//! loads the config, for `--check` and reloads too.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Ctx;
use crate::locate::{join_index, join_key};
use crate::read::{List, S};
use crate::tree::Node;

/// One listener: an address, plaintext or TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    /// The address it listens on.
    pub address: SocketAddr,
    /// TLS termination; absent: plaintext (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// A listener's `tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// Certificates, picked by SNI; the one without `server_names` is the default.
    pub certificates: Vec<CertificateFiles>,
    /// ALPN protocols offered, in order: `h2` and `http/1.1` (the default, both).
    pub alpn: Vec<String>,
    /// The lowest TLS version accepted: `1.2` (the default) or `1.3`.
    pub min_version: TlsMinVersion,
}

/// One certificate of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert_chain_file: PathBuf,
    /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub private_key_file: PathBuf,
    /// The SNI names it serves (exact, or `*.` and one label); empty: the default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

/// A listener's `min_version`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// A cluster's `tls`: connections to its endpoints are TLS, always verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// The name sent as SNI and checked in the certificate; default: the endpoint's hostname,
    /// else its address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// CA certificates (PEM) to trust instead of Mozilla's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) for upstreams that ask for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_chain_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
}

// === reading ===

#[derive(Debug)]
pub(crate) struct RawListener {
    address: Option<S<String>>,
    tls: Option<S<RawListenerTls>>,
}

impl RawListener {
    pub(crate) const FIELDS: &'static [&'static str] = &["address", "tls"];

    pub(crate) fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawListener {
            address: f.required(ctx, "address", Ctx::string),
            tls: f.optional(ctx, "tls", RawListenerTls::read).ok(),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawListenerTls {
    certificates: Option<S<List<RawCertificate>>>,
    alpn: Option<S<List<String>>>,
    min_version: Option<S<String>>,
}

impl RawListenerTls {
    pub(crate) const FIELDS: &'static [&'static str] = &["certificates", "alpn", "min_version"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawListenerTls {
            certificates: f.required(
                ctx,
                "certificates",
                |ctx: &mut Ctx<'_>, node: &Node, path: &str| ctx.list(node, path, RawCertificate::read),
            ),
            alpn: f.optional(ctx, "alpn", strings).ok(),
            min_version: f.optional(ctx, "min_version", Ctx::string).ok(),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawCertificate {
    cert_chain_file: Option<S<String>>,
    private_key_file: Option<S<String>>,
    server_names: Option<S<List<String>>>,
}

impl RawCertificate {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["cert_chain_file", "private_key_file", "server_names"];

    fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawCertificate {
            cert_chain_file: f.required(ctx, "cert_chain_file", Ctx::string),
            private_key_file: f.required(ctx, "private_key_file", Ctx::string),
            server_names: f.optional(ctx, "server_names", strings).ok(),
        }))
    }
}

#[derive(Debug)]
pub(crate) struct RawUpstreamTls {
    sni: Option<S<String>>,
    trusted_ca_file: Option<S<String>>,
    cert_chain_file: Option<S<String>>,
    private_key_file: Option<S<String>>,
}

impl RawUpstreamTls {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["sni", "trusted_ca_file", "cert_chain_file", "private_key_file"];

    pub(crate) fn read(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<Self>> {
        let f = ctx.fields(node, path, Self::FIELDS)?;
        Some(f.at(RawUpstreamTls {
            sni: f.optional(ctx, "sni", Ctx::string).ok(),
            trusted_ca_file: f.optional(ctx, "trusted_ca_file", Ctx::string).ok(),
            cert_chain_file: f.optional(ctx, "cert_chain_file", Ctx::string).ok(),
            private_key_file: f.optional(ctx, "private_key_file", Ctx::string).ok(),
        }))
    }
}

fn strings(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<S<List<String>>> {
    ctx.list(node, path, Ctx::string)
}

// === checking ===

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

impl Ctx<'_> {
    /// Checks `listeners` and builds them.
    pub(crate) fn listeners(&mut self, raw: &S<List<RawListener>>) -> Vec<Listener> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, listener) in raw.value.iter().enumerate() {
            let Some(listener) = listener else { continue };
            let path = join_index("listeners", i);
            let Some(address) = &listener.value.address else {
                continue;
            };
            let Some(addr) = self.listener_address(address, &join_key(&path, "address")) else {
                continue;
            };
            // Port 0 (any free port) may repeat: each gets a port of its own.
            if addr.port() != 0 && !seen.insert(addr) {
                self.error(
                    address.at,
                    &join_key(&path, "address"),
                    format!("{addr} is listed twice; each listener needs an address of its own"),
                );
                continue;
            }
            let tls = listener
                .value
                .tls
                .as_ref()
                .and_then(|tls| self.listener_tls(tls, &join_key(&path, "tls")));
            out.push(Listener { address: addr, tls });
        }
        if raw.value.is_empty() {
            self.error(
                raw.at,
                "listeners",
                "listeners is empty; list at least one, e.g. `- address: 127.0.0.1:10000`",
            );
        }
        out
    }

    fn listener_address(&mut self, value: &S<String>, path: &str) -> Option<SocketAddr> {
        value.value.trim().parse().ok().or_else(|| {
            self.error(
                value.at,
                path,
                format!(
                    "\"{}\" is not a socket address; write ip:port, e.g. 0.0.0.0:443 or [::]:443",
                    value.value
                ),
            );
            None
        })
    }

    fn listener_tls(&mut self, raw: &S<RawListenerTls>, path: &str) -> Option<ListenerTls> {
        let r = &raw.value;
        let certs_path = join_key(path, "certificates");
        let mut certificates = Vec::new();
        let mut names = HashSet::new();
        let mut default_seen = false;
        if let Some(list) = &r.certificates {
            if list.value.is_empty() {
                self.error(
                    list.at,
                    &certs_path,
                    "a TLS listener needs at least one certificate: add `- { cert_chain_file: cert.pem, private_key_file: key.pem }`",
                );
            }
            for (i, cert) in list.value.iter().enumerate() {
                let Some(cert) = cert else { continue };
                let at = join_index(&certs_path, i);
                let server_names = self.server_names(&cert.value.server_names, &at, &mut names);
                if server_names.is_empty() {
                    if default_seen {
                        self.error(
                            cert.at,
                            &at,
                            "a second certificate without server_names; only one can be the default: give this one its names",
                        );
                    }
                    default_seen = true;
                }
                let chain = self.pem_file(
                    &cert.value.cert_chain_file,
                    &join_key(&at, "cert_chain_file"),
                    Pem::Certificates,
                );
                let key = self.pem_file(
                    &cert.value.private_key_file,
                    &join_key(&at, "private_key_file"),
                    Pem::PrivateKey,
                );
                if let (Some(cert_chain_file), Some(private_key_file)) = (chain, key) {
                    certificates.push(CertificateFiles {
                        cert_chain_file,
                        private_key_file,
                        server_names,
                    });
                }
            }
        }
        let alpn = match &r.alpn {
            None => vec!["h2".to_owned(), "http/1.1".to_owned()],
            Some(list) => self.alpn(list, &join_key(path, "alpn")),
        };
        let min_version = match r.min_version.as_ref().map(|v| (v, v.value.trim())) {
            None | Some((_, "1.2")) => TlsMinVersion::Tls12,
            Some((_, "1.3")) => TlsMinVersion::Tls13,
            Some((v, other)) => {
                self.error(
                    v.at,
                    &join_key(path, "min_version"),
                    format!("min_version {other:?} is not supported; write \"1.2\" or \"1.3\""),
                );
                TlsMinVersion::Tls12
            }
        };
        Some(ListenerTls {
            certificates,
            alpn,
            min_version,
        })
    }

    fn server_names(
        &mut self,
        raw: &Option<S<List<String>>>,
        path: &str,
        seen: &mut HashSet<String>,
    ) -> Vec<String> {
        let Some(list) = raw else { return Vec::new() };
        let path = join_key(path, "server_names");
        let mut out = Vec::new();
        for (i, name) in list.value.iter().enumerate() {
            let Some(name) = name else { continue };
            let at = join_index(&path, i);
            let lower = name.value.trim().trim_end_matches('.').to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            let valid = !bare.is_empty()
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                self.error(
                    name.at,
                    &at,
                    format!(
                        "{:?} is not a server name; write a DNS name (example.com) or a wildcard for one label (*.example.com)",
                        name.value
                    ),
                );
            } else if !seen.insert(lower.clone()) {
                self.error(
                    name.at,
                    &at,
                    format!("{lower} is named by two certificates; a name picks one certificate, so keep it on one"),
                );
            } else {
                out.push(lower);
            }
        }
        if list.value.is_empty() {
            self.error(
                list.at,
                &path,
                "server_names is empty; list names, or leave the field out for the default certificate",
            );
        }
        out
    }

    fn alpn(&mut self, list: &S<List<String>>, path: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, p) in list.value.iter().enumerate() {
            let Some(p) = p else { continue };
            let at = join_index(path, i);
            match p.value.as_str() {
                "h2" | "http/1.1" if out.contains(&p.value) => {
                    self.error(p.at, &at, format!("{} is listed twice", p.value));
                }
                "h2" | "http/1.1" => out.push(p.value.clone()),
                other => self.error(
                    p.at,
                    &at,
                    format!("unknown ALPN protocol {other:?}; use h2 and http/1.1"),
                ),
            }
        }
        if list.value.is_empty() {
            self.error(
                list.at,
                path,
                "alpn is empty; list h2 and/or http/1.1, or leave it out for both",
            );
        }
        out
    }

    /// Checks a cluster's `tls` and builds it.
    pub(crate) fn upstream_tls(&mut self, raw: &S<RawUpstreamTls>, path: &str) -> UpstreamTls {
        let r = &raw.value;
        if let Some(sni) = &r.sni
            && (sni.value.trim().is_empty() || sni.value.contains(char::is_whitespace))
        {
            self.error(
                sni.at,
                &join_key(path, "sni"),
                format!(
                    "{:?} is not a server name; write a DNS name, e.g. chat.internal",
                    sni.value
                ),
            );
        }
        let trusted_ca_file = r.trusted_ca_file.as_ref().and_then(|f| {
            self.pem_file(
                &Some(f.clone()),
                &join_key(path, "trusted_ca_file"),
                Pem::Certificates,
            )
        });
        let cert_chain_file = r.cert_chain_file.as_ref().and_then(|f| {
            self.pem_file(
                &Some(f.clone()),
                &join_key(path, "cert_chain_file"),
                Pem::Certificates,
            )
        });
        let private_key_file = r.private_key_file.as_ref().and_then(|f| {
            self.pem_file(
                &Some(f.clone()),
                &join_key(path, "private_key_file"),
                Pem::PrivateKey,
            )
        });
        match (&r.cert_chain_file, &r.private_key_file) {
            (Some(c), None) => self.error(
                c.at,
                &join_key(path, "private_key_file"),
                "a client certificate needs its key: add private_key_file",
            ),
            (None, Some(k)) => self.error(
                k.at,
                &join_key(path, "cert_chain_file"),
                "a private key needs its certificate: add cert_chain_file",
            ),
            _ => {}
        }
        UpstreamTls {
            sni: r.sni.as_ref().map(|s| s.value.trim().to_owned()),
            trusted_ca_file,
            cert_chain_file,
            private_key_file,
        }
    }

    /// The path of a PEM file (relative paths are relative to the config file's folder),
    /// checked to exist and to hold what it should.
    fn pem_file(&mut self, raw: &Option<S<String>>, path: &str, kind: Pem) -> Option<PathBuf> {
        let raw = raw.as_ref()?;
        if raw.value.trim().is_empty() {
            self.error(raw.at, path, "the file name is empty; give a PEM file's path");
            return None;
        }
        let file = self.base_dir().join(raw.value.trim());
        let (marker, what) = match kind {
            Pem::Certificates => (
                "-----BEGIN CERTIFICATE-----",
                "PEM certificate (`-----BEGIN CERTIFICATE-----`)",
            ),
            Pem::PrivateKey => (
                "PRIVATE KEY-----",
                "PEM private key (`-----BEGIN PRIVATE KEY-----`, `EC PRIVATE KEY` or `RSA PRIVATE KEY`)",
            ),
        };
        match std::fs::read(&file) {
            Err(e) => self.error(
                raw.at,
                path,
                format!(
                    "cannot read {}: {e}; give the path of a {what} file, absolute or relative to the config file",
                    file.display()
                ),
            ),
            Ok(bytes) if !contains(&bytes, marker.as_bytes()) => {
                self.error(raw.at, path, format!("{} has no {what} in it", file.display()))
            }
            Ok(_) => return Some(file),
        }
        None
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The folder relative file names are read from.
pub(crate) fn base_dir(config_file: &str) -> &Path {
    Path::new(config_file).parent().unwrap_or(Path::new(""))
}
