//! Line charts as standalone SVG: a few series of (x, y ± err) points over a linear x
//! axis, accuracy in percent up the y axis. Enough for the pipeline's report; no
//! plotting crate needed.

use std::fmt::Write;

/// One line of a chart: its points, drawn as a polyline with dots and error bars.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y, error bar half-height; 0 = none).
    pub points: Vec<(f64, f64, f64)>,
    /// SVG colour of line, dots and legend entry (e.g. `#d04030`).
    pub color: &'static str,
    /// Draw the line dashed.
    pub dashed: bool,
}

/// A line chart: title, axes and the series drawn on them.
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Caption of the x axis.
    pub x_label: String,
    /// Caption of the y axis.
    pub y_label: String,
    /// Labelled x positions (empty: integer ticks chosen automatically).
    pub x_ticks: Vec<(f64, String)>,
    /// Vertical separators with a caption (e.g. where a training stage begins).
    pub x_marks: Vec<(f64, String)>,
    /// Span of the y axis, (bottom, top); points outside it are drawn clamped to it.
    pub y_range: (f64, f64),
    /// The lines, in legend order.
    pub series: Vec<Series>,
}

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// The chart as a standalone SVG document (640 × 360 px); the x axis spans every point,
/// tick and mark.
pub fn svg(c: &Chart) -> String {
    let xs = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(c.x_ticks.iter().chain(&c.x_marks).map(|t| t.0));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0, x1) } else { (0.0, 1.0) };
    let pad = 0.04 * (x1 - x0);
    let (x0, x1) = (x0 - pad, x1 + pad);
    let (y0, y1) = c.y_range;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + (1.0 - (y.clamp(y0, y1) - y0) / (y1 - y0)) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="22" font-size="14">{}</text>"#, esc(&c.title));
    // Grid and y ticks every 10 points (or a tenth of the range).
    let ystep = if y1 - y0 > 20.0 { 10.0 } else { ((y1 - y0) / 5.0).max(0.5) };
    let mut y = (y0 / ystep).ceil() * ystep;
    while y <= y1 + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#e4e4e4"/>"##,
            LEFT + pw,
            py(y),
            py(y)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{y}</text>"#,
            LEFT - 6.0,
            py(y) + 4.0
        );
        y += ystep;
    }
    let ticks: Vec<(f64, String)> = if c.x_ticks.is_empty() {
        let span = (x1 - x0).max(1.0);
        let step = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
            .into_iter()
            .find(|st| span / st <= 12.0)
            .unwrap_or(200.0);
        let mut v = Vec::new();
        let mut x = (x0 / step).ceil() * step;
        while x <= x1 {
            v.push((x, format!("{}", x + 0.0))); // (+ 0.0 turns −0 into 0)
            x += step;
        }
        v
    } else {
        c.x_ticks.clone()
    };
    for (x, label) in &ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(*x),
            TOP + ph + 16.0,
            esc(label)
        );
    }
    for (x, label) in &c.x_marks {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1:.1}" stroke="gray" stroke-dasharray="2 3"/>"#,
            px(*x),
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="gray">{}</text>"#,
            px(*x) + 3.0,
            TOP + 10.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 12.0,
        esc(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(&c.y_label)
    );
    for (i, se) in c.series.iter().enumerate() {
        let dash = if se.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let path: Vec<String> =
            se.points.iter().map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1))).collect();
        if path.len() > 1 {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                se.color
            );
        }
        for &(x, y, e) in &se.points {
            if e > 0.0 {
                let _ = writeln!(
                    s,
                    r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="{3}"/>"#,
                    px(x),
                    py(y - e),
                    py(y + e),
                    se.color
                );
            }
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                se.color
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" x2="{1:.1}" y1="{2:.1}" y2="{2:.1}" stroke="{3}" stroke-width="2"{dash}/>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 36.0,
            ly,
            se.color
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 42.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_point_and_legend() {
        let c = Chart {
            title: "a <b>".into(),
            x_label: "epoch".into(),
            y_label: "accuracy (%)".into(),
            x_ticks: vec![],
            x_marks: vec![(2.5, "QAT".into())],
            y_range: (0.0, 100.0),
            series: vec![
                Series {
                    name: "naive".into(),
                    points: vec![(1.0, 20.0, 2.0), (2.0, 30.0, 0.0), (3.0, 150.0, 0.0)],
                    color: "#c33",
                    dashed: true,
                },
                Series {
                    name: "D-NAT".into(),
                    points: vec![(1.0, 80.0, 0.5)],
                    color: "#36c",
                    dashed: false,
                },
            ],
        };
        let s = svg(&c);
        assert_eq!(s.matches("<circle").count(), 4);
        assert_eq!(s.matches("<polyline").count(), 1);
        assert!(
            s.contains("a &lt;b&gt;")
                && s.contains(">naive<")
                && s.contains(">D-NAT<")
                && s.contains(">QAT<")
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // A point above the range is drawn on the top edge, not outside the plot.
        assert!(s.contains(&format!(r#"cy="{TOP:.1}""#)));
    }
}
