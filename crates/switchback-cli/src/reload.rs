//! Reloading the config file while serving: SIGHUP and admin `POST /reload` build a new stack
//! from the file and swap it in for new requests. Tunnels are tasks of their own, holding
//! nothing of the stack that opened them, so a reload leaves every one of them alone;
//! requests in flight finish on the stack they started with.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use switchback::{Cluster, Drain, Runtime};
use switchback_config::Config;
use tokio::task::JoinHandle;
use tower::Service;

use crate::access_log::AccessLog;
use crate::listeners::Listeners;
use crate::stack;

/// Counter: reloads, by `result` (`changed`, `unchanged`, `refused`).
pub(crate) const RELOADS: &str = "switchback_config_reloads_total";
/// Gauge: the running config's generation (1 at start, one more per reload that changed it).
pub(crate) const GENERATION: &str = "switchback_config_generation";

/// The newest stack, for every clone of a [`Reloadable`] to take before its next request.
pub(crate) struct Current<S> {
    generation: AtomicU64,
    stack: RwLock<S>,
}

impl<S: Clone> Current<S> {
    pub(crate) fn new(stack: S) -> Arc<Self> {
        Arc::new(Self {
            generation: AtomicU64::new(1),
            stack: RwLock::new(stack),
        })
    }

    /// Puts `stack` in place for new requests; returns its generation.
    fn swap(&self, stack: S) -> u64 {
        *self.stack.write().unwrap_or_else(|e| e.into_inner()) = stack;
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn get(&self) -> (u64, S) {
        let stack = self.stack.read().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), stack.clone())
    }
}

/// The service the workers serve: the newest stack, checked with one atomic load per request.
pub(crate) struct Reloadable<S> {
    current: Arc<Current<S>>,
    local: S,
    seen: u64,
}

impl<S: Clone> Reloadable<S> {
    pub(crate) fn new(current: Arc<Current<S>>) -> Self {
        let (seen, local) = current.get();
        Self { current, local, seen }
    }
}

impl<S: Clone> Clone for Reloadable<S> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            local: self.local.clone(),
            seen: self.seen,
        }
    }
}

impl<S, R> Service<R> for Reloadable<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.current.generation.load(Ordering::Acquire) != self.seen {
            (self.seen, self.local) = self.current.get();
        }
        self.local.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.local.call(req)
    }
}

/// What the admin endpoint shows of the running config, replaced on each reload.
#[derive(Clone)]
pub(crate) struct View {
    pub(crate) config: Config,
    pub(crate) clusters: Vec<Cluster>,
    pub(crate) generation: u64,
    pub(crate) hash: String,
}

/// The running config's view, shared by the reloader and the admin endpoint.
pub(crate) type SharedView = Arc<RwLock<View>>;

/// What a reload did.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Reloaded {
    pub(crate) changed: bool,
    pub(crate) generation: u64,
    pub(crate) hash: String,
    /// Fields that differ in the file but only take effect on a restart.
    pub(crate) restart_needed: Vec<&'static str>,
}

/// Reloads one file into one stack.
pub(crate) trait Reload: Send + Sync {
    /// Reads and checks the file; on success swaps the stack in. The errors are `--check`'s.
    fn reload(&self) -> Result<Reloaded, Vec<String>>;
}

/// The reloader of the running process.
pub(crate) struct Reloader<S> {
    pub(crate) path: Option<PathBuf>,
    pub(crate) current: Arc<Current<S>>,
    /// The file's config as last loaded (before the bound port was filled in).
    pub(crate) loaded: Mutex<Config>,
    pub(crate) view: SharedView,
    pub(crate) drain: Drain,
    pub(crate) runtime: Runtime,
    /// Runtime keys set with `POST /runtime`: they stay over the file's values.
    pub(crate) overridden: Arc<Mutex<BTreeSet<String>>>,
    pub(crate) log: AccessLog,
    /// The running clusters' health checkers and DNS discovery.
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The running listeners: a reload binds, changes and retires them.
    pub(crate) listeners: Arc<Mutex<Listeners>>,
    /// Builds the stack for a config (the stack module's `build`, whose type has no name).
    #[expect(clippy::type_complexity, reason = "one builder closure")]
    pub(crate) build:
        Box<dyn Fn(&Config, &[Cluster], &Drain, &Runtime, &AccessLog) -> Result<S, String> + Send + Sync>,
}

