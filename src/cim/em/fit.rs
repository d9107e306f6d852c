//! Building a D-MAC-EM from raw measurement logs.
//!
//! A log is text with one macro readout per line: the ideal ADC code (what an exact
//! macro would read for the applied inputs and weights) and the code the chip read,
//! separated by whitespace or a comma; `#` starts a comment. With `values_step`, the
//! two fields are readout *values* and are divided by the ADC step and rounded to
//! codes. Every pair becomes one count; unmeasured ideal codes get the fill policy.
//!
//! **Headers.** A first line of names (CSV style) says which field is which, in any
//! order: `ideal` (or `k`), `measured` (or `j`, `readout`), optionally `column`; other
//! named fields are ignored. Without one, the fields are positional.
//!
//! **Per-column logs.** A third field names the ADC column that read the pair (every
//! line then has one). The fit separates the chip's fixed pattern from its read noise
//! (see [`crate::cim::chip`]): a least-squares line `measured ≈ a_c + b_c·ideal` per
//! column and `a + b·ideal` over all columns give each column's gain `g_c = b_c / b`
//! and offset `o_c = (a_c − a) / b` relative to the chip's average (columns with fewer
//! than [`MIN_COLUMN_READS`] reads, or one ideal code only, are taken as nominal:
//! `g = 1`, `o = 0`). The shared table then counts every pair at its column-corrected
//! code `round(g_c·ideal + o_c)` — the code that column's ADC saw — so a readout on
//! column `c` is drawn as the chip drew it. The model keeps the per-column values (the
//! measured chip is chip 0) and their spread (other chips of the design are drawn
//! from it).

use super::table::{ErrorModel, FillPolicy, ModelInfo};
use crate::{Error, Result};
use std::fmt::Write;
use std::path::Path;

/// A parsed measurement log: (ideal, measured) code pairs and, for a per-column log,
/// the column of each.
#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    pub pairs: Vec<(i32, i32)>,
    pub columns: Option<Vec<u32>>,
}

/// Columns with fewer reads than this are taken as nominal by the per-column fit.
pub const MIN_COLUMN_READS: usize = 20;

/// Parses a measurement log: lines of `ideal measured` or, all of them,
/// `ideal measured column`.
pub fn parse_log(text: &str, path: &Path, values_step: Option<f64>) -> Result<Log> {
    if let Some(step) = values_step
        && !(step.is_finite() && step > 0.0)
    {
        return Err(Error::invalid(format!(
            "--values-step {step}: the ADC step must be a positive number"
        )));
    }
    let mut pairs = Vec::new();
    let mut columns: Vec<u32> = Vec::new();
    // Where the fields are: positional (ideal, measured[, column]) until a header says
    // otherwise; `width` is the number of fields every line has.
    let mut layout: Option<Layout> = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap().trim();
        if l.is_empty() {
            continue;
        }
        let f: Vec<&str> = l.split([' ', '\t', ',']).filter(|t| !t.is_empty()).collect();
        let err = |m: String| Error::format(path, format!("line {}: {m}", i + 1));
        let lay = match &layout {
            Some(lay) => lay,
            None => {
                // The first line: a header of names (CSV style), or data.
                if f.iter()
                    .all(|t| t.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_'))
                {
                    layout = Some(Layout::from_header(&f).map_err(err)?);
                    continue;
                }
                if !(2..=3).contains(&f.len()) {
                    return Err(err(format!(
                        "expected 'ideal measured' or 'ideal measured column', or a header line naming them, got '{l}'"
                    )));
                }
                layout.insert(Layout {
                    named: false,
                    width: f.len(),
                    ideal: 0,
                    measured: 1,
                    column: (f.len() == 3).then_some(2),
                })
            }
        };
        if f.len() != lay.width {
            return Err(err(format!(
                "{} fields, but the log's {} has {}: every line has the same fields",
                f.len(),
                if lay.named { "header" } else { "first line" },
                lay.width
            )));
        }
        if let Some(c) = lay.column {
            columns.push(
                f[c].parse()
                    .map_err(|_| err(format!("column '{}' is not a whole number", f[c])))?,
            );
        }
        let code = |s: &str| -> Result<i32> {
            match values_step {
                None => s.parse::<i32>().map_err(|_| {
                    err(format!(
                        "'{s}' is not an integer ADC code (use --values-step for readout values)"
                    ))
                }),
                Some(step) => {
                    let v: f64 = s.parse().map_err(|_| err(format!("'{s}' is not a number")))?;
                    if !v.is_finite() {
                        return Err(err(format!("readout value '{s}' is not finite")));
                    }
                    let k = (v / step).round();
                    if k.abs() > i32::MAX as f64 {
                        return Err(err(format!(
                            "readout value '{s}' is {k:e} ADC codes at step {step}: beyond any ADC"
                        )));
                    }
                    Ok(k as i32)
                }
            }
        };
        pairs.push((code(f[lay.ideal])?, code(f[lay.measured])?));
    }
    if pairs.is_empty() {
        return Err(Error::format(path, "no measurements in the log"));
    }
    let per_column = layout.is_some_and(|l| l.column.is_some());
    Ok(Log { pairs, columns: per_column.then_some(columns) })
}

