//! Building an [`ErrorModel`] from counts: validation, the fill policy, each row's
//! moments and alias table, the smoothed slopes, the inverse CDFs and the alias tables
//! of the coupled pair differences.

use super::{
    AliasEntry, DiffEntry, ErrorModel, FillPolicy, ModelInfo, PairDifferences, Row, RowSpan,
};
use crate::cim::CodeRange;
use crate::{Error, Result};

/// Merges the CDFs of rows `k−1` and `k+1` of every code into the law of the
/// difference of their quantiles at one uniform, on the same 2^32 grid the CDFs use.
fn pair_differences(span: &[RowSpan], cdf: &[u32], flat: &[AliasEntry]) -> PairDifferences {
    let nk = span.len();
    let mut out = PairDifferences::default();
    let row = |r: usize| {
        let s = span[r];
        (
            &cdf[s.start as usize..(s.start + s.width) as usize],
            &flat[s.start as usize..(s.start + s.width) as usize],
        )
    };
    for i in 0..nk {
        let (a, b) = (i.saturating_sub(1), (i + 1).min(nk - 1));
        // Walk both CDFs together: each segment [x0, x1) of the unit interval has one
        // quantile in each row; its length is the probability of that difference.
        let ((ca, fa), (cb, fb)) = (row(a), row(b));
        // The law, dense over every difference the two supports allow.
        let dmin = fb[0].own as i32 - fa[fa.len() - 1].own as i32;
        let mut mass =
            vec![0.0f64; (fb[fb.len() - 1].own as i32 - fa[0].own as i32 - dmin + 1) as usize];
        let (mut ia, mut ib, mut x0) = (0usize, 0usize, 0u64);
        while x0 < 1 << 32 {
            // Row r's quantile on [x0, ·) is its first entry whose CDF exceeds x0 (the
            // last entry's CDF, u32::MAX, stands for 2^32).
            // Entry i holds x in [cdf[i−1], cdf[i]); the last one, up to 2^32.
            let end = |c: &[u32], i: usize| {
                if i + 1 == c.len() { 1u64 << 32 } else { c[i] as u64 }
            };
            let x1 = end(ca, ia).min(end(cb, ib));
            mass[(fb[ib].own as i32 - fa[ia].own as i32 - dmin) as usize] += (x1 - x0) as f64;
            x0 = x1;
            if x0 >= end(ca, ia) && ia + 1 < ca.len() {
                ia += 1;
            }
            if x0 >= end(cb, ib) && ib + 1 < cb.len() {
                ib += 1;
            }
        }
        let law: Vec<(i32, f64)> = mass
            .iter()
            .enumerate()
            .filter(|e| *e.1 > 0.0)
            .map(|(o, &m)| (dmin + o as i32, m))
            .collect();
        let p: Vec<f64> = law.iter().map(|e| e.1 / 4_294_967_296.0).collect();
        let (keep, alias) = alias_table(&p);
        out.span.push(RowSpan { start: out.entries.len() as u32, width: law.len() as u32 });
        for (c, (&kp, &al)) in keep.iter().zip(&alias).enumerate() {
            // Differences fit in i16: `from_counts` refuses tables where they could not.
            let d16 = |d: i32| d.clamp(i16::MIN as i32, i16::MAX as i32) as i16;
            out.entries.push(DiffEntry {
                keep: kp.min(u32::MAX as u64) as u32,
                own: d16(law[c].0),
                alias: d16(law[al as usize].0),
            });
        }
        out.spacing.push((b - a) as i32);
    }
    out
}

/// Widest half-window, in codes, over which [`smoothed_slope`] fits a row's slope.
pub const MAX_SLOPE_HALF_WIDTH: usize = 8;
/// Standard error of the slope below which the window stops widening.
const SLOPE_SE_TARGET: f64 = 0.05;

