//! Echo latency: 64-byte binary WebSocket messages (real masked client frames, 70 bytes on the
//! wire), one at a time on one tunnel; each round trip is timed and the samples sorted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Metric, Outcome, Params};
use crate::client;
use crate::error::{Error, Result, within};

/// Runs the echo loop and reports p50 and p99.
pub(crate) async fn run(addr: SocketAddr, p: &Params) -> Result<Outcome> {
    let mut ws = within(
        Duration::from_secs(10),
        "latency handshake",
        client::connect(addr, "/echo", 1),
    )
    .await?;
    let payload: Vec<u8> = (0..64u8).collect();
    let frame = client::masked_frame(client::BINARY, &payload, [0x37, 0xfa, 0x21, 0x3d]);
    let total = p.echo_warmup + p.echo_samples;
    let mut samples = Vec::with_capacity(p.echo_samples);
    // One deadline for the whole loop: a timer per round trip would be measured too.
    let limit = Duration::from_secs(60);
    within(limit, "echo loop", async {
        for i in 0..total {
            let start = Instant::now();
            // Writes, reads back and compares (masked or not, see `Ws::echo`).
            ws.echo(&frame).await?;
            let took = start.elapsed();
            if i >= p.echo_warmup {
                samples.push(took);
            }
        }
        Ok::<(), Error>(())
    })
    .await?;
    samples.sort_unstable();
    let p50 = percentile(&samples, 50.0);
    let p99 = percentile(&samples, 99.0);
    Ok(Outcome {
        values: vec![(Metric::EchoP50, micros(p50)), (Metric::EchoP99, micros(p99))],
        detail: format!(
            "p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} round trips)",
            micros(p50),
            micros(p99),
            micros(samples.last().copied().unwrap_or_default()),
            samples.len()
        ),
    })
}

/// The nearest-rank percentile `q` (0-100] of sorted `samples`.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&s[..1], 99.0), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
