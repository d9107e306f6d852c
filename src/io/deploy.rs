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

use super::{
    atomic,
    checkpoint::{count, get_str, put_str},
    framed,
};
use crate::cim::macro_spec::Adc;
use crate::cim::{MacroSpec, quant::weight_codes};
use crate::data::Normalize;
use crate::engine::MacroSlot;
use crate::engine::{Mode, ParamId, ParamStore, Tape, Tensor};
use crate::nn::{BatchNorm2d, Fwd, Network, Node, Trace};
use crate::{Error, Result};
use byteorder::{LittleEndian as LE, ReadBytesExt, WriteBytesExt};
use std::io::Cursor;
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
    BatchNorm { scale: Vec<f32>, shift: Vec<f32> },
    /// max(x, 0), elementwise.
    Relu,
    /// The elementwise sum of two values of one shape (a residual connection).
    Add,
    /// The maximum over `kernel`×`kernel` windows every `stride` pixels, no padding: output
    /// side `(side − kernel)/stride + 1`.
    MaxPool { kernel: u32, stride: u32 },
    /// (C, H, W) → (C): the mean of each channel.
    GlobalAvgPool,
    /// (C, H, W) → (C·H·W), in (c, y, x) order.
    Flatten,
    /// The ResNet option-A shortcut: every `stride`-th pixel (side ⌈side/stride⌉), channels
    /// zero-padded to `cout`, (cout − cin)/2 of them before the input's.
    SubsamplePad { stride: u32, cout: u32 },
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
        lo: f32,
        hi: f32,
        tiles: u32,
        codes: Vec<i8>,
        weight_scale: Vec<f32>,
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    /// Digital: `weight` row-major `[cout][K]` with K in (cin, ky, kx) order, and `bias` `[cout]`.
    Digital { weight: Vec<f32>, bias: Vec<f32> },
}

impl DeployLayer {
    /// Length of the reduction axis.
    pub fn k(&self) -> usize {
        (self.cin * self.kernel * self.kernel) as usize
    }
}

/// Batchnorm as `g·z + h` per channel (identity without one).
fn bn_affine(bn: Option<&BatchNorm2d>, store: &ParamStore, c: usize) -> (Vec<f32>, Vec<f32>) {
    let Some(bn) = bn else {
        return (vec![1.0; c], vec![0.0; c]);
    };
    let (gamma, beta) = (store.param(bn.weight).value.data(), store.param(bn.bias).value.data());
    let (mean, var) =
        (store.buffer(bn.running_mean).value.data(), store.buffer(bn.running_var).value.data());
    let g: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + bn.eps).sqrt()).collect();
    let h = (0..c).map(|i| beta[i] - g[i] * mean[i]).collect();
    (g, h)
}

/// A conv or linear layer with the batchnorm folded into it (`bn`, when there is one).
fn layer(
    store: &ParamStore,
    spec: &MacroSpec,
    weight: ParamId,
    bias: Option<ParamId>,
    cim: Option<&MacroSlot>,
    bn: Option<&BatchNorm2d>,
) -> (String, usize, usize, usize, Body) {
    let w = &store.param(weight).value;
    let name = store.param(weight).name.trim_end_matches(".weight").to_string();
    let shape = w.shape();
    let (cout, cin) = (shape[0], shape[1]);
    let kernel = if shape.len() == 4 { shape[2] } else { 1 };
    let k = w.len() / cout;
    let (g, h) = bn_affine(bn, store, cout);
    let b: Vec<f32> = bias.map_or(vec![0.0; cout], |b| store.param(b).value.data().to_vec());
    let body = match cim {
        Some(q) => {
            let (codes_f, s_w) = weight_codes(w, spec);
            let tiles = spec.tiles(k);
            let mut codes = vec![0i8; cout * tiles * spec.rows];
            for co in 0..cout {
                for kk in 0..k {
                    codes[(co * tiles + kk / spec.rows) * spec.rows + kk % spec.rows] =
                        codes_f[co * k + kk] as i8;
                }
            }
            Body::Macro {
                lo: store.param(q.lo).value.data()[0],
                hi: store.param(q.hi).value.data()[0],
                tiles: tiles as u32,
                codes,
                scale: (0..cout).map(|c| g[c] * s_w[c]).collect(),
                shift: (0..cout).map(|c| g[c] * b[c] + h[c]).collect(),
                weight_scale: s_w,
            }
        }
        None => Body::Digital {
            weight: w
                .data()
                .chunks(k)
                .enumerate()
                .flat_map(|(c, row)| {
                    let gc = g[c];
                    row.iter().map(move |v| v * gc)
                })
                .collect(),
            bias: (0..cout).map(|c| g[c] * b[c] + h[c]).collect(),
        },
    };
    (name, cout, cin, kernel, body)
}

