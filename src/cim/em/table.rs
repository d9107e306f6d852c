//! The error-model table, its validation, fill policy, alias sampling and moments.

use crate::cim::CodeRange;
use crate::{Error, Result};

/// What to do with ideal codes that have no measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillPolicy {
    /// Copy the PMF of the nearest measured code (the lower one on a tie), shifted by
    /// the code distance so the error *offsets* are kept; mass shifted past the
    /// measured range piles up on its edge. The default: errors of a real ADC change
    /// slowly with the code.
    Nearest,
    /// The readout is exact: j = k.
    Identity,
    /// Refuse a model with unmeasured codes.
    Reject,
}

impl FillPolicy {
    /// The policy's name: `nearest`, `identity` or `reject` (what [`FillPolicy::parse`] reads).
    pub fn name(self) -> &'static str {
        match self {
            FillPolicy::Nearest => "nearest",
            FillPolicy::Identity => "identity",
            FillPolicy::Reject => "reject",
        }
    }
    /// The policy named `s`; errors on a name other than `nearest`, `identity`, `reject`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "nearest" => Ok(FillPolicy::Nearest),
            "identity" => Ok(FillPolicy::Identity),
            "reject" => Ok(FillPolicy::Reject),
            _ => Err(Error::invalid(format!(
                "unknown fill policy '{s}' (nearest, identity, reject)"
            ))),
        }
    }
    /// The policy's byte in the binary error-model format: 0 nearest, 1 identity, 2 reject.
    pub fn code(self) -> u8 {
        match self {
            FillPolicy::Nearest => 0,
            FillPolicy::Identity => 1,
            FillPolicy::Reject => 2,
        }
    }
    /// The policy of a binary-format byte (`None`: an unknown byte).
    pub fn from_code(c: u8) -> Option<Self> {
        [FillPolicy::Nearest, FillPolicy::Identity, FillPolicy::Reject]
            .into_iter()
            .find(|p| p.code() == c)
    }
}

/// Descriptive fields carried with a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The model's name (1 to 200 characters, no control characters), shown in reports.
    pub name: String,
    /// A one-line description (no control characters).
    pub description: String,
    /// Synthetic models are labelled as such wherever they are reported.
    pub synthetic: bool,
}

impl ModelInfo {
    /// Names and descriptions are written into one-line headers of the text format and
    /// shown in reports: no control characters (a newline would inject a header line),
    /// and a name of at most 200 characters.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.chars().count() > 200 {
            return Err(Error::invalid(format!(
                "error-model name '{}': needs 1 to 200 characters",
                self.name.escape_debug()
            )));
        }
        for (what, s) in [("name", &self.name), ("description", &self.description)] {
            if s.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "error-model {what} '{}' contains a control character (a newline, tab, …)",
                    s.escape_debug()
                )));
            }
        }
        Ok(())
    }

    /// The name as a file-name stem: letters, digits, `.`, `-`, `_` kept, anything else
    /// (a path separator, say) replaced by `_`, never starting with a dot.
    pub fn file_stem(&self) -> String {
        let s: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' }
            })
            .collect();
        if s.starts_with('.') { format!("_{s}") } else { s }
    }
}

/// One ideal code's readout distribution over its support `jlo..jlo+len`.
#[derive(Clone, Debug)]
struct Row {
    jlo: i32,
    prob: Vec<f64>,
    /// Alias table (Vose): keep column i with probability `keep[i] / 2^32`, else `alias[i]`.
    keep: Vec<u64>,
    alias: Vec<u32>,
    mean: f64,
    var: f64,
    measured: bool,
    /// Reads behind the row (its counts' total; 0 for a row the fill policy made).
    reads: f64,
}

