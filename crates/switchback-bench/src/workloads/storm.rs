//! Reconnect storm: after a deploy or a drain, every WebSocket client reconnects at once.
//!
//! First `p.storm_tunnels` tunnels are opened at a controlled rate, as the memory workload
//! opens its idle tunnels (at most 64 handshakes in flight); each echoes one 64-byte message,
//! so it is really open. Then the client drops every one of them at the same instant (a plain
//! `close(2)` of each socket, one after the other from one thread: the proxy sees them all end
//! within milliseconds, as the clients of a drained proxy see their connections end), and
//! every client reconnects at once, without pacing: TCP connect, the opening handshake (`101`
//! and `Sec-WebSocket-Accept` checked) and one 64-byte echo. An attempt that fails (refused,
//! reset, a non-`101` answer, nothing within [`ATTEMPT_LIMIT`]) is counted, and the client
//! tries again after [`BACKOFF`]. The reconnected tunnels stay open until every client is back.
//!
//! Reported: the time from the drop until every client has reconnected and echoed; the p50
//! and p99 of the handshake latency (connect start to the checked `101`, over every attempt
//! that got one); the failed attempts; and the proxy's CPU time over that window per tunnel
//! (closing the old tunnels included: a storm costs both).
//!
//! Nothing is tuned for the storm: each system listens with the backlog it always has, capped
//! by `net.core.somaxconn`. Thousands of SYNs at once may overflow a listen queue; the kernel
//! then drops the SYN (or the handshake's last ACK), and TCP resends it after 1 s, then 3 s,
//! then 7 s: steps of whole seconds in the latency. The log line counts the handshakes by
//! whole seconds of latency, and the kernel's listen-queue overflows and SYN retransmits
//! during the storm (counted for the whole network namespace; see
//! [`crate::sys::ListenCounters`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::latency::percentile;
use super::{CpuWindow, Metric, Outcome, Params, memory};
use crate::child::ChildProc;
use crate::client::{self, Ws};
use crate::error::{Context, Error, Result};
use crate::sys;

/// The longest one reconnection attempt (connect, handshake, echo) may take before it counts
/// as failed: long enough for a SYN resent after 1 s and again after 3 s.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(10);
/// How long a client waits after a failed attempt before the next.
const BACKOFF: Duration = Duration::from_millis(100);
/// The longest the whole storm may take before the workload fails.
const STORM_LIMIT: Duration = Duration::from_secs(120);
/// How many kinds of failure the log line names.
const FAILURE_KINDS_SHOWN: usize = 3;

/// What one client did during the storm.
#[derive(Debug)]
struct Reconnected {
    /// Its new tunnel, held open until every client is back.
    ws: Ws,
    /// Connect start to checked `101`, for each attempt that got one.
    handshakes: Vec<Duration>,
    /// Why each failed attempt failed.
    failures: Vec<String>,
    /// When its tunnel was open and had echoed.
    done_at: Instant,
}