impl DeployModel {
    /// Traces one eval-mode forward pass of `net` (architecture `arch`) on an
    /// [`INPUT`]-shaped image (nothing in `store` changes) and writes its graph; refuses
    /// a network whose pass uses an op the format cannot state.
    pub fn from_network(
        net: &dyn Network,
        arch: &str,
        store: &mut ParamStore,
        spec: &MacroSpec,
        norm: Normalize,
    ) -> Result<Self> {
        spec.validate()?;
        let mut tape = Tape::new(false);
        let [c, h, w] = INPUT.map(|v| v as usize);
        let x = tape.constant(Tensor::zeros(&[1, c, h, w]));
        let mut trace = Trace::new(x);
        let y = {
            let mut cx = Fwd::new(&mut tape, store, Mode::Eval);
            cx.trace = Some(&mut trace);
            net.forward(&mut cx, x)?
        };
        let cannot = |why: String| {
            Error::invalid(format!(
                "cannot export this network: {why}; the deployable format states the layers (Conv2d, Linear, BatchNorm2d) and the ops of Fwd (relu, add, max_pool2d, global_avg_pool, flatten, subsample_pad_channels)"
            ))
        };
        if let Some(u) = trace.untraced.take() {
            return Err(cannot(u));
        }
        if trace.id_of(y) != Some(trace.ops.len()) || trace.ops.is_empty() {
            return Err(cannot("its output is not the result of the pass's last traced op".into()));
        }
        let ops = &trace.ops;
        // Readers of each value, to fold a batchnorm into the layer it alone follows.
        let mut readers = vec![Vec::new(); ops.len() + 1];
        for (i, op) in ops.iter().enumerate() {
            op.inputs.iter().for_each(|&v| readers[v].push(i));
        }
        let folded_into = |i: usize| -> Option<&BatchNorm2d> {
            match readers[i + 1].as_slice() {
                [j] => match &ops[*j].node {
                    Node::BatchNorm(bn) => Some(bn),
                    _ => None,
                },
                _ => None,
            }
        };
        // old value id → new value id; a folded batchnorm's value is its layer's.
        let mut new_id = vec![u32::MAX; ops.len() + 1];
        new_id[0] = 0;
        let mut nodes: Vec<DeployNode> = Vec::new();
        let mut skip = vec![false; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            if skip[i] {
                continue;
            }
            let inputs = op.inputs.iter().map(|&v| new_id[v]).collect();
            let (dop, fold) = match &op.node {
                Node::Conv { weight, bias, cfg, cim } => {
                    let bn = folded_into(i);
                    let (name, cout, cin, kernel, body) =
                        layer(store, spec, *weight, *bias, cim.as_ref(), bn);
                    let l = DeployLayer {
                        name,
                        cout: cout as u32,
                        cin: cin as u32,
                        kernel: kernel as u32,
                        stride: cfg.stride as u32,
                        padding: cfg.padding as u32,
                        body,
                    };
                    (DeployOp::Conv(l), bn.is_some())
                }
                Node::Linear { weight, bias, cim } => {
                    let bn = folded_into(i);
                    let (name, cout, cin, _, body) =
                        layer(store, spec, *weight, *bias, cim.as_ref(), bn);
                    (
                        DeployOp::Linear(DeployLayer {
                            name,
                            cout: cout as u32,
                            cin: cin as u32,
                            kernel: 1,
                            stride: 1,
                            padding: 0,
                            body,
                        }),
                        bn.is_some(),
                    )
                }
                Node::BatchNorm(bn) => {
                    let c = store.param(bn.weight).value.len();
                    let (scale, shift) = bn_affine(Some(bn), store, c);
                    (DeployOp::BatchNorm { scale, shift }, false)
                }
                Node::Relu => (DeployOp::Relu, false),
                Node::Add => (DeployOp::Add, false),
                Node::MaxPool { kernel, stride } => {
                    (DeployOp::MaxPool { kernel: *kernel as u32, stride: *stride as u32 }, false)
                }
                Node::GlobalAvgPool => (DeployOp::GlobalAvgPool, false),
                Node::Flatten => (DeployOp::Flatten, false),
                Node::SubsamplePad { stride, cout } => {
                    (DeployOp::SubsamplePad { stride: *stride as u32, cout: *cout as u32 }, false)
                }
            };
            nodes.push(DeployNode { inputs, op: dop });
            new_id[i + 1] = nodes.len() as u32;
            if fold {
                let j = readers[i + 1][0];
                skip[j] = true;
                new_id[j + 1] = nodes.len() as u32;
            }
        }
        let num_classes = match tape.value(y).shape() {
            &[1, classes] => classes as u32,
            other => {
                return Err(cannot(format!("its output has shape {other:?}, not (1, classes)")));
            }
        };
        let m = DeployModel {
            arch: arch.into(),
            num_classes,
            input: INPUT,
            norm,
            macro_spec: spec.clone(),
            nodes,
        };
        m.shapes().map_err(|e| cannot(format!("its graph does not check out ({e})")))?;
        Ok(m)
    }

