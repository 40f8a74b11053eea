//! Reloading the config file while serving.
//!
//! SIGHUP, `--watch` and admin `POST /reload` all ask the proxy's owner
//! ([`Proxy`](crate::proxy::Proxy)), which runs [`Reloader::reload`] in its own loop: a
//! reload never races another one or a takeover, and none starts once the process drains.
//! A reload reads the file once ([`file`]), plans the listeners' changes (reading every
//! certificate), builds the new stack, binds new listeners, and only then swaps the stack in
//! for new requests ([`swap`]) and publishes the new view ([`shared`]). Any failure before
//! the swap leaves everything as it was. Tunnels are tasks of their own, holding nothing of
//! the stack that opened them, so a reload leaves every one of them alone; requests in
//! flight finish on the stack they started with.

mod file;
mod shared;
mod swap;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use switchback::Cluster;
use switchback_config::Config;
use tokio::task::JoinHandle;

pub(crate) use self::file::{Digest, Loaded, load};
pub(crate) use self::shared::{RuntimeValues, SharedView, View};
pub(crate) use self::swap::{Current, Reloadable};
pub(crate) use self::watch::watch;

use crate::fatal::Fatal;
use crate::listeners::Listeners;
use crate::stack;

/// Counter: reloads, by `result` (`changed`, `unchanged`, `refused`).
pub(crate) const RELOADS: &str = "switchback_config_reloads_total";
/// Gauge: the running config's generation (1 at start, one more per reload that changed it).
pub(crate) const GENERATION: &str = "switchback_config_generation";

/// What a reload did: the answer to `POST /reload`.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Reloaded {
    /// Whether the config differs from the running one.
    pub(crate) changed: bool,
    /// The running config's generation now.
    pub(crate) generation: u64,
    /// The digest of the file read.
    pub(crate) hash: Digest,
    /// Fields that differ in the file but only take effect on a restart.
    pub(crate) restart_needed: Vec<&'static str>,
}

/// A reload's answer: what it did, or why the running config stays (`--check`'s errors).
pub(crate) type Outcome = Result<Reloaded, Vec<String>>;

/// How the stack is built from a config (the stack module's `build`, whose type has no
/// name).
pub(crate) type Build<S> = fn(&Config, &[Cluster], &stack::Shared) -> Result<S, Fatal>;

/// Each running cluster's health checker and DNS discovery (none without `health_checks` or
/// names among the endpoints). They run on the main runtime until a reload replaces the
/// clusters; the workers only read the state they set.
#[derive(Debug)]
pub(crate) struct ClusterTasks(Vec<JoinHandle<()>>);

impl ClusterTasks {
    /// Starts the tasks of `clusters`.
    pub(crate) fn start(clusters: &[Cluster]) -> Self {
        Self(
            clusters
                .iter()
                .flat_map(|c| [tokio::spawn(c.health_checker()), tokio::spawn(c.discovery())])
                .collect(),
        )
    }
}