/// dE[j]/dk at row `i`: the least-squares slope of the rows' means over the smallest
/// window `i ± w` (clipped at the range's ends; w ≤ [`MAX_SLOPE_HALF_WIDTH`]) whose slope
/// has a standard error below 0.05, from each row's variance and its number of reads
/// (a row the fill policy made counts as unmeasured: the window widens past it).
/// The standard error takes a row's counts as its number of reads, as `em fit` and the
/// text format record them; a model whose counts are probabilities scaled to another
/// total (a preset's per-million) is treated as read that many times.
///
/// A well-measured table (a preset's per-million counts) keeps w = 1, the central
/// difference; a sparse one is smoothed where it is sparse. A least-squares slope over
/// any window is ≥ 0 wherever the means are non-decreasing (Chebyshev's sum
/// inequality), so a monotone table never gets a negative slope.
fn smoothed_slope(rows: &[Row], i: usize) -> f32 {
    let nk = rows.len();
    for w in 1..=MAX_SLOPE_HALF_WIDTH {
        let (a, b) = (i.saturating_sub(w), (i + w).min(nk - 1));
        if a == b {
            return 1.0;
        }
        let xbar = (a + b) as f64 / 2.0;
        let sxx: f64 = (a..=b).map(|x| (x as f64 - xbar).powi(2)).sum();
        // Var(slope) = Σ (x − x̄)² · Var(mean_x) / Sxx², Var(mean_x) = var_x / reads_x (with
        // the ADC's quantization noise 1/12 as the floor of var_x).
        let var_slope: f64 = (a..=b)
            .map(|x| {
                let r = &rows[x];
                let d2 = (x as f64 - xbar).powi(2);
                if d2 == 0.0 {
                    0.0
                } else if r.reads > 0.0 {
                    d2 * r.var.max(1.0 / 12.0) / r.reads
                } else {
                    f64::INFINITY
                }
            })
            .sum::<f64>()
            / (sxx * sxx);
        if var_slope <= SLOPE_SE_TARGET * SLOPE_SE_TARGET
            || w == MAX_SLOPE_HALF_WIDTH
            || (a == 0 && b == nk - 1)
        {
            if w == 1 {
                // The central (one-sided at the ends) difference, computed as such.
                return ((rows[b].mean - rows[a].mean) / (b - a) as f64) as f32;
            }
            return ((a..=b).map(|x| (x as f64 - xbar) * rows[x].mean).sum::<f64>() / sxx) as f32;
        }
    }
    unreachable!("the loop returns at w = MAX_SLOPE_HALF_WIDTH")
}

