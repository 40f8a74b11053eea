//! [`WebSocketLimits`]: frame-header limits and keepalive, kept on the joined path.

use std::time::Duration;

use tokio::time::Instant;

/// WebSocket limits of an upgrade type ([`UpgradeConfig::websocket`](crate::UpgradeConfig::websocket))
/// or a route ([`Route::websocket`](crate::Route::websocket)); a route's set fields override
/// the type's. The default sets none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebSocketLimits {
    frame_rate: Option<FrameRate>,
    max_message_size: Option<u64>,
    max_upstream_message_size: Option<u64>,
    ping_interval: Option<Duration>,
    pong_timeout: Option<Duration>,
}

/// How long a client has to answer a ping, when [`WebSocketLimits::pong_timeout`] says
/// nothing.
const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// A token bucket's shape: `per_second` frames a second, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameRate {
    per_second: u32,
    burst: u32,
}

impl WebSocketLimits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `per_second` frames a second from the client (data and control frames alike;
    /// at least 1), in bursts of up to a second's worth unless [`frame_burst`](Self::frame_burst)
    /// says otherwise. Past it the client gets a `1008 Policy Violation` close frame, the
    /// upstream a `1001 Going Away`, and the tunnel ends ([`TunnelEnd::RateLimited`](crate::TunnelEnd::RateLimited)).
    pub fn max_frames_per_second(mut self, per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let burst = self.frame_rate.map_or(per_second, |r| r.burst);
        self.frame_rate = Some(FrameRate { per_second, burst });
        self
    }

    /// The largest message the client may send, in payload bytes (all frames of a fragmented
    /// one together). A larger one is never delivered whole: the frame that would make it so
    /// is not relayed, the client gets `1009 Message Too Big`, the upstream `1001`, and the
    /// tunnel ends ([`TunnelEnd::ClientMessageTooBig`](crate::TunnelEnd::ClientMessageTooBig)).
    /// Counted from frame headers as the message arrives: nothing is buffered to decide.
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// The largest message the upstream may send to the client; past it the upstream gets
    /// `1009` and the client `1001`.
    pub fn max_upstream_message_size(mut self, bytes: u64) -> Self {
        self.max_upstream_message_size = Some(bytes);
        self
    }

    /// After this long without a byte from the client, Switchback sends it a ping (at a frame
    /// boundary, never inside a frame); a client that doesn't answer within
    /// [`pong_timeout`](Self::pong_timeout) is closed (`1001` each way;
    /// [`TunnelEnd::PongTimeout`](crate::TunnelEnd::PongTimeout)). The client's pong to it is not
    /// forwarded: the upstream sees none of this, and neither counts as activity for the
    /// tunnel's idle timeout. NATs and load balancers that drop idle flows keep the tunnel's.
    /// At least a millisecond.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// How long a client has to answer the proxy's ping (default 10 s; at least a
    /// millisecond).
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = Some(timeout.max(Duration::from_millis(1)));
        self
    }

    /// The keepalive: the ping interval and the pong timeout, when pings are on.
    pub(crate) fn keepalive(&self) -> Option<(Duration, Duration)> {
        Some((
            self.ping_interval?,
            self.pong_timeout.unwrap_or(DEFAULT_PONG_TIMEOUT),
        ))
    }

    /// The client's and the upstream's message size limits.
    pub(crate) fn message_limits(&self) -> (Option<u64>, Option<u64>) {
        (self.max_message_size, self.max_upstream_message_size)
    }

    /// How many frames the client may send at once before the rate applies (at least 1).
    /// Has an effect only with [`max_frames_per_second`](Self::max_frames_per_second).
    pub fn frame_burst(mut self, burst: u32) -> Self {
        if let Some(rate) = &mut self.frame_rate {
            rate.burst = burst.max(1);
        }
        self
    }

    /// These limits, with `route`'s set fields in place of these.
    pub(crate) fn overridden_by(self, route: Option<&Self>) -> Self {
        match route {
            Some(route) => Self {
                frame_rate: route.frame_rate.or(self.frame_rate),
                max_message_size: route.max_message_size.or(self.max_message_size),
                max_upstream_message_size: route.max_upstream_message_size.or(self.max_upstream_message_size),
                ping_interval: route.ping_interval.or(self.ping_interval),
                pong_timeout: route.pong_timeout.or(self.pong_timeout),
            },
            None => self,
        }
    }

    /// The bucket a tunnel starts with, when a frame rate is set.
    pub(crate) fn frame_bucket(&self) -> Option<FrameBucket> {
        self.frame_rate.map(FrameBucket::new)
    }
}