impl Drop for ClusterTasks {
    /// Replaced clusters stop probing and resolving.
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A [`Reloader`], whatever its stack's type (which has no name): what the owner holds.
pub(crate) trait Reload: Send + std::fmt::Debug {
    /// Reads and checks the file; on success changes `listeners` and swaps the stack in.
    /// Logged and counted.
    fn reload(&mut self, listeners: &mut Listeners) -> Outcome;
}

/// Reloads one file into the running stack, view and listeners.
pub(crate) struct Reloader<S> {
    /// The config file; `None` for the built-in demo, which has none.
    path: Option<PathBuf>,
    /// Where the workers take the newest stack from.
    current: Arc<Current<S>>,
    build: Build<S>,
    /// What every stack is built with, the same across reloads.
    shared: stack::Shared,
    /// The file's config as last loaded (before the bound ports were filled in).
    loaded: Config,
    view: SharedView,
    tasks: ClusterTasks,
}

impl<S> std::fmt::Debug for Reloader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync> Reload for Reloader<S> {
    fn reload(&mut self, listeners: &mut Listeners) -> Outcome {
        let result = self.try_reload(listeners);
        let label = match &result {
            Ok(r) if r.changed => "changed",
            Ok(_) => "unchanged",
            Err(_) => "refused",
        };
        ::metrics::counter!(RELOADS, "result" => label).increment(1);
        match &result {
            Ok(r) if r.changed => tracing::info!(
                generation = r.generation,
                hash = %r.hash,
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

impl<S: Clone> Reloader<S> {
    /// The reloader of a process that serves `current`, built by `build` from `loaded`,
    /// shown as `view`, whose clusters run `tasks`.
    pub(crate) fn new(
        path: Option<PathBuf>,
        current: Arc<Current<S>>,
        build: Build<S>,
        shared: stack::Shared,
        loaded: Config,
        view: SharedView,
        tasks: ClusterTasks,
    ) -> Self {
        Self {
            path,
            current,
            build,
            shared,
            loaded,
            view,
            tasks,
        }
    }

    fn try_reload(&mut self, listeners: &mut Listeners) -> Outcome {
        let Some(path) = &self.path else {
            return Err(vec!["the built-in demo has no config file to reload".to_owned()]);
        };
        let Loaded { config: new, digest } =
            load(path).map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        // Every certificate file is read again, changed config or not; any error refuses
        // the whole reload, and the running certificates stay.
        let plan = listeners.plan(&new).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect::<Vec<_>>()
        })?;
        let drain_timeout = self.view.read(|view| view.config.drain_timeout);
        // Clusters with TLS are rebuilt whatever the file says: their CA and client
        // certificate files may have changed under the same names.
        if new == self.loaded && !new.clusters.iter().any(|c| c.tls.is_some()) {
            // The same listeners: only their certificates, read again, go in.
            listeners.apply(plan, drain_timeout).map_err(|e| vec![e])?;
            // The same config, perhaps from other bytes (a comment): the digest names them.
            let generation = self.view.update(|view| {
                view.digest = digest;
                view.generation
            });
            return Ok(Reloaded {
                changed: false,
                generation,
                hash: digest,
                restart_needed: Vec::new(),
            });
        }
        let restart_needed = restart_only(&self.loaded, &new);
        // What new requests see: everything but the fields a restart needs, which keep the
        // running values (and say so).
        let mut effective = new.clone();
        self.view
            .read(|view| keep_restart_only(&mut effective, &view.config));
        let clusters = stack::clusters(&effective).map_err(|e| vec![e])?;
        let built = (self.build)(&effective, &clusters, &self.shared).map_err(|e| vec![e.to_string()])?;
        // The last step that can fail: binding new listeners.
        let changes = listeners.apply(plan, drain_timeout).map_err(|e| vec![e])?;
        if !changes.is_empty() {
            tracing::info!(?changes, "listeners changed");
        }
        for (listener, bound) in effective.listeners.iter_mut().zip(listeners.addresses()) {
            listener.address = bound;
        }
        self.shared.runtime.apply_file(&effective.runtime);
        let generation = self.current.swap(built);
        self.tasks = ClusterTasks::start(&clusters);
        self.view.update(|view| {
            *view = View {
                config: effective,
                clusters,
                generation,
                digest,
            };
        });
        self.loaded = new;
        #[expect(clippy::cast_precision_loss, reason = "a gauge is an f64")]
        ::metrics::gauge!(GENERATION).set(generation as f64);
        Ok(Reloaded {
            changed: true,
            generation,
            hash: digest,
            restart_needed,
        })
    }
}

/// The fields a running process can't change: the workers and the client limits they were
/// started with, the admin endpoint (its address and token: the token file is read again
/// on each reload, and a new token is reported here, not used) and the access log's
/// destination, and the `tracing` block (its exporter is installed once).
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
    check("tracing", old.tracing == new.tracing);
    fields
}

/// Gives `effective` the running values of the [`restart_only`] fields.
fn keep_restart_only(effective: &mut Config, running: &Config) {
    effective.admin.clone_from(&running.admin);
    effective.workers = running.workers;
    effective.access_log.clone_from(&running.access_log);
    effective.drain_timeout = running.drain_timeout;
    effective.drain_close_window = running.drain_close_window;
    effective.request_headers_timeout = running.request_headers_timeout;
    effective.connection_idle_timeout = running.connection_idle_timeout;
    effective.max_request_headers_kb = running.max_request_headers_kb;
    effective.max_headers_count = running.max_headers_count;
    effective.max_concurrent_streams = running.max_concurrent_streams;
    effective.max_connections = running.max_connections;
    effective.tracing.clone_from(&running.tracing);
}
