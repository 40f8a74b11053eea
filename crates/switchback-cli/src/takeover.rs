//! Binary takeover: a new process (typically a new version) takes the listening sockets of
//! the running one over a unix socket (`SCM_RIGHTS`), as Envoy's hot restart, HAProxy's `-x`
//! and Pingora's graceful upgrade do. The sockets never close, so every connection waiting
//! in their queues is accepted by one process or the other: none is refused or reset. The
//! old process then stops accepting and drains its tunnels as on SIGTERM.
//!
//! The exchange: the new process connects; the old one sends one byte (how many worker
//! sockets), one more (1 when the admin socket follows), and the sockets; the new one starts
//! serving on them and answers `ok`; only then does the old one stop accepting.
//!
//! Whoever gets the sockets gets the proxy's traffic, so the exchange is between processes
//! of the same user only:
//! - the socket file is made `0600` right after it is bound (umask is process-wide, so it is
//!   not changed around the bind; until the `chmod` the umask's mode applies, and the peer
//!   check below still holds);
//! - its directory must belong to this user (or root) and be writable by no one else,
//!   otherwise another user could replace the socket file: the process refuses to start;
//! - each side checks the other's uid (`SO_PEERCRED`) against its own effective uid: the
//!   old process closes a connection from another user without sending anything, and the
//!   new one refuses sockets offered by another user.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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
    check_peer(&stream).map_err(|who| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the process offering it runs as {who}; refusing its sockets"),
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

/// Old side: where takeovers are offered, `0600`. Accepted connections go through
/// [`check_peer`] before anything is sent on them.
pub(crate) fn offer(path: &Path) -> io::Result<UnixListener> {
    check_dir(path).map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))?;
    // A socket file left by a process that is gone (or by the one being replaced: it keeps
    // serving on its own descriptor) would make the bind fail. Anything else at that path
    // is not ours to delete.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a socket is at this path; remove it or choose another path",
            ));
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::new(
            e.kind(),
            format!("cannot make it private (0600): {e}"),
        ));
    }
    Ok(listener)
}

/// Checks that the directory of the socket at `path` belongs to this process's user (or
/// root) and that no one else may write in it: otherwise another user could put a socket
/// of their own in its place. Returns why not.
pub(crate) fn check_dir(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("cannot inspect its directory {}: {e}", dir.display()))?;
    let euid = rustix::process::geteuid().as_raw();
    let fix = "use a directory only the service's user can write, e.g. /run/switchback (mode 0700)";
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!(
            "its directory {} belongs to uid {}, not to this process's uid {euid} (or root), so that user could replace the socket; {fix}",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        return Err(format!(
            "its directory {} is writable by {who} (mode {mode:04o}), so another user could replace the socket; {fix}",
            dir.display()
        ));
    }
    Ok(())
}

/// Checks that the process at the other end of `stream` runs as this process's effective
/// uid. Returns who it is otherwise (uid and pid), for the log.
pub(crate) fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let peer = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| format!("an unknown user (SO_PEERCRED failed: {e})"))?;
    let ours = rustix::process::geteuid();
    if peer.uid == ours {
        Ok(())
    } else {
        Err(format!(
            "uid {} (pid {}), not this process's uid {}",
            peer.uid.as_raw(),
            peer.pid.as_raw_nonzero(),
            ours.as_raw()
        ))
    }
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
