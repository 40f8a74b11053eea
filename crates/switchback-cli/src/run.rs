//! Running the proxy: bind, serve on the worker threads, and drain on SIGTERM or SIGINT.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use switchback::{ClientLimits, Server};
use switchback::{Drain, Runtime};
use switchback_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::admin::{self, Admin};
use crate::cli::DEMO_LISTEN_ENV;
use crate::fatal::Fatal;
use crate::listeners::{Listeners, Sockets, Starter};
use crate::ready::ReadyFile;
use crate::signals::Signals;
use crate::{demo, reload, stack, takeover};

/// Where the configuration came from: it decides how errors say to fix an address.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// `--config FILE`.
    File(PathBuf),
    /// The built-in demo.
    Demo,
}

/// What the command line asked for besides the config.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// `--watch`: reload when the config file changes.
    pub(crate) watch: bool,
    /// `--takeover`: take the listening sockets of the running process.
    pub(crate) takeover: bool,
}

/// How long plain HTTP exchanges may outlive `drain_timeout` before the process exits anyway.
const EXCHANGE_MARGIN: Duration = Duration::from_secs(1);

/// Serves `config` until a signal drains it. Returns once the drain is over. Once every
/// listener is bound, `ready_file` (when given) gets the bound addresses.
pub(crate) async fn run(
    mut config: Config,
    origin: Origin,
    ready_file: Option<PathBuf>,
    options: Options,
) -> Result<(), Fatal> {
    // First of all, so that a signal during startup drains instead of killing the process.
    let mut signals = Signals::new()?;

    let metrics = match config.admin {
        Some(_) => Some(admin::install_metrics()?),
        None => None,
    };
    let log = AccessLog::open(&config.access_log)?;
    // Listed only with an admin endpoint to show them: a listed tunnel costs a little more.
    let drain = if config.admin.is_some() {
        Drain::listing()
    } else {
        Drain::new()
    };
    drain.set_close_window(config.drain_close_window);
    let runtime = Runtime::from_values(config.runtime.clone());
    let clusters = stack::clusters(&config).map_err(Fatal::new)?;
    let stack = stack::build(&config, &clusters, &drain, &runtime, &log)?;
    // Each cluster's health checker (none without `health_checks`) and DNS discovery run on
    // the main runtime until a reload replaces the clusters; the workers only read the state
    // they set.
    let tasks = reload::spawn_cluster_tasks(&clusters);
    let loaded = config.clone();
    // The workers serve the newest stack a reload put in place.
    let current = reload::Current::new(stack);
    let served = reload::Reloadable::new(current.clone());

    let threads = config.workers;
    raise_descriptor_limit();
    let mut limits = ClientLimits::new()
        .request_headers_timeout(config.request_headers_timeout)
        .max_request_headers(config.max_request_headers_kb as usize * 1024)
        .max_headers(config.max_headers_count as usize)
        .max_concurrent_streams(config.max_concurrent_streams);
    limits = match config.connection_idle_timeout {
        idle if idle.is_zero() => limits.no_connection_idle_timeout(),
        idle => limits.connection_idle_timeout(idle),
    };
    if let Some(max) = config.max_connections {
        limits = limits.max_connections(usize::try_from(max).unwrap_or(usize::MAX));
    }
    // Before anything is taken: a takeover socket no one else may replace.
    if let Some(path) = &config.takeover_socket {
        takeover::check_dir(path)
            .map_err(|why| Fatal::new(format!("takeover_socket {}: {why}", path.display())))?;
    }
    // With --takeover, the sockets come from the running process instead of new binds.
    let taken = match (options.takeover, &config.takeover_socket) {
        (false, _) => None,
        (true, None) => {
            return Err(Fatal::new(
                "--takeover needs `takeover_socket` in the config: the socket the running process offers",
            ));
        }
        (true, Some(path)) => Some(
            takeover::take(path).map_err(|e| Fatal::new(format!("takeover on {}: {e}", path.display())))?,
        ),
    };
    let (given, given_admin, confirm) = match taken {
        Some((sockets, stream)) => (Some(sockets.workers), sockets.admin, Some(stream)),
        None => (None, None, None),
    };
    // How every listener, now or after a reload, serves the newest stack.
    let start: Starter = Arc::new(move |sockets, tls| {
        let mut server = Server::new(served.clone()).limits(limits);
        if let Some(tls) = tls {
            server = server.tls(tls);
        }
        match sockets {
            Sockets::Bind(addr, threads) => server.workers(addr, threads),
            Sockets::Given(listeners) => server.workers_from(listeners),
        }
    });
    let workers = Listeners::start(&config, threads, start, given).map_err(|e| {
        let field = if config.listeners.len() == 1 && config.listeners[0].tls.is_none() {
            "listen".to_owned()
        } else {
            format!("listeners[{}].address", e.index)
        };
        match e.bind {
            Some(bind) => cannot_listen(e.address, &field, &origin, &bind),
            // A certificate that can't be used: the error names its field and file.
            None => Fatal::new(format!("cannot serve on {}: {}", e.address, e.error)),
        }
    })?;
    // From here on the config says what is bound (port 0 resolved), for `GET /config` too.
    for (listener, bound) in config.listeners.iter_mut().zip(workers.addresses()) {
        listener.address = bound;
    }
    let bound = workers.addresses();
    // Shared with the reloader, which binds, changes and retires listeners.
    let workers = Arc::new(Mutex::new(workers));
    let admin_listener = match (config.admin.as_mut(), given_admin) {
        (Some(admin), Some(given)) => {
            let (address, listener) = given
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(given))
                .and_then(|listener| Ok((listener.local_addr()?, listener)))
                .map_err(|e| Fatal::new(format!("takeover: the admin socket handed over: {e}")))?;
            admin.address = address;
            Some(listener)
        }
        (Some(admin), _) => {
            let addr = admin.address;
            let field = admin_field(admin);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| cannot_listen(addr, field, &origin, &e))?;
            admin.address = listener
                .local_addr()
                .map_err(|e| cannot_listen(addr, field, &origin, &e))?;
            Some(listener)
        }
        (None, _) => None,
    };
    let view: reload::SharedView = Arc::new(RwLock::new(reload::View {
        hash: reload::hash(&loaded),
        config: config.clone(),
        clusters,
        generation: 1,
    }));
    let overridden = Arc::default();
    let reloader: Arc<dyn reload::Reload> = Arc::new(reload::Reloader {
        path: match &origin {
            Origin::File(path) => Some(path.clone()),
            Origin::Demo => None,
        },
        current,
        loaded: Mutex::new(loaded),
        view: view.clone(),
        drain: drain.clone(),
        runtime: runtime.clone(),
        overridden: Arc::clone(&overridden),
        log: log.clone(),
        tasks: Mutex::new(tasks),
        listeners: workers.clone(),
        build: Box::new(|config, clusters, drain, runtime, log| {
            stack::build(config, clusters, drain, runtime, log).map_err(|e| e.to_string())
        }),
    });
    let mut admin_fd = None;
    let mut admin_task = None;
    // 0: running, 1: draining, 2: told twice, stop waiting. A first signal or the admin
    // endpoint's `POST /drain` starts the drain.
    let (tx, rx) = watch::channel(0u8);
    let tx = Arc::new(tx);
    if let (Some(admin_listener), Some(metrics)) = (admin_listener, metrics) {
        let bound = admin_listener
            .local_addr()
            .map_err(|e| cannot_listen(admin_listener_addr(&config), "admin", &origin, &e))?;
        let door = admin::Door::new(config.admin.as_ref().and_then(|a| a.token.clone()));
        let admin = Admin::new(
            metrics,
            drain.clone(),
            runtime.clone(),
            view,
            reloader.clone(),
            overridden,
            admin::DrainStart {
                unready: Arc::default(),
                start: tx.clone(),
            },
        );
        // A duplicate, for a takeover to hand over.
        admin_fd = std::os::fd::AsFd::as_fd(&admin_listener)
            .try_clone_to_owned()
            .ok();
        admin_task = Some(tokio::spawn(admin.serve(admin_listener, door)));
        tracing::info!("admin endpoint on http://{bound}/ (metrics, ready, runtime, config, clusters)");
    }
    // The old process, once this one serves on its sockets, stops accepting and drains.
    if let Some(stream) = confirm {
        takeover::confirm(stream).map_err(|e| Fatal::new(format!("takeover: cannot confirm: {e}")))?;
        tracing::info!("took the listening sockets over from the running process");
    }
    // Offer takeovers in turn.
    let mut takeovers = match &config.takeover_socket {
        Some(path) => Some(offer_takeovers(path)?),
        None => None,
    };
    for listener in &config.listeners {
        let scheme = if listener.tls.is_some() { "https" } else { "http" };
        tracing::info!(listen = %listener.address, scheme, workers = threads, "switchback is listening");
    }
    if let Origin::Demo = origin {
        // Standard error, with the diagnostics: standard output is the access log's, and
        // the banner must neither get lost among its lines nor break a reader of them.
        crate::fatal::print_err(&demo::banner(config.listeners[0].address));
    }
    // Last: whoever waits for this file may connect to every listener at once.
    let _ready = match &ready_file {
        Some(path) => Some(ReadyFile::write(
            path,
            &bound,
            config.admin.as_ref().map(|a| a.address),
        )?),
        None => None,
    };

    let drain_timeout = config.drain_timeout;
    let pretty_timeout = switchback_config::format_duration(drain_timeout);
    let pretty_timeout_takeover = pretty_timeout.clone();
    if let (true, Origin::File(path)) = (options.watch, &origin) {
        tokio::spawn(reload::watch(path.clone(), reloader.clone()));
    }
    // SIGHUP reloads the config file.
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let reloader = reloader.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config file");
                let _ = reloader.reload();
            }
        });
    }
    tokio::spawn(async move {
        // A drain the admin endpoint started doesn't make the next signal a second one (the
        // SIGTERM that follows a preStop hook's drain is a first).
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            "draining: no new connections or upgrades; open tunnels may run for up to {pretty_timeout}"
        );
        tx.send_replace(1);
        let second = signals.next().await;
        tracing::warn!(signal = second, "second signal: closing everything now");
        tx.send_replace(2);
    });

    // Serving only ends on a failure, after the first signal, or once a new process has
    // taken the sockets over.
    let mut taken_over = false;
    loop {
        let takeover = async {
            match &mut takeovers {
                Some(requests) => requests.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            failed = stopped(&workers) => {
                return Err(Fatal::new(match failed {
                    Ok(()) => "the listener stopped unexpectedly".to_owned(),
                    Err(e) => format!("the listener failed: {e}"),
                }));
            }
            () = reached(rx.clone(), 1) => break,
            Some(stream) = takeover => {
                let sockets = lock(&workers).take_listeners();
                let admin = admin_fd.take();
                let handed = tokio::task::spawn_blocking(move || {
                    let handed = takeover::hand_over(stream, &sockets, admin.as_ref());
                    (handed, sockets, admin)
                })
                .await;
                match handed {
                    Ok((Ok(()), _, _)) => {
                        tracing::info!(
                            "taken over: a new process accepts on the sockets; draining: open tunnels may run for up to {pretty_timeout_takeover}"
                        );
                        if let Some(task) = admin_task.take() {
                            task.abort();
                        }
                        taken_over = true;
                        break;
                    }
                    // The sockets stay this process's, and so does the next takeover's chance.
                    Ok((Err(e), sockets, admin)) => {
                        tracing::error!(error = %e, "takeover failed; serving on");
                        lock(&workers).give_back_listeners(sockets);
                        admin_fd = admin;
                    }
                    Err(e) => tracing::error!(error = %e, "takeover failed; serving on"),
                }
            }
        }
    }
    lock(&workers).shutdown();
    if taken_over {
        // The connections accepted before the handover are served to the end (an upgrade
        // on one still opens its tunnel here); only then do upgrades stop.
        tokio::select! {
            _ = stopped(&workers) => {}
            () = reached(rx.clone(), 2) => {}
        }
    }
    let drained = tokio::spawn({
        let (drain, rx) = (drain.clone(), rx.clone());
        async move {
            tokio::select! {
                outcome = drain.drain(drain_timeout) => Some(outcome),
                () = reached(rx, 2) => None,
            }
        }
    });
    tokio::select! {
        served = stopped(&workers) => if let Err(e) = served {
            tracing::warn!(error = %e, "the listener failed while draining");
        },
        () = tokio::time::sleep(drain_timeout + EXCHANGE_MARGIN) => {
            tracing::warn!("requests still in flight after drain_timeout; closing them");
        }
        () = reached(rx.clone(), 2) => {}
    }
    match drained.await {
        Ok(Some(outcome)) => tracing::info!(
            finished = outcome.finished,
            closed = outcome.closed,
            "drained; exiting"
        ),
        Ok(None) => tracing::info!("drain cut short; exiting"),
        Err(e) => tracing::warn!(error = %e, "the drain task failed; exiting"),
    }
    // The workers' runtimes end, and whatever is still open on them.
    let _ = tokio::task::spawn_blocking(move || {
        let mut all = lock(&workers);
        let listeners = std::mem::replace(&mut *all, Listeners::none());
        drop(all);
        listeners.stop();
    })
    .await;
    Ok(())
}

