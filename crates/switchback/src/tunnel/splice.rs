//! `splice(2)` between two sockets through a pipe: the kernel moves the pages, the bytes never
//! enter this process. Pipes are lent from a per-thread pool while they hold data, like relay
//! buffers, so an idle tunnel holds none.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What one splice into a pipe may take: the capacity pipes are given, four times Linux's
/// default, so that bulk transfers take a quarter of the system calls. It is only pinned
/// while bytes are in flight.
pub(crate) const CHUNK: usize = 256 * 1024;

const SPARES: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe and how many bytes it holds.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the pipe can hold: a splice into a full pipe fails like an empty socket would, so
    /// fills never ask for more than the free room.
    capacity: u32,
    /// At most `capacity`: a pipe holds at most a few MiB (u32 keeps every tunnel smaller).
    pub(crate) held: u32,
}

impl Pipe {
    /// A spare pipe, or a new one.
    pub(crate) fn take() -> io::Result<Self> {
        if let Some(p) = SPARE.with(|s| s.borrow_mut().pop()) {
            return Ok(p);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Unprivileged processes may be held to a smaller pipe size: the default (one page
        // per slot, 16 slots) is fine too.
        let capacity = rustix::pipe::fcntl_setpipe_size(&write, CHUNK)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
            .unwrap_or(16 * 4096);
        Ok(Self {
            read,
            write,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            held: 0,
        })
    }

    /// Returns an empty pipe for reuse. A pipe still holding bytes is closed instead.
    pub(crate) fn give(self) {
        if self.held == 0 {
            SPARE.with(|s| {
                let mut spare = s.borrow_mut();
                if spare.len() < SPARES {
                    spare.push(self);
                }
            });
        }
    }

    /// Moves up to `max` bytes from `from` into the pipe's free room; `Ok(0)` is end of stream.
    pub(crate) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let max = max.min(self.capacity.saturating_sub(self.held) as usize);
        if max == 0 {
            // Never splice into a full pipe: it fails like a socket with nothing to read.
            return Poll::Ready(Err(io::Error::other("splice: the pipe is full")));
        }
        loop {
            ready!(from.poll_read_ready(cx))?;
            let moved = from.try_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(from, None, &self.write, None, max, flags())?)
            });
            match moved {
                Ok(n) => {
                    // `n` is at most the free room, itself a u32.
                    self.held += n as u32;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Moves what the pipe holds into `to`, as far as it takes it now; returns the bytes moved.
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<usize>> {
        loop {
            ready!(to.poll_write_ready(cx))?;
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    &self.read,
                    None,
                    to,
                    None,
                    self.held as usize,
                    flags(),
                )?)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held -= n as u32;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}
