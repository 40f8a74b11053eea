//! What reloads share with the admin endpoint: [`SharedView`], the running config as the
//! endpoint shows it, and [`RuntimeValues`], the runtime values with the keys the endpoint
//! set (which a reload keeps over the file's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use switchback::{Cluster, Runtime};
use switchback_config::Config;

use super::file::Digest;

/// The running config, its clusters, its generation and the digest of its file.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// The effective config, the bound ports filled in.
    pub(crate) config: Config,
    /// The clusters its routes send to.
    pub(crate) clusters: Vec<Cluster>,
    /// 1 at start, one more per reload that changed the config.
    pub(crate) generation: u64,
    /// The digest of the file last read.
    pub(crate) digest: Digest,
}

/// The [`View`] the reloader writes and the admin endpoint reads; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct SharedView(Arc<RwLock<View>>);

impl SharedView {
    /// Shares `view`.
    pub(crate) fn new(view: View) -> Self {
        Self(Arc::new(RwLock::new(view)))
    }

    /// Reads the view (briefly: the reloader waits meanwhile).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of the view.
    pub(crate) fn get(&self) -> View {
        self.read(View::clone)
    }

    /// Changes the view.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut View) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The runtime values the routes read, and the keys set on the admin endpoint: a reload
/// applies the file's values to every other key. Clones share both.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeValues {
    runtime: Runtime,
    /// Held while a value changes, so that a reload and the endpoint never interleave.
    overridden: Arc<Mutex<BTreeSet<String>>>,
}

impl RuntimeValues {
    /// The config's values; no key set by hand yet.
    pub(crate) fn new(values: &BTreeMap<String, u8>) -> Self {
        Self {
            runtime: Runtime::from_values(values.clone()),
            overridden: Arc::default(),
        }
    }

    /// What the routes read.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Every value now.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u8> {
        self.runtime.snapshot()
    }

    /// Sets `key` by hand (admin `POST /runtime`): from now on it keeps this value over the
    /// file's. Returns the value it had.
    pub(crate) fn set_by_hand(&self, key: &str, value: u8) -> Option<u8> {
        let mut overridden = self.overridden.lock().unwrap_or_else(|e| e.into_inner());
        overridden.insert(key.to_owned());
        self.runtime.set(key, value)
    }

    /// Applies a reloaded file's values, except to the keys set by hand.
    pub(crate) fn apply_file(&self, values: &BTreeMap<String, u8>) {
        let overridden = self.overridden.lock().unwrap_or_else(|e| e.into_inner());
        for (key, value) in values {
            if !overridden.contains(key) {
                self.runtime.set(key.as_str(), *value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_set_by_hand_outlives_the_file() {
        let file = BTreeMap::from([("a".to_owned(), 10), ("b".to_owned(), 20)]);
        let values = RuntimeValues::new(&file);
        assert_eq!(values.set_by_hand("a", 90), Some(10));
        let reloaded = BTreeMap::from([("a".to_owned(), 11), ("b".to_owned(), 21)]);
        values.clone().apply_file(&reloaded);
        assert_eq!(
            values.snapshot(),
            BTreeMap::from([("a".to_owned(), 90), ("b".to_owned(), 21)])
        );
    }
}
