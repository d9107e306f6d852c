//! The error-model table, its validation, fill policy, alias sampling and moments.

mod build;

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
    /// dE[j]/dk per ideal code (see [`build::smoothed_slope`]).
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

impl ErrorModel {
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
