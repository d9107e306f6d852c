//! How a CIM layer reads its macro: the [`Readout`] source, the forward mode, the
//! backward estimator, and the draw keys that make every readout reproducible.

use super::MacroSpec;
use super::chip::{Chip, FixedPattern};
use super::em::ErrorModel;
use crate::rng::{key, mix64};
use std::sync::Arc;

/// E[readout | ideal code] and its slope: what a readout source with a table (an error
/// model) offers beyond sampling; see [`Readout::table`].
pub trait ReadoutTable: Send + Sync {
    /// E[measured | ideal = k] (the `expected` forward mode).
    fn mean(&self, k: i32) -> f32;
    /// dE\[measured\]/dk at `k` (the statistical estimator with S = 0).
    fn slope(&self, k: i32) -> f32;
    /// `mean` over a run of codes (one call per run; override to batch).
    fn mean_run(&self, codes: &[i32], out: &mut [f32]) {
        out.iter_mut().zip(codes).for_each(|(o, &k)| *o = self.mean(k));
    }
    /// `slope` over a run of codes (one call per run; override to batch).
    fn slope_run(&self, codes: &[i32], out: &mut [f32]) {
        out.iter_mut().zip(codes).for_each(|(o, &k)| *o = self.slope(k));
    }
}

/// A source of macro readouts, in ADC codes. The error model is one; a researcher can
/// plug in another (a replay of recorded readouts, a chip behind an FPGA link) without
/// touching the layers.
pub trait Readout: Send + Sync {
    /// The measured code for ideal code `k`. `draw` is 64 random bits that belong to
    /// this one macro operation (a pure function of seed, layer, step, tile, element).
    fn sample(&self, k: i32, draw: u64) -> i32;
    /// Reads a run of macro operations: `out[i]` for ideal code `codes[i]`, the
    /// operation numbered `run.op(i)`. The layers call this (one call per run of
    /// outputs), so an implementation can batch; the default calls [`Readout::sample`].
    fn sample_run(&self, codes: &[i32], run: DrawRun, out: &mut [f32]) {
        for (i, (o, &k)) in out.iter_mut().zip(codes).enumerate() {
            *o = self.sample(k, run.key.forward(run.op(i))) as f32;
        }
    }
    /// Two readouts at codes `ka` and `kb` driven by one random number (common random
    /// numbers), for the sampled slope `stat:S`: the closer the coupling, the less the
    /// difference varies. A table couples them exactly through its inverse CDF; a source
    /// that can only `sample` (a chip behind a link) reads both with the same draw bits.
    fn sample_pair(&self, ka: i32, kb: i32, draw: u64) -> (i32, i32) {
        (self.sample(ka, draw), self.sample(kb, draw))
    }
    /// The sampled slope of every operation of a run: `out[i]` = mean over `s < draws`
    /// of `(b − a) / (kb − ka)` for the pair drawn at `ka = codes[i] − 1`, `kb =
    /// codes[i] + 1` (clamped to `range`) with bits `run.key.backward(run.op(i), s)`.
    /// One call per run (as in forward), so a source can batch; the default pairs
    /// [`Readout::sample_pair`].
    fn slope_draws_run(
        &self,
        codes: &[i32],
        range: (i32, i32),
        draws: u32,
        run: DrawRun,
        out: &mut [f32],
    ) {
        if draws == 0 {
            // No draws, no estimate: the straight-through slope, as the table's path gives.
            out.fill(1.0);
            return;
        }
        for (i, (o, &kc)) in out.iter_mut().zip(codes).enumerate() {
            let (ka, kb) = ((kc - 1).max(range.0), (kc + 1).min(range.1));
            if ka >= kb {
                *o = 1.0;
                continue;
            }
            let op_key = run.key.backward_op(run.op(i));
            let diff: i64 = (0..draws as u64)
                .map(|s| {
                    let (a, b) = self.sample_pair(ka, kb, DrawKey::backward_draw(op_key, s));
                    b as i64 - a as i64
                })
                .sum();
            *o = diff as f32 / (draws as f32 * (kb - ka) as f32);
        }
    }
    /// The source's table of E[readout | ideal code], when it has one (an error model,
    /// measured or synthetic). A source that can only be sampled (a chip behind a link,
    /// a replay of recorded readouts) has none (the default): it serves the `sampled`
    /// and `ideal` modes with the `ste` and `stat:S` estimators, while the `expected`
    /// mode and the exact slope `stat` need the table ([`CimRuntime::new`] says so).
    fn table(&self) -> Option<&dyn ReadoutTable> {
        None
    }
    /// How reports name this source (synthetic models say so).
    fn label(&self) -> String;
    /// The (ideal, measured) code ranges this source covers (`None`: it takes any code,
    /// as a chip behind a link does). [`CimRuntime::new`] checks them against the ADC.
    fn code_ranges(&self) -> Option<((i32, i32), (i32, i32))> {
        None
    }
    /// The spread of fixed-pattern variation between chips and columns this source
    /// describes (none by default); see [`super::chip`].
    fn fixed_pattern(&self) -> FixedPattern {
        FixedPattern::default()
    }
    /// Chip `seed` of a macro with `adcs` ADC columns (`None`: the nominal chip). By
    /// default a draw of [`Readout::fixed_pattern`].
    fn chip(&self, adcs: usize, seed: u64) -> Option<Chip> {
        Chip::of_pattern(&self.fixed_pattern(), adcs, seed)
    }
}