/// Opens the tunnels, drops them all at once, and reports how the reconnection went.
pub(crate) async fn run(addr: SocketAddr, proxy: Option<&ChildProc>, p: &Params) -> Result<Outcome> {
    let n = p.storm_tunnels;
    let tunnels = memory::open_idle(addr, n, p.open_rate).await?;
    tokio::time::sleep(p.settle).await;

    // Every client waits, already spawned, for the word; the storm is not paced by spawning.
    let (go, ready) = watch::channel(false);
    let frame = Arc::new(client::masked_frame(client::BINARY, &[0x5c; 64], [9, 3, 7, 1]));
    let mut clients = JoinSet::new();
    for i in 0..n {
        let (mut ready, frame) = (ready.clone(), frame.clone());
        clients.spawn(async move {
            if ready.wait_for(|&go| go).await.is_err() {
                return None;
            }
            Some(reconnect(addr, i, &frame).await)
        });
    }
    drop(ready);
    // Let every client reach its wait before the clock starts.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let counters = sys::listen_counters();
    let cpu = CpuWindow::start(proxy)?;
    let t0 = Instant::now();
    drop(tunnels);
    let dropped_in = t0.elapsed();
    go.send(true).context("starting the clients")?;

    let mut back = Vec::with_capacity(n);
    let joined = tokio::time::timeout(STORM_LIMIT, async {
        while let Some(done) = clients.join_next().await {
            back.push(
                done.context("reconnecting client")?
                    .context("client not started")?,
            );
        }
        Ok::<(), Error>(())
    })
    .await;
    let cpu = cpu.split()?;
    let counters = counters.and_then(|before| Ok(sys::listen_counters()?.since(&before)));
    match joined {
        Ok(result) => result?,
        Err(_) => {
            clients.abort_all();
            return Err(Error::new(format!(
                "only {} of {n} clients reconnected within {STORM_LIMIT:?}",
                back.len()
            )));
        }
    }
    let last = back.iter().map(|r| r.done_at).max().unwrap_or(t0);
    let all_back = last.saturating_duration_since(t0);

    let mut handshakes = Vec::with_capacity(n);
    let mut kinds = BTreeMap::<String, u64>::new();
    let mut reconnected = Vec::with_capacity(n);
    for r in back {
        handshakes.extend(r.handshakes);
        for why in r.failures {
            *kinds.entry(why).or_default() += 1;
        }
        reconnected.push(r.ws);
    }
    // Every client is back: now they may go.
    drop(reconnected);
    handshakes.sort_unstable();
    let failed: u64 = kinds.values().sum();

    let (p50, p99) = (percentile(&handshakes, 50.0), percentile(&handshakes, 99.0));
    let mut values = vec![
        (Metric::StormSeconds, all_back.as_secs_f64()),
        (Metric::StormP50, millis(p50)),
        (Metric::StormP99, millis(p99)),
        (Metric::StormFailures, failed as f64),
    ];
    let mut detail = format!(
        "{n} tunnels dropped in {:.0} ms, all back in {:.2} s; handshake p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms; by whole seconds: {}; {failed} failed attempts",
        millis(dropped_in),
        all_back.as_secs_f64(),
        millis(p50),
        millis(p99),
        millis(handshakes.last().copied().unwrap_or_default()),
        by_second(&handshakes),
    );
    if failed > 0 {
        let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
        kinds.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        let shown: Vec<String> = kinds
            .iter()
            .take(FAILURE_KINDS_SHOWN)
            .map(|(why, count)| format!("{count}x {why}"))
            .collect();
        let _ = write!(detail, " ({})", shown.join("; "));
    }
    match counters {
        Ok(c) => {
            let _ = write!(
                detail,
                "; kernel: {} listen overflows, {} listen drops, {} SYN/SYN-ACK retransmits, {} syncookies",
                c.overflows, c.drops, c.syn_retransmits, c.syncookies
            );
        }
        Err(e) => {
            let _ = write!(detail, "; kernel counters unavailable ({e})");
        }
    }
    if let Some((cpu, user)) = cpu {
        let each = cpu.as_secs_f64() * 1e6 / n as f64;
        let user = user.as_secs_f64() * 1e6 / n as f64;
        values.push((Metric::StormCpu, each));
        values.push((Metric::StormUserCpu, user));
        let _ = write!(
            detail,
            "; proxy CPU {each:.0} µs per tunnel ({user:.0} in user space)"
        );
    }
    Ok(Outcome { values, detail })
}

/// Client `i`'s reconnection: attempts until one connects, handshakes and echoes `frame`.
async fn reconnect(addr: SocketAddr, i: usize, frame: &[u8]) -> Reconnected {
    let mut handshakes = Vec::with_capacity(1);
    let mut failures = Vec::new();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let seed = (3 << 48) | ((i as u64) << 16) | (attempt & 0xffff);
        let tried = tokio::time::timeout(ATTEMPT_LIMIT, async {
            let start = Instant::now();
            let mut ws = client::connect(addr, "/storm", seed).await?;
            handshakes.push(start.elapsed());
            ws.echo(frame).await?;
            Ok::<_, Error>(ws)
        })
        .await;
        match tried {
            Ok(Ok(ws)) => {
                return Reconnected {
                    ws,
                    handshakes,
                    failures,
                    done_at: Instant::now(),
                };
            }
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push(format!("timed out after {ATTEMPT_LIMIT:?}")),
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// The sorted `latencies` counted by whole seconds, e.g. `0 s: 8812, 1 s: 188`.
fn by_second(sorted: &[Duration]) -> String {
    let mut counts = BTreeMap::<u64, usize>::new();
    for d in sorted {
        *counts.entry(d.as_secs()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, c)| format!("{s} s: {c}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A duration in milliseconds.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Latencies are grouped by the whole second they fall in, which shows SYN retransmits.
    #[test]
    fn counts_by_whole_second() {
        let ms = Duration::from_millis;
        assert_eq!(by_second(&[]), "none");
        assert_eq!(
            by_second(&[ms(3), ms(999), ms(1_004), ms(3_020)]),
            "0 s: 2, 1 s: 1, 3 s: 1"
        );
    }
}
