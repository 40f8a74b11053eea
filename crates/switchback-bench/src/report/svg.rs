//! `results.svg`: one panel per figure (grouped by workload), one horizontal bar per system,
//! labelled with the figure and its ratio. Written by hand: rects and text.

use std::fmt::Write as _;

use super::{Results, fmt_value};
use crate::systems::SystemKind;

const PANEL_W: f64 = 520.0;
const LABEL_W: f64 = 130.0;
const BAR_MAX: f64 = 260.0;
const ROW_H: f64 = 20.0;
const TITLE_H: f64 = 26.0;
const GAP: f64 = 18.0;
const TOP: f64 = 56.0;
const COLUMNS: usize = 2;

/// The bar colour of a system.
fn colour(system: SystemKind) -> &'static str {
    match system {
        SystemKind::Direct => "#8c8c8c",
        SystemKind::Switchback => "#1f6fb4",
        SystemKind::SwitchbackChain => "#5fa2d9",
        SystemKind::SwitchbackLegacy => "#9cc6ea",
        SystemKind::SwitchbackLimits => "#3b8bd0",
        SystemKind::SwitchbackFilter => "#7b5fc0",
        SystemKind::SwitchbackH2Upstream => "#2b5797",
        SystemKind::SwitchbackBin => "#0b3d6b",
        SystemKind::SwitchbackBinTraced => "#5b7d9b",
        SystemKind::Nginx => "#2f9e44",
        SystemKind::Haproxy => "#d9480f",
    }
}

/// Escapes text for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart.
pub(crate) fn render(r: &Results) -> String {
    let cells = r.cells();
    let metrics = r.metrics();
    let panel_h = TITLE_H + ROW_H * r.systems.len() as f64 + GAP;
    let rows = metrics.len().div_ceil(COLUMNS);
    let width = PANEL_W * COLUMNS as f64 + GAP;
    let height = TOP + panel_h * rows as f64 + GAP;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let m = &r.machine;
    let _ = writeln!(
        s,
        r#"<text x="{GAP}" y="22" font-size="16" font-weight="bold">Switchback on loopback: {} run(s), {} profile</text>"#,
        r.repeat, r.profile
    );
    let _ = writeln!(
        s,
        r##"<text x="{GAP}" y="42" fill="#555">{}</text>"##,
        esc(&format!(
            "{} x {}, {}; (x) = ratio to switchback",
            m.nproc, m.cpu, m.kernel
        ))
    );
    for (i, metric) in metrics.iter().enumerate() {
        let x0 = GAP + PANEL_W * (i % COLUMNS) as f64;
        let y0 = TOP + panel_h * (i / COLUMNS) as f64;
        let arrow = if metric.higher_is_better() {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(
            s,
            r##"<g><text x="{x0}" y="{}" font-weight="bold">{} <tspan fill="#777" font-weight="normal">({arrow})</tspan></text>"##,
            y0 + 16.0,
            esc(metric.label())
        );
        let max = r
            .systems
            .iter()
            .filter_map(|sys| cells.get(&(*metric, *sys)).map(|c| c.median))
            .fold(0.0_f64, f64::max);
        for (j, system) in r.systems.iter().enumerate() {
            let y = y0 + TITLE_H + ROW_H * j as f64;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                x0 + LABEL_W - 6.0,
                y + 13.0,
                system.name()
            );
            let (w, label) = match cells.get(&(*metric, *system)) {
                Some(c) => {
                    let w = if max > 0.0 {
                        (c.median.max(0.0) / max) * BAR_MAX
                    } else {
                        0.0
                    };
                    let ratio = c.ratio.map(|r| format!(" ({r:.2}x)")).unwrap_or_default();
                    (w, format!("{}{ratio}", fmt_value(c.median)))
                }
                None => (0.0, "n/a".to_owned()),
            };
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{w:.1}" height="{}" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                x0 + LABEL_W,
                y + 2.0,
                ROW_H - 5.0,
                colour(*system),
                x0 + LABEL_W + w + 5.0,
                y + 13.0,
                esc(&label)
            );
        }
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}