impl Readout for ErrorModel {
    fn sample(&self, k: i32, draw: u64) -> i32 {
        ErrorModel::sample(self, k, draw)
    }
    fn sample_run(&self, codes: &[i32], run: DrawRun, out: &mut [f32]) {
        // The same draws as the default, vectorised where the CPU allows (see em::draw).
        self.sample_stream(codes, run.key.forward_key(), run.op0, run.stride, out)
    }
    /// Inverse-CDF draws at both codes from the draw's high 32 bits.
    fn sample_pair(&self, ka: i32, kb: i32, draw: u64) -> (i32, i32) {
        let x = (draw >> 32) as u32;
        (self.quantile(ka, x), self.quantile(kb, x))
    }
    /// Each draw is the coupled pair's difference drawn from its exact law (see
    /// [`ErrorModel::pair_difference`]): the estimator of the default, in O(1). The pair
    /// is the model's rows `k ± 1` (one-sided only at the model's own ends, the ADC's
    /// edges included), so `stat:S` averages to the central difference — which is
    /// `stat` wherever the table is well measured; where it is sparse, `stat` is smoothed
    /// over a wider window and `stat:S` is not.
    fn slope_draws_run(
        &self,
        codes: &[i32],
        _range: (i32, i32),
        draws: u32,
        run: DrawRun,
        out: &mut [f32],
    ) {
        self.slope_stream(codes, run.key.backward_key(), run.op0, run.stride, draws, out)
    }
    fn table(&self) -> Option<&dyn ReadoutTable> {
        Some(self)
    }
    fn label(&self) -> String {
        ErrorModel::label(self)
    }
    fn code_ranges(&self) -> Option<((i32, i32), (i32, i32))> {
        Some(((self.kmin, self.kmax), (self.jmin, self.jmax)))
    }
    fn fixed_pattern(&self) -> FixedPattern {
        self.fixed_pattern
    }
    /// A measured chip is chip 0; other chips are drawn from the fixed pattern.
    fn chip(&self, adcs: usize, seed: u64) -> Option<Chip> {
        if seed == 0 && self.columns.len() == adcs {
            let (g, o) = self.columns.iter().copied().unzip();
            return Some(Chip::from_columns(0, g, o));
        }
        Chip::of_pattern(&self.fixed_pattern, adcs, seed)
    }
}

impl ReadoutTable for ErrorModel {
    fn mean(&self, k: i32) -> f32 {
        ErrorModel::mean(self, k)
    }
    fn slope(&self, k: i32) -> f32 {
        ErrorModel::slope(self, k)
    }
}

