//! The operating-system bits: descriptor limits, dying with the parent, signals, and RSS read
//! from `/proc` (Linux).

use std::fs;
use std::io;

use rustix::process::{Pid, Resource, Rlimit, Signal};

/// Descriptors the harness asks for: 10 000 tunnels cost 10 000 in the load generator, 20 000
/// in a proxy (both legs) and 10 000 in the upstream, plus slack for the handshake workload's
/// sockets in flight and for HAProxy, which sizes its own limit from `maxconn`.
pub(crate) const WANT_NOFILE: u64 = 200_000;

/// Raises `RLIMIT_NOFILE` to `want` (soft and hard) when allowed (root, or a hard limit that
/// high), else the soft limit to the hard one. Children inherit it. Returns the soft limit now.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    let now = rustix::process::getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let raised = Rlimit {
        current: Some(want),
        maximum: Some(want.max(hard)),
    };
    if want > hard && rustix::process::setrlimit(Resource::Nofile, raised).is_ok() {
        return want;
    }
    let soft = want.min(hard);
    let fallback = Rlimit {
        current: Some(soft),
        maximum: now.maximum,
    };
    match rustix::process::setrlimit(Resource::Nofile, fallback) {
        Ok(()) => soft,
        Err(_) => now.current.unwrap_or(u64::MAX),
    }
}

/// Makes the kernel send `signal` to this process when its parent (the harness) dies, so a
/// harness killed with SIGKILL leaves nothing behind. Exits at once if the parent is already
/// gone.
pub(crate) fn die_with_parent(signal: Signal) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(signal))?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        std::process::exit(1);
    }
    Ok(())
}

/// Sends `signal` to every process in group `pgid`.
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pgid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad process group id"))?;
    rustix::process::kill_process_group(pid, signal)?;
    Ok(())
}

/// The summed resident set size, in bytes, of every process in group `pgid` (a proxy and, for
/// nginx, its workers).
pub(crate) fn group_rss(pgid: u32) -> io::Result<u64> {
    let mut total = 0;
    let mut found = false;
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we look; a vanished one simply doesn't count.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat_pgrp(&stat) != Some(pgid) {
            continue;
        }
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(rss) = status_rss(&status)
        {
            total += rss;
            found = true;
        }
    }
    if found {
        Ok(total)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process in group {pgid}"),
        ))
    }
}

/// The process group in a `/proc/PID/stat` line (`pid (comm) state ppid pgrp ...`; `comm`
/// may hold spaces and parentheses, so fields are counted from the last `)`).
fn stat_pgrp(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// `VmRSS` from a `/proc/PID/status` text, in bytes.
fn status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(stat_pgrp("42 (a) b (c)) S 1 4242 4242 0 -1"), Some(4242));
        let status = "Name:\tnginx\nVmPeak:\t  1 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(status_rss(status), Some(2048 * 1024));
        assert_eq!(status_rss("Name:\tkthread\n"), None);
    }

    #[test]
    fn reads_own_group_rss() {
        let pgid = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        assert!(group_rss(pgid).expect("our own group") > 0);
    }
}
