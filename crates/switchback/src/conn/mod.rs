//! Client connections as their listener counts them: what each is doing, which of its timers
//! runs, and which one gives way when the listener is full. Neutral: the server admits and
//! times connections, the router lets a tunnel keep its connection's place, and the tunnel
//! unwraps a connection's socket ([`ClientIo`]).
//!
//! A connection is in one of three states, read from two clocks and a count:
//! - **reading a head** (since accept, or since the first byte after an idle spell): the
//!   request headers timeout runs; the connection may be evicted;
//! - **busy** (requests being answered, or a tunnel): no timer of ours runs;
//! - **idle** between requests: the connection idle timeout runs; it may be evicted.
//!
//! A tunnel keeps its client connection's place (its descriptor is still open), so that
//! tunnels count against `max_connections` and are never evicted: an HTTP/1.1 tunnel, whose
//! connection's HTTP life is over, through a [`Seat`] (a count, no state of its own); an
//! HTTP/2 one, a stream among others, through an [`Exchange`] that keeps its connection busy
//! and a [`Seat`] of its own (its upstream leg is a descriptor, as a connection's is), so that
//! one HTTP/2 connection can't open more tunnels than the listener has places.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

mod io;
mod key_bytes;

pub(crate) use io::ClientIo;

/// Descriptors kept back from the default `max_connections` for the admin endpoint, log
/// files, DNS, each worker's spare splice pipes (two descriptors each), refusals in flight
/// and the like: a reconnect storm fills the listener, and an `accept` or a `connect` that
/// finds no descriptor left fails. A quarter of the limit, so that a small limit still
/// leaves most of it to connections (256 descriptors: 96 connections), and no more than 256.
const MAX_RESERVED_FDS: u64 = 256;

/// How long a listener full of busy connections leaves newcomers in the kernel's queue, for a
/// place to come free, before it refuses them with `503`: once that long, every newcomer is
/// refused as it comes, until a place frees.
const PATIENCE: Duration = Duration::from_millis(500);

/// How long a connection must have waited for a request head, or sat idle, before a full
/// listener evicts it for a newcomer. Well past a worker's delay in reading a head that has
/// arrived, on a machine busy with a reconnect storm; well short of the head timeout, so
/// that slow clients holding every place don't keep others out for long.
const SLOW: Duration = Duration::from_secs(2);

/// How long a connection whose worker found nothing to read must stay silent before a full
/// listener evicts it. Shorter than [`SLOW`]: its head can't be waiting in its socket for a
/// busy worker, which is what `SLOW` allows for, since the worker looked and there was none.
/// A flood of connections that send nothing then gives way twice as fast.
const QUIET: Duration = Duration::from_secs(1);

/// The default `max_connections` for a process allowed `descriptors` open files: every client
/// connection may need an upstream one (a tunnel's other leg), after a reserve.
pub(crate) fn default_max_connections(descriptors: Option<u64>) -> usize {
    let fds = descriptors.unwrap_or(2 * 1024 * 1024);
    let reserve = (fds / 4).min(MAX_RESERVED_FDS);
    usize::try_from((fds.saturating_sub(reserve) / 2).max(1)).unwrap_or(usize::MAX)
}

/// The process's current (soft) descriptor limit, `None` when unlimited or unknown.
#[cfg(target_os = "linux")]
pub(crate) fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn descriptor_limit() -> Option<u64> {
    None
}

/// Every connection of one listener (on all of its workers).
#[derive(Debug)]
pub(crate) struct Conns {
    max: usize,
    epoch: Instant,
    live: Mutex<Live>,
    /// Tunnels open: HTTP/1.1 ones (their connections have left `live`) and HTTP/2 ones
    /// (besides their connections).
    tunnels: AtomicUsize,
    /// A worker waits for a place while the listener is full.
    freed: Notify,
    /// Workers waiting in [`Conns::room`].
    waiting: AtomicUsize,
    /// Since when (see [`Conns::millis`]) the listener has been full with no connection to
    /// evict, or zero: newcomers wait [`PATIENCE`] from then, not each from its own arrival.
    full_of_busy: AtomicU64,
}