/// Starts each cluster's health checker and DNS discovery; the handles stop them.
pub(crate) fn spawn_cluster_tasks(clusters: &[Cluster]) -> Vec<JoinHandle<()>> {
    clusters
        .iter()
        .flat_map(|c| [tokio::spawn(c.health_checker()), tokio::spawn(c.discovery())])
        .collect()
}

/// A short, stable digest of a config, for `GET /config` and the reload log.
pub(crate) fn hash(config: &Config) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The fields a running process can't change: the workers and the client limits they were
/// started with, the admin endpoint (its address and token: the token file is read again
/// on each reload, and a new token is reported here, not used) and the access log's
/// destination.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            fields.push(name);
        }
    };
    check("admin", old.admin == new.admin);
    check("workers", old.workers == new.workers);
    check("access_log", old.access_log == new.access_log);
    check("drain_timeout", old.drain_timeout == new.drain_timeout);
    check(
        "drain_close_window",
        old.drain_close_window == new.drain_close_window,
    );
    check(
        "request_headers_timeout",
        old.request_headers_timeout == new.request_headers_timeout,
    );
    check(
        "connection_idle_timeout",
        old.connection_idle_timeout == new.connection_idle_timeout,
    );
    check(
        "max_request_headers_kb",
        old.max_request_headers_kb == new.max_request_headers_kb,
    );
    check(
        "max_headers_count",
        old.max_headers_count == new.max_headers_count,
    );
    check(
        "max_concurrent_streams",
        old.max_concurrent_streams == new.max_concurrent_streams,
    );
    check("max_connections", old.max_connections == new.max_connections);
    fields
}

impl<S: Clone + Send + Sync> Reload for Reloader<S> {
    fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let result = self.try_reload();
        let label = match &result {
            Ok(r) if r.changed => "changed",
            Ok(_) => "unchanged",
            Err(_) => "refused",
        };
        ::metrics::counter!(RELOADS, "result" => label).increment(1);
        match &result {
            Ok(r) if r.changed => tracing::info!(
                generation = r.generation,
                hash = r.hash,
                restart_needed = ?r.restart_needed,
                "config reloaded: new requests and upgrades follow it; open tunnels are untouched"
            ),
            Ok(_) => tracing::info!("config reload: the file is unchanged"),
            Err(errors) => tracing::error!(
                errors = %errors.join("; "),
                "config reload refused: the running config stays"
            ),
        }
        result
    }
}

impl<S: Clone + Send + Sync> Reloader<S> {
    fn try_reload(&self) -> Result<Reloaded, Vec<String>> {
        let Some(path) = &self.path else {
            return Err(vec!["the built-in demo has no config file to reload".to_owned()]);
        };
        let new = Config::load(path)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        // Every certificate file is read again, changed config or not; any error refuses
        // the whole reload, and the running certificates stay.
        let plan = listeners.plan(&new).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect::<Vec<_>>()
        })?;
        let drain_timeout = self
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .drain_timeout;
        // Clusters with TLS are rebuilt whatever the file says: their CA and client
        // certificate files may have changed under the same names.
        if new == *loaded && !new.clusters.iter().any(|c| c.tls.is_some()) {
            // The same listeners: only their certificates, read again, go in.
            listeners.apply(plan, drain_timeout).map_err(|e| vec![e])?;
            let view = self.view.read().unwrap_or_else(|e| e.into_inner());
            return Ok(Reloaded {
                changed: false,
                generation: view.generation,
                hash: view.hash.clone(),
                restart_needed: Vec::new(),
            });
        }
        let restart_needed = restart_only(&loaded, &new);
        // What new requests see: everything but the fields a restart needs, which keep the
        // running values (and say so).
        let mut effective = new.clone();
        {
            let view = self.view.read().unwrap_or_else(|e| e.into_inner());
            let running = &view.config;
            effective.admin.clone_from(&running.admin);
            effective.workers = running.workers;
            effective.access_log = running.access_log.clone();
            effective.drain_timeout = running.drain_timeout;
            effective.drain_close_window = running.drain_close_window;
            effective.request_headers_timeout = running.request_headers_timeout;
            effective.connection_idle_timeout = running.connection_idle_timeout;
            effective.max_request_headers_kb = running.max_request_headers_kb;
            effective.max_headers_count = running.max_headers_count;
            effective.max_concurrent_streams = running.max_concurrent_streams;
            effective.max_connections = running.max_connections;
        }
        let clusters = stack::clusters(&effective).map_err(|e| vec![e])?;
        let built = (self.build)(&effective, &clusters, &self.drain, &self.runtime, &self.log)
            .map_err(|e| vec![e])?;
        // The last step that can fail: binding new listeners.
        let changes = listeners.apply(plan, drain_timeout).map_err(|e| vec![e])?;
        if !changes.is_empty() {
            tracing::info!(?changes, "listeners changed");
        }
        for (listener, bound) in effective.listeners.iter_mut().zip(listeners.addresses()) {
            listener.address = bound;
        }
        drop(listeners);
        let overridden = self.overridden.lock().unwrap_or_else(|e| e.into_inner());
        for (key, value) in &effective.runtime {
            if !overridden.contains(key) {
                self.runtime.set(key.as_str(), *value);
            }
        }
        drop(overridden);
        let generation = self.current.swap(built);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for task in tasks.drain(..) {
            task.abort();
        }
        *tasks = spawn_cluster_tasks(&clusters);
        let hash = hash(&new);
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = View {
            config: effective,
            clusters,
            generation,
            hash: hash.clone(),
        };
        *loaded = new;
        #[expect(clippy::cast_precision_loss, reason = "a gauge is an f64")]
        ::metrics::gauge!(GENERATION).set(generation as f64);
        Ok(Reloaded {
            changed: true,
            generation,
            hash,
            restart_needed,
        })
    }
}

