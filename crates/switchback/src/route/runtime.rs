//! Runtime values (percentages changed while the proxy runs) and the random draws of traffic
//! splitting.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Percentages by key, shared by every clone and read on each request: Envoy's runtime, for
/// `runtime_fraction` route matches.
///
/// A change applies from the next request matched.
///
/// ```
/// use switchback::Runtime;
///
/// let runtime = Runtime::from_values([("canary".to_owned(), 5)]);
/// let admin = runtime.clone(); // e.g. handed to an admin endpoint
/// assert_eq!(admin.set("canary", 50), Some(5));
/// assert_eq!(runtime.get("canary"), Some(50));
/// assert_eq!(runtime.snapshot().len(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    values: Arc<RwLock<BTreeMap<String, u8>>>,
}

impl Runtime {
    /// An empty runtime: every `runtime_fraction` uses its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// A runtime holding `values`. Values above 100 act as 100.
    pub fn from_values<I: IntoIterator<Item = (String, u8)>>(values: I) -> Self {
        Self {
            values: Arc::new(RwLock::new(values.into_iter().collect())),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<u8> {
        // A panic elsewhere while holding the lock leaves the map itself intact.
        self.values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Sets `key` to `value` (a percentage; above 100 acts as 100) and returns the old value.
    pub fn set(&self, key: impl Into<String>, value: u8) -> Option<u8> {
        self.values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.into(), value)
    }

    /// A copy of every value, e.g. for an admin endpoint.
    pub fn snapshot(&self) -> BTreeMap<String, u8> {
        self.values.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A uniform draw in `0..n` (`0` when `n` is 0), from the thread's generator: no lock and no
/// shared cache line on the request path.
pub(crate) fn below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    rand::random_range(0..n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_returns_the_old_value_and_clones_share_state() {
        let a = Runtime::new();
        let b = a.clone();
        assert_eq!(a.set("k", 10), None);
        assert_eq!(b.set("k", 20), Some(10));
        assert_eq!(a.get("k"), Some(20));
        assert_eq!(a.get("other"), None);
        assert_eq!(a.snapshot(), BTreeMap::from([("k".to_owned(), 20)]));
    }

    #[test]
    fn draws_stay_in_range_and_are_spread_evenly() {
        assert_eq!(below(0), 0);
        assert_eq!(below(1), 0);
        let n = 100_000;
        let mut buckets = [0u32; 10];
        for _ in 0..n {
            let d = below(10);
            assert!(d < 10);
            buckets[d as usize] += 1;
        }
        // Each bucket: mean 10 000, sigma ~95; ±1 000 is over 10 sigma, so this never flakes
        // while still catching a broken reduction or a stuck generator.
        for (i, b) in buckets.iter().enumerate() {
            assert!((9_000..=11_000).contains(b), "bucket {i}: {b}");
        }
    }
}