/// Which field of a log line holds what.
struct Layout {
    /// Read from a header line (else positional).
    named: bool,
    width: usize,
    ideal: usize,
    measured: usize,
    column: Option<usize>,
}

impl Layout {
    /// From a header line: `ideal` (or `k`, `ideal_code`, `expected`), `measured` (or `j`,
    /// `measured_code`, `readout`, `actual`), optionally `column` (or `col`, `adc`), in
    /// any order; other named fields (a temperature, a timestamp) are ignored.
    fn from_header(names: &[&str]) -> std::result::Result<Self, String> {
        let find = |aliases: &[&str]| -> std::result::Result<Option<usize>, String> {
            let hits: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, n)| aliases.contains(&n.to_ascii_lowercase().as_str()))
                .map(|(i, _)| i)
                .collect();
            match hits.len() {
                0 => Ok(None),
                1 => Ok(Some(hits[0])),
                _ => Err(format!("the header names the {} field twice", aliases[0])),
            }
        };
        let ideal = find(&["ideal", "k", "ideal_code", "expected"])?;
        let measured = find(&["measured", "j", "measured_code", "readout", "actual"])?;
        let column = find(&["column", "col", "adc"])?;
        match (ideal, measured) {
            (Some(ideal), Some(measured)) => {
                Ok(Layout { named: true, width: names.len(), ideal, measured, column })
            }
            _ => Err(format!(
                "header '{}' must name an ideal field (ideal, k) and a measured one (measured, j, readout)",
                names.join(",")
            )),
        }
    }
}

