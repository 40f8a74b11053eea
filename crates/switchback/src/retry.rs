//! [`RetryPolicy`]: when a request or an upgrade handshake is tried again on another endpoint.

use std::fmt;
use std::time::Duration;

/// When [`Forward`](crate::Forward) tries a request again, on an endpoint not tried yet
/// (Envoy's route `retry_policy`). An upgrade is only ever retried before its `101`, so
/// before any tunnel byte has moved; a request with a body is retried only when it has none
/// to replay (its body has not been consumed). Put one in a request's extensions (route
/// matching does) or give [`Forward::retry_policy`](crate::Forward::retry_policy) a default.
///
/// ```
/// use std::time::Duration;
/// use switchback::{RetryOn, RetryPolicy};
///
/// let policy = RetryPolicy::new()
///     .retry_on("connect-failure,reset,5xx".parse::<RetryOn>().unwrap())
///     .num_retries(2)
///     .per_try_timeout(Duration::from_secs(2));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub(crate) retry_on: RetryOn,
    pub(crate) num_retries: u32,
    pub(crate) per_try_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Connect failures, retried twice.
    fn default() -> Self {
        Self {
            retry_on: RetryOn::CONNECT_FAILURE,
            num_retries: 2,
            per_try_timeout: None,
        }
    }
}

impl RetryPolicy {
    /// Connect failures, retried twice, no per-try timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// No retries at all.
    pub fn none() -> Self {
        Self {
            num_retries: 0,
            ..Self::default()
        }
    }

    /// Which failures are retried.
    pub fn retry_on(mut self, on: RetryOn) -> Self {
        self.retry_on = on;
        self
    }

    /// How many times a request may be retried (attempts are one more).
    pub fn num_retries(mut self, retries: u32) -> Self {
        self.num_retries = retries;
        self
    }

    /// How long each attempt may wait for its response head; the route's timeout still
    /// bounds them all.
    pub fn per_try_timeout(mut self, timeout: Duration) -> Self {
        self.per_try_timeout = Some(timeout);
        self
    }
}

/// The failures a [`RetryPolicy`] retries, parsed from Envoy's `retry_on` tokens:
/// `connect-failure`, `reset` (the connection failed or timed out before the response head),
/// `gateway-error` (also a `502`, `503` or `504` answer) and `5xx` (also any `5xx` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub(crate) connect_failure: bool,
    pub(crate) reset: bool,
    pub(crate) gateway_error: bool,
    pub(crate) server_error: bool,
}

impl RetryOn {
    /// Only connect failures.
    pub const CONNECT_FAILURE: Self = Self {
        connect_failure: true,
        reset: false,
        gateway_error: false,
        server_error: false,
    };

    /// Whether an answer with `status` is retried.
    pub(crate) fn status(&self, status: http::StatusCode) -> bool {
        let gateway = matches!(status.as_u16(), 502..=504);
        (self.server_error && status.is_server_error()) || (self.gateway_error && gateway)
    }

    /// Whether a failure before the response head (reset or per-try timeout) is retried.
    pub(crate) fn reset(&self) -> bool {
        self.reset || self.gateway_error || self.server_error
    }

    /// Whether a connect failure is retried.
    pub(crate) fn connect_failure(&self) -> bool {
        self.connect_failure || self.gateway_error || self.server_error
    }
}

/// A `retry_on` list with a token Switchback doesn't know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRetryOn(pub String);

impl fmt::Display for UnknownRetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown retry_on token {:?}; use connect-failure, reset, gateway-error or 5xx",
            self.0
        )
    }
}

impl std::error::Error for UnknownRetryOn {}

impl std::str::FromStr for RetryOn {
    type Err = UnknownRetryOn;

    /// A comma-separated list of tokens (spaces allowed); an empty list retries nothing.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut on = Self::default();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "gateway-error" => on.gateway_error = true,
                "5xx" => on.server_error = true,
                other => return Err(UnknownRetryOn(other.to_owned())),
            }
        }
        Ok(on)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn tokens() {
        let on: RetryOn = "connect-failure, reset".parse().unwrap();
        assert!(on.connect_failure() && on.reset() && !on.status(StatusCode::BAD_GATEWAY));
        let on: RetryOn = "gateway-error".parse().unwrap();
        assert!(on.connect_failure() && on.status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!on.status(StatusCode::INTERNAL_SERVER_ERROR));
        let on: RetryOn = "5xx".parse().unwrap();
        assert!(on.status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!("retriable-4xx".parse::<RetryOn>().is_err());
    }
}
