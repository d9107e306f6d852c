//! The deployable model (`dnat export`): a trained network as the graph of ops it
//! computes — every conv / linear layer with its 4-bit weight codes laid out per macro
//! tile (on the macro) or its f32 weights (digital), its E-PACT bounds and scales, the
//! batchnorm that follows it folded in, and the ReLUs, residual additions, poolings,
//! flattening and shortcuts between the layers — so that a program knowing nothing of
//! the architecture can run it on a real macro. The graph is a trace of one forward
//! pass ([`crate::nn::trace`]); a network using an op the format cannot state is
//! refused by name, never written in part.
//!
//! Frame: [`super::framed`] with magic `DNATDEPL`, version 2. Payload, little-endian;
//! strings are u32 length + UTF-8:
//!
//! ```text
//! arch str, num_classes u32               the network's name and output size
//! input: channels u32, height u32, width u32
//! input normalisation: mean[3] f32, std[3] f32          x = (pixel/255 − mean[c]) / std[c]
//! macro: name str, rows u32, input_bits u32, weight_bits u32, input_bits_per_cycle u32,
//!        adc_kmin i32, adc_kmax i32, adc_step f32
//! nodes u32, then per node i — value 0 is the normalised input, node i produces value
//! i + 1, the last node's value is the logits:
//!   kind u8, inputs u8, input value ids u32[inputs] (each ≤ i)
//!   0 conv:   name str, cout u32, cin u32, kernel u32, stride u32, padding u32, body
//!   1 linear: name str, cout u32, cin u32, body (a 1×1 conv on a 1×1 image)
//!   2 batchnorm not folded into a layer: channels u32, scale f32[c], shift f32[c]
//!                                   y = scale·x + shift per channel
//!   3 relu                          4 add (two inputs of one shape)
//!   5 max-pool: kernel u32, stride u32 (no padding; output side (side − kernel)/stride + 1)
//!   6 global average pool           (C, H, W) → (C)
//!   7 flatten                       (C, H, W) → (C·H·W) in (c, y, x) order
//!   8 subsample + channel padding: stride u32, cout u32
//!                                   y[p + c, i, j] = x[c, s·i, s·j], p = (cout − cin)/2,
//!                                   zero elsewhere; side ⌈side/s⌉ (ResNet option A)
//! body:
//!   name str                        PyTorch state_dict prefix, e.g. "layer1.0.conv1"
//!   on_macro u8
//!   on_macro = 1:
//!     lo f32, hi f32                E-PACT: q = round((clip(x, lo, hi) − lo) / s_x), s_x = (hi − lo)/(2^input_bits − 1)
//!     tiles u32                     the reduction axis K = cin·kernel² in (cin, ky, kx) order, cut
//!                                   into tiles of `rows`
//!     codes i8[cout][tiles][rows]   signed weight codes; rows past K hold 0 (not activated)
//!     weight_scale f32[cout]        s_w
//!     scale f32[cout], shift f32[cout]
//!         y = scale·(s_x·Σ_t R_t + lo·Σ_{valid k} w_k) + shift
//!         with R_t the readout of tile t in partial-sum units (code · adc_step) and the sum
//!         over valid (non-padding) window positions; scale = g·s_w, shift = g·bias + h,
//!         where the folded batchnorm is g·z + h (g = γ/√(var + ε), h = β − g·mean), or
//!         g = 1, h = 0
//!   on_macro = 0 (digital):
//!     weight f32[cout][K], bias f32[cout]   batchnorm folded in
//! ```
//!
//! A batchnorm is folded into the layer before it when that layer's output feeds
//! nothing else. A loaded model is checked whole: node kinds, inputs, and every shape
//! from the input to logits of `num_classes`.

mod build;
mod format;
mod interpret;

use super::atomic;
use crate::cim::MacroSpec;
use crate::data::Normalize;
use crate::{Error, Result};
use std::path::Path;

const MAGIC: &[u8; 8] = b"DNATDEPL";
const VERSION: u32 = 2;
/// The most elements one value of a loaded graph may have (per image).
const MAX_VALUE_LEN: usize = 1 << 30;
/// The input every exported network is traced on: a CIFAR image (the data sets dnat reads).
pub const INPUT: [u32; 3] = [3, 32, 32];

/// A trained network in the deployable format: its input, normalisation, macro and graph
/// of ops (the file layout is in the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct DeployModel {
    /// The architecture's registry name (e.g. `resnet20`).
    pub arch: String,
    /// Number of logits the last node produces.
    pub num_classes: u32,
    /// (channels, height, width) of one input image.
    pub input: [u32; 3],
    /// How pixels become the input value: `x = (pixel/255 − mean[c]) / std[c]`.
    pub norm: Normalize,
    /// The macro the layers' codes are laid out for. Its array organisation is not stored:
    /// a loaded model has the default's `arrays` and `columns`.
    pub macro_spec: MacroSpec,
    /// In forward order; node `i` produces value `i + 1` (value 0: the input).
    pub nodes: Vec<DeployNode>,
}

/// One node of the graph: the values it reads and the op it computes.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployNode {
    /// Value ids read, each ≤ this node's index.
    pub inputs: Vec<u32>,
    /// What the node computes.
    pub op: DeployOp,
}

