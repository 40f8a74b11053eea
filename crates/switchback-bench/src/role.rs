//! What every child role (proxy, upstream) does: tell the harness where it listens, and exit
//! at once on `SIGTERM` (nothing to drain: the harness is done with it). And the `exec` role,
//! which starts a peer so that it dies with the harness.

use std::io::Write as _;

use rustix::process::Signal;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ExecArgs;
use crate::error::{Context, Error, Result};
use crate::sys;

/// Prints `LISTENING <addr>` on stdout, the line [`crate::child::ChildProc::listening`] waits for.
pub(crate) fn announce(listener: &TcpListener) -> Result<()> {
    announce_addr(listener.local_addr().context("local address")?)
}

/// [`announce`] for an address bound elsewhere.
pub(crate) fn announce_addr(addr: std::net::SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {addr}")
        .and_then(|()| out.flush())
        .context("writing to the harness")
}

/// Exits the process when `SIGTERM` arrives.
pub(crate) fn exit_on_sigterm() -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::spawn(async move {
        term.recv().await;
        std::process::exit(0);
    });
    Ok(())
}

/// Replaces this process with `args.argv` after asking the kernel to send it `SIGTERM` when the
/// harness dies (the request survives `execve`). `SIGTERM`, not `SIGKILL`: nginx's master
/// then stops its workers, which would outlive a killed master.
pub(crate) fn exec(args: &ExecArgs) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    sys::die_with_parent(Signal::TERM).context("prctl(PR_SET_PDEATHSIG)")?;
    let (program, rest) = args.argv.split_first().context("exec: no program")?;
    let e = std::process::Command::new(program).args(rest).exec();
    Err(Error::new(format!("exec {}: {e}", program.to_string_lossy())))
}