/// Hides every capability of a source but sampling (one read or a run of reads): a chip
/// behind a link, emulated by an error model. It reads the same codes as the source
/// (same draws, same chips);
/// `stat:S` then pairs draws with the same bits at both codes (the trait's default)
/// instead of the table's inverse CDF, and `expected` and `stat` are refused. For
/// checking that training works through a source without a table before a chip is
/// in the loop (pipeline `readout_source = sample-only`).
pub struct SampleOnly(pub Arc<dyn Readout>);

impl Readout for SampleOnly {
    fn sample(&self, k: i32, draw: u64) -> i32 {
        self.0.sample(k, draw)
    }
    /// Batched reads are still reads (a chip behind a link would batch them too).
    fn sample_run(&self, codes: &[i32], run: DrawRun, out: &mut [f32]) {
        self.0.sample_run(codes, run, out)
    }
    fn label(&self) -> String {
        format!("{} (sample only)", self.0.label())
    }
    fn code_ranges(&self) -> Option<((i32, i32), (i32, i32))> {
        self.0.code_ranges()
    }
    fn fixed_pattern(&self) -> FixedPattern {
        self.0.fixed_pattern()
    }
    fn chip(&self, adcs: usize, seed: u64) -> Option<Chip> {
        self.0.chip(adcs, seed)
    }
}

/// The forward mode of a CIM layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadoutMode {
    /// ADC quantization only: the readout is the ideal code.
    Ideal,
    /// One draw from the readout source per macro operation.
    Sampled,
    /// E[readout | ideal code] per macro operation.
    Expected,
}

impl ReadoutMode {
    /// `ideal`, `sampled` or `expected`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "ideal" => Ok(ReadoutMode::Ideal),
            "sampled" => Ok(ReadoutMode::Sampled),
            "expected" => Ok(ReadoutMode::Expected),
            _ => Err(crate::Error::invalid(format!(
                "unknown readout mode '{s}' (ideal, sampled, expected)"
            ))),
        }
    }
}

/// The most draws `stat:S` takes per macro operation.
pub const MAX_DRAWS: u32 = 1 << 16;

/// The backward estimator through the readout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimator {
    /// Straight-through: slope 1 (saturation ignored).
    Ste,
    /// Slope of E[readout | ideal] at the tile's ideal code: exactly from the table when
    /// `draws == 0` (central differences, smoothed where the table is sparse), else
    /// the mean of `draws` coupled pair differences at the neighbouring codes
    /// ([`Readout::slope_draws_run`]: common random numbers, about 18× less variance than
    /// independent draws on `current-domain`). Zero where the partial sum lies beyond
    /// the ADC range (saturated).
    Statistical {
        /// Coupled pair differences per macro operation (0: the exact slope), at most
        /// [`MAX_DRAWS`].
        draws: u32,
    },
}

impl Estimator {
    /// `ste`, `stat` (exact slope), or `stat:S`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s.split_once(':') {
            None if s == "ste" => Ok(Estimator::Ste),
            None if s == "stat" => Ok(Estimator::Statistical { draws: 0 }),
            Some(("stat", n)) => match n.parse::<u32>() {
                Ok(draws) if draws <= MAX_DRAWS => Ok(Estimator::Statistical { draws }),
                _ => Err(crate::Error::invalid(format!(
                    "bad estimator '{s}': S must be a whole number from 0 (the exact slope, as `stat`) to {MAX_DRAWS}"
                ))),
            },
            _ => Err(crate::Error::invalid(format!("unknown estimator '{s}' (ste, stat, stat:S)"))),
        }
    }
    /// The spec [`Estimator::parse`] reads back: `ste` or `stat:S`.
    pub fn describe(&self) -> String {
        match self {
            Estimator::Ste => "ste".into(),
            Estimator::Statistical { draws } => format!("stat:{draws}"),
        }
    }
}