/// Tokens scaled by this, so that a rate's refill is exact in whole microseconds.
const SCALE: u128 = 1_000_000;

/// A tunnel's frame budget from its client: a token bucket refilled as time passes, read
/// against the tracker's frame count (no timer of its own).
#[derive(Debug)]
pub(crate) struct FrameBucket {
    rate: FrameRate,
    /// Tokens left, times [`SCALE`].
    tokens: u128,
    /// Frames counted so far.
    counted: u64,
    at: Instant,
}

impl FrameBucket {
    fn new(rate: FrameRate) -> Self {
        Self {
            rate,
            tokens: u128::from(rate.burst) * SCALE,
            counted: 0,
            at: Instant::now(),
        }
    }

    /// The client has sent `frames` frames in all: whether they fit the budget.
    pub(crate) fn allows(&mut self, frames: u64) -> bool {
        let new = frames.saturating_sub(self.counted);
        if new == 0 {
            return true;
        }
        self.counted = frames;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        let refill = elapsed.as_micros() * u128::from(self.rate.per_second);
        let cap = u128::from(self.rate.burst) * SCALE;
        self.tokens = (self.tokens + refill).min(cap);
        let cost = u128::from(new) * SCALE;
        if cost > self.tokens {
            return false;
        }
        self.tokens -= cost;
        true
    }

    /// How long until one more frame fits (for tests and docs: the bucket has no timer).
    #[cfg(test)]
    fn refill_time(&self) -> Duration {
        Duration::from_micros(u64::try_from(SCALE / u128::from(self.rate.per_second)).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = WebSocketLimits::new()
            .max_frames_per_second(10)
            .frame_burst(5)
            .frame_bucket()
            .unwrap();
        assert!(b.allows(5), "the burst");
        assert!(!b.allows(6), "one past it");
        let mut b = WebSocketLimits::new()
            .max_frames_per_second(10)
            .frame_bucket()
            .unwrap();
        assert!(b.allows(10), "a second's worth by default");
        tokio::time::advance(b.refill_time()).await;
        assert!(b.allows(11), "one more after a tenth of a second");
        assert!(!b.allows(12));
        // Idle time refills up to the burst, not past it.
        let mut b = WebSocketLimits::new()
            .max_frames_per_second(10)
            .frame_bucket()
            .unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.allows(10) && !b.allows(11));
        // The smallest and largest settings.
        let mut b = WebSocketLimits::new()
            .max_frames_per_second(0)
            .frame_burst(0)
            .frame_bucket()
            .unwrap();
        assert!(
            b.allows(1) && !b.allows(2),
            "at least one frame a second, bursts of one"
        );
        let mut b = WebSocketLimits::new()
            .max_frames_per_second(u32::MAX)
            .frame_bucket()
            .unwrap();
        assert!(b.allows(u64::from(u32::MAX)));
        assert!(!b.allows(u64::MAX));
    }

    #[test]
    fn a_routes_fields_override_the_types() {
        let ty = WebSocketLimits::new().max_frames_per_second(100);
        let route = WebSocketLimits::new().max_frames_per_second(5);
        assert_eq!(ty.overridden_by(Some(&route)), route);
        assert_eq!(ty.overridden_by(Some(&WebSocketLimits::new())), ty);
        assert_eq!(ty.overridden_by(None), ty);
        assert_eq!(WebSocketLimits::new().frame_bucket().map(|_| ()), None);
    }
}