    /// The logits of one image (C, H, W, normalised as `norm` says) computed from the
    /// file alone with the formulas documented above, on an ideal ADC (no read noise):
    /// a reference for a deployment toolchain, and the check that an export states the
    /// whole network (`tests`: within float-summation order of the network itself).
    pub fn run(&self, image: &[f32]) -> Result<Vec<f32>> {
        let m = self;
        let spec = &m.macro_spec;
        let shapes = m.shapes().map_err(Error::invalid)?;
        let want: usize = shapes[0].iter().product();
        if image.len() != want {
            return Err(Error::invalid(format!(
                "deployable model: an image of {} values, the model takes {:?} = {want}",
                image.len(),
                shapes[0]
            )));
        }
        let mut values: Vec<Vec<f32>> = vec![image.to_vec()];
        for (i, n) in m.nodes.iter().enumerate() {
            let x = &values[n.inputs[0] as usize];
            let xs = &shapes[n.inputs[0] as usize];
            let y: Vec<f32> = match &n.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) => {
                    let (h, w) = if xs.len() == 3 { (xs[1], xs[2]) } else { (1, 1) };
                    let (oh, ow) = (
                        shapes[i + 1].get(1).copied().unwrap_or(1),
                        shapes[i + 1].get(2).copied().unwrap_or(1),
                    );
                    let (k, kern, s, p) =
                        (l.k(), l.kernel as usize, l.stride as usize, l.padding as isize);
                    // Input index of reduction row kk at output (oy, ox), None on padding.
                    let at = |kk: usize, oy: usize, ox: usize| {
                        let (ci, ky, kx) = (kk / (kern * kern), kk / kern % kern, kk % kern);
                        let (iy, ix) = (
                            (oy * s) as isize + ky as isize - p,
                            (ox * s) as isize + kx as isize - p,
                        );
                        (iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize)
                            .then(|| (ci * h + iy as usize) * w + ix as usize)
                    };
                    let mut y = vec![0.0f32; l.cout as usize * oh * ow];
                    for co in 0..l.cout as usize {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                y[(co * oh + oy) * ow + ox] = match &l.body {
                                    Body::Macro { lo, hi, tiles, codes, scale, shift, .. } => {
                                        let s_x = (hi - lo) / spec.input_max() as f32;
                                        let (mut readouts, mut zero_point) = (0.0f32, 0.0f32);
                                        for t in 0..*tiles as usize {
                                            let mut psum = 0.0f32;
                                            for r in 0..spec.rows {
                                                let kk = t * spec.rows + r;
                                                let Some(idx) = at(kk, oy, ox).filter(|_| kk < k)
                                                else {
                                                    continue;
                                                };
                                                let q = ((x[idx].clamp(*lo, *hi) - lo) / s_x)
                                                    .round_ties_even();
                                                let wc = codes
                                                    [(co * *tiles as usize + t) * spec.rows + r]
                                                    as f32;
                                                psum += q * wc;
                                                zero_point += wc;
                                            }
                                            readouts += spec.adc.code(psum) as f32 * spec.adc.step;
                                        }
                                        scale[co] * (s_x * readouts + lo * zero_point) + shift[co]
                                    }
                                    Body::Digital { weight, bias } => {
                                        let dot: f64 = (0..k)
                                            .filter_map(|kk| {
                                                at(kk, oy, ox).map(|idx| {
                                                    weight[co * k + kk] as f64 * x[idx] as f64
                                                })
                                            })
                                            .sum();
                                        (dot + bias[co] as f64) as f32
                                    }
                                };
                            }
                        }
                    }
                    y
                }
                DeployOp::BatchNorm { scale, shift } => {
                    let per = x.len() / scale.len();
                    x.iter().enumerate().map(|(j, v)| scale[j / per] * v + shift[j / per]).collect()
                }
                DeployOp::Relu => x.iter().map(|v| v.max(0.0)).collect(),
                DeployOp::Add => {
                    x.iter().zip(&values[n.inputs[1] as usize]).map(|(a, b)| a + b).collect()
                }
                DeployOp::MaxPool { kernel, stride } => {
                    let (c, h, w) = (xs[0], xs[1], xs[2]);
                    let (k, s, oh, ow) =
                        (*kernel as usize, *stride as usize, shapes[i + 1][1], shapes[i + 1][2]);
                    let mut y = vec![f32::NEG_INFINITY; c * oh * ow];
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let v = x[(ch * h + oy * s + ky) * w + ox * s + kx];
                                        y[(ch * oh + oy) * ow + ox] =
                                            y[(ch * oh + oy) * ow + ox].max(v);
                                    }
                                }
                            }
                        }
                    }
                    y
                }
                DeployOp::GlobalAvgPool => x
                    .chunks(xs[1] * xs[2])
                    .map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / c.len() as f64) as f32)
                    .collect(),
                DeployOp::Flatten => x.clone(),
                DeployOp::SubsamplePad { stride, cout } => {
                    let (c, h, w, s) = (xs[0], xs[1], xs[2], *stride as usize);
                    let (oh, ow, pad) = (h.div_ceil(s), w.div_ceil(s), (*cout as usize - c) / 2);
                    let mut y = vec![0.0f32; *cout as usize * oh * ow];
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                y[((ch + pad) * oh + oy) * ow + ox] =
                                    x[(ch * h + oy * s) * w + ox * s];
                            }
                        }
                    }
                    y
                }
            };
            values.push(y);
        }
        Ok(values.pop().expect("the input value at least"))
    }

    /// The shape of every value (without the batch axis), checking each node against
    /// its inputs, and the last value against `num_classes` logits.
    pub fn shapes(&self) -> std::result::Result<Vec<Vec<usize>>, String> {
        let mut shapes: Vec<Vec<usize>> = vec![self.input.iter().map(|&v| v as usize).collect()];
        if shapes[0].iter().product::<usize>() > MAX_VALUE_LEN {
            return Err(format!("implausible input shape {:?}", self.input));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let at = |v: u32| shapes[v as usize].clone();
            let x = at(n.inputs[0]);
            let bad = |what: String| format!("node {i} ({}): {what}", kind_name(n.op.kind()));
            let y = match &n.op {
                DeployOp::Conv(l) => {
                    let (k, s, p) = (l.kernel as usize, l.stride as usize, l.padding as usize);
                    match x.as_slice() {
                        &[c, h, w]
                            if c == l.cin as usize && h + 2 * p >= k && w + 2 * p >= k && s > 0 =>
                        {
                            vec![l.cout as usize, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1]
                        }
                        _ => {
                            return Err(bad(format!(
                                "{} ({}→{}, kernel {k}, stride {s}, padding {p}) does not take input {x:?}",
                                l.name, l.cin, l.cout
                            )));
                        }
                    }
                }
                DeployOp::Linear(l) => match x.as_slice() {
                    &[c] if c == l.cin as usize => vec![l.cout as usize],
                    _ => {
                        return Err(bad(format!(
                            "{} ({}→{}) does not take input {x:?}",
                            l.name, l.cin, l.cout
                        )));
                    }
                },
                DeployOp::BatchNorm { scale, .. } => {
                    if x.first() != Some(&scale.len()) {
                        return Err(bad(format!(
                            "{} channels do not fit input {x:?}",
                            scale.len()
                        )));
                    }
                    x
                }
                DeployOp::Relu => x,
                DeployOp::Add => {
                    if at(n.inputs[1]) != x {
                        return Err(bad(format!("adds {x:?} and {:?}", at(n.inputs[1]))));
                    }
                    x
                }
                DeployOp::MaxPool { kernel, stride } => {
                    let (k, s) = (*kernel as usize, *stride as usize);
                    match x.as_slice() {
                        &[c, h, w] if k > 0 && s > 0 && h >= k && w >= k => {
                            vec![c, (h - k) / s + 1, (w - k) / s + 1]
                        }
                        _ => {
                            return Err(bad(format!(
                                "window {k} stride {s} does not fit input {x:?}"
                            )));
                        }
                    }
                }
                DeployOp::GlobalAvgPool => match x.as_slice() {
                    &[c, _, _] => vec![c],
                    _ => return Err(bad(format!("needs a (C, H, W) input, got {x:?}"))),
                },
                DeployOp::Flatten => vec![x.iter().product()],
                DeployOp::SubsamplePad { stride, cout } => {
                    let (s, co) = (*stride as usize, *cout as usize);
                    match x.as_slice() {
                        &[c, h, w] if s > 0 && co >= c && (co - c) % 2 == 0 => {
                            vec![co, h.div_ceil(s), w.div_ceil(s)]
                        }
                        _ => {
                            return Err(bad(format!(
                                "cannot map {x:?} to {co} channels at stride {s}"
                            )));
                        }
                    }
                }
            };
            // Every value fits in memory (a corrupt padding or channel count must not
            // describe a tensor no program could hold).
            if !y
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_some_and(|n| n > 0 && n <= MAX_VALUE_LEN)
            {
                return Err(bad(format!("implausible output shape {y:?}")));
            }
            shapes.push(y);
        }
        let last = shapes.last().unwrap();
        if last != &vec![self.num_classes as usize] {
            return Err(format!(
                "the last value has shape {last:?}, not {} logits",
                self.num_classes
            ));
        }
        Ok(shapes)
    }

    /// The file's bytes: the payload of the module docs in the shared frame (magic
    /// `DNATDEPL`, version 2, length, CRC-32, zlib).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut p = Vec::new();
        put_str(&mut p, &self.arch);
        p.write_u32::<LE>(self.num_classes).unwrap();
        self.input.iter().for_each(|&v| p.write_u32::<LE>(v).unwrap());
        for v in self.norm.mean.iter().chain(&self.norm.std) {
            p.write_f32::<LE>(*v).unwrap();
        }
        let m = &self.macro_spec;
        put_str(&mut p, &m.name);
        for v in [m.rows as u32, m.input_bits, m.weight_bits, m.input_bits_per_cycle] {
            p.write_u32::<LE>(v).unwrap();
        }
        p.write_i32::<LE>(m.adc.kmin).unwrap();
        p.write_i32::<LE>(m.adc.kmax).unwrap();
        p.write_f32::<LE>(m.adc.step).unwrap();
        p.write_u32::<LE>(self.nodes.len() as u32).unwrap();
        let f32s =
            |p: &mut Vec<u8>, v: &[f32]| v.iter().for_each(|x| p.write_f32::<LE>(*x).unwrap());
        for n in &self.nodes {
            p.write_u8(n.op.kind()).unwrap();
            p.write_u8(n.inputs.len() as u8).unwrap();
            n.inputs.iter().for_each(|&v| p.write_u32::<LE>(v).unwrap());
            let u32s =
                |p: &mut Vec<u8>, v: &[u32]| v.iter().for_each(|x| p.write_u32::<LE>(*x).unwrap());
            match &n.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) => {
                    put_str(&mut p, &l.name);
                    if matches!(n.op, DeployOp::Conv(_)) {
                        u32s(&mut p, &[l.cout, l.cin, l.kernel, l.stride, l.padding]);
                    } else {
                        u32s(&mut p, &[l.cout, l.cin]);
                    }
                    match &l.body {
                        Body::Macro { lo, hi, tiles, codes, weight_scale, scale, shift } => {
                            p.write_u8(1).unwrap();
                            f32s(&mut p, &[*lo, *hi]);
                            p.write_u32::<LE>(*tiles).unwrap();
                            p.extend(codes.iter().map(|&c| c as u8));
                            f32s(&mut p, weight_scale);
                            f32s(&mut p, scale);
                            f32s(&mut p, shift);
                        }
                        Body::Digital { weight, bias } => {
                            p.write_u8(0).unwrap();
                            f32s(&mut p, weight);
                            f32s(&mut p, bias);
                        }
                    }
                }
                DeployOp::BatchNorm { scale, shift } => {
                    p.write_u32::<LE>(scale.len() as u32).unwrap();
                    f32s(&mut p, scale);
                    f32s(&mut p, shift);
                }
                DeployOp::MaxPool { kernel, stride } => u32s(&mut p, &[*kernel, *stride]),
                DeployOp::SubsamplePad { stride, cout } => u32s(&mut p, &[*stride, *cout]),
                DeployOp::Relu | DeployOp::Add | DeployOp::GlobalAvgPool | DeployOp::Flatten => {}
            }
        }
        framed::encode(MAGIC, VERSION, &p)
    }

    /// Reads a model from a file's bytes, checking the frame, every field and every shape;
    /// the error message says what is wrong (magic, version, corruption, a node that does not fit).
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, payload) = framed::decode(bytes, MAGIC, "deployable model", VERSION)?;
        parse(&payload).map_err(|e| format!("corrupt deployable model: {e}"))
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