/// Everything the CIM layers of one forward pass share.
#[derive(Clone)]
pub struct CimRuntime {
    /// The macro the layers are mapped onto.
    pub spec: MacroSpec,
    /// Where the readouts come from (the error model, or another source).
    pub readout: Arc<dyn Readout>,
    /// The forward mode.
    pub mode: ReadoutMode,
    /// The backward estimator through the readout.
    pub estimator: Estimator,
    /// Run seed: with `step`, it keys every draw of the pass.
    pub seed: u64,
    /// Training step (or Monte-Carlo repetition) of this pass.
    pub step: u64,
    /// E-PACT (learned lower bound) or PACT (lower bound 0).
    pub act_quant: crate::nn::layers::ActQuantKind,
    /// Macro operations read out so far (all layers, all passes using this runtime).
    pub readouts: Arc<std::sync::atomic::AtomicU64>,
    /// The chip instance whose columns the readouts go through (`None`: the nominal
    /// chip, every column gain 1 and offset 0). Not applied in the `ideal` mode.
    pub chip: Option<Arc<Chip>>,
    /// When set, the layers add the CPU time of each part of their work to it.
    pub profile: Option<Arc<super::CimProfile>>,
    /// When set, the layers count their macro operations and those whose partial sum
    /// clipped (beyond the ADC's range), per layer.
    pub clips: Option<Arc<super::ClipCounts>>,
}

impl CimRuntime {
    /// A runtime with E-PACT, seed 0, step 0. The macro must be valid and the readout
    /// source must fit its ADC: every ideal code the ADC produces covered, and no
    /// measured code beyond the ADC's range (a model of another ADC would otherwise be
    /// clamped without a word).
    pub fn new(
        spec: MacroSpec,
        readout: Arc<dyn Readout>,
        mode: ReadoutMode,
        estimator: Estimator,
    ) -> crate::Result<Self> {
        spec.validate()?;
        let (lo, hi) = (spec.adc.kmin, spec.adc.kmax);
        if let Some(((kmin, kmax), (jmin, jmax))) = readout.code_ranges() {
            if kmin > lo || kmax < hi {
                return Err(crate::Error::invalid(format!(
                    "error model '{}' covers ideal codes {kmin}..={kmax}; macro '{}' has an ADC producing {lo}..={hi}",
                    readout.label(),
                    spec.name
                )));
            }
            if jmin < lo || jmax > hi {
                return Err(crate::Error::invalid(format!(
                    "error model '{}' reads codes {jmin}..={jmax}; macro '{}' has an ADC of {lo}..={hi}: a model of another ADC",
                    readout.label(),
                    spec.name
                )));
            }
        }
        let rt = CimRuntime {
            spec,
            readout,
            mode,
            estimator,
            seed: 0,
            step: 0,
            act_quant: crate::nn::layers::ActQuantKind::EPact,
            readouts: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            chip: None,
            profile: None,
            clips: None,
        };
        rt.check_source()?;
        Ok(rt)
    }

    /// Refuses a forward mode or estimator that needs the readout source's table
    /// ([`Readout::table`]) when the source can only be sampled. The CIM layers check
    /// it too (the fields are public, so a runtime can be changed after `new`).
    pub fn check_source(&self) -> crate::Result<()> {
        if self.readout.table().is_some() {
            return Ok(());
        }
        let needs = match (self.mode, self.estimator) {
            (ReadoutMode::Expected, _) => "the `expected` readout mode",
            (ReadoutMode::Sampled, Estimator::Statistical { draws: 0 }) => {
                "the exact-slope estimator `stat`"
            }
            _ => return Ok(()),
        };
        Err(crate::Error::invalid(format!(
            "readout source '{}' can only be sampled (it has no table of E[readout | code]), and {needs} needs one: use `stat:S` (S sampled pairs per operation) or `ste`",
            self.readout.label()
        )))
    }

    /// The same runtime on chip `seed` of the readout source (see [`Readout::chip`]; the
    /// nominal chip when the source has no fixed pattern).
    pub fn on_chip(&self, seed: u64) -> Self {
        let chip = self.readout.chip(self.spec.adcs(), seed).map(Arc::new);
        CimRuntime { chip, ..self.clone() }
    }

