//! The table printed at the end of a run (Markdown, so it pastes into the README as is).

use std::fmt::Write as _;

use super::{REFERENCE, Results, fmt_value, workload_of};
use crate::workloads::applies;

/// The header lines: machine, peers, command, how cells are made.
pub(crate) fn header(r: &Results) -> String {
    let m = &r.machine;
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {} x {}, {}", m.nproc, m.cpu, m.kernel);
    let peers: Vec<String> = r.peers.iter().map(|(_, v)| v.clone()).collect();
    let peers = if peers.is_empty() {
        "none".to_owned()
    } else {
        peers.join("; ")
    };
    let _ = writeln!(out, "Peers: {peers}");
    let _ = writeln!(out, "Command: {}", r.command);
    let _ = writeln!(
        out,
        "Profile: {}, {} run(s); each cell is the median over runs, (x) the median of per-run ratios to `{}`",
        r.profile,
        r.repeat,
        REFERENCE.name()
    );
    for note in &r.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    out
}

/// The table: one row per figure, one column per system.
pub(crate) fn render(r: &Results) -> String {
    let cells = r.cells();
    let mut out = String::new();
    let _ = write!(out, "| figure |");
    for s in &r.systems {
        let _ = write!(out, " {} |", s.name());
    }
    let _ = write!(out, "\n|:--|");
    for _ in &r.systems {
        let _ = write!(out, "--:|");
    }
    out.push('\n');
    for metric in r.metrics() {
        let arrow = if metric.higher_is_better() { "↑" } else { "↓" };
        let _ = write!(out, "| {} {arrow} |", metric.label());
        for &system in &r.systems {
            let text = match cells.get(&(metric, system)) {
                Some(cell) => match cell.ratio {
                    Some(ratio) => format!("{} ({ratio:.2}x)", fmt_value(cell.median)),
                    None => fmt_value(cell.median),
                },
                None if !applies(workload_of(metric), system) => "n/a".to_owned(),
                None if r.failed(workload_of(metric), system) => "failed".to_owned(),
                None if r.unavailable(workload_of(metric), system) => "skipped".to_owned(),
                None => "-".to_owned(),
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out.push_str("\n↑ higher is better, ↓ lower is better.");
    if r.workloads.iter().any(|w| w.is_tls()) && r.systems.contains(&REFERENCE) {
        // The one column that is two processes: say which one each kind of row measured.
        let _ = write!(
            out,
            "\nTLS rows: `{}` is the `switchback` binary with a TLS listener (the other rows: the \
             harness's proxy role on the library; `switchback-bin` is the binary's plain listener).",
            REFERENCE.name()
        );
    }
    for (system, why) in &r.skipped {
        let _ = write!(out, "\n{} skipped: {why}", system.name());
    }
    for (workload, system, why) in &r.unavailable {
        let _ = write!(out, "\nskipped {} on {}: {why}", workload.name(), system.name());
    }
    for (workload, system, why) in &r.failures {
        let _ = write!(out, "\nFAILED {} on {}: {why}", workload.name(), system.name());
    }
    out.push('\n');
    out
}
