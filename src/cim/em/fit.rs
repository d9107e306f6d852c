//! Building a D-MAC-EM from raw measurement logs.
//!
//! A log is text with one macro readout per line: the ideal ADC code (what an exact
//! macro would read for the applied inputs and weights) and the code the chip read,
//! separated by whitespace or a comma; `#` starts a comment. With `values_step`, the
//! two fields are readout *values* and are divided by the ADC step and rounded to
//! codes. Every pair becomes one count; unmeasured ideal codes get the fill policy.

use super::table::{ErrorModel, FillPolicy, ModelInfo};
use crate::{Error, Result};
use std::fmt::Write;
use std::path::Path;

/// Parses a measurement log into (ideal, measured) code pairs.
pub fn parse_log(text: &str, path: &Path, values_step: Option<f64>) -> Result<Vec<(i32, i32)>> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap().trim();
        if l.is_empty() {
            continue;
        }
        let f: Vec<&str> = l.split([' ', '\t', ',']).filter(|t| !t.is_empty()).collect();
        let err = |m: String| Error::format(path, format!("line {}: {m}", i + 1));
        if f.len() != 2 {
            return Err(err(format!("expected 'ideal measured', got '{l}'")));
        }
        let code = |s: &str| -> Result<i32> {
            match values_step {
                None => s.parse::<i32>().map_err(|_| err(format!("'{s}' is not an integer ADC code (use --values-step for readout values)"))),
                Some(step) => {
                    let v: f64 = s.parse().map_err(|_| err(format!("'{s}' is not a number")))?;
                    if !v.is_finite() {
                        return Err(err(format!("readout value '{s}' is not finite")));
                    }
                    Ok((v / step).round() as i32)
                }
            }
        };
        pairs.push((code(f[0])?, code(f[1])?));
    }
    if pairs.is_empty() {
        return Err(Error::format(path, "no measurements in the log"));
    }
    Ok(pairs)
}

/// Fits a model over the ideal code range `codes`; measured codes may extend it.
pub fn fit(pairs: &[(i32, i32)], codes: (i32, i32), fill: FillPolicy, info: ModelInfo) -> Result<ErrorModel> {
    let jmin = pairs.iter().map(|p| p.1).min().unwrap().min(codes.0);
    let jmax = pairs.iter().map(|p| p.1).max().unwrap().max(codes.1);
    ErrorModel::from_counts(info, codes, (jmin, jmax), fill, pairs.iter().map(|&(k, j)| (k, j, 1.0)))
}

/// The fit report: per-code mean, std and count; distance from ideal; unmeasured codes.
pub fn report(m: &ErrorModel) -> String {
    let mut s = String::new();
    let label = m.label();
    writeln!(s, "D-MAC-EM {label}: ideal codes {}..={}, measured codes {}..={}", m.kmin, m.kmax, m.jmin, m.jmax).unwrap();
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
    writeln!(s, "{:>8} {:>12} {:>10} {:>10} {:>10}", "ideal", "count", "mean", "mean-ideal", "std").unwrap();
    let stride = (per_code.len() / 40).max(1);
    for (i, &(k, n)) in per_code.iter().enumerate() {
        if i % stride == 0 || i + 1 == per_code.len() {
            writeln!(s, "{k:>8} {n:>12.0} {:>10.3} {:>+10.3} {:>10.3}", m.mean(k), m.mean(k) as f64 - k as f64, m.std(k)).unwrap();
        }
    }
    if per_code.len() > 40 {
        writeln!(s, "(one measured code in {stride} shown)").unwrap();
    }
    let un = m.unmeasured();
    if un.is_empty() {
        writeln!(s, "every ideal code was measured").unwrap();
    } else {
        writeln!(s, "{} of {} ideal codes never measured ({}), filled by policy '{}'", un.len(), m.kmax - m.kmin + 1, ranges(&un), m.fill.name()).unwrap();
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
        let pairs = parse_log(&log, Path::new("log.txt"), None).unwrap();
        let info = ModelInfo { name: "refit".into(), description: String::new(), synthetic: true };
        let m = fit(&pairs, (-32, 31), FillPolicy::Reject, info).unwrap();
        for k in -32..=31 {
            assert!((m.mean(k) - truth.mean(k)).abs() < 0.15, "code {k}: {} vs {}", m.mean(k), truth.mean(k));
            // Total variation distance between fitted and true PMFs (the std is too
            // tail-sensitive to compare at 4,000 draws: one charge-loss draw moves it).
            let tv: f64 = (truth.jmin..=truth.jmax).map(|j| (m.prob(k, j) - truth.prob(k, j)).abs()).sum::<f64>() / 2.0;
            assert!(tv < 0.04, "code {k}: total variation {tv}");
        }
        let rep = report(&m);
        assert!(rep.contains("every ideal code was measured") && rep.contains("RMS error"));
    }

    #[test]
    fn logs_with_gaps_and_errors() {
        let p = Path::new("chip.log");
        let pairs = parse_log("0 0\n0 1 # noisy\n2,2\n", p, None).unwrap();
        let info = ModelInfo { name: "g".into(), description: String::new(), synthetic: false };
        let m = fit(&pairs, (0, 5), FillPolicy::Nearest, info).unwrap();
        assert!(report(&m).contains("4 of 6 ideal codes never measured (1, 3..5), filled by policy 'nearest'"));
        assert!(parse_log("1 2 3\n", p, None).unwrap_err().to_string().contains("chip.log: line 1"));
        assert!(parse_log("1.5 2\n", p, None).unwrap_err().to_string().contains("not an integer"));
        assert_eq!(parse_log("64.0 -31.9\n", p, Some(32.0)).unwrap(), vec![(2, -1)]);
        assert!(parse_log("# nothing\n", p, None).unwrap_err().to_string().contains("no measurements"));
    }
}