/// An op of the deployable graph; each value is one image's, without a batch axis.
#[derive(Clone, Debug, PartialEq)]
pub enum DeployOp {
    /// A 2-D convolution of a (cin, H, W) value, with the batchnorm that follows it folded
    /// in when that batchnorm is the only reader of its output.
    Conv(DeployLayer),
    /// A layer with `kernel = 1`, `stride = 1`, `padding = 0` on a (cin) vector.
    Linear(DeployLayer),
    /// A batchnorm not folded into a layer: `y = scale[c]·x + shift[c]` per channel.
    BatchNorm {
        /// Per-channel factor, `[channels]`.
        scale: Vec<f32>,
        /// Per-channel offset, `[channels]`.
        shift: Vec<f32>,
    },
    /// max(x, 0), elementwise.
    Relu,
    /// The elementwise sum of two values of one shape (a residual connection).
    Add,
    /// The maximum over `kernel`×`kernel` windows every `stride` pixels, no padding: output
    /// side `(side − kernel)/stride + 1`.
    MaxPool {
        /// Window side, in pixels.
        kernel: u32,
        /// Step between windows, in pixels.
        stride: u32,
    },
    /// (C, H, W) → (C): the mean of each channel.
    GlobalAvgPool,
    /// (C, H, W) → (C·H·W), in (c, y, x) order.
    Flatten,
    /// The ResNet option-A shortcut: every `stride`-th pixel (side ⌈side/stride⌉), channels
    /// zero-padded to `cout`, (cout − cin)/2 of them before the input's.
    SubsamplePad {
        /// Subsampling step, in pixels.
        stride: u32,
        /// Output channels (≥ the input's).
        cout: u32,
    },
}

impl DeployOp {
    fn kind(&self) -> u8 {
        match self {
            DeployOp::Conv(_) => 0,
            DeployOp::Linear(_) => 1,
            DeployOp::BatchNorm { .. } => 2,
            DeployOp::Relu => 3,
            DeployOp::Add => 4,
            DeployOp::MaxPool { .. } => 5,
            DeployOp::GlobalAvgPool => 6,
            DeployOp::Flatten => 7,
            DeployOp::SubsamplePad { .. } => 8,
        }
    }
    /// How many values the op reads.
    fn arity(&self) -> usize {
        if matches!(self, DeployOp::Add) { 2 } else { 1 }
    }
}

/// A conv or linear layer of the graph: its shape and its weights (on the macro or digital).
#[derive(Clone, Debug, PartialEq)]
pub struct DeployLayer {
    /// PyTorch `state_dict` prefix of the layer, e.g. `layer1.0.conv1`.
    pub name: String,
    /// Output channels (features, for a linear layer).
    pub cout: u32,
    /// Input channels (features, for a linear layer).
    pub cin: u32,
    /// Kernel side, in pixels (1 for a linear layer).
    pub kernel: u32,
    /// Stride, in pixels (1 for a linear layer).
    pub stride: u32,
    /// Zero padding on each side, in pixels (0 for a linear layer).
    pub padding: u32,
    /// The weights and how they are applied.
    pub body: Body,
}

/// A layer's weights: signed codes on the macro with their float epilogue, or f32
/// weights computed digitally; either way with the batchnorm that follows, if any, folded in.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// On the macro: the E-PACT input bounds `lo`, `hi`; `tiles` = ⌈K / rows⌉; weight `codes`
    /// laid out `[cout][tiles][rows]` (rows past K hold 0); and per output channel the weight
    /// scale s_w and the epilogue's `scale` and `shift` (formulas in the module docs).
    Macro {
        /// E-PACT lower input bound.
        lo: f32,
        /// E-PACT upper input bound.
        hi: f32,
        /// Tiles of the reduction axis, ⌈K / rows⌉.
        tiles: u32,
        /// Signed weight codes, `[cout][tiles][rows]`; rows past K hold 0.
        codes: Vec<i8>,
        /// Weight scale s_w per output channel, `[cout]`.
        weight_scale: Vec<f32>,
        /// Epilogue factor per output channel, `[cout]` (`g·s_w`).
        scale: Vec<f32>,
        /// Epilogue offset per output channel, `[cout]` (`g·bias + h`).
        shift: Vec<f32>,
    },
    /// Digital: `weight` row-major `[cout][K]` with K in (cin, ky, kx) order, and `bias` `[cout]`.
    Digital {
        /// Weights, row-major `[cout][K]`, K in (cin, ky, kx) order.
        weight: Vec<f32>,
        /// Bias, `[cout]`.
        bias: Vec<f32>,
    },
}

impl DeployLayer {
    /// Length of the reduction axis.
    pub fn k(&self) -> usize {
        (self.cin * self.kernel * self.kernel) as usize
    }
}

impl DeployModel {
    /// Writes the file to `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic::write(path, &self.to_bytes())
    }

    /// Reads the file at `path`; the error names the file, and says whether it could not be
    /// read or is not a valid deployable model.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|m| Error::format(path, m))
    }
}

#[cfg(test)]
pub(crate) mod tests;