/// A D-MAC-EM table: for each ideal ADC code k, the distribution P(j | k) of the measured
/// code j a readout returns, with its samplers and moments.
#[derive(Clone, Debug)]
pub struct ErrorModel {
    /// Name, description and whether the model is synthetic.
    pub info: ModelInfo,
    /// Ideal ADC codes covered: `kmin..=kmax`.
    pub kmin: i32,
    /// The highest ideal ADC code covered.
    pub kmax: i32,
    /// Measured codes allowed: `jmin..=jmax`.
    pub jmin: i32,
    /// The highest measured code allowed.
    pub jmax: i32,
    /// How ideal codes without measurements were filled.
    pub fill: FillPolicy,
    /// Chip-to-chip and column-to-column spread around this table (zero: every chip
    /// reads like the table). See [`crate::cim::chip`].
    pub fixed_pattern: crate::cim::FixedPattern,
    /// A measured chip's per-ADC-column (gain, offset) (empty: none measured); that chip
    /// is chip 0 of the model (see [`crate::cim::em::fit`]).
    pub columns: Vec<(f32, f32)>,
    /// The counts as given, sorted by (ideal, measured) (what is saved).
    counts: Vec<(i32, i32, f64)>,
    rows: Vec<Row>,
    /// dE[j]/dk per ideal code (see [`smoothed_slope`]).
    slope: Vec<f32>,
    mean_f32: Vec<f32>,
    /// All rows' alias tables back to back, for the sampling hot loop: row r's column
    /// c is `flat[start + c]`. One array of entries: a sample touches one cache line,
    /// not three (measured faster).
    pub(super) flat: Vec<AliasEntry>,
    /// Per row (ideal code `kmin + r`): where its entries start in `flat`, and how many.
    pub(super) span: Vec<RowSpan>,
    /// Cumulative probabilities at each entry of `flat` (× 2^32; a row's last is u32::MAX).
    cdf: Vec<u32>,
    /// Per ideal code k, the law of the coupled difference `quantile(k+1, U) −
    /// quantile(k−1, U)` (one-sided at the range's ends) as an alias table: what a
    /// sampled slope draws (see [`ErrorModel::pair_difference`]).
    pub(super) pair_diff: PairDifferences,
}

/// Per ideal code, the alias table of the coupled pair difference (see
/// [`ErrorModel::pair_difference`]): 8-byte entries (for the vectorised draw), a span
/// per code, and the pair's spacing `kb − ka` (0: a one-code range).
#[derive(Clone, Debug, Default)]
pub(super) struct PairDifferences {
    pub entries: Vec<DiffEntry>,
    pub span: Vec<RowSpan>,
    pub spacing: Vec<i32>,
}

/// One column of a pair-difference alias table: keep `own` when the draw's low 32 bits
/// are below `keep`, else `alias`. `repr(C)`: gathered as one 64-bit word.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct DiffEntry {
    pub keep: u32,
    pub own: i16,
    pub alias: i16,
}

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

