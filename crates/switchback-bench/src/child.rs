//! Child processes (proxies, the upstream, nginx, HAProxy) that are always stopped: each runs
//! in a process group of its own, and dropping its [`ChildProc`] sends the group `SIGTERM`,
//! then `SIGKILL` if it is still there after a grace period. Dropping happens on success, on
//! error, and on Ctrl-C (the run future is dropped); our own children also die with the
//! harness if it is killed outright (see [`crate::sys::die_with_parent`]).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

use crate::error::{Context, Error, Result};
use crate::sys;

/// How long a child may take to start listening.
const START: Duration = Duration::from_secs(10);
/// How long a child may take to exit after `SIGTERM`.
const GRACE: Duration = Duration::from_secs(3);

/// A running child process, stopped when dropped.
#[derive(Debug)]
pub(crate) struct ChildProc {
    name: String,
    child: Child,
    pgid: u32,
    stdout: Option<BufReader<ChildStdout>>,
    stopped: bool,
}

impl ChildProc {
    /// Starts a peer program through this executable's `exec` role, so that it dies with the
    /// harness; see [`ChildProc::spawn`].
    pub(crate) fn spawn_peer(name: &str, program: &Path, args: &[&OsStr]) -> Result<Self> {
        Self::spawn_peer_env(name, program, args, &[])
    }

    /// [`ChildProc::spawn_peer`] with environment variables `env` set for the peer.
    pub(crate) fn spawn_peer_env(
        name: &str,
        program: &Path,
        args: &[&OsStr],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("exec").arg("--").arg(program).args(args);
        cmd.envs(env.iter().copied());
        Self::spawn(name, cmd)
    }

    /// Starts `cmd` as `name` in a new process group, stdout piped (for
    /// [`ChildProc::listening`]), stderr inherited.
    pub(crate) fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false);
        let mut child = cmd.spawn().context(format_args!("starting {name}"))?;
        let pgid = child.id().context(format_args!("{name} exited at once"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self {
            name: name.to_owned(),
            child,
            pgid,
            stdout,
            stopped: false,
        })
    }

    /// Waits for the child's `LISTENING <addr>` line (printed by the harness's own roles).
    pub(crate) async fn listening(&mut self) -> Result<SocketAddr> {
        let name = self.name.clone();
        let stdout = self
            .stdout
            .as_mut()
            .context(format_args!("{name}: stdout already read"))?;
        let mut line = String::new();
        let read = tokio::time::timeout(START, stdout.read_line(&mut line)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => {
                let status = self.child.try_wait().ok().flatten();
                return Err(Error::new(format!(
                    "{name} exited before listening ({})",
                    status.map_or_else(|| "still running".to_owned(), |s| s.to_string())
                )));
            }
            Ok(Err(e)) => return Err(Error::new(format!("{name}: reading its stdout: {e}"))),
            Err(_) => return Err(Error::new(format!("{name}: not listening after {START:?}"))),
        }
        line.trim()
            .strip_prefix("LISTENING ")
            .and_then(|a| a.parse().ok())
            .context(format_args!("{name}: unexpected first line {line:?}"))
    }

    /// Waits until `addr` accepts TCP connections (for peers, which print nothing), failing
    /// early if the child exits.
    pub(crate) async fn accepting(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self.child.try_wait().context(format_args!("{}", self.name))? {
                return Err(Error::new(format!("{} exited: {status}", self.name)));
            }
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::new(format!(
                    "{} not accepting on {addr} after {START:?}",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The summed RSS of the child's process group, in bytes.
    pub(crate) fn rss(&self) -> Result<u64> {
        sys::group_rss(self.pgid).context(format_args!("RSS of {}", self.name))
    }

    /// The descriptors the child holds open now (its sockets, for an upstream).
    pub(crate) fn descriptors(&self) -> Result<u64> {
        let dir = format!("/proc/{}/fd", self.pgid);
        let n = std::fs::read_dir(&dir)
            .context(format_args!("listing {dir}"))?
            .count();
        Ok(n as u64)
    }

    /// The CPU time the child's process group has used so far (every process and thread).
    pub(crate) fn cpu(&self) -> Result<Duration> {
        sys::group_cpu(self.pgid).context(format_args!("CPU time of {}", self.name))
    }

    /// The user-space part of [`ChildProc::cpu`].
    pub(crate) fn user_cpu(&self) -> Result<Duration> {
        sys::group_user_cpu(self.pgid).context(format_args!("CPU time of {}", self.name))
    }

    /// Stops the child and whatever it started (SIGTERM to the group, SIGKILL after a grace
    /// period). Blocks for at most [`GRACE`]; a no-op the second time.
    pub(crate) fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = sys::signal_group(self.pgid, Signal::TERM);
        }
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // A leader that exited may leave members behind (nginx workers, in theory).
                if sys::group_rss(self.pgid).is_ok() {
                    let _ = sys::signal_group(self.pgid, Signal::KILL);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("  {} ignored SIGTERM for {GRACE:?}; killing it", self.name);
        let _ = sys::signal_group(self.pgid, Signal::KILL);
        let _ = self.child.start_kill();
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.stop();
    }
}
