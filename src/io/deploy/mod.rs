//! The deployable model (`dnat export`): a trained network as the graph of ops it
//! computes — every conv / linear layer with its 4-bit weight codes laid out per macro
//! tile (on the macro) or its f32 weights (digital), its E-PACT bounds and scales, the
//! batchnorm that follows it folded in, and the ReLUs, residual additions, poolings,
//! flattening and shortcuts between the layers — so that a program knowing nothing of
//! the architecture can run it on a real macro. The graph is a trace of one forward
//! pass ([`crate::nn::trace`]); a network using an op the format cannot state is
//! refused by name, never written in part.
//!
//! Frame: [`super::framed`] with magic `DNATDEPL`, version 3 (versions 1 and 2 still
//! load: see below). Payload, little-endian; strings are u32 length + UTF-8:
//!
//! ```text
//! arch str, num_classes u32               the network's name and output size
//! input: channels u32, height u32, width u32
//! input normalisation: mean[3] f32, std[3] f32          x = (pixel/255 − mean[c]) / std[c]
//! macro: name str, rows u32, input_bits u32, weight_bits u32, input_bits_per_cycle u32,
//!        adc_kmin i32, adc_kmax i32, adc_step f32, arrays u32, columns u32
//! nodes u32, then per node i — value 0 is the normalised input, node i produces value
//! i + 1, the last node's value is the logits:
//!   kind u8, inputs u8, input value ids u32[inputs] (each ≤ i)
//!   0 conv:   name str, cout u32, cin u32, kernel u32, stride u32, padding u32, body
//!   1 linear: name str, cout u32, cin u32, body (a 1×1 conv on a 1×1 image)
//!   2 batchnorm not folded into a layer: channels u32, batchnorm
//!   3 relu                          4 add (two inputs of one shape)
//!   5 max-pool: kernel u32, stride u32 (no padding; output side (side − kernel)/stride + 1)
//!   6 global average pool           (C, H, W) → (C)
//!   7 flatten                       (C, H, W) → (C·H·W) in (c, y, x) order
//!   8 subsample + channel padding: stride u32, cout u32
//!                                   y[p + c, i, j] = x[c, s·i, s·j], p = (cout − cin)/2,
//!                                   zero elsewhere; side ⌈side/s⌉ (ResNet option A)
//! batchnorm (c channels): eps f32, gamma f32[c], beta f32[c], mean f32[c], var f32[c]
//!     y = x·a + b per channel, a = γ·inv, b = β − mean·a, inv = 1/√(var + ε) (computed
//!     in f64, rounded to f32 once): the network's eval-mode batchnorm, to the bit
//! body:
//!   name str                        PyTorch state_dict prefix, e.g. "layer1.0.conv1"
//!   on_macro u8
//!   on_macro = 1:
//!     lo f32, hi f32                E-PACT: q = round((clip(x, lo, h) − lo) / s_x), h = max(hi, lo + 1e-3),
//!                                   s_x = (h − lo)/(2^input_bits − 1)
//!     tiles u32                     the reduction axis K = cin·kernel² in (cin, ky, kx) order, cut
//!                                   into tiles of `rows`
//!     codes i8[cout][tiles][rows]   signed weight codes; rows past K hold 0 (not activated)
//!     weight_scale f32[cout]        s_w
//!     bias f32[cout]                the layer's bias (0 without one)
//!     has_batchnorm u8, then batchnorm (cout channels) if 1: the batchnorm that follows
//!         z = s_w·(s_x·Σ_t R_t + lo·Σ_{valid k} w_k) + bias, then the batchnorm
//!         with R_t the readout of tile t in partial-sum units (code · adc_step) and the sum
//!         over valid (non-padding) window positions
//!     scale f32[cout], shift f32[cout]   the same folded, for a host that computes the
//!         epilogue itself: y = scale·(s_x·Σ_t R_t + lo·Σ w_k) + shift, scale = a·s_w,
//!         shift = a·bias + b (a = 1, b = 0 without a batchnorm); a reader checks that
//!         they are the fold of the fields above
//!   on_macro = 0 (digital):
//!     weight f32[cout][K], bias f32[cout], has_batchnorm u8, then batchnorm if 1
//! ```
//!
//! Version 2 had no `arrays`, `columns`, `bias` or batchnorm fields: its layers held the
//! fold alone (a digital layer its weights multiplied by `a`) and a lone batchnorm its
//! `scale`, `shift`. Such a file loads with the fold as its layers' `weight_scale` and
//! `bias`, no batchnorm, and the default macro's arrays and columns: it runs as before,
//! but there is no batchnorm left in it to recalibrate (re-export the checkpoint).
//!
//! A batchnorm is stated with the layer before it when that layer's output feeds
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
const VERSION: u32 = 3;
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
    /// The macro the layers' codes are laid out for, with the arrays and columns the
    /// runtime places them on.
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
    /// A 2-D convolution of a (cin, H, W) value, with the batchnorm that follows it when
    /// that batchnorm is the only reader of its output.
    Conv(DeployLayer),
    /// A layer with `kernel = 1`, `stride = 1`, `padding = 0` on a (cin) vector.
    Linear(DeployLayer),
    /// A batchnorm not stated with a layer.
    BatchNorm(BatchNorm),
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
            DeployOp::BatchNorm(_) => 2,
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
/// weights computed digitally; either way with its bias and the batchnorm that follows, if any.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// On the macro: the E-PACT input bounds `lo`, `hi`; `tiles` = ⌈K / rows⌉; weight `codes`
    /// laid out `[cout][tiles][rows]` (rows past K hold 0); the weight scale s_w and the
    /// bias per output channel; and the batchnorm that follows (formulas in the module docs).
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
        /// Bias per output channel, `[cout]` (0 for a layer without one).
        bias: Vec<f32>,
        /// The batchnorm applied to the layer's output, if one follows it.
        batchnorm: Option<BatchNorm>,
    },
    /// Digital: `weight` row-major `[cout][K]` with K in (cin, ky, kx) order, `bias`
    /// `[cout]`, and the batchnorm applied to the output, if one follows it.
    Digital {
        /// Weights, row-major `[cout][K]`, K in (cin, ky, kx) order.
        weight: Vec<f32>,
        /// Bias, `[cout]`.
        bias: Vec<f32>,
        /// The batchnorm applied to the layer's output, if one follows it.
        batchnorm: Option<BatchNorm>,
    },
}