/// One column of a row's alias table, 8 bytes. `repr(C)`: the vectorised sampler
/// ([`super::draw`]) gathers whole entries as 64-bit words. Codes are stored as
/// offsets from `jmin` (the measured range spans at most 65,536 codes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct AliasEntry {
    /// Keep this column when the draw's low 32 bits are below `keep`.
    pub keep: u32,
    /// This column's own measured code (`jlo + c`), minus `jmin`.
    pub own: u16,
    /// The measured code otherwise, minus `jmin`.
    pub alias: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowSpan {
    pub start: u32,
    pub width: u32,
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

    #[inline]
    fn row(&self, k: i32) -> &Row {
        &self.rows[(k.clamp(self.kmin, self.kmax) - self.kmin) as usize]
    }

    /// A measured code for ideal code `k`, from 64 random bits (alias method: the
    /// high 32 bits pick a column, the low 32 bits keep it or take its alias).
    #[inline(always)]
    pub fn sample(&self, k: i32, bits: u64) -> i32 {
        // Branch-free: the keep/alias comparison is random, a branch would mispredict.
        self.alias_pick(self.alias_slot(k, bits), bits)
    }

    /// The alias-table entry a draw lands on (first half of [`ErrorModel::sample`]).
    #[inline(always)]
    pub(crate) fn alias_slot(&self, k: i32, bits: u64) -> u32 {
        let RowSpan { start, width } =
            self.span[(k.clamp(self.kmin, self.kmax) - self.kmin) as usize];
        start + (((bits >> 32) * width as u64) >> 32) as u32
    }

    /// The measured code at entry `slot` for the draw (second half of `sample`).
    #[inline(always)]
    pub(crate) fn alias_pick(&self, slot: u32, bits: u64) -> i32 {
        let AliasEntry { keep, own, alias } = self.flat[slot as usize];
        // A coin flip per draw: a branch here mispredicts about as often as it is taken
        // (it was most of the portable sampler's time), so ask for a conditional move.
        self.jmin + std::hint::select_unpredictable((bits as u32) >= keep, alias, own) as i32
    }

    /// The measured code at quantile `x / 2^32` of ideal code `k`'s distribution (the
    /// inverse CDF). Draws at neighbouring codes from the same `x` are coupled (common
    /// random numbers): their difference has far less variance than independent draws'.
    pub fn quantile(&self, k: i32, x: u32) -> i32 {
        let RowSpan { start, width } =
            self.span[(k.clamp(self.kmin, self.kmax) - self.kmin) as usize];
        let row = &self.cdf[start as usize..(start + width) as usize];
        let c = row.partition_point(|&t| t <= x).min(row.len() - 1);
        self.jmin + self.flat[start as usize + c].own as i32
    }

    /// One draw of the coupled difference `quantile(kb, U) − quantile(ka, U)` for ideal
    /// code `k` (`ka = max(k−1, kmin)`, `kb = min(k+1, kmax)`) from 64 random bits,
    /// with `kb − ka`: the sampled slope is the difference over the spacing. The
    /// difference is drawn from its exact law — computed once per code by merging the
    /// two rows' CDFs — with the alias method: the same estimator as evaluating both
    /// quantiles at one uniform, in O(1) and without branches.
    #[inline]
    pub fn pair_difference(&self, k: i32, bits: u64) -> (i32, i32) {
        let i = (k.clamp(self.kmin, self.kmax) - self.kmin) as usize;
        let p = &self.pair_diff;
        let RowSpan { start, width } = p.span[i];
        let slot = (start + (((bits >> 32) * width as u64) >> 32) as u32) as usize;
        let DiffEntry { keep, own, alias } = p.entries[slot];
        let d = if (bits as u32) < keep { own } else { alias };
        (d as i32, p.spacing[i])
    }

    /// E[j | k].
    #[inline(always)]
    pub fn mean(&self, k: i32) -> f32 {
        self.mean_f32[(k.clamp(self.kmin, self.kmax) - self.kmin) as usize]
    }

    /// dE\[j\]/dk at code k: the central difference where the rows are well measured, a
    /// least-squares fit over a window widened (up to ±8 codes)
    /// until its standard error is below 0.05 where they are sparse.
    #[inline(always)]
    pub fn slope(&self, k: i32) -> f32 {
        self.slope[(k.clamp(self.kmin, self.kmax) - self.kmin) as usize]
    }

    /// Standard deviation of the measured code for ideal code `k` (`k` clamped to `kmin..=kmax`).
    pub fn std(&self, k: i32) -> f64 {
        self.row(k).var.sqrt()
    }

    /// P(j | k).
    pub fn prob(&self, k: i32, j: i32) -> f64 {
        let r = self.row(k);
        let o = j - r.jlo;
        if o < 0 || o as usize >= r.prob.len() { 0.0 } else { r.prob[o as usize] }
    }

    /// Whether ideal code `k` had counts (false: its row was made by the fill policy).
    pub fn is_measured(&self, k: i32) -> bool {
        self.row(k).measured
    }

    /// The counts as given (sorted, duplicates summed).
    pub fn counts(&self) -> &[(i32, i32, f64)] {
        &self.counts
    }

    /// Ideal codes with no measurements (filled by the policy).
    pub fn unmeasured(&self) -> Vec<i32> {
        (self.kmin..=self.kmax).filter(|&k| !self.is_measured(k)).collect()
    }

    /// Sets a measured chip's columns, and the column spread of the fixed pattern to
    /// theirs (sample std over the columns that differ from nominal).
    pub fn set_columns(&mut self, columns: Vec<(f32, f32)>) {
        let fitted: Vec<(f64, f64)> = columns
            .iter()
            .filter(|&&c| c != (1.0, 0.0))
            .map(|&(g, o)| (g as f64, o as f64))
            .collect();
        let sd = |v: Vec<f64>| {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            if v.len() > 1 {
                (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            } else {
                0.0
            }
        };
        self.fixed_pattern.column_gain = sd(fitted.iter().map(|c| c.0).collect());
        self.fixed_pattern.column_offset = sd(fitted.iter().map(|c| c.1).collect());
        self.columns = columns;
    }

    /// The name, followed by " (synthetic)" for a synthetic model.
    pub fn label(&self) -> String {
        if self.info.synthetic {
            format!("{} (synthetic)", self.info.name)
        } else {
            self.info.name.clone()
        }
    }
}

#[cfg(test)]
mod tests;