#[derive(Debug, Default)]
struct Live {
    next: u64,
    conns: HashMap<u64, Arc<ConnState>>,
    /// Connections told to go that haven't gone yet: their places are already promised.
    leaving: usize,
}

impl Live {
    /// The connection a newcomer would evict, and from when (see [`Conns::millis`]): the one
    /// that may give way first, not busy and not already leaving. O(connections), run only
    /// while the listener is full.
    fn next_to_evict(&self) -> Option<(&Arc<ConnState>, u64)> {
        self.conns
            .values()
            .filter(|c| c.evictable())
            .map(|c| (c, c.evictable_from()))
            .min_by_key(|&(_, from)| from)
    }
}

/// What happened to a connection the listener was asked to take.
pub(crate) enum Admission {
    Admitted(Arc<Slot>),
    /// The listener is full of busy connections: the newcomer gets a `503`.
    Full,
}

impl Conns {
    /// A listener's count; `max: None` derives the cap from the descriptor limit.
    pub(crate) fn new(max: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            max: max.unwrap_or_else(|| default_max_connections(descriptor_limit())),
            epoch: Instant::now(),
            live: Mutex::default(),
            tunnels: AtomicUsize::new(0),
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            full_of_busy: AtomicU64::new(0),
        })
    }

    /// Whether the listener has no place left (before evicting anyone).
    fn is_full(&self, live: &Live) -> bool {
        live.conns.len() + self.tunnels.load(Relaxed) - live.leaving >= self.max
    }

    /// Waits while the listener is full and nobody should give way yet: newcomers stay in the
    /// kernel's queue meanwhile, rather than be taken only to evict someone or be refused.
    ///
    /// A connection gives way (see [`Conns::admit`]) once it has waited [`SLOW`] for its
    /// head, or sat idle that long. A younger one is not evicted: in a reconnect storm on a
    /// busy machine, a newcomer's head may wait a while in its socket before its worker reads
    /// it, and newcomers must not evict each other while the tunnels being replaced close and
    /// free their places. When every connection is busy, the wait ends after [`PATIENCE`]
    /// and the newcomer is refused; while every connection stays busy, later newcomers are
    /// refused as they come (a queue of them would otherwise be refused one per half second
    /// per worker, and wait minutes for an answer).
    pub(crate) async fn room(&self) {
        let _waiting = Waiting::new(&self.waiting);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let deadline = {
                let live = self.live();
                if !self.is_full(&live) {
                    return;
                }
                match live.next_to_evict() {
                    Some((_, from)) => self.instant(from),
                    None => {
                        let now = self.millis(Instant::now());
                        let since = match self.full_of_busy.compare_exchange(0, now, Relaxed, Relaxed) {
                            Ok(_) => now,
                            Err(since) => since,
                        };
                        self.instant(since) + PATIENCE
                    }
                }
            };
            if deadline <= Instant::now() {
                return;
            }
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A place came free: a worker waiting in [`Conns::room`] may go on, and a listener that
    /// fills up again waits [`PATIENCE`] anew.
    fn free(&self) {
        self.full_of_busy.store(0, Relaxed);
        if self.waiting.load(Relaxed) > 0 {
            self.freed.notify_waiters();
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a new connection. When the listener is full, the connection that has waited
    /// longest for a head, or sat idle longest, is told to go and the newcomer takes its
    /// place, if that one has waited [`SLOW`]; when every connection is busy, the newcomer is
    /// refused. [`Conns::room`] waits for one or the other first, so a full listener with only
    /// younger candidates is a race between workers for a place that just came free: the
    /// newcomer is taken over the cap (by at most one per worker) rather than evict another
    /// newcomer.
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let now = self.millis(Instant::now());
        let mut live = self.live();
        if self.is_full(&live) {
            let Some((victim, from)) = live.next_to_evict() else {
                ::metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
                return Admission::Full;
            };
            if from <= now {
                victim.leaving.store(true, Relaxed);
                victim.evict.notify_one();
                live.leaving += 1;
                ::metrics::counter!(crate::metrics::CONNECTIONS_EVICTED).increment(1);
            }
        }
        let key = live.next;
        live.next += 1;
        let state = Arc::new(ConnState {
            busy: AtomicU32::new(0),
            head: AtomicU64::new(now),
            idle: AtomicU64::new(now),
            quiet: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
            evict: Notify::new(),
            fresh: AtomicBool::new(true),
        });
        live.conns.insert(key, state.clone());
        Admission::Admitted(Arc::new(Slot {
            conns: self.clone(),
            key,
            state,
            tunnel: Seated::default(),
        }))
    }

    /// Connections open now (tunnels included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live().conns.len() + self.tunnels.load(Relaxed)
    }

    /// A time as milliseconds since this listener began, plus one: zero means "not set".
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn instant(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis.saturating_sub(1))
    }
}

