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
use crate::cim::MacroSpec;
use crate::{Error, Result};
use std::fmt::Write;
use std::path::Path;

/// A parsed measurement log: (ideal, measured) code pairs and, for a per-column log,
/// the column of each.
#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    /// (ideal code, measured code), one pair per readout, in the log's order.
    pub pairs: Vec<(i32, i32)>,
    /// The ADC column that read each pair (a per-column log), or `None`.
    pub columns: Option<Vec<u32>>,
}

impl Log {
    /// Parses a log held in memory (errors say `log line N: …`). With `values_step`,
    /// the fields are readout values, divided by that ADC step and rounded to codes.
    pub fn parse(text: &str, values_step: Option<f64>) -> Result<Log> {
        parse_with(text, None, values_step)
    }
    /// Reads and parses the log in file `path` (errors name the file and line).
    pub fn read(path: &Path, values_step: Option<f64>) -> Result<Log> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        parse_with(&text, Some(path), values_step)
    }
}

/// An error in the log at `path` (in memory: `log …`).
fn located(path: Option<&Path>, msg: String) -> Error {
    match path {
        Some(p) => Error::format(p, msg),
        None => Error::invalid(format!("log {msg}")),
    }
}

/// Columns with fewer reads than this are taken as nominal by the per-column fit.
pub const MIN_COLUMN_READS: usize = 20;

/// Parses a measurement log: lines of `ideal measured` or, all of them,
/// `ideal measured column`; errors name `path`, or say `log` without one.
fn parse_with(text: &str, path: Option<&Path>, values_step: Option<f64>) -> Result<Log> {
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
        let err = |m: String| located(path, format!("line {}: {m}", i + 1));
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
        return Err(located(path, "no measurements in the log".into()));
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

/// Fits the D-MAC-EM of a log measured on macro `spec`: over its ADC's ideal codes,
/// every measured code within the same range; a per-column log (columns of the
/// macro's `arrays × columns` ADCs) gives a per-column model. `fill` says what rows
/// never measured read.
pub fn fit(log: &Log, spec: &MacroSpec, info: ModelInfo, fill: FillPolicy) -> Result<ErrorModel> {
    fit_codes(log, (spec.adc.kmin, spec.adc.kmax), fill, info, spec.adcs())
}

/// [`fit`] over the ideal code range `codes`, a per-column log over `adcs` columns.
fn fit_codes(
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
mod tests;