/// The listeners, locked for a moment (never across an await).
fn lock(listeners: &Mutex<Listeners>) -> std::sync::MutexGuard<'_, Listeners> {
    listeners
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolves once every listener has stopped serving, or one failed.
async fn stopped(listeners: &Mutex<Listeners>) -> io::Result<()> {
    std::future::poll_fn(|cx| lock(listeners).poll_stopped(cx)).await
}

/// Resolves once the state reaches `n`; never, if the signal task is gone before that.
async fn reached(mut rx: watch::Receiver<u8>, n: u8) {
    if rx.wait_for(|v| *v >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why `addr` can't be listened on, and which setting to change.
fn cannot_listen(addr: SocketAddr, field: &str, origin: &Origin, e: &io::Error) -> Fatal {
    let fix = match origin {
        Origin::File(path) => format!("change `{field}` in {}", path.display()),
        Origin::Demo => {
            format!("set {DEMO_LISTEN_ENV} to a free address, e.g. {DEMO_LISTEN_ENV}=127.0.0.1:10001")
        }
    };
    Fatal::new(format!(
        "cannot listen on {addr} (`{field}`): {}",
        why_not_listening(e, &fix)
    ))
}

/// A bind error in words a person can act on, ending with `fix`.
pub(crate) fn why_not_listening(e: &io::Error, fix: &str) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            format!("the address is already in use by another program; stop it or {fix}")
        }
        io::ErrorKind::AddrNotAvailable => format!("no local interface has this address; {fix}"),
        io::ErrorKind::PermissionDenied => {
            format!("permission denied (ports below 1024 need privileges); {fix}")
        }
        _ => format!("{e}; {fix}"),
    }
}