/// A worker counted as waiting in [`Conns::room`] while this lives (the wait may be dropped
/// part-way, at shutdown).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One connection's state, shared by its driver, its requests and its tunnel.
#[derive(Debug)]
struct ConnState {
    /// Requests being answered and tunnels open.
    busy: AtomicU32,
    /// When the head being read began (see [`Conns::millis`]), or zero.
    head: AtomicU64,
    /// When the connection last fell idle.
    idle: AtomicU64,
    /// Since when its worker has found nothing to read while no request was in flight, or
    /// zero (a byte came since).
    quiet: AtomicU64,
    leaving: AtomicBool,
    evict: Notify,
    /// No request has come on this connection yet.
    fresh: AtomicBool,
}

impl ConnState {
    fn evictable(&self) -> bool {
        !self.leaving.load(Relaxed) && self.busy.load(Relaxed) == 0
    }

    fn waiting_since(&self) -> u64 {
        match self.head.load(Relaxed) {
            0 => self.idle.load(Relaxed),
            head => head,
        }
    }

    /// From when a full listener may evict it: [`SLOW`] after it began to wait, or [`QUIET`]
    /// after its worker found it silent, whichever comes first.
    fn evictable_from(&self) -> u64 {
        let waited = self.waiting_since() + millis(SLOW);
        match self.quiet.load(Relaxed) {
            0 => waited,
            quiet => waited.min(quiet + millis(QUIET)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A connection's place in its listener, held by its driver, each request's extensions and
/// its tunnel; the place is free again once all have let go.
#[derive(Debug)]
pub(crate) struct Slot {
    conns: Arc<Conns>,
    key: u64,
    state: Arc<ConnState>,
    /// The tunnel an HTTP/1 upgrade on this connection opened, for the connection's task to
    /// run once hyper lets go of the connection (see [`Slot::seat_tunnel`]).
    tunnel: Seated,
}

/// A tunnel's task, run by its client connection's task rather than spawned.
pub(crate) type SeatedTunnel = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[derive(Default)]
struct Seated(Mutex<Option<SeatedTunnel>>);

impl std::fmt::Debug for Seated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seated")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut live = self.conns.live();
        live.conns.remove(&self.key);
        if self.state.leaving.load(Relaxed) {
            live.leaving -= 1;
        }
        drop(live);
        self.conns.free();
    }
}

impl Slot {
    /// The first byte of a head arrived (HTTP/1 after an idle spell; an HTTP/2 HEADERS
    /// frame without its end): the request headers timeout starts, unless it runs already.
    pub(crate) fn head_started(&self) {
        if self.state.head.load(Relaxed) == 0 {
            let now = self.conns.millis(Instant::now());
            self.state.head.store(now, Relaxed);
        }
    }

    /// The worker read from the socket and found nothing there: with no request in flight,
    /// the connection is quiet from now on, until a byte comes ([`Slot::bytes_came`]).
    pub(crate) fn found_nothing(&self) {
        let state = &self.state;
        if state.quiet.load(Relaxed) == 0 && state.busy.load(Relaxed) == 0 {
            state.quiet.store(self.conns.millis(Instant::now()), Relaxed);
        }
    }

    /// Bytes came: the connection is not quiet.
    pub(crate) fn bytes_came(&self) {
        if self.state.quiet.load(Relaxed) != 0 {
            self.state.quiet.store(0, Relaxed);
        }
    }

    /// An HTTP/2 HEADERS block ended.
    pub(crate) fn head_ended(&self) {
        self.state.head.store(0, Relaxed);
    }

    /// Whether the connection has nothing in flight: bytes that arrive now begin a head.
    pub(crate) fn is_idle(&self) -> bool {
        self.state.busy.load(Relaxed) == 0
    }

    /// A request came in (its head is complete, for HTTP/1) or a tunnel opened: the
    /// connection is busy until the returned token is dropped.
    pub(crate) fn begin(self: &Arc<Self>, head_complete: bool) -> Exchange {
        if head_complete {
            self.state.head.store(0, Relaxed);
        }
        self.state.busy.fetch_add(1, Relaxed);
        self.state.fresh.store(false, Relaxed);
        Exchange(self.clone())
    }

    /// Whether no request has come on this connection yet: a connection accepted just
    /// before a shutdown still gets its first request served.
    pub(crate) fn is_fresh(&self) -> bool {
        self.state.fresh.load(Relaxed)
    }

    /// When the connection's running timer expires: the head's (`head` after it began),
    /// else, when nothing is in flight, the idle one's; `None` while busy.
    pub(crate) fn deadline(&self, head: Duration, idle: Option<Duration>) -> Option<Instant> {
        let conns = &self.conns;
        match self.state.head.load(Relaxed) {
            0 if self.state.busy.load(Relaxed) > 0 => None,
            0 => conns.instant(self.state.idle.load(Relaxed)).checked_add(idle?),
            began => conns.instant(began).checked_add(head),
        }
    }

    /// A tunnel's hold on a place in the listener: an HTTP/1.1 tunnel outlives its
    /// connection's HTTP life and takes over its place; an HTTP/2 one, a stream among others,
    /// keeps its connection busy and takes a place of its own, since its upstream leg costs a
    /// descriptor as a connection's would. `None` when the listener has no place left for an
    /// HTTP/2 tunnel (the stream is refused, the connection goes on).
    pub(crate) fn hold(self: &Arc<Self>, version: http::Version) -> Option<Hold> {
        let conns = &self.conns;
        if version == http::Version::HTTP_2 {
            // Under the lock that admissions take, so that streams and newcomers racing for
            // the last place can't both have it.
            let live = conns.live();
            if conns.is_full(&live) {
                return None;
            }
            conns.tunnels.fetch_add(1, Relaxed);
            drop(live);
            return Some(Hold::Stream(self.begin(false), Seat(conns.clone())));
        }
        conns.tunnels.fetch_add(1, Relaxed);
        Some(Hold::Seat(Seat(conns.clone())))
    }

    /// Leaves an HTTP/1 connection's tunnel for the connection's own task, which runs it once
    /// hyper has written the `101` and let go of the connection: no task to spawn (and move
    /// the tunnel's future into), and the client's upgrade needs no wake from one task to
    /// another.
    pub(crate) fn seat_tunnel(&self, tunnel: SeatedTunnel) {
        *self
            .tunnel
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tunnel);
    }

    /// The tunnel left by [`Slot::seat_tunnel`], if any.
    pub(crate) fn take_tunnel(&self) -> Option<SeatedTunnel> {
        self.tunnel
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Resolves once the listener tells this connection to make room for a newcomer.
    pub(crate) fn evicted(&self) -> Notified<'_> {
        self.state.evict.notified()
    }
}

/// The client connection a request came on (a request extension), for a tunnel to keep its
/// place in the listener's count.
#[derive(Debug, Clone)]
pub(crate) struct ClientConn(pub(crate) Arc<Slot>);

/// A tunnel's hold on its client connection's place (see [`Slot::hold`]).
#[derive(Debug)]
#[expect(dead_code, reason = "held for what their drops give back")]
pub(crate) enum Hold {
    Seat(Seat),
    Stream(Exchange, Seat),
}

/// A tunnel's place in its listener's count.
#[derive(Debug)]
pub(crate) struct Seat(Arc<Conns>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Relaxed);
        self.0.free();
    }
}

