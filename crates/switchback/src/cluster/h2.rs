//! A cluster's multiplexed HTTP/2 connections for tunnels (`http2_protocol_options`): each
//! tunnel is a stream (RFC 8441 extended CONNECT, or CONNECT), and streams share a connection
//! up to the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` before another is opened.
//!
//! A connection that receives `GOAWAY` (or fails) is retired: its open streams run on to
//! their end, new ones go to a fresh connection. Each connection is driven by a task of its
//! own, which also marks it closed when it ends.
//!
//! Connections belong to the thread that opened them, as Envoy's pools belong to a worker:
//! under [`Workers`](crate::Workers) a tunnel and its stream's connection then run on one
//! thread, with no wake-up or lock handed across threads for each frame, and no memory
//! allocated on one thread and freed on another.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;

use super::ConnectError;
use crate::tls::UpstreamStream;

/// Each stream's receive window: what one tunnel may have in flight towards a slow client.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: as large as HTTP/2 allows, so that streams stalled by
/// slow clients never stall their neighbours (each is bounded by its own window).
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// The HTTP/2 connections of one cluster.
#[derive(Default)]
pub(crate) struct H2Pool {
    conns: Mutex<Vec<Arc<H2Conn>>>,
    /// One connection made at a time per endpoint: the streams that find no room wait for
    /// it rather than each opening a connection of its own (a burst of new tunnels would
    /// otherwise open as many connections as there are tunnels in flight).
    connecting: Mutex<Vec<(Arc<str>, Turn)>>,
}

/// Held while a connection to one endpoint is being made.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// One HTTP/2 connection to an endpoint.
struct H2Conn {
    endpoint: Arc<str>,
    /// The thread whose runtime drives it: streams are taken only from there (below).
    thread: std::thread::ThreadId,
    send: SendRequest<Bytes>,
    /// Streams we opened on it that are still in use.
    open: AtomicUsize,
    /// Ended, failed, or told to go away: no new stream goes on it.
    retired: AtomicBool,
}

impl H2Conn {
    /// Takes a place for one more stream, if the connection is usable and below the peer's
    /// limit.
    fn try_take(self: &Arc<Self>) -> Option<StreamSlot> {
        if self.retired.load(Ordering::Acquire) {
            return None;
        }
        // After a GOAWAY (or a connection error) h2 refuses new streams here.
        let mut ready = self.send.clone();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Err(e)) = ready.poll_ready(&mut cx) {
            tracing::debug!(endpoint = %self.endpoint, error = %e, "HTTP/2 upstream connection retired");
            self.retired.store(true, Ordering::Release);
            return None;
        }
        let max = self.send.current_max_send_streams();
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        taken.ok().map(|_| StreamSlot(Arc::clone(self)))
    }
}

/// A stream's place on its connection, given back when dropped.
pub(crate) struct StreamSlot(Arc<H2Conn>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StreamSlot").field(&self.0.endpoint).finish()
    }
}

/// A place for one stream on a connection to the endpoint asked for.
pub(crate) struct Lease {
    pub(crate) send: SendRequest<Bytes>,
    pub(crate) slot: StreamSlot,
    /// The peer allows extended CONNECT (`SETTINGS_ENABLE_CONNECT_PROTOCOL`).
    pub(crate) extended_connect: bool,
}

impl H2Pool {
    /// A stream's place on a connection to `endpoint`: an open one below its limit, else a
    /// new one made by `connect` (TCP, then TLS with ALPN `h2`).
    pub(crate) async fn lease<F>(
        &self,
        endpoint: &str,
        timeout: Duration,
        connect: F,
    ) -> Result<Lease, ConnectError>
    where
        F: Future<Output = Result<UpstreamStream, ConnectError>>,
    {
        if let Some(lease) = self.reuse(endpoint) {
            return Ok(lease);
        }
        let turn = self.connect_lock(endpoint);
        let _turn = turn.lock().await;
        // The connection made while we waited may have room.
        if let Some(lease) = self.reuse(endpoint) {
            return Ok(lease);
        }
        let io = connect.await?;
        let (send, driver) = tokio::time::timeout(timeout, handshake(io))
            .await
            .unwrap_or(Err(ConnectError::Timeout))?;
        let conn = Arc::new(H2Conn {
            endpoint: endpoint.into(),
            thread: std::thread::current().id(),
            send,
            open: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        });
        let state = Arc::clone(&conn);
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(endpoint = %state.endpoint, error = %e, "HTTP/2 upstream connection failed");
            }
            state.retired.store(true, Ordering::Release);
        });
        let slot = conn.try_take().ok_or_else(|| {
            ConnectError::Io(std::io::Error::other("the new HTTP/2 connection takes no stream"))
        })?;
        let lease = Lease {
            send: conn.send.clone(),
            slot,
            extended_connect: conn.send.is_extended_connect_protocol_enabled(),
        };
        self.conns().push(conn);
        Ok(lease)
    }

    fn reuse(&self, endpoint: &str) -> Option<Lease> {
        let mut conns = self.conns();
        conns.retain(|c| !(c.retired.load(Ordering::Acquire) && c.open.load(Ordering::Acquire) == 0));
        let thread = std::thread::current().id();
        conns
            .iter()
            .filter(|c| &*c.endpoint == endpoint && c.thread == thread)
            .find_map(|c| {
                let slot = c.try_take()?;
                Some(Lease {
                    send: c.send.clone(),
                    slot,
                    extended_connect: c.send.is_extended_connect_protocol_enabled(),
                })
            })
    }

    /// The lock that orders connection attempts to `endpoint`.
    fn connect_lock(&self, endpoint: &str) -> Turn {
        let mut locks = self.connecting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, lock)) = locks.iter().find(|(e, _)| &**e == endpoint) {
            return Arc::clone(lock);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.push((endpoint.into(), Arc::clone(&lock)));
        lock
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Vec<Arc<H2Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now (retired ones with streams still running included).
    pub(crate) fn connections(&self) -> usize {
        self.conns().len()
    }
}

/// The connection's side that must be driven (by a task of its own) for any stream to move.
type Driver = h2::client::Connection<UpstreamStream, Bytes>;

/// The HTTP/2 handshake, then a PING answered: the peer's SETTINGS come first on its side,
/// so once the PONG is in, its stream limit and extended CONNECT are known.
async fn handshake(io: UpstreamStream) -> Result<(SendRequest<Bytes>, Driver), ConnectError> {
    let io_error = |e: h2::Error| ConnectError::Io(std::io::Error::other(e));
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(io_error)?;
    let mut ping = conn
        .ping_pong()
        .ok_or_else(|| ConnectError::Io(std::io::Error::other("no PING on a new connection")))?;
    tokio::select! {
        pong = ping.ping(h2::Ping::opaque()) => { pong.map_err(io_error)?; }
        ended = &mut conn => {
            let why = ended.err().map_or_else(|| "closed".to_owned(), |e| e.to_string());
            return Err(ConnectError::Io(std::io::Error::other(format!("the HTTP/2 connection ended at once: {why}"))));
        }
    }
    Ok((send, conn))
}
