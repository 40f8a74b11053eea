//! The steps of [`Proxy::start`](super::Proxy::start) that talk to the operating system:
//! descriptors, sockets taken over or bound, the takeover socket offered, and errors that
//! say which setting to change.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;

use switchback::ClientLimits;
use switchback_config::{AdminEndpoint, Config};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::cli::DEMO_LISTEN_ENV;
use crate::fatal::{Fatal, why_not_listening};
use crate::listeners::{Listeners, Starter};
use crate::run::Origin;
use crate::takeover;

/// What a process taking over was given by the running one.
#[derive(Debug, Default)]
pub(super) struct Taken {
    /// The listeners' sockets, one per worker; `None` without `--takeover`.
    pub(super) workers: Option<Vec<std::net::TcpListener>>,
    /// The admin endpoint's socket.
    pub(super) admin: Option<std::net::TcpListener>,
    /// Answered once this process accepts on the sockets.
    pub(super) confirm: Option<UnixStream>,
}

/// Checks the takeover socket's directory (before anything is taken: a socket no one else
/// may replace), then with `--takeover` takes the running process's sockets.
pub(super) fn take_sockets(config: &Config, takeover: bool) -> Result<Taken, Fatal> {
    if let Some(path) = &config.takeover_socket {
        takeover::check_dir(path)
            .map_err(|why| Fatal::new(format!("takeover_socket {}: {why}", path.display())))?;
    }
    match (takeover, &config.takeover_socket) {
        (false, _) => Ok(Taken::default()),
        (true, None) => Err(Fatal::new(
            "--takeover needs `takeover_socket` in the config: the socket the running process offers",
        )),
        (true, Some(path)) => {
            let (sockets, stream) = takeover::take(path)
                .map_err(|e| Fatal::new(format!("takeover on {}: {e}", path.display())))?;
            Ok(Taken {
                workers: Some(sockets.workers),
                admin: sockets.admin,
                confirm: Some(stream),
            })
        }
    }
}

/// The limits every listener's clients get, from the top-level fields.
pub(super) fn client_limits(config: &Config) -> ClientLimits {
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
    limits
}

/// Starts every listener's workers with `start`, on the sockets `taken` or new ones.
pub(super) fn start_listeners(
    config: &Config,
    origin: &Origin,
    start: Starter,
    taken: Option<Vec<std::net::TcpListener>>,
) -> Result<Listeners, Fatal> {
    Listeners::start(config, config.workers, start, taken).map_err(|e| {
        let field = if config.listeners.len() == 1 && config.listeners[0].tls.is_none() {
            "listen".to_owned()
        } else {
            format!("listeners[{}].address", e.index)
        };
        match e.bind {
            Some(bind) => cannot_listen(e.address, &field, origin, &bind),
            // A certificate that can't be used: the error names its field and file.
            None => Fatal::new(format!("cannot serve on {}: {}", e.address, e.error)),
        }
    })
}

/// The admin endpoint's socket: the one handed over, or one bound on the configured
/// address. Either way `config.admin`'s address becomes the bound one.
pub(super) async fn admin_listener(
    config: &mut Config,
    origin: &Origin,
    given: Option<std::net::TcpListener>,
) -> Result<Option<TcpListener>, Fatal> {
    let Some(admin) = config.admin.as_mut() else {
        return Ok(None);
    };
    let listener = match given {
        Some(given) => given
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(given))
            .map_err(|e| Fatal::new(format!("takeover: the admin socket handed over: {e}")))?,
        None => {
            let field = admin_field(admin);
            TcpListener::bind(admin.address)
                .await
                .map_err(|e| cannot_listen(admin.address, field, origin, &e))?
        }
    };
    admin.address = listener
        .local_addr()
        .map_err(|e| cannot_listen(admin.address, admin_field(admin), origin, &e))?;
    Ok(Some(listener))
}

/// The field that names the admin address: `admin`, or `admin.address` in the long form.
fn admin_field(admin: &AdminEndpoint) -> &'static str {
    if admin.token_file.is_some() {
        "admin.address"
    } else {
        "admin"
    }
}

/// Offers takeovers on `path`: each connection is a new process asking for the sockets.
pub(super) fn offer_takeovers(path: &Path) -> Result<mpsc::Receiver<UnixStream>, Fatal> {
    let listener = takeover::offer(path)
        .map_err(|e| Fatal::new(format!("takeover_socket {}: cannot listen: {e}", path.display())))?;
    let (tx, rx) = mpsc::channel(1);
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

/// Raises the soft descriptor limit to the hard one, as HAProxy does: every tunnel takes two
/// descriptors, and the default `max_connections` is derived from the limit.
#[cfg(target_os = "linux")]
pub(super) fn raise_descriptor_limit() {
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
pub(super) fn raise_descriptor_limit() {}