fn kind_name(kind: u8) -> &'static str {
    [
        "conv",
        "linear",
        "batchnorm",
        "relu",
        "add",
        "max-pool",
        "global average pool",
        "flatten",
        "subsample + channel padding",
    ]
    .get(kind as usize)
    .copied()
    .unwrap_or("unknown")
}

fn parse(p: &[u8]) -> std::result::Result<DeployModel, String> {
    const END: &str = "unexpected end of payload";
    let mut c = Cursor::new(p);
    let arch = get_str(&mut c)?;
    let num_classes = c.read_u32::<LE>().map_err(|_| END)?;
    let mut input = [0u32; 3];
    c.read_u32_into::<LE>(&mut input).map_err(|_| END)?;
    if input.iter().any(|&v| v == 0 || v > 1 << 16) {
        return Err(format!("implausible input shape {input:?}"));
    }
    let mut nv = [0f32; 6];
    c.read_f32_into::<LE>(&mut nv).map_err(|_| END)?;
    let norm = Normalize { mean: [nv[0], nv[1], nv[2]], std: [nv[3], nv[4], nv[5]] };
    let name = get_str(&mut c)?;
    let mut u = [0u32; 4];
    c.read_u32_into::<LE>(&mut u).map_err(|_| END)?;
    let adc = Adc {
        kmin: c.read_i32::<LE>().map_err(|_| END)?,
        kmax: c.read_i32::<LE>().map_err(|_| END)?,
        step: c.read_f32::<LE>().map_err(|_| END)?,
    };
    // The array organisation (which ADC reads which tile) is not part of a deployable
    // model: the integer arithmetic does not depend on it. The default's stands in.
    let d = MacroSpec::default();
    let macro_spec = MacroSpec {
        name,
        rows: u[0] as usize,
        input_bits: u[1],
        weight_bits: u[2],
        input_bits_per_cycle: u[3],
        adc,
        arrays: d.arrays,
        columns: d.columns,
    };
    macro_spec.validate().map_err(|e| e.to_string())?;
    let n = count(&mut c)?;
    let mut nodes = Vec::with_capacity(n.min(1 << 16));
    // Reads `n` f32 after checking they are there (a corrupt count must not allocate wildly).
    let f32s = |c: &mut Cursor<&[u8]>, n: usize| -> std::result::Result<Vec<f32>, String> {
        if n.checked_mul(4).is_none_or(|b| b as u64 > c.get_ref().len() as u64 - c.position()) {
            return Err(format!("{n} values run past the end of the payload"));
        }
        let mut v = vec![0f32; n];
        c.read_f32_into::<LE>(&mut v).map_err(|_| END)?;
        Ok(v)
    };
    let u32 = |c: &mut Cursor<&[u8]>| c.read_u32::<LE>().map_err(|_| END.to_string());
    for i in 0..n {
        let kind = c.read_u8().map_err(|_| END)?;
        let arity = c.read_u8().map_err(|_| END)? as usize;
        let mut inputs = Vec::with_capacity(arity);
        for _ in 0..arity {
            let v = u32(&mut c)?;
            if v as usize > i {
                return Err(format!("node {i} reads value {v}, which is not computed before it"));
            }
            inputs.push(v);
        }
        let op = match kind {
            0 | 1 => {
                let name = get_str(&mut c)?;
                let [cout, cin, kernel, stride, padding] = if kind == 0 {
                    [u32(&mut c)?, u32(&mut c)?, u32(&mut c)?, u32(&mut c)?, u32(&mut c)?]
                } else {
                    [u32(&mut c)?, u32(&mut c)?, 1, 1, 0]
                };
                let k = (cin as u64) * (kernel as u64) * (kernel as u64);
                let (cout_u, k_u) = (cout as usize, k as usize);
                if cout == 0 || k == 0 || k > 1 << 28 || cout > 1 << 20 {
                    return Err(format!("layer {name}: implausible shape {cout}×{k}"));
                }
                let body = match c.read_u8().map_err(|_| END)? {
                    1 => {
                        let b = f32s(&mut c, 2)?;
                        let tiles = u32(&mut c)?;
                        if tiles as usize != macro_spec.tiles(k_u) {
                            return Err(format!(
                                "layer {name}: {tiles} tiles, but K = {k} needs {}",
                                macro_spec.tiles(k_u)
                            ));
                        }
                        let n_codes = cout_u * tiles as usize * macro_spec.rows;
                        if n_codes as u64 > c.get_ref().len() as u64 - c.position() {
                            return Err(format!(
                                "layer {name}: weight codes run past the end of the payload"
                            ));
                        }
                        let start = c.position() as usize;
                        let codes: Vec<i8> =
                            c.get_ref()[start..start + n_codes].iter().map(|&b| b as i8).collect();
                        c.set_position((start + n_codes) as u64);
                        let (wmin, wmax) =
                            (macro_spec.weight_min() as i8, macro_spec.weight_max() as i8);
                        if let Some(bad) = codes.iter().find(|&&w| w < wmin || w > wmax) {
                            return Err(format!(
                                "layer {name}: weight code {bad} outside {wmin}..={wmax}"
                            ));
                        }
                        Body::Macro {
                            lo: b[0],
                            hi: b[1],
                            tiles,
                            codes,
                            weight_scale: f32s(&mut c, cout_u)?,
                            scale: f32s(&mut c, cout_u)?,
                            shift: f32s(&mut c, cout_u)?,
                        }
                    }
                    0 => Body::Digital {
                        weight: f32s(&mut c, cout_u * k_u)?,
                        bias: f32s(&mut c, cout_u)?,
                    },
                    other => return Err(format!("layer {name}: on_macro flag {other}")),
                };
                let l = DeployLayer { name, cout, cin, kernel, stride, padding, body };
                if kind == 0 { DeployOp::Conv(l) } else { DeployOp::Linear(l) }
            }
            2 => {
                let ch = u32(&mut c)? as usize;
                DeployOp::BatchNorm { scale: f32s(&mut c, ch)?, shift: f32s(&mut c, ch)? }
            }
            3 => DeployOp::Relu,
            4 => DeployOp::Add,
            5 => DeployOp::MaxPool { kernel: u32(&mut c)?, stride: u32(&mut c)? },
            6 => DeployOp::GlobalAvgPool,
            7 => DeployOp::Flatten,
            8 => DeployOp::SubsamplePad { stride: u32(&mut c)?, cout: u32(&mut c)? },
            other => return Err(format!("node {i}: unknown kind {other}")),
        };
        if inputs.len() != op.arity() {
            return Err(format!(
                "node {i} ({}) reads {} values, not {}",
                kind_name(kind),
                inputs.len(),
                op.arity()
            ));
        }
        nodes.push(DeployNode { inputs, op });
    }
    if c.position() as usize != p.len() {
        return Err(format!("{} bytes after the last node", p.len() - c.position() as usize));
    }
    if nodes.is_empty() {
        return Err("no nodes".into());
    }
    let m = DeployModel { arch, num_classes, input, norm, macro_spec, nodes };
    m.shapes()?;
    Ok(m)
}

#[cfg(test)]
mod tests;
