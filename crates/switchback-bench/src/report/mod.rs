//! The results of a run (one or several repetitions) and their medians; rendered as a table
//! ([`table`]), JSON ([`json`]) and an SVG chart ([`svg`]).
//!
//! A cell is the median of its figure over the runs, and its ratio the median over the runs of
//! (figure / Switchback fast path's figure in the same run): each ratio comes from one run, as
//! the machine is shared and noisy.

pub(crate) mod json;
pub(crate) mod svg;
pub(crate) mod table;

use std::collections::{BTreeMap, BTreeSet};

use crate::machine::Machine;
use crate::systems::SystemKind;
use crate::workloads::{Metric, Workload};

/// The reference of every ratio.
pub(crate) const REFERENCE: SystemKind = SystemKind::Switchback;

/// One repetition's figures.
pub(crate) type RunFigures = BTreeMap<(Metric, SystemKind), f64>;

/// Everything a report needs.
#[derive(Debug)]
pub(crate) struct Results {
    /// The machine.
    pub(crate) machine: Machine,
    /// Peer versions (name, version line).
    pub(crate) peers: Vec<(SystemKind, String)>,
    /// The command line, as run.
    pub(crate) command: String,
    /// Systems in the table, in order.
    pub(crate) systems: Vec<SystemKind>,
    /// Systems left out, and why.
    pub(crate) skipped: Vec<(SystemKind, String)>,
    /// Workloads run.
    pub(crate) workloads: Vec<Workload>,
    /// Figures per repetition.
    pub(crate) runs: Vec<RunFigures>,
    /// (workload, system) pairs that failed in some run, with the error.
    pub(crate) failures: Vec<(Workload, SystemKind, String)>,
    /// (workload, system) pairs not run because something they need is missing (the
    /// `switchback` binary for the TLS workloads), and why.
    pub(crate) unavailable: Vec<(Workload, SystemKind, String)>,
    /// `--quick`, `--smoke` or full.
    pub(crate) profile: &'static str,
    /// Repetitions asked for (`--runs`).
    pub(crate) repeat: u32,
    /// Lines the header adds about how a workload was sized (e.g. the storm's tunnel count).
    pub(crate) notes: Vec<String>,
}

/// One cell of the table.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    /// The figure of each run that produced one.
    pub(crate) runs: Vec<f64>,
    /// Their median.
    pub(crate) median: f64,
    /// Median of the per-run ratios to the reference, when it has figures.
    pub(crate) ratio: Option<f64>,
}

impl Results {
    /// The cells that have figures.
    pub(crate) fn cells(&self) -> BTreeMap<(Metric, SystemKind), Cell> {
        let mut cells = BTreeMap::new();
        let keys: BTreeSet<(Metric, SystemKind)> = self.runs.iter().flat_map(|r| r.keys().copied()).collect();
        for (metric, system) in keys {
            let runs: Vec<f64> = self
                .runs
                .iter()
                .filter_map(|r| r.get(&(metric, system)).copied())
                .collect();
            let ratios: Vec<f64> = self
                .runs
                .iter()
                .filter_map(|r| {
                    let v = r.get(&(metric, system))?;
                    let reference = r.get(&(metric, REFERENCE))?;
                    (*reference > 0.0).then(|| v / reference)
                })
                .collect();
            if let Some(median_value) = median(&runs) {
                cells.insert(
                    (metric, system),
                    Cell {
                        runs,
                        median: median_value,
                        ratio: median(&ratios),
                    },
                );
            }
        }
        cells
    }

    /// The rows that have at least one figure.
    pub(crate) fn metrics(&self) -> Vec<Metric> {
        Metric::ALL
            .into_iter()
            .filter(|m| self.runs.iter().any(|r| r.keys().any(|(rm, _)| rm == m)))
            .collect()
    }

    /// Whether (`workload`, `system`) was not run for want of something.
    pub(crate) fn unavailable(&self, workload: Workload, system: SystemKind) -> bool {
        self.unavailable
            .iter()
            .any(|(w, s, _)| *w == workload && *s == system)
    }

    /// Whether (`workload`, `system`) failed in some run.
    pub(crate) fn failed(&self, workload: Workload, system: SystemKind) -> bool {
        self.failures
            .iter()
            .any(|(w, s, _)| *w == workload && *s == system)
    }
}

/// The workload that produces `metric`.
pub(crate) fn workload_of(metric: Metric) -> Workload {
    match metric {
        Metric::Bulk1 | Metric::BulkCpu => Workload::Bulk1,
        Metric::Bulk64 => Workload::Bulk64,
        Metric::EchoP50 | Metric::EchoP99 | Metric::EchoAddedP50 => Workload::Latency,
        Metric::Handshakes | Metric::HandshakeCpu | Metric::HandshakeUserCpu => Workload::Handshake,
        Metric::IdleBytes | Metric::UpstreamConns | Metric::KernelSlab => Workload::Memory,
        Metric::FloodRss | Metric::FloodGrowth => Workload::Backpressure,
        Metric::StormSeconds
        | Metric::StormP50
        | Metric::StormP99
        | Metric::StormFailures
        | Metric::StormCpu
        | Metric::StormUserCpu => Workload::Storm,
        Metric::TlsHandshakes | Metric::TlsHandshakeCpu => Workload::TlsHandshake,
        Metric::TlsResumes | Metric::TlsResumeCpu | Metric::TlsResumedPct => Workload::TlsResume,
        Metric::TlsBulk1 | Metric::TlsBulkCpu => Workload::TlsBulk,
    }
}

/// The median (mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// A figure with a sensible number of digits.
pub(crate) fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios_are_per_run_medians() {
        let mut r1 = RunFigures::new();
        r1.insert((Metric::Bulk1, SystemKind::Switchback), 100.0);
        r1.insert((Metric::Bulk1, SystemKind::Nginx), 50.0);
        let mut r2 = RunFigures::new();
        r2.insert((Metric::Bulk1, SystemKind::Switchback), 200.0);
        r2.insert((Metric::Bulk1, SystemKind::Nginx), 60.0);
        let results = Results {
            machine: Machine::detect(0),
            peers: vec![],
            command: String::new(),
            systems: vec![SystemKind::Switchback, SystemKind::Nginx],
            skipped: vec![],
            workloads: vec![Workload::Bulk1],
            runs: vec![r1, r2],
            failures: vec![],
            unavailable: vec![],
            profile: "full",
            repeat: 2,
            notes: vec![],
        };
        let cells = results.cells();
        let nginx = &cells[&(Metric::Bulk1, SystemKind::Nginx)];
        assert_eq!(nginx.median, 55.0);
        assert_eq!(nginx.ratio, Some((0.5 + 0.3) / 2.0));
        assert_eq!(cells[&(Metric::Bulk1, SystemKind::Switchback)].ratio, Some(1.0));
    }
}
