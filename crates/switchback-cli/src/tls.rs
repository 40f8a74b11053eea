//! The config's TLS settings as the library's: listener certificates (re-read on every
//! reload, swapped into the running listeners' resolvers) and clusters' client configs.
//! Errors name the field and the file, as `--check` prints them.

use std::sync::Arc;

use switchback::tls::{CertResolver, Certificates, ClientTls, ServerTls, TlsVersion};
use switchback_config::{self as config, Config, ListenerTls, TlsMinVersion};

/// Reads a listener's certificate files.
pub(crate) fn certificates(tls: &ListenerTls, path: &str) -> Result<Certificates, String> {
    let mut certs = Certificates::new();
    for (i, files) in tls.certificates.iter().enumerate() {
        let key = Certificates::load(&files.cert_chain_file, &files.private_key_file)
            .map_err(|e| format!("{path}.certificates[{i}]: {e}"))?;
        certs = if files.server_names.is_empty() {
            certs.default_key(key)
        } else {
            certs.add(key, &files.server_names)
        };
    }
    Ok(certs)
}

/// A listener's TLS: its resolver (for reloads to swap certificates into) and acceptor.
pub(crate) fn listener(tls: &ListenerTls, path: &str) -> Result<(Arc<CertResolver>, ServerTls), String> {
    let resolver = Arc::new(CertResolver::new(certificates(tls, path)?));
    let server = ServerTls::builder(resolver.clone())
        .alpn(&tls.alpn)
        .min_version(match tls.min_version {
            TlsMinVersion::Tls12 => TlsVersion::Tls12,
            TlsMinVersion::Tls13 => TlsVersion::Tls13,
        })
        .build()
        .map_err(|e| format!("{path}: {e}"))?;
    Ok((resolver, server))
}

/// A cluster's client TLS, if it has `tls`.
pub(crate) fn upstream(cluster: &config::Cluster, path: &str) -> Result<Option<ClientTls>, String> {
    let Some(tls) = &cluster.tls else {
        return Ok(None);
    };
    let fail = |e: switchback::tls::TlsError| format!("{path}.tls: {e}");
    let mut builder = ClientTls::builder();
    if let Some(ca) = &tls.trusted_ca_file {
        builder = builder.trusted_ca_file(ca).map_err(fail)?;
    }
    if let (Some(chain), Some(key)) = (&tls.cert_chain_file, &tls.private_key_file) {
        builder = builder.client_auth_files(chain, key).map_err(fail)?;
    }
    let mut client = builder.build().map_err(fail)?;
    if let Some(sni) = &tls.sni {
        client = client.sni(sni).map_err(fail)?;
    }
    Ok(Some(client))
}

/// Every TLS file of `config` read and checked (what `--check` adds to the config's own
/// checks): all problems, one line each.
pub(crate) fn check(config: &Config) -> Vec<String> {
    let listeners = config.listeners.iter().enumerate().filter_map(|(i, l)| {
        let tls = l.tls.as_ref()?;
        listener(tls, &format!("listeners[{i}].tls")).err()
    });
    let clusters = config
        .clusters
        .iter()
        .enumerate()
        .filter_map(|(i, c)| upstream(c, &format!("clusters[{i}]")).err());
    listeners.chain(clusters).collect()
}
