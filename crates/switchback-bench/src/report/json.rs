//! `results.json`: the machine, the command, and every cell with its per-run figures.

use serde_json::{Map, Value, json};

use super::{REFERENCE, Results};

/// The JSON document.
pub(crate) fn render(r: &Results) -> String {
    let cells = r.cells();
    let mut metrics = Vec::new();
    for metric in r.metrics() {
        let mut by_system = Map::new();
        for &system in &r.systems {
            if let Some(cell) = cells.get(&(metric, system)) {
                by_system.insert(
                    system.name().to_owned(),
                    json!({ "median": cell.median, "ratio": cell.ratio, "runs": cell.runs }),
                );
            }
        }
        metrics.push(json!({
            "id": metric.id(),
            "label": metric.label(),
            "higher_is_better": metric.higher_is_better(),
            "systems": by_system,
        }));
    }
    let m = &r.machine;
    let doc = json!({
        "machine": { "nproc": m.nproc, "cpu": m.cpu, "kernel": m.kernel, "nofile": m.nofile },
        "peers": r.peers.iter().map(|(s, v)| (s.name().to_owned(), Value::from(v.clone()))).collect::<Map<_, _>>(),
        "command": r.command,
        "profile": r.profile,
        "runs": r.repeat,
        "reference": REFERENCE.name(),
        "systems": r.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "workloads": r.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "notes": r.notes,
        "skipped": r.skipped.iter().map(|(s, why)| json!({ "system": s.name(), "why": why })).collect::<Vec<_>>(),
        "unavailable": r.unavailable.iter().map(|(w, s, why)| json!({ "workload": w.name(), "system": s.name(), "why": why })).collect::<Vec<_>>(),
        "failures": r.failures.iter().map(|(w, s, why)| json!({ "workload": w.name(), "system": s.name(), "error": why })).collect::<Vec<_>>(),
        "metrics": metrics,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
