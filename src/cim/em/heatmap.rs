//! An SVG heat-map of an error model: P(measured | ideal), ideal code across, measured
//! code up, log-scaled colour, the identity diagonal drawn for reference.

use super::table::ErrorModel;
use std::fmt::Write;

/// Renders codes `k0..=k1` (both axes), at most ~400 cells a side.
pub fn svg(m: &ErrorModel, k0: i32, k1: i32) -> String {
    let n = (k1 - k0 + 1).max(1);
    let bin = (n as f64 / 400.0).ceil().max(1.0) as i32;
    let cells = (n + bin - 1) / bin;
    let px = (480 / cells).max(1);
    let size = cells * px;
    let (left, top) = (70, 40);
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#, size + left + 200, size + top + 60).unwrap();
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).unwrap();
    writeln!(s, r#"<text x="{left}" y="20" font-size="14">D-MAC-EM {}: P(measured code | ideal code)</text>"#, escape(&m.label())).unwrap();
    for cx in 0..cells {
        for cy in 0..cells {
            let (ka, ja) = (k0 + cx * bin, k0 + cy * bin);
            let mut p = 0.0;
            for k in ka..(ka + bin).min(k1 + 1) {
                for j in ja..(ja + bin).min(k1 + 1) {
                    p += m.prob(k, j);
                }
            }
            p /= bin as f64;
            if p <= 1e-6 {
                continue;
            }
            // log10 p in [-6, 0] → colour ramp from pale yellow to dark purple.
            let t = ((p.log10() + 6.0) / 6.0).clamp(0.0, 1.0);
            let (r, g, b) = (255.0 - 200.0 * t, 245.0 - 230.0 * t, 200.0 - 80.0 * t);
            writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{px}" height="{px}" fill="rgb({:.0},{:.0},{:.0})"/>"#,
                left + cx * px,
                top + size - (cy + 1) * px,
                r,
                g,
                b
            )
            .unwrap();
        }
    }
    writeln!(s, r#"<line x1="{left}" y1="{}" x2="{}" y2="{top}" stroke="gray" stroke-dasharray="4 3" stroke-width="1"/>"#, top + size, left + size).unwrap();
    writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="black"/>"#
    )
    .unwrap();
    writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">ideal ADC code</text>"#,
        left + size / 2,
        top + size + 40
    )
    .unwrap();
    // Tick labels at both ends and at code 0.
    let pos = |k: i32| ((k - k0) / bin) * px + px / 2;
    for k in [k0, 0, k1].into_iter().filter(|k| (k0..=k1).contains(k)) {
        writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{k}</text>"#,
            left + pos(k),
            top + size + 16
        )
        .unwrap();
        writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{k}</text>"#,
            left - 6,
            top + size - pos(k) + 4
        )
        .unwrap();
    }
    writeln!(s, r#"<text x="20" y="{}" transform="rotate(-90 20 {})" text-anchor="middle">measured ADC code</text>"#, top + size / 2, top + size / 2).unwrap();
    for (i, label) in ["1", "1e-2", "1e-4", "1e-6"].iter().enumerate() {
        let t = 1.0 - i as f64 / 3.0;
        let (r, g, b) = (255.0 - 200.0 * t, 245.0 - 230.0 * t, 200.0 - 80.0 * t);
        let y = top + i as i32 * 22;
        writeln!(s, r#"<rect x="{}" y="{y}" width="16" height="16" fill="rgb({r:.0},{g:.0},{b:.0})"/><text x="{}" y="{}">{label}</text>"#, left + size + 12, left + size + 32, y + 12).unwrap();
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