fn alias_table(p: &[f64]) -> (Vec<u64>, Vec<u32>) {
    let n = p.len();
    let mut scaled: Vec<f64> = p.iter().map(|&v| v * n as f64).collect();
    let mut keep = vec![1u64 << 32; n];
    let mut alias: Vec<u32> = (0..n as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        keep[s] = (scaled[s] * (1u64 << 32) as f64).round() as u64;
        alias[s] = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    (keep, alias)
}

impl ErrorModel {
    /// Builds and validates a model from `(ideal, measured, count)` entries.
    /// Errors name the offending entry; duplicates are summed.
    pub fn from_counts(
        info: ModelInfo,
        (kmin, kmax): (i32, i32),
        (jmin, jmax): (i32, i32),
        fill: FillPolicy,
        entries: impl IntoIterator<Item = (i32, i32, f64)>,
    ) -> Result<Self> {
        info.validate()?;
        let (nk, nj) = (
            CodeRange::new(kmin, kmax, "ideal codes")?.len(),
            CodeRange::new(jmin, jmax, "measured codes")?.len(),
        );
        let mut counts: Vec<(i32, i32, f64)> = Vec::new();
        for (k, j, c) in entries {
            if k < kmin || k > kmax {
                return Err(Error::invalid(format!(
                    "unknown ideal code {k} (the model covers {kmin}..={kmax})"
                )));
            }
            if j < jmin || j > jmax {
                return Err(Error::invalid(format!(
                    "unknown measured code {j} for ideal code {k} (measured codes are {jmin}..={jmax})"
                )));
            }
            if !c.is_finite() || c < 0.0 {
                return Err(Error::invalid(format!(
                    "count {c} for ideal {k}, measured {j}: counts must be finite and ≥ 0"
                )));
            }
            if c > 0.0 {
                counts.push((k, j, c));
            }
        }
        counts.sort_by_key(|a| (a.0, a.1));
        counts.dedup_by(|b, a| {
            if (a.0, a.1) == (b.0, b.1) {
                a.2 += b.2;
                true
            } else {
                false
            }
        });
        // Dense PMFs of the measured rows.
        let mut pmf: Vec<Option<Vec<f64>>> = vec![None; nk];
        for &(k, j, c) in &counts {
            pmf[(k - kmin) as usize].get_or_insert_with(|| vec![0.0; nj])[(j - jmin) as usize] += c;
        }
        // Counts are finite one by one; their sums must be too (two counts of 1e308 are not).
        for (i, r) in pmf.iter().enumerate() {
            if let Some(r) = r
                && !r.iter().sum::<f64>().is_finite()
            {
                return Err(Error::invalid(format!(
                    "the counts of ideal code {} sum to infinity: scale them down",
                    kmin + i as i32
                )));
            }
        }
        let measured: Vec<bool> = pmf.iter().map(|r| r.is_some()).collect();
        let missing: Vec<i32> =
            (0..nk).filter(|&i| !measured[i]).map(|i| kmin + i as i32).collect();
        if missing.len() == nk {
            return Err(Error::invalid("the model has no counts at all"));
        }
        if fill == FillPolicy::Reject && !missing.is_empty() {
            return Err(Error::invalid(format!(
                "{} ideal codes were never measured (e.g. {}) and the fill policy is 'reject'",
                missing.len(),
                missing.iter().take(5).map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        let measured_rows: Vec<usize> = (0..nk).filter(|&i| measured[i]).collect();
        for i in 0..nk {
            if measured[i] {
                continue;
            }
            let k = kmin + i as i32;
            let mut row = vec![0.0; nj];
            match fill {
                FillPolicy::Identity => row[(k.clamp(jmin, jmax) - jmin) as usize] = 1.0,
                FillPolicy::Nearest | FillPolicy::Reject => {
                    let src = *measured_rows
                        .iter()
                        .min_by_key(|&&m| ((m as i64 - i as i64).abs(), m))
                        .unwrap();
                    let shift = i as i64 - src as i64;
                    let srow = pmf[src].as_ref().unwrap();
                    for (jj, &p) in srow.iter().enumerate() {
                        let t = (jj as i64 + shift).clamp(0, nj as i64 - 1) as usize;
                        row[t] += p;
                    }
                }
            }
            pmf[i] = Some(row);
        }
        let rows: Vec<Row> = pmf
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.unwrap();
                let total: f64 = r.iter().sum();
                let first = r.iter().position(|&v| v > 0.0).unwrap();
                let last = r.iter().rposition(|&v| v > 0.0).unwrap();
                let prob: Vec<f64> = r[first..=last].iter().map(|&v| v / total).collect();
                let jlo = jmin + first as i32;
                let mean: f64 =
                    prob.iter().enumerate().map(|(o, &p)| p * (jlo + o as i32) as f64).sum();
                let var: f64 = prob
                    .iter()
                    .enumerate()
                    .map(|(o, &p)| p * ((jlo + o as i32) as f64 - mean).powi(2))
                    .sum();
                let (keep, alias) = alias_table(&prob);
                Row {
                    jlo,
                    prob,
                    keep,
                    alias,
                    mean,
                    var,
                    measured: measured[i],
                    reads: if measured[i] { total } else { 0.0 },
                }
            })
            .collect();
        let mean_f32: Vec<f32> = rows.iter().map(|r| r.mean as f32).collect();
        let (mut flat, mut span) = (Vec::new(), Vec::new());
        for r in &rows {
            span.push(RowSpan { start: flat.len() as u32, width: r.prob.len() as u32 });
            for (c, (&keep, &alias)) in r.keep.iter().zip(&r.alias).enumerate() {
                // A column kept with probability 1 (keep = 2^32) is stored as u32::MAX:
                // it then yields its alias only for the one draw of 2^32 equal to MAX,
                // where the alias is itself (Vose leaves full columns self-aliased).
                flat.push(AliasEntry {
                    keep: keep.min(u32::MAX as u64) as u32,
                    own: (r.jlo + c as i32 - jmin) as u16,
                    alias: (r.jlo + alias as i32 - jmin) as u16,
                });
            }
        }
        let slope = (0..nk).map(|i| smoothed_slope(&rows, i)).collect();
        // Per row, the cumulative distribution at each entry of `flat`, scaled to 2^32:
        // the inverse-CDF draw of `quantile` (common random numbers across rows).
        let mut cdf = Vec::with_capacity(flat.len());
        for r in &rows {
            let mut cum = 0.0f64;
            for (c, &p) in r.prob.iter().enumerate() {
                cum += p;
                let last = c + 1 == r.prob.len();
                cdf.push(if last {
                    u32::MAX
                } else {
                    (cum * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
                });
            }
        }
        // The pair differences of neighbouring rows must fit an i16 (the sampled slope's
        // table): checked, in i64, before they are tabulated.
        let support = |r: &Row| (r.jlo as i64, r.jlo as i64 + r.prob.len() as i64 - 1);
        for i in 0..nk {
            let (a, b) = (i.saturating_sub(1), (i + 1).min(nk - 1));
            let ((alo, ahi), (blo, bhi)) = (support(&rows[a]), support(&rows[b]));
            if a != b && (bhi - alo).max(ahi - blo) > i16::MAX as i64 {
                return Err(Error::invalid(format!(
                    "ideal codes {} and {} read out more than 32,767 codes apart: not an ADC's error model",
                    kmin as i64 + a as i64,
                    kmin as i64 + b as i64
                )));
            }
        }
        let pair_diff = pair_differences(&span, &cdf, &flat);
        Ok(ErrorModel {
            info,
            kmin,
            kmax,
            jmin,
            jmax,
            fill,
            fixed_pattern: Default::default(),
            columns: Vec::new(),
            counts,
            rows,
            slope,
            mean_f32,
            flat,
            span,
            cdf,
            pair_diff,
        })
    }

    /// The ideal (identity) model over a code range: ADC quantization only.
    pub fn ideal(kmin: i32, kmax: i32) -> Self {
        let info = ModelInfo {
            name: "ideal".into(),
            description: "identity readout: ADC quantization only".into(),
            synthetic: false,
        };
        Self::from_counts(
            info,
            (kmin, kmax),
            (kmin, kmax),
            FillPolicy::Identity,
            (kmin..=kmax).map(|k| (k, k, 1.0)),
        )
        .unwrap()
    }
}
