//! The machine a run happened on, for the report header.

use std::fs;

/// What the report says about the machine.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// CPUs available to this process.
    pub(crate) nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub(crate) cpu: String,
    /// The kernel release.
    pub(crate) kernel: String,
    /// `RLIMIT_NOFILE` (soft) after raising it.
    pub(crate) nofile: u64,
}

impl Machine {
    /// Reads the machine's description.
    pub(crate) fn detect(nofile: u64) -> Self {
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| format!("Linux {}", k.trim()))
            .unwrap_or_else(|_| "unknown kernel".to_owned());
        Self {
            nproc,
            cpu,
            kernel,
            nofile,
        }
    }
}
