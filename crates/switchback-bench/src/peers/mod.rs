//! The peers: nginx and HAProxy, found on the machine, configured by the harness as their own
//! documentation recommends for WebSocket proxying, started on loopback and stopped after.
//! And, for the TLS workloads, Switchback's own binary, started the same way.

pub(crate) mod haproxy;
pub(crate) mod nginx;
pub(crate) mod switchback;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A peer binary found on this machine.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The executable.
    pub(crate) path: PathBuf,
    /// Its version line, e.g. `nginx/1.22.1`.
    pub(crate) version: String,
}

/// Finds `name` (or uses `explicit`) and reads its version with `version_arg`; `None` when it
/// isn't installed or doesn't run.
pub(crate) fn find(name: &str, explicit: Option<&Path>, version_arg: &str) -> Option<Peer> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => locate(name)?,
    };
    let out = Command::new(&path).arg(version_arg).output().ok()?;
    // nginx prints its version on stderr, HAProxy on stdout.
    let text = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&text);
    let version = text.lines().find(|l| !l.trim().is_empty())?.trim().to_owned();
    Some(Peer { path, version })
}

/// `name` on `PATH`, or in the sbin directories a non-root `PATH` often lacks.
fn locate(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback address with a port that was free a moment ago, for a peer to listen on.
pub(crate) fn free_addr() -> std::io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}
