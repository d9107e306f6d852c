//! How a CIM layer reads its macro: the [`Readout`] source, the forward mode, the
//! backward estimator, and the draw keys that make every readout reproducible.

use super::chip::{Chip, FixedPattern};
use super::em::ErrorModel;
use super::MacroSpec;
use crate::rng::{key, mix64};
use std::sync::Arc;

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
    /// How reports name this source (synthetic models say so).
    fn label(&self) -> String;
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
    fn mean_run(&self, codes: &[i32], out: &mut [f32]) {
        out.iter_mut().zip(codes).for_each(|(o, &k)| *o = ErrorModel::mean(self, k));
    }
    fn slope_run(&self, codes: &[i32], out: &mut [f32]) {
        out.iter_mut().zip(codes).for_each(|(o, &k)| *o = ErrorModel::slope(self, k));
    }
    fn mean(&self, k: i32) -> f32 {
        ErrorModel::mean(self, k)
    }
    fn slope(&self, k: i32) -> f32 {
        ErrorModel::slope(self, k)
    }
    fn label(&self) -> String {
        ErrorModel::label(self)
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
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "ideal" => Ok(ReadoutMode::Ideal),
            "sampled" => Ok(ReadoutMode::Sampled),
            "expected" => Ok(ReadoutMode::Expected),
            _ => Err(crate::Error::invalid(format!("unknown readout mode '{s}' (ideal, sampled, expected)"))),
        }
    }
}

/// The backward estimator through the readout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimator {
    /// Straight-through: slope 1 (saturation ignored).
    Ste,
    /// Slope of E[readout | ideal] at the tile's ideal code: from `draws` samples at the
    /// neighbouring codes, or exactly from the table when `draws == 0`. Zero where the
    /// partial sum lies beyond the ADC range (saturated).
    Statistical { draws: u32 },
}

impl Estimator {
    /// `ste`, `stat` (exact slope), or `stat:S`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s.split_once(':') {
            None if s == "ste" => Ok(Estimator::Ste),
            None if s == "stat" => Ok(Estimator::Statistical { draws: 0 }),
            Some(("stat", n)) => n
                .parse()
                .map(|draws| Estimator::Statistical { draws })
                .map_err(|_| crate::Error::invalid(format!("bad estimator '{s}': S must be a whole number"))),
            _ => Err(crate::Error::invalid(format!("unknown estimator '{s}' (ste, stat, stat:S)"))),
        }
    }
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
    pub spec: MacroSpec,
    pub readout: Arc<dyn Readout>,
    pub mode: ReadoutMode,
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
}

impl CimRuntime {
    /// A runtime with E-PACT, seed 0, step 0.
    pub fn new(spec: MacroSpec, readout: Arc<dyn Readout>, mode: ReadoutMode, estimator: Estimator) -> Self {
        CimRuntime {
            spec,
            readout,
            mode,
            estimator,
            seed: 0,
            step: 0,
            act_quant: crate::nn::layers::ActQuantKind::EPact,
            readouts: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            chip: None,
        }
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
            (Some(c), ReadoutMode::Sampled | ReadoutMode::Expected) => c.column(self.spec.adc_of(tile, channel)),
            _ => (1.0, 0.0),
        }
    }
}

const FORWARD_TAG: u64 = 0xF0;
const BACKWARD_TAG: u64 = 0xB0;

/// The keys of one layer's draws in one pass.
#[derive(Clone, Copy, Debug)]
pub struct DrawKey {
    forward: u64,
    backward: u64,
}

impl DrawKey {
    pub fn new(seed: u64, layer: u64, step: u64) -> Self {
        DrawKey { forward: key(&[seed, layer, step, FORWARD_TAG]), backward: key(&[seed, layer, step, BACKWARD_TAG]) }
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
        mix64(mix64(self.backward ^ mix64(op)) ^ s)
    }
}

/// A run of macro operations numbered `op0, op0 + stride, …` (consecutive output
/// pixels of one channel and tile), with the layer's draw key.
#[derive(Clone, Copy, Debug)]
pub struct DrawRun {
    pub key: DrawKey,
    pub op0: u64,
    pub stride: u64,
}

impl DrawRun {
    #[inline]
    pub fn op(&self, i: usize) -> u64 {
        self.op0 + i as u64 * self.stride
    }
}
