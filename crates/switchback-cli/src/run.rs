//! `switchback --config FILE` and the demo: the [`Proxy`]'s life, step by step.

use std::path::PathBuf;

use crate::fatal::Fatal;
use crate::proxy::Proxy;
use crate::reload::Loaded;
use crate::signals::Signals;

/// Where the configuration came from: it decides how errors say to fix an address, and
/// whether there is a file to reload.
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

/// Serves `loaded` until a signal or the admin endpoint drains it, or a new process takes
/// the sockets over; returns once the drain is over. Once every listener is bound,
/// `ready_file` (when given) gets the bound addresses.
pub(crate) async fn run(
    loaded: Loaded,
    origin: Origin,
    ready_file: Option<PathBuf>,
    options: Options,
) -> Result<(), Fatal> {
    // First of all, so that a signal during startup drains instead of killing the process.
    let signals = Signals::new()?;
    let mut proxy = Proxy::start(loaded, &origin, options.takeover).await?;
    proxy.announce(&origin, ready_file.as_deref())?;
    let watched = match origin {
        Origin::File(path) if options.watch => Some(path),
        _ => None,
    };
    proxy.follow(signals, watched);
    let ending = proxy.serve().await?;
    proxy.drain(ending).await;
    proxy.stop().await;
    Ok(())
}
