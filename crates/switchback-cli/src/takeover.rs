//! Binary takeover: a new process (typically a new version) takes the listening sockets of
//! the running one over a unix socket (`SCM_RIGHTS`), as Envoy's hot restart, HAProxy's `-x`
//! and Pingora's graceful upgrade do. The sockets never close, so every connection waiting
//! in their queues is accepted by one process or the other: none is refused or reset. The
//! old process then stops accepting and drains its tunnels as on SIGTERM.
//!
//! The exchange: the new process connects; the old one sends one byte (how many worker
//! sockets), one more (1 when the admin socket follows), and the sockets; the new one starts
//! serving on them and answers `ok`; only then does the old one stop accepting.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

/// The most sockets one takeover carries (the workers' and the admin's).
const MAX_FDS: usize = 1025;

/// The sockets handed over: one per worker, and the admin endpoint's.
pub(crate) struct Sockets {
    pub(crate) workers: Vec<std::net::TcpListener>,
    pub(crate) admin: Option<std::net::TcpListener>,
}

/// New side: takes the sockets of the process serving takeovers on `path`. The returned
/// stream is answered with [`confirm`] once the sockets are being accepted on.
pub(crate) fn take(path: &Path) -> io::Result<(Sockets, UnixStream)> {
    let stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no process offers a takeover on {}: {e}", path.display()),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = [0u8; 3];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut head)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes != head.len() {
        return Err(io::Error::other("the running process closed the takeover early"));
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let workers = usize::from(u16::from_be_bytes([head[0], head[1]]));
    let admin = head[2] == 1;
    if fds.len() != workers + usize::from(admin) || workers == 0 {
        return Err(io::Error::other(format!(
            "the running process sent {} sockets for {workers} workers{}",
            fds.len(),
            if admin { " and the admin endpoint" } else { "" }
        )));
    }
    let admin = admin
        .then(|| fds.pop())
        .flatten()
        .map(std::net::TcpListener::from);
    let workers = fds.into_iter().map(std::net::TcpListener::from).collect();
    Ok((Sockets { workers, admin }, stream))
}

/// New side: tells the old process its sockets are being accepted on.
pub(crate) fn confirm(mut stream: UnixStream) -> io::Result<()> {
    stream.write_all(b"ok")
}

/// Old side: where takeovers are offered.
pub(crate) fn offer(path: &Path) -> io::Result<UnixListener> {
    // A socket file left by a process that is gone (or by the one being replaced: it keeps
    // serving on its own descriptor) would make the bind fail.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

/// Old side: sends `workers` and `admin` to the new process on `stream`, and waits for it to
/// accept on them.
pub(crate) fn hand_over(
    mut stream: UnixStream,
    workers: &[OwnedFd],
    admin: Option<&OwnedFd>,
) -> io::Result<()> {
    let count = u16::try_from(workers.len()).map_err(|_| io::Error::other("too many sockets"))?;
    let [hi, lo] = count.to_be_bytes();
    let head = [hi, lo, u8::from(admin.is_some())];
    let fds: Vec<_> = workers.iter().chain(admin).map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("the sockets don't fit one message"));
    }
    rustix::net::sendmsg(&stream, &[IoSlice::new(&head)], &mut control, SendFlags::empty())?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok)?;
    if &ok != b"ok" {
        return Err(io::Error::other("the new process did not confirm the takeover"));
    }
    Ok(())
}