/// Least-squares line `y ≈ a + b·x`: `(a, b)`, or `None` when x does not vary.
fn line(points: impl Iterator<Item = (f64, f64)>) -> Option<(f64, f64)> {
    let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (x, y) in points {
        n += 1.0;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let den = n * sxx - sx * sx;
    if n < 2.0 || den.abs() < 1e-9 * n * n {
        return None;
    }
    let b = (n * sxy - sx * sy) / den;
    Some(((sy - b * sx) / n, b))
}

/// Per-column gain and offset of a per-column log over `adcs` columns (module docs).
pub fn fit_columns(log: &Log, adcs: usize) -> Result<Vec<(f32, f32)>> {
    let cols = log.columns.as_ref().ok_or_else(|| Error::invalid("the log names no columns"))?;
    if let Some(&c) = cols.iter().find(|&&c| c as usize >= adcs) {
        return Err(Error::invalid(format!("column {c} is beyond the macro's {adcs} ADC columns")));
    }
    let all = log.pairs.iter().map(|&(k, j)| (k as f64, j as f64));
    let (a, b) = line(all).ok_or_else(|| {
        Error::invalid("the log measures a single ideal code: no transfer to fit")
    })?;
    if b.abs() < 1e-6 {
        return Err(Error::invalid(
            "the measured codes do not follow the ideal ones (slope 0): no gain to fit",
        ));
    }
    let mut by_col: Vec<Vec<(f64, f64)>> = vec![Vec::new(); adcs];
    for (&(k, j), &c) in log.pairs.iter().zip(cols) {
        by_col[c as usize].push((k as f64, j as f64));
    }
    Ok(by_col
        .iter()
        .map(|pts| {
            match (pts.len() >= MIN_COLUMN_READS).then(|| line(pts.iter().copied())).flatten() {
                Some((ac, bc)) => ((bc / b) as f32, ((ac - a) / b) as f32),
                None => (1.0, 0.0),
            }
        })
        .collect())
}

/// Fits a model over the ideal code range `codes` (the macro's ADC), whose measured
/// codes must lie in the same range. A per-column log (over the macro's `adcs`
/// columns) gives a per-column model.
pub fn fit(
    log: &Log,
    codes: (i32, i32),
    fill: FillPolicy,
    info: ModelInfo,
    adcs: usize,
) -> Result<ErrorModel> {
    // A readout beyond the ADC's codes comes from another ADC (or a wrong --values-step).
    if let Some(&(k, j)) = log.pairs.iter().find(|p| p.1 < codes.0 || p.1 > codes.1) {
        return Err(Error::invalid(format!(
            "measured code {j} (ideal {k}) is beyond the macro's ADC codes {}..={}: a log of another ADC?",
            codes.0, codes.1
        )));
    }
    let pairs = &log.pairs;
    // Measured codes lie in the ADC's range (checked above): the model reads over all of it.
    let (jmin, jmax) = codes;
    let Some(cols) = &log.columns else {
        return ErrorModel::from_counts(
            info,
            codes,
            (jmin, jmax),
            fill,
            pairs.iter().map(|&(k, j)| (k, j, 1.0)),
        );
    };
    let fitted = fit_columns(log, adcs)?;
    let corrected = pairs.iter().zip(cols).map(|(&(k, j), &c)| {
        let (g, o) = fitted[c as usize];
        (((g * k as f32 + o).round_ties_even() as i32).clamp(codes.0, codes.1), j, 1.0)
    });
    let mut m = ErrorModel::from_counts(info, codes, (jmin, jmax), fill, corrected)?;
    m.set_columns(fitted);
    Ok(m)
}

/// The fit report: per-code mean, std and count; distance from ideal; unmeasured codes.
pub fn report(m: &ErrorModel) -> String {
    let mut s = String::new();
    let label = m.label();
    writeln!(
        s,
        "D-MAC-EM {label}: ideal codes {}..={}, measured codes {}..={}",
        m.kmin, m.kmax, m.jmin, m.jmax
    )
    .unwrap();
    if !m.info.description.is_empty() {
        writeln!(s, "  {}", m.info.description).unwrap();
    }
    let mut per_code: Vec<(i32, f64)> = Vec::new();
    for &(k, _, c) in m.counts() {
        match per_code.last_mut() {
            Some((kk, n)) if *kk == k => *n += c,
            _ => per_code.push((k, c)),
        }
    }
    let total: f64 = per_code.iter().map(|p| p.1).sum();
    let (mut se, mut sq, mut tv) = (0.0, 0.0, 0.0);
    for &(k, n) in &per_code {
        let bias = m.mean(k) as f64 - k as f64;
        se += n * bias;
        sq += n * (bias * bias + m.std(k).powi(2));
        tv += n * (1.0 - m.prob(k, k));
    }
    writeln!(
        s,
        "distance from ideal (weighted by counts): mean error {:+.3} codes, RMS error {:.3} codes, P(readout ≠ ideal) {:.3}",
        se / total,
        (sq / total).sqrt(),
        tv / total
    )
    .unwrap();
    writeln!(s, "{:>8} {:>12} {:>10} {:>10} {:>10}", "ideal", "count", "mean", "mean-ideal", "std")
        .unwrap();
    let stride = (per_code.len() / 40).max(1);
    for (i, &(k, n)) in per_code.iter().enumerate() {
        if i % stride == 0 || i + 1 == per_code.len() {
            writeln!(
                s,
                "{k:>8} {n:>12.0} {:>10.3} {:>+10.3} {:>10.3}",
                m.mean(k),
                m.mean(k) as f64 - k as f64,
                m.std(k)
            )
            .unwrap();
        }
    }
    if per_code.len() > 40 {
        writeln!(s, "(one measured code in {stride} shown)").unwrap();
    }
    let un = m.unmeasured();
    if un.is_empty() {
        writeln!(s, "every ideal code was measured").unwrap();
    } else {
        writeln!(
            s,
            "{} of {} ideal codes never measured ({}), filled by policy '{}'",
            un.len(),
            m.kmax - m.kmin + 1,
            ranges(&un),
            m.fill.name()
        )
        .unwrap();
    }
    s
}

/// "−256..−41, 40..255" for a sorted list of codes.
fn ranges(codes: &[i32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < codes.len() {
        let mut j = i;
        while j + 1 < codes.len() && codes[j + 1] == codes[j] + 1 {
            j += 1;
        }
        out.push(if i == j { codes[i].to_string() } else { format!("{}..{}", codes[i], codes[j]) });
        i = j + 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cim::em::presets;
    use crate::rng::KeyedRng;

    #[test]
    fn fitting_samples_of_a_model_recovers_it() {
        let truth = presets::preset("moderate", (-32, 31)).unwrap();
        let mut r = KeyedRng::new(&[5]);
        let mut log = String::from("# ideal measured\n");
        for k in -32..=31 {
            for _ in 0..4000 {
                writeln!(log, "{k}, {}", truth.sample(k, r.next_u64())).unwrap();
            }
        }
        let log = parse_log(&log, Path::new("log.txt"), None).unwrap();
        let info = ModelInfo { name: "refit".into(), description: String::new(), synthetic: true };
        let m = fit(&log, (-32, 31), FillPolicy::Reject, info, 256).unwrap();
        for k in -32..=31 {
            assert!(
                (m.mean(k) - truth.mean(k)).abs() < 0.15,
                "code {k}: {} vs {}",
                m.mean(k),
                truth.mean(k)
            );
            // Total variation distance between fitted and true PMFs (the std is too
            // tail-sensitive to compare at 4,000 draws: one charge-loss draw moves it).
            let tv: f64 = (truth.jmin..=truth.jmax)
                .map(|j| (m.prob(k, j) - truth.prob(k, j)).abs())
                .sum::<f64>()
                / 2.0;
            assert!(tv < 0.04, "code {k}: total variation {tv}");
        }
        let rep = report(&m);
        assert!(rep.contains("every ideal code was measured") && rep.contains("RMS error"));
    }

    /// A chip whose 8 columns have known gains and offsets (mean 1 and 0), read through
    /// a shared noisy table at each column's corrected code: the per-column fit gives
    /// the gains and offsets back, and the shared table the chip's readout.
    #[test]
    fn per_column_fit_recovers_column_gains_and_offsets() {
        let gains = [0.95f32, 1.05, 0.98, 1.02, 0.97, 1.03, 1.0, 1.0];
        let offsets = [0.6f32, -0.6, 0.3, -0.3, 0.0, 0.9, -0.9, 0.0];
        let shared = presets::preset(
            "charge-domain:col_gain=0,col_offset=0,chip_gain=0,chip_offset=0",
            (-64, 63),
        )
        .unwrap();
        let mut r = KeyedRng::new(&[9]);
        let mut log = String::new();
        for (c, (&g, &o)) in gains.iter().zip(&offsets).enumerate() {
            for k in -40..=40 {
                for _ in 0..150 {
                    // The analog sum lies anywhere in the ideal code's bin; the column's
                    // ADC sees it through its gain and offset.
                    let x = k as f32 + r.unit() - 0.5;
                    let seen = (g * x + o).round_ties_even() as i32;
                    writeln!(log, "{k} {} {c}", shared.sample(seen, r.next_u64())).unwrap();
                }
            }
        }
        let log = parse_log(&log, Path::new("chip.log"), None).unwrap();
        let info = ModelInfo { name: "cols".into(), description: String::new(), synthetic: true };
        let m = fit(&log, (-64, 63), FillPolicy::Nearest, info, 8).unwrap();
        for (c, &(g, o)) in m.columns.iter().enumerate() {
            assert!((g - gains[c]).abs() < 0.005, "column {c}: gain {g} vs {}", gains[c]);
            assert!((o - offsets[c]).abs() < 0.08, "column {c}: offset {o} vs {}", offsets[c]);
        }
        // The correction maps the integer ideal code, not the analog sum behind it, so the
        // shared rows are smeared by up to half a code: their means agree to ~0.25.
        for k in -30..=30 {
            assert!(
                (m.mean(k) - shared.mean(k)).abs() < 0.25,
                "code {k}: {} vs {}",
                m.mean(k),
                shared.mean(k)
            );
        }
        assert!(
            (m.fixed_pattern.column_gain - 0.03).abs() < 0.01
                && m.fixed_pattern.column_offset > 0.3,
            "{:?}",
            m.fixed_pattern
        );
        // The measured chip is chip 0, column for column; other chips are drawn.
        use crate::cim::Readout;
        let chip = m.chip(8, 0).unwrap();
        assert!((0..8).all(|c| chip.column(c) == m.columns[c]));
        assert_ne!(m.chip(8, 1).unwrap(), chip);
        // It survives both file forms.
        let dir = std::env::temp_dir().join(format!("dnat-fitcols-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["m.txt", "m.dmem"] {
            let p = dir.join(f);
            crate::cim::em::format::save(&m, &p).unwrap();
            let back = crate::cim::em::format::load(&p).unwrap();
            assert_eq!(
                (back.columns.clone(), back.fixed_pattern),
                (m.columns.clone(), m.fixed_pattern),
                "{f}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn logs_with_gaps_and_errors() {
        let p = Path::new("chip.log");
        let log = parse_log("0 0\n0 1 # noisy\n2,2\n", p, None).unwrap();
        let info = ModelInfo { name: "g".into(), description: String::new(), synthetic: false };
        let m = fit(&log, (0, 5), FillPolicy::Nearest, info, 256).unwrap();
        assert!(
            report(&m).contains(
                "4 of 6 ideal codes never measured (1, 3..5), filled by policy 'nearest'"
            )
        );
        assert!(
            parse_log("1 2 3 4\n", p, None).unwrap_err().to_string().contains("chip.log: line 1")
        );
        assert!(parse_log("1.5 2\n", p, None).unwrap_err().to_string().contains("not an integer"));
        assert_eq!(parse_log("64.0 -31.9\n", p, Some(32.0)).unwrap().pairs, vec![(2, -1)]);
        assert_eq!(parse_log("1 2 7\n3 3 0\n", p, None).unwrap().columns, Some(vec![7, 0]));
        assert!(
            parse_log("1 2 7\n3 3\n", p, None)
                .unwrap_err()
                .to_string()
                .contains("line 2: 2 fields")
        );
        assert!(parse_log("1 2 x\n", p, None).unwrap_err().to_string().contains("column 'x'"));
        let cols = parse_log("1 1 300\n2 2 300\n", p, None).unwrap();
        assert!(
            fit(
                &cols,
                (0, 5),
                FillPolicy::Nearest,
                ModelInfo { name: "c".into(), description: String::new(), synthetic: false },
                256
            )
            .unwrap_err()
            .to_string()
            .contains("column 300")
        );
        assert!(
            parse_log("# nothing\n", p, None).unwrap_err().to_string().contains("no measurements")
        );
        // A CSV header names the fields, in any order, and may carry fields dnat ignores.
        let named =
            parse_log("temp_C,readout,adc,ideal\n25.1,3,7,2\n25.3,4,0,4\n", p, None).unwrap();
        assert_eq!((named.pairs, named.columns), (vec![(2, 3), (4, 4)], Some(vec![7, 0])));
        assert_eq!(parse_log("k j\n1 1\n", p, None).unwrap().pairs, vec![(1, 1)]);
        for (text, msg) in [
            ("ideal,temperature\n1,2\n", "must name an ideal field"),
            ("ideal,measured,k\n1,2,3\n", "names the ideal field twice"),
            ("ideal,measured\n1,2,3\n", "line 2: 3 fields, but the log's header has 2"),
        ] {
            let e = parse_log(text, p, None).unwrap_err().to_string();
            assert!(e.contains(msg), "{text:?}: {e}");
        }
    }
}
