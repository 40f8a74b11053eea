//! Certificates and keys read from PEM files, with errors that name the file.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setting that can't be used: a file that can't be read or holds no usable
/// certificate or key, a key that doesn't match its certificate, a bad server name.
#[derive(Debug)]
pub struct TlsError {
    path: Option<PathBuf>,
    message: String,
}

impl TlsError {
    pub(crate) fn file(path: &Path, message: impl fmt::Display) -> Self {
        Self {
            path: Some(path.to_owned()),
            message: message.to_string(),
        }
    }

    pub(crate) fn other(message: impl fmt::Display) -> Self {
        Self {
            path: None,
            message: message.to_string(),
        }
    }

    /// The file at fault, if a file is.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TlsError {}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub(crate) fn cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::file(path, pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(TlsError::file(
            path,
            "no certificate in the file (expected PEM blocks `-----BEGIN CERTIFICATE-----`)",
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1). A key file that group or others
/// may read is used, with a warning: anyone who can read it can impersonate the proxy.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    if let Some(mode) = loose_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            "the private key file is readable by group or others; make it owner-only (chmod 600, or a Secret's defaultMode 0400)"
        );
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::file(
            path,
            "no private key in the file (expected a PEM `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY`)",
        ),
        e => TlsError::file(path, pem_reason(&e)),
    })
}

/// The permission bits of a file that group or others may read or write, `None` for an
/// owner-only file (or one whose mode can't be read: the read that follows says why).
#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_: &Path) -> Option<u32> {
    None
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => format!("can't read it: {e}"),
        e => format!("not a valid PEM file: {e:?}"),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn key_files_open_to_group_or_others_are_noticed() {
        let path = std::env::temp_dir().join(format!("switchback-key-mode-{}", std::process::id()));
        std::fs::write(&path, "not a key").expect("write");
        let mode = |m| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).expect("chmod");
            loose_mode(&path)
        };
        assert_eq!(mode(0o600), None);
        assert_eq!(mode(0o400), None);
        assert_eq!(mode(0o640), Some(0o640));
        assert_eq!(mode(0o644), Some(0o644));
        assert_eq!(mode(0o602), Some(0o602));
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            loose_mode(&path),
            None,
            "a missing file is the read's error to report"
        );
    }
}