/// How often `--watch` looks at the file.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// `--watch`: reloads when the file's content changes. The content is read (through any
/// symlink) rather than watched with inotify: an editor's write-by-rename and a Kubernetes
/// ConfigMap update (a `..data` symlink swapped to a new directory) both replace the file a
/// watch would follow, and a config file is small. A change counts once it has held still
/// for one look, so a file caught half-written isn't loaded.
pub(crate) async fn watch(path: PathBuf, reloader: Arc<dyn Reload>) {
    let read = |path: &PathBuf| snapshot(path);
    let mut applied = read(&path);
    let mut pending: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = read(&path);
        if now == applied {
            pending = None;
            continue;
        }
        match (&now, &pending) {
            (Some(content), Some(seen)) if content == seen => {
                tracing::info!(file = %path.display(), "--watch: the config file or a certificate changed; reloading");
                let reloader = reloader.clone();
                // Reading and building are blocking work: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                applied = now;
                pending = None;
            }
            (Some(content), _) => pending = Some(content.clone()),
            // Gone for a moment (mid-rename): look again next time.
            (None, _) => pending = None,
        }
    }
}

/// What `--watch` compares: the config file's bytes, then those of every certificate, key and
/// CA file it names (a certificate renewed in place reloads too). `None` while the config
/// file can't be read.
fn snapshot(path: &std::path::Path) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if let Ok(config) = Config::from_yaml_str(&text, &path.display().to_string()) {
        let listeners = config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| {
                t.certificates
                    .iter()
                    .flat_map(|c| [c.cert_chain_file.clone(), c.private_key_file.clone()])
            });
        let clusters = config
            .clusters
            .iter()
            .filter_map(|c| c.tls.as_ref())
            .flat_map(|t| {
                [&t.trusted_ca_file, &t.cert_chain_file, &t.private_key_file]
                    .into_iter()
                    .flatten()
                    .cloned()
            });
        for file in listeners.chain(clusters) {
            bytes.extend_from_slice(b"\0");
            bytes.extend(std::fs::read(file).unwrap_or_default());
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test]
    async fn clones_take_the_newest_stack_before_their_next_request() {
        let answer = |n: u32| tower::service_fn(move |()| async move { Ok::<_, Infallible>(n) });
        let current = Current::new(answer(1));
        let served = Reloadable::new(current.clone());
        let held = served.clone();
        assert_eq!(served.clone().oneshot(()).await, Ok(1));
        assert_eq!(current.swap(answer(2)), 2);
        assert_eq!(served.clone().oneshot(()).await, Ok(2));
        assert_eq!(held.oneshot(()).await, Ok(2));
    }
}
