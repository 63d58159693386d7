//! The bar chart `shardmq-bench tune` writes: median delivered messages per second of each
//! layout, with a min–max whisker (plain SVG text, no plotting library needed for bars).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Result};

use crate::report;
use crate::tune::TuneReport;

/// A horizontal bar chart of the median delivered rate per layout.
pub fn svg(r: &TuneReport, path: &Path) -> Result<()> {
    let bar_h = 28;
    let left = 330;
    let width = 900;
    let height = 60 + bar_h * r.layouts.len() + 20;
    let max = r
        .layouts
        .iter()
        .filter_map(|l| l.delivered().map(|s| s.max))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"16\">shardmq-bench tune: delivered msg/s at max rate \
         (median, whisker: min–max)</text>\n"
    );
    let scale = (width - left - 40) as f64 / max;
    for (i, l) in r.layouts.iter().enumerate() {
        let y = 50 + i * bar_h;
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{}</text>",
            y + 18,
            xml_escape(&format!("{} ({})", l.layout.name, l.layout.flags()))
        );
        match (l.clean(), l.delivered()) {
            (true, Some(d)) => {
                let w = (d.median * scale) as usize;
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{}\" width=\"{w}\" height=\"{}\" fill=\"{}\"/>\n\
                     <line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
                     <text x=\"{}\" y=\"{}\">{}</text>",
                    y + 4,
                    bar_h - 8,
                    if i == 0 { "#2a7ab0" } else { "#9cc3dd" },
                    left + (d.min * scale) as usize,
                    left + (d.max * scale) as usize,
                    y + bar_h / 2,
                    y + bar_h / 2,
                    left + w + 6,
                    y + 18,
                    report::thousands(d.median)
                );
            }
            _ => {
                let _ =
                    writeln!(s, "<text x=\"{left}\" y=\"{}\" fill=\"#b00\">failed</text>", y + 18);
            }
        }
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