    /// Gain and offset of the ADC column that reads tile `tile` of channel `channel`
    /// (`(1, 0)` on the nominal chip and in the `ideal` mode).
    #[inline]
    pub fn column(&self, tile: usize, channel: usize) -> (f32, f32) {
        match (&self.chip, self.mode) {
            (Some(c), ReadoutMode::Sampled | ReadoutMode::Expected) => {
                c.column(self.spec.adc_of(tile, channel))
            }
            _ => (1.0, 0.0),
        }
    }
}

const FORWARD_TAG: u64 = 0xF0;
const BACKWARD_TAG: u64 = 0xB0;
/// The step between the backward draws of one operation ([`DrawKey::backward_draw`]):
/// (2^32/ρ, 2^32/ρ²) in the (high, low) 32-bit halves, ρ = 1.3247… the plastic number
/// (the R2 sequence, whose points are the most evenly spread of its kind in 2-D).
pub(crate) const LATTICE_STEP: u64 = 0xC13F_A9A9_91E1_0DA5;

/// The keys of one layer's draws in one pass.
#[derive(Clone, Copy, Debug)]
pub struct DrawKey {
    forward: u64,
    backward: u64,
}

impl DrawKey {
    /// The keys of layer `layer`'s draws at step `step` of the run seeded `seed`.
    pub fn new(seed: u64, layer: u64, step: u64) -> Self {
        DrawKey {
            forward: key(&[seed, layer, step, FORWARD_TAG]),
            backward: key(&[seed, layer, step, BACKWARD_TAG]),
        }
    }
    /// The forward draw of macro operation `op` (its global index in the layer): the
    /// `op`-th output of a SplitMix64 stream started at the layer's key.
    #[inline]
    pub fn forward(&self, op: u64) -> u64 {
        mix64(self.forward.wrapping_add(op.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }
    /// The key the forward stream starts at (`forward(op) = mix64(key + op·φ)`).
    pub(crate) fn forward_key(&self) -> u64 {
        self.forward
    }
    /// Backward draw `s` of macro operation `op` (slope estimation).
    #[inline]
    pub fn backward(&self, op: u64, s: u64) -> u64 {
        Self::backward_draw(self.backward_op(op), s)
    }
    /// The key the backward draws start from.
    pub(crate) fn backward_key(&self) -> u64 {
        self.backward
    }
    /// The part of [`DrawKey::backward`] shared by all draws of one operation: the
    /// `op`-th output of a SplitMix64 stream started at the layer's backward key (as
    /// [`DrawKey::forward`], from another key).
    #[inline]
    pub fn backward_op(&self, op: u64) -> u64 {
        mix64(self.backward.wrapping_add(op.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }
    /// Draw `s` from an operation's [`DrawKey::backward_op`]: the operation's random
    /// word shifted by `s` steps of a two-dimensional Kronecker lattice (high and low
    /// 32 bits step by 1/ρ and 1/ρ², ρ the plastic number), modulo 2^64.
    ///
    /// Adding a constant modulo 2^64 keeps a uniform word uniform, so every draw has
    /// exactly the law of an independent one and an average of draws stays unbiased;
    /// the draws of one operation are spread evenly over both halves of the word (the
    /// column and the keep/alias choice of an alias table) instead of falling
    /// independently, and cost one addition each instead of a hash.
    #[inline]
    pub fn backward_draw(op_key: u64, s: u64) -> u64 {
        op_key.wrapping_add(s.wrapping_mul(LATTICE_STEP))
    }
}

/// A run of macro operations numbered `op0, op0 + stride, …` (consecutive output
/// pixels of one channel and tile), with the layer's draw key.
#[derive(Clone, Copy, Debug)]
pub struct DrawRun {
    /// The layer's draw key.
    pub key: DrawKey,
    /// Number of the run's first macro operation.
    pub op0: u64,
    /// Step between the numbers of consecutive operations of the run.
    pub stride: u64,
}

impl DrawRun {
    /// Number of the run's `i`-th operation: `op0 + i·stride`.
    #[inline]
    pub fn op(&self, i: usize) -> u64 {
        self.op0 + i as u64 * self.stride
    }
}

#[cfg(test)]
mod tests;
