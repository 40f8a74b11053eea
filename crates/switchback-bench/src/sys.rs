//! The operating-system bits: descriptor limits, dying with the parent, signals, RSS and CPU
//! time read from `/proc`, and the kernel's listen-queue counters (Linux).

use std::fs;
use std::io;
use std::time::Duration;

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
    sum_group(pgid, |pid, _| {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status_rss(&status)
    })
}

/// The kernel's slab memory now, whole machine (`Slab` in `/proc/meminfo`), in bytes: where
/// sockets, their inodes and epoll entries live, which no process's RSS shows.
pub(crate) fn kernel_slab() -> io::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no Slab line in /proc/meminfo"))
}

/// The CPU time (user and system, every thread) used so far by the processes in group `pgid`.
/// Clock-tick resolution (10 ms on Linux): read it over seconds, not milliseconds.
pub(crate) fn group_cpu(pgid: u32) -> io::Result<Duration> {
    ticks_to_time(sum_group(pgid, |_, stat| stat_cpu_ticks(stat))?)
}

/// The user-space part of [`group_cpu`] (`utime` alone).
pub(crate) fn group_user_cpu(pgid: u32) -> io::Result<Duration> {
    ticks_to_time(sum_group(pgid, |_, stat| stat_field(stat, 14))?)
}

fn ticks_to_time(ticks: u64) -> io::Result<Duration> {
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// Sums `value(pid, stat)` over the processes in group `pgid`; an error if none has one.
fn sum_group(pgid: u32, value: impl Fn(u32, &str) -> Option<u64>) -> io::Result<u64> {
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
        if stat_field(&stat, 5) != Some(u64::from(pgid)) {
            continue;
        }
        if let Some(v) = value(pid, &stat) {
            total += v;
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

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line, from field 3 on (`pid (comm)
/// state ppid pgrp ...`; `comm` may hold spaces and parentheses, so fields are counted from
/// the last `)`).
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks: the whole
/// process, every thread.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    Some(stat_field(stat, 14)? + stat_field(stat, 15)?)
}

/// The kernel's TCP counters that show listen queues overflowing (`TcpExt` in
/// `/proc/net/netstat`). They count for the whole network namespace, so whatever else runs on
/// the machine adds to them; read them over a short window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ListenCounters {
    /// `ListenOverflows`: a SYN or a handshake's last ACK that found the accept queue full.
    pub(crate) overflows: u64,
    /// `ListenDrops`: segments a listener dropped, overflows included.
    pub(crate) drops: u64,
    /// `TCPSynRetrans`: SYNs and SYN-ACKs sent again (after 1 s, then 3 s, ...).
    pub(crate) syn_retransmits: u64,
    /// `SyncookiesSent`: SYN-ACKs answered with a cookie because the SYN queue was full.
    pub(crate) syncookies: u64,
}

impl ListenCounters {
    /// How much each counter grew since `before`.
    pub(crate) fn since(&self, before: &Self) -> Self {
        Self {
            overflows: self.overflows.saturating_sub(before.overflows),
            drops: self.drops.saturating_sub(before.drops),
            syn_retransmits: self.syn_retransmits.saturating_sub(before.syn_retransmits),
            syncookies: self.syncookies.saturating_sub(before.syncookies),
        }
    }
}

/// The listen-queue counters now.
pub(crate) fn listen_counters() -> io::Result<ListenCounters> {
    let text = fs::read_to_string("/proc/net/netstat")?;
    parse_listen_counters(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no TcpExt listen counters in /proc/net/netstat",
        )
    })
}

/// [`ListenCounters`] from a `/proc/net/netstat` text: a `TcpExt:` line of names, then one of
/// values.
fn parse_listen_counters(text: &str) -> Option<ListenCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    let table: Vec<(&str, u64)> = names.zip(values.map(|v| v.parse().unwrap_or(0))).collect();
    let get = |name: &str| table.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
    Some(ListenCounters {
        overflows: get("ListenOverflows")?,
        drops: get("ListenDrops")?,
        syn_retransmits: get("TCPSynRetrans")?,
        syncookies: get("SyncookiesSent")?,
    })
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
        assert_eq!(stat_field("42 (a) b (c)) S 1 4242 4242 0 -1", 5), Some(4242));
        let stat = "7 (tokio (w)) S 1 7 7 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3";
        assert_eq!(stat_cpu_ticks(stat), Some(281));
        let status = "Name:\tnginx\nVmPeak:\t  1 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(status_rss(status), Some(2048 * 1024));
        assert_eq!(status_rss("Name:\tkthread\n"), None);
    }

    /// The counters are found by name in the `TcpExt` pair of lines, wherever they are.
    #[test]
    fn parses_listen_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows X ListenDrops TCPSynRetrans\n\
                    TcpExt: 1 22 9 23 4\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let c = parse_listen_counters(text).expect("counters");
        assert_eq!(
            (c.overflows, c.drops, c.syn_retransmits, c.syncookies),
            (22, 23, 4, 1)
        );
        let later = ListenCounters { overflows: 30, ..c };
        assert_eq!(later.since(&c).overflows, 8);
        assert_eq!(parse_listen_counters("IpExt: A\nIpExt: 1\n"), None);
        listen_counters().expect("this machine's counters");
    }

    #[test]
    fn reads_own_group_rss() {
        let pgid = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        assert!(group_rss(pgid).expect("our own group") > 0);
        group_cpu(pgid).expect("our own group's CPU time");
    }
}