/// A request or tunnel in flight on a connection.
#[derive(Debug)]
pub(crate) struct Exchange(Arc<Slot>);

impl Drop for Exchange {
    fn drop(&mut self) {
        let state = &self.0.state;
        if state.busy.fetch_sub(1, Relaxed) == 1 {
            let now = self.0.conns.millis(Instant::now());
            state.idle.store(now, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(max: usize) -> Arc<Conns> {
        Conns::new(Some(max))
    }

    fn admitted(a: Admission) -> Arc<Slot> {
        match a {
            Admission::Admitted(slot) => slot,
            Admission::Full => panic!("refused"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_found_silent_gives_way_sooner() {
        let conns = conns(2);
        // Its worker looked and found nothing: evictable after `QUIET`.
        let silent = admitted(conns.admit());
        silent.found_nothing();
        // Bytes came after the look: a head on its way, `SLOW` as for any.
        let talking = admitted(conns.admit());
        talking.found_nothing();
        talking.bytes_came();
        let t0 = Instant::now();
        conns.room().await;
        assert_eq!(t0.elapsed(), QUIET);
        let newcomer = admitted(conns.admit());
        tokio::time::timeout(Duration::from_millis(1), silent.evicted())
            .await
            .expect("the silent one gave way");
        drop(silent);
        // The next newcomer waits for the talking one's `SLOW`.
        conns.room().await;
        assert_eq!(t0.elapsed(), SLOW);
        drop((talking, newcomer));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_evicts_the_longest_waiting_and_spares_busy_ones() {
        let conns = conns(2);
        let busy = admitted(conns.admit());
        let _exchange = busy.begin(true);
        tokio::time::advance(Duration::from_secs(1)).await;
        let waiting = admitted(conns.admit());
        tokio::time::advance(SLOW).await;

        let newcomer = admitted(conns.admit());
        // The waiting connection was told to go; the busy one was not.
        tokio::time::timeout(Duration::from_millis(1), waiting.evicted())
            .await
            .expect("the head-less connection is evicted");
        assert!(
            tokio::time::timeout(Duration::from_millis(1), busy.evicted())
                .await
                .is_err()
        );
        // Until it has gone, its place is promised: a second newcomer finds only busy or
        // leaving connections, and the newcomer itself (now waiting for a head).
        drop(waiting);
        assert_eq!(conns.len(), 2);
        let _newcomer_exchange = newcomer.begin(true);
        assert!(matches!(conns.admit(), Admission::Full));
    }

    /// A worker waiting in [`Conns::room`], started; it returns how long it waited.
    async fn wait_for_room(conns: &Arc<Conns>) -> tokio::task::JoinHandle<Duration> {
        let conns = conns.clone();
        let waiter = tokio::spawn(async move {
            let t0 = Instant::now();
            conns.room().await;
            t0.elapsed()
        });
        tokio::task::yield_now().await;
        waiter
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_waits_until_someone_is_slow() {
        let conns = conns(2);
        let busy = admitted(conns.admit());
        let _busy = busy.begin(true);
        let other = admitted(conns.admit());
        let exchange = other.begin(true);
        let waiter = wait_for_room(&conns).await;
        tokio::time::advance(Duration::from_millis(400)).await;
        // The other connection falls idle: evictable, but only once idle for `SLOW`, not
        // because a newcomer waited `PATIENCE`.
        drop(exchange);
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(400) + SLOW);
        assert!(matches!(conns.admit(), Admission::Admitted(_)));
        tokio::time::timeout(Duration::from_millis(1), other.evicted())
            .await
            .expect("evicted once idle for two seconds");

        // A place that comes free ends the wait at once.
        let conns = self::conns(1);
        let tunnel = admitted(conns.admit());
        let exchange = tunnel.begin(true);
        let waiter = wait_for_room(&conns).await;
        tokio::time::advance(Duration::from_millis(100)).await;
        drop(exchange);
        drop(tunnel);
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(100));

        // Everyone busy: the wait ends after `PATIENCE`, for a refusal.
        let busy = admitted(conns.admit());
        let _exchange = busy.begin(true);
        let t0 = Instant::now();
        conns.room().await;
        assert_eq!(t0.elapsed(), PATIENCE);
        assert!(matches!(conns.admit(), Admission::Full));
        // ...and while all stay busy, the next newcomers are refused as they come.
        tokio::time::advance(Duration::from_millis(10)).await;
        let t1 = Instant::now();
        conns.room().await;
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert!(matches!(conns.admit(), Admission::Full));
        // A place that frees makes the listener patient again.
        drop((_exchange, busy));
        let busy = admitted(conns.admit());
        let _exchange = busy.begin(true);
        let t2 = Instant::now();
        conns.room().await;
        assert_eq!(t2.elapsed(), PATIENCE);
    }

    #[tokio::test(start_paused = true)]
    async fn two_workers_racing_for_one_place_evict_no_newcomer() {
        let conns = conns(1);
        // The newcomer that won the place, still reading its head.
        let first = admitted(conns.admit());
        tokio::time::advance(Duration::from_millis(100)).await;
        // The one that lost the race is taken over the cap, and nobody is told to go.
        let second = admitted(conns.admit());
        assert_eq!(conns.len(), 2);
        for slot in [&first, &second] {
            assert!(
                tokio::time::timeout(Duration::from_millis(1), slot.evicted())
                    .await
                    .is_err()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_state() {
        let (head, idle) = (Duration::from_secs(10), Some(Duration::from_secs(100)));
        let conns = Conns::new(None);
        let start = Instant::now();
        let slot = admitted(conns.admit());
        assert_eq!(slot.deadline(head, idle), Some(start + Duration::from_secs(10)));
        let exchange = slot.begin(true);
        assert_eq!(slot.deadline(head, idle), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(exchange);
        assert_eq!(slot.deadline(head, idle), Some(start + Duration::from_secs(103)));
        tokio::time::advance(Duration::from_secs(5)).await;
        slot.head_started();
        assert_eq!(slot.deadline(head, idle), Some(start + Duration::from_secs(18)));
        slot.head_ended();
        assert_eq!(slot.deadline(head, None), None);
    }

    #[tokio::test]
    async fn an_http1_tunnel_keeps_its_place_after_its_connection_left() {
        let conns = conns(1);
        let slot = admitted(conns.admit());
        let exchange = slot.begin(true);
        let seat = slot.hold(http::Version::HTTP_11);
        drop((exchange, slot));
        assert_eq!(conns.len(), 1);
        assert!(matches!(conns.admit(), Admission::Full));
        drop(seat);
        assert!(matches!(conns.admit(), Admission::Admitted(_)));
    }

    #[tokio::test]
    async fn http2_tunnels_take_places_of_their_own() {
        let conns = conns(3);
        let slot = admitted(conns.admit());
        let one = slot.hold(http::Version::HTTP_2).expect("a place");
        let two = slot.hold(http::Version::HTTP_2).expect("the last place");
        assert_eq!(conns.len(), 3, "the connection and its two tunnels");
        assert!(slot.hold(http::Version::HTTP_2).is_none(), "no place for a third");
        assert!(
            matches!(conns.admit(), Admission::Full),
            "the connection is busy: not evicted"
        );
        drop(one);
        assert!(slot.hold(http::Version::HTTP_2).is_some());
        drop(two);
    }

    #[test]
    fn the_default_cap_leaves_room_for_upstream_legs() {
        assert_eq!(default_max_connections(Some(1024)), 384);
        assert_eq!(default_max_connections(Some(256)), 96);
        assert_eq!(default_max_connections(Some(20_000)), 9872);
        assert_eq!(default_max_connections(Some(10)), 4);
        assert_eq!(default_max_connections(Some(1)), 1);
        assert_eq!(default_max_connections(Some(0)), 1);
        assert!(default_max_connections(None) > 1_000_000);
    }
}
