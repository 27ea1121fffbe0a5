//! The sweep as a picture: an SVG scatter plot of push throughput against
//! the overall reduction (offered ÷ stored bytes), one point per setting,
//! labelled with its chunk size and zstd level, the recommended one ringed.
//!
//! Hand-written SVG: a plotting crate would bring a large dependency tree
//! for one chart of a few dozen points.

use std::fmt::Write;

use crate::modes::sweep::{SweepPoint, SweepReport};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 480.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 70.0;
const MARGIN_BOTTOM: f64 = 60.0;

/// One colour per zstd level, in the order levels first appear.
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// "Nice" axis bounds and step around the data `lo..=hi`, with a margin
/// so no point sits on the frame, never below zero for positive data.
fn axis(lo: f64, hi: f64) -> (f64, f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let span = if hi - lo > hi.abs() * 1e-3 {
        hi - lo
    } else {
        hi.abs().max(1.0) * 0.2
    };
    let (lo, hi) = (lo - span * 0.15, hi + span * 0.15);
    let raw_step = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * magnitude);
    let start = ((lo / step).floor() * step).max(if lo + span * 0.15 >= 0.0 {
        0.0
    } else {
        f64::MIN
    });
    (start, (hi / step).ceil() * step, step)
}

/// A tick label without float noise (0.6, not 0.6000000000000001).
fn tick(v: f64) -> String {
    format!("{}", (v * 1000.0).round() / 1000.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders the sweep as an SVG document.
pub fn sweep_svg(report: &SweepReport, title: &str) -> String {
    let range = |f: fn(&SweepPoint) -> f64| {
        let values = report.points.iter().map(f);
        axis(
            values.clone().fold(f64::INFINITY, f64::min),
            values.fold(f64::NEG_INFINITY, f64::max),
        )
    };
    let (x_min, x_max, x_step) = range(|p| p.overall_ratio);
    let (y_min, y_max, y_step) = range(|p| p.mb_per_s);
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x_of = |v: f64| MARGIN_LEFT + (v - x_min) / (x_max - x_min) * plot_w;
    let y_of = |v: f64| MARGIN_TOP + plot_h - (v - y_min) / (y_max - y_min) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and ticks.
    let mut v = x_min;
    while v <= x_max + x_step / 2.0 {
        let x = x_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{MARGIN_TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            MARGIN_TOP + plot_h,
            MARGIN_TOP + plot_h + 18.0,
            tick(v)
        );
        v += x_step;
    }
    let mut v = y_min;
    while v <= y_max + y_step / 2.0 {
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            MARGIN_LEFT + plot_w,
            MARGIN_LEFT - 8.0,
            y + 4.0,
            tick(v)
        );
        v += y_step;
    }
    let _ = writeln!(
        s,
        r#"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered bytes ÷ stored bytes (dedup × compression)</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">push throughput (MB/s)</text>"#,
        MARGIN_TOP + plot_h / 2.0,
        MARGIN_TOP + plot_h / 2.0
    );
    // Points.
    let mut levels: Vec<i32> = Vec::new();
    for (i, p) in report.points.iter().enumerate() {
        let li = levels
            .iter()
            .position(|&l| l == p.zstd_level)
            .unwrap_or_else(|| {
                levels.push(p.zstd_level);
                levels.len() - 1
            });
        let colour = COLOURS[li % COLOURS.len()];
        let (x, y) = (x_of(p.overall_ratio), y_of(p.mb_per_s));
        if report.best == Some(i) {
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="11" fill="none" stroke="black" stroke-width="2"/>"#
            );
        }
        let _ = writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="5" fill="{colour}"><title>{} KiB, zstd -{}: {:.0} MB/s, {:.2}x</title></circle><text x="{:.1}" y="{:.1}">{}K</text>"#,
            p.chunk_kib,
            p.zstd_level,
            p.mb_per_s,
            p.overall_ratio,
            x + 7.0,
            y - 6.0,
            p.chunk_kib
        );
    }
    // Legend.
    // Legend: one row between the title and the plot.
    let y = MARGIN_TOP - 16.0;
    for (i, level) in levels.iter().enumerate() {
        let x = MARGIN_LEFT + i as f64 * 90.0;
        let _ = writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{:.1}" r="5" fill="{}"/><text x="{:.1}" y="{y:.1}">zstd -{level}</text>"#,
            y - 4.0,
            COLOURS[i % COLOURS.len()],
            x + 10.0
        );
    }
    if report.best.is_some() {
        let x = MARGIN_LEFT + levels.len() as f64 * 90.0;
        let _ = writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{:.1}" r="7" fill="none" stroke="black" stroke-width="2"/><text x="{:.1}" y="{y:.1}">recommended</text>"#,
            y - 4.0,
            x + 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_values_above_the_data() {
        let (lo, hi, step) = axis(4.8, 5.0);
        assert!(lo < 4.8 && lo > 4.0 && hi > 5.0 && hi < 5.5, "{lo} {hi}");
        assert!((step - 0.1).abs() < 1e-9, "{step}");
        // Positive data never gets a negative axis.
        assert_eq!(axis(0.0, 87.0), (0.0, 125.0, 25.0));
        // One point: a range around it.
        let (lo, hi, _) = axis(300.0, 300.0);
        assert!(lo < 300.0 && hi > 300.0);
    }
}