/// A batchnorm as the network holds it: `y = (x − mean)/√(var + ε)·γ + β` per channel,
/// applied as `x·a + b` with [`BatchNorm::affine`]'s `a`, `b` (the network's own numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// γ per channel.
    pub gamma: Vec<f32>,
    /// β per channel.
    pub beta: Vec<f32>,
    /// Running mean per channel.
    pub mean: Vec<f32>,
    /// Running (unbiased) variance per channel.
    pub var: Vec<f32>,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl BatchNorm {
    /// Channels.
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }
    /// The per-channel `a = γ/√(var + ε)` and `b = β − mean·a` of `y = x·a + b`, computed
    /// as the engine's eval-mode batchnorm computes them.
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let inv = crate::engine::ops::batchnorm::invstd(&self.var, self.eps);
        crate::engine::ops::batchnorm::fold(&self.mean, &inv, &self.gamma, &self.beta)
    }
}

impl DeployLayer {
    /// Length of the reduction axis.
    pub fn k(&self) -> usize {
        (self.cin * self.kernel * self.kernel) as usize
    }

    /// An on-macro layer's epilogue folded into one `scale`, `shift` per output channel
    /// (`y = scale·(s_x·Σ_t R_t + lo·Σ w_k) + shift`); `None` for a digital layer. The
    /// runtime applies the layer's bias and batchnorm one after the other instead, as
    /// the network does; this is what a host computing the epilogue itself needs.
    pub fn folded(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let Body::Macro { weight_scale, bias, batchnorm, .. } = &self.body else {
            return None;
        };
        let c = weight_scale.len();
        let (a, b) = batchnorm.as_ref().map_or((vec![1.0; c], vec![0.0; c]), BatchNorm::affine);
        Some((
            (0..c).map(|i| a[i] * weight_scale[i]).collect(),
            (0..c).map(|i| a[i] * bias[i] + b[i]).collect(),
        ))
    }
}

impl DeployModel {
    /// Conv and linear layers on the macro.
    pub fn macro_layers(&self) -> usize {
        let on_macro = |n: &&DeployNode| match &n.op {
            DeployOp::Conv(l) | DeployOp::Linear(l) => matches!(l.body, Body::Macro { .. }),
            _ => false,
        };
        self.nodes.iter().filter(on_macro).count()
    }

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