/// Raises the soft descriptor limit to the hard one, as HAProxy does: every tunnel takes two
/// descriptors, and the default `max_connections` is derived from the limit.
#[cfg(target_os = "linux")]
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the descriptor limit"),
    }
}

#[cfg(not(target_os = "linux"))]
fn raise_descriptor_limit() {}

/// The admin address the config names, for an error about it.
fn admin_listener_addr(config: &Config) -> SocketAddr {
    config
        .admin
        .as_ref()
        .map_or(config.listeners[0].address, |a| a.address)
}

/// The field that names the admin address: `admin`, or `admin.address` in the long form.
fn admin_field(admin: &switchback_config::AdminEndpoint) -> &'static str {
    if admin.token_file.is_some() {
        "admin.address"
    } else {
        "admin"
    }
}

/// Offers takeovers on `path`: each connection is a new process asking for the sockets.
fn offer_takeovers(
    path: &std::path::Path,
) -> Result<tokio::sync::mpsc::Receiver<std::os::unix::net::UnixStream>, Fatal> {
    let listener = takeover::offer(path)
        .map_err(|e| Fatal::new(format!("takeover_socket {}: cannot listen: {e}", path.display())))?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let shown = path.display().to_string();
    // A thread of its own: accepting on a std socket blocks, and takeovers are rare.
    std::thread::Builder::new()
        .name("switchback-takeover".to_owned())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // Dropping the stream closes it: another user gets no socket, and no answer.
                if let Err(who) = takeover::check_peer(&stream) {
                    tracing::warn!(socket = shown, "takeover refused: the peer runs as {who}");
                    continue;
                }
                if tx.blocking_send(stream).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Fatal::new(format!("cannot start the takeover thread: {e}")))?;
    Ok(rx)
}
