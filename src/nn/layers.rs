//! Conv2d, BatchNorm2d and Linear: parameter handles plus a forward on the tape; the
//! parameter-free ops a network calls on its [`Fwd`] context.

use super::trace::{Node, Trace};
use crate::Result;
use crate::cim::{self, CimCall, CimRuntime, InputQuant};
use crate::engine::ops::{self, BatchNormState, Conv2dCfg};
use crate::engine::{
    BufferId, LayerId, LayerKind, MacroSlot, Mode, ParamGroup, ParamId, ParamStore, Tape, Tensor,
    Var,
};
use crate::rng::{Xoshiro256PlusPlus, normal};

/// Input activations seen by each quantized layer during a calibration pass:
/// `(lower-bound id, upper-bound id, values)`.
pub type Calibration = Vec<(ParamId, ParamId, Vec<f32>)>;

/// What a forward pass needs: the tape, the parameters (batchnorm updates its running
/// statistics in train mode), the mode, and — for CIM layers — the macro runtime.
pub struct Fwd<'a> {
    /// The tape the pass records on.
    pub tape: &'a mut Tape,
    /// The network's parameters and buffers.
    pub store: &'a mut ParamStore,
    /// Train (batch statistics, running statistics updated) or eval.
    pub mode: Mode,
    /// When set, layers the store has mapped onto the macro ([`super::map_to_macro`]) run on it; otherwise in FP32.
    pub cim: Option<&'a CimRuntime>,
    /// When set (and `cim` is not), quantized layers record their FP32 inputs here.
    pub calibration: Option<&'a mut Calibration>,
    /// When set, every batchnorm adds the statistics of its input to this
    /// accumulator (batchnorm recalibration, [`crate::train::recalibrate_bn`]).
    pub bn_stats: Option<&'a mut BnStats>,
    /// When set, every layer and op of the pass adds its node (`dnat export`).
    pub trace: Option<&'a mut Trace>,
    /// When set (with `cim`), each layer on the macro takes its output from this device
    /// (a chip doing the layer's macro operations) and its gradient from its own CIM op
    /// ([`crate::engine::ops::straight_through`]): fine-tuning with the chip in the loop.
    pub macro_forward: Option<&'a mut dyn MacroForward>,
}

/// A device that computes the layers on the macro (a chip behind a backend, see
/// [`crate::runtime::InTheLoop`]): the output of macro layer `layer` (its
/// [`MacroSlot::id`]) for the layer's input `x` as the network gives it (before E-PACT),
/// the layer's bias added, in the shape its CIM op returns.
pub trait MacroForward {
    /// The device's output of macro layer `layer` for input `x`.
    fn layer(&mut self, layer: u64, x: &Tensor) -> Result<Tensor>;
}

impl<'a> Fwd<'a> {
    /// An FP32 forward pass.
    pub fn new(tape: &'a mut Tape, store: &'a mut ParamStore, mode: Mode) -> Self {
        Fwd {
            tape,
            store,
            mode,
            cim: None,
            calibration: None,
            bn_stats: None,
            trace: None,
            macro_forward: None,
        }
    }

    /// Adds `nodes` to the trace, if the pass keeps one (see [`Trace::record`]).
    fn note(&mut self, nodes: impl FnOnce() -> Vec<Node>, inputs: &[Var], output: Var) {
        if let Some(t) = self.trace.as_mut() {
            t.record(nodes(), inputs, output);
        }
    }

    /// ReLU.
    pub fn relu(&mut self, x: Var) -> Var {
        let y = ops::relu(self.tape, x);
        self.note(|| vec![Node::Relu], &[x], y);
        y
    }
    /// `a + b` (same shapes): a residual connection.
    pub fn add(&mut self, a: Var, b: Var) -> Var {
        let y = ops::add(self.tape, a, b);
        self.note(|| vec![Node::Add], &[a, b], y);
        y
    }
    /// Max-pooling over `kernel`×`kernel` windows every `stride` pixels.
    pub fn max_pool2d(&mut self, x: Var, kernel: usize, stride: usize) -> Result<Var> {
        let y = ops::max_pool2d(self.tape, x, kernel, stride)?;
        self.note(|| vec![Node::MaxPool { kernel, stride }], &[x], y);
        Ok(y)
    }
    /// (N, C, H, W) → (N, C): the mean over each channel's pixels.
    pub fn global_avg_pool(&mut self, x: Var) -> Result<Var> {
        let y = ops::global_avg_pool(self.tape, x)?;
        self.note(|| vec![Node::GlobalAvgPool], &[x], y);
        Ok(y)
    }
    /// (N, …) → (N, product of the rest).
    pub fn flatten(&mut self, x: Var) -> Result<Var> {
        let y = ops::flatten(self.tape, x)?;
        self.note(|| vec![Node::Flatten], &[x], y);
        Ok(y)
    }
    /// The option-A shortcut: every `stride`-th pixel, channels zero-padded to `cout`.
    pub fn subsample_pad_channels(&mut self, x: Var, stride: usize, cout: usize) -> Result<Var> {
        let y = ops::subsample_pad_channels(self.tape, x, stride, cout)?;
        self.note(|| vec![Node::SubsamplePad { stride, cout }], &[x], y);
        Ok(y)
    }
}

/// Which activation quantizer a CIM layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuantKind {
    /// Learned lower and upper bounds (the paper's E-PACT).
    EPact,
    /// Learned upper bound, lower bound fixed at 0 (PACT; the ablation baseline).
    Pact,
}

impl ActQuantKind {
    /// `epact` or `pact`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "epact" => Ok(ActQuantKind::EPact),
            "pact" => Ok(ActQuantKind::Pact),
            o => Err(crate::Error::invalid(format!(
                "unknown activation quantizer '{o}' (epact or pact)"
            ))),
        }
    }
    /// The name [`ActQuantKind::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            ActQuantKind::EPact => "epact",
            ActQuantKind::Pact => "pact",
        }
    }
}

/// A macro layer's input quantizer: E-PACT's bounds (PACT's: `lo` a constant 0).
fn input_quant(slot: MacroSlot, cx: &mut Fwd, rt: &CimRuntime) -> InputQuant {
    let hi = cx.tape.param(cx.store, slot.hi);
    let lo = match rt.act_quant {
        ActQuantKind::EPact => cx.tape.param(cx.store, slot.lo),
        ActQuantKind::Pact => cx.tape.constant(Tensor::zeros(&[1])),
    };
    InputQuant { lo, hi }
}

/// The two ways a weight layer runs: `on_macro` (the macro op, which quantizes its
/// input) when the store has mapped it onto the macro and the pass has a CIM runtime,
/// else `digital` (recording a mapped layer's input for calibration when asked).
type MacroOp<'o> =
    &'o dyn Fn(&mut Tape, Var, Var, Option<Var>, InputQuant, &CimCall) -> Result<Var>;
type DigitalOp<'o> = &'o dyn Fn(&mut Tape, Var, Var, Option<Var>) -> Result<Var>;

fn run_layer(
    cx: &mut Fwd,
    x: Var,
    weight: ParamId,
    bias: Option<ParamId>,
    layer: LayerId,
    on_macro: MacroOp,
    digital: DigitalOp,
) -> Result<Var> {
    let (slot, rt) = (cx.store.layer(layer).on_macro, cx.cim);
    let y = match (slot, rt) {
        (Some(slot), Some(rt)) => {
            let quant = input_quant(slot, cx, rt);
            let w = cx.tape.param(cx.store, weight);
            let b = bias.map(|b| cx.tape.param(cx.store, b));
            let y = on_macro(cx.tape, x, w, b, quant, &CimCall { rt, layer: slot.id });
            match (y, cx.macro_forward.as_mut()) {
                (Ok(y), Some(device)) => {
                    let measured = device.layer(slot.id, cx.tape.value(x))?;
                    crate::engine::ops::straight_through(cx.tape, y, measured)
                }
                (y, _) => y,
            }
        }
        _ => {
            if let (Some(slot), Some(c)) = (slot, cx.calibration.as_mut()) {
                c.push((slot.lo, slot.hi, cx.tape.value(x).data().to_vec()));
            }
            let w = cx.tape.param(cx.store, weight);
            let b = bias.map(|b| cx.tape.param(cx.store, b));
            digital(cx.tape, x, w, b)
        }
    };
    // A shape or argument error names the layer it happened in.
    y.map_err(|e| match e {
        crate::Error::Invalid(msg) => {
            crate::Error::Invalid(format!("layer '{}': {msg}", cx.store.layer(layer).name))
        }
        e => e,
    })
}

/// Kaiming-normal initialisation for a ReLU network: std = √(2 / fan_in).
fn kaiming(shape: &[usize], fan_in: usize, rng: &mut Xoshiro256PlusPlus) -> Tensor {
    let std = (2.0 / fan_in as f64).sqrt();
    let n = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| (normal(rng) * std) as f32).collect())
}

/// A convolution's shape: `Conv2dConfig::new(cin, cout, kernel)` is stride 1, "same"
/// padding (kernel / 2), no bias; change what differs, then [`Conv2dConfig::init`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width, in pixels (square kernels only).
    pub kernel: usize,
    /// Stride, in pixels.
    pub stride: usize,
    /// Zero padding on each side, in pixels.
    pub padding: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Conv2dConfig {
    /// A `cin` → `cout` convolution with a `kernel`×`kernel` kernel, stride 1, "same"
    /// padding, no bias.
    pub fn new(cin: usize, cout: usize, kernel: usize) -> Self {
        Conv2dConfig { cin, cout, kernel, stride: 1, padding: kernel / 2, bias: false }
    }
    /// With stride `stride`.
    pub fn stride(self, stride: usize) -> Self {
        Conv2dConfig { stride, ..self }
    }
    /// With `padding` pixels of zero padding on each side.
    pub fn padding(self, padding: usize) -> Self {
        Conv2dConfig { padding, ..self }
    }
    /// With or without a bias.
    pub fn bias(self, bias: bool) -> Self {
        Conv2dConfig { bias, ..self }
    }
    /// The layer, its weights `{name}.weight` (Kaiming-normal from the store's
    /// initialisation stream) and bias `{name}.bias` (zeros) added to `store`.
    pub fn init(self, store: &mut ParamStore, name: &str) -> Conv2d {
        let Conv2dConfig { cin, cout, kernel, stride, padding, bias } = self;
        let shape = [cout, cin, kernel, kernel];
        let w = kaiming(&shape, cin * kernel * kernel, store.init_rng());
        let weight = store.add_param(format!("{name}.weight"), w, ParamGroup::Weight);
        let bias = bias.then(|| {
            store.add_param(format!("{name}.bias"), Tensor::zeros(&[cout]), ParamGroup::NoDecay)
        });
        Conv2d {
            weight,
            bias,
            cfg: Conv2dCfg { stride, padding },
            layer: store.add_layer(name, LayerKind::Conv),
        }
    }
}

/// A 2-D convolution: its parameters, stride and padding, and the store's record of it.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// The weights `{name}.weight`, shape (cout, cin, kernel, kernel).
    pub weight: ParamId,
    /// The bias `{name}.bias`, if the layer has one.
    pub bias: Option<ParamId>,
    /// Stride and padding.
    pub cfg: Conv2dCfg,
    /// The store's record of the layer (its name, its place on the macro).
    pub layer: LayerId,
}

impl Conv2d {
    /// The convolution of `x` (NCHW): on the macro when mapped and the pass has a CIM
    /// runtime, else in FP32.
    pub fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let cfg = self.cfg;
        let y = run_layer(
            cx,
            x,
            self.weight,
            self.bias,
            self.layer,
            &|t, x, w, b, quant, call| cim::cim_conv2d(t, x, w, b, cfg, quant, call),
            &|t, x, w, b| ops::conv2d(t, x, w, b, cfg),
        )?;
        let cim = cx.store.layer(self.layer).on_macro;
        cx.note(|| vec![Node::Conv { weight: self.weight, bias: self.bias, cfg, cim }], &[x], y);
        Ok(y)
    }
}

/// Exact per-channel statistics of every batchnorm's input over many batches: for each
/// layer (named by its running-mean buffer) the count, mean and sum of squared
/// deviations, merged batch by batch in f64 (Chan et al.'s pairwise update), in the
/// order the batches arrive, so the result does not depend on thread count.
#[derive(Default)]
pub struct BnStats {
    /// One entry per batchnorm, in the order first seen.
    pub layers: Vec<LayerStats>,
}

/// One batchnorm's accumulated input statistics.
pub struct LayerStats {
    /// The layer's running-mean buffer (which names the layer).
    pub running_mean: BufferId,
    /// The layer's running-variance buffer.
    pub running_var: BufferId,
    /// The statistics of its input.
    pub moments: Moments,
}

/// Exact per-channel count, mean and sum of squared deviations of many NCHW batches,
/// merged batch by batch in f64 (Chan et al.'s pairwise update) in the order they arrive.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Moments {
    /// Values seen per channel (images · H · W).
    pub count: f64,
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Sum of squared deviations from the mean, per channel.
    pub m2: Vec<f64>,
}

impl Moments {
    /// Merges the batch `x` (NCHW) in; returns its own per-channel mean and biased
    /// variance (what a batchnorm in train mode normalises it with).
    pub fn add(&mut self, x: &Tensor) -> Result<Vec<(f64, f64)>> {
        if x.shape().len() != 4 {
            return Err(crate::Error::invalid(format!(
                "batchnorm2d needs NCHW input, got {:?}",
                x.shape()
            )));
        }
        let (n, c, h, w) = x.nchw();
        let stats = ops::batchnorm::channel_stats(x.data(), n, c, h * w);
        if self.mean.is_empty() {
            (self.mean, self.m2) = (vec![0.0; c], vec![0.0; c]);
        }
        let (na, nb) = (self.count, (n * h * w) as f64);
        for (ch, &(mb, vb)) in stats.iter().enumerate() {
            let delta = mb - self.mean[ch];
            self.mean[ch] += delta * nb / (na + nb);
            self.m2[ch] += vb * nb + delta * delta * na * nb / (na + nb);
        }
        self.count = na + nb;
        Ok(stats)
    }

    /// The mean and the unbiased variance per channel (PyTorch's convention for running
    /// statistics), as f32.
    pub fn mean_var(&self) -> (Vec<f32>, Vec<f32>) {
        let var = self.m2.iter().map(|&q| (q / (self.count - 1.0).max(1.0)) as f32).collect();
        (self.mean.iter().map(|&m| m as f32).collect(), var)
    }
}

impl BnStats {
    fn add(&mut self, mean_id: BufferId, var_id: BufferId, x: &Tensor) -> Result<()> {
        let slot = match self.layers.iter().position(|l| l.running_mean == mean_id) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(LayerStats {
                    running_mean: mean_id,
                    running_var: var_id,
                    moments: Moments::default(),
                });
                self.layers.last_mut().unwrap()
            }
        };
        slot.moments.add(x).map(|_| ())
    }

    /// Writes the accumulated statistics into the running buffers: the mean, and the
    /// unbiased variance (PyTorch's convention for running statistics).
    pub fn write(&self, store: &mut ParamStore) {
        for l in &self.layers {
            let (mean, var) = l.moments.mean_var();
            let (rm, rv) = store.buffer_pair_mut(l.running_mean, l.running_var);
            rm.data_mut().copy_from_slice(&mean);
            rv.data_mut().copy_from_slice(&var);
        }
    }
}

/// Batch normalisation over (N, H, W) per channel, with a learned scale and shift.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    /// The scale γ `{name}.weight`, per channel.
    pub weight: ParamId,
    /// The shift β `{name}.bias`, per channel.
    pub bias: ParamId,
    /// The running mean `{name}.running_mean`, per channel (used in eval mode).
    pub running_mean: BufferId,
    /// The running unbiased variance `{name}.running_var`, per channel (used in eval mode).
    pub running_var: BufferId,
    /// The weight of a batch's statistics in the running update (PyTorch's convention).
    pub momentum: f32,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl BatchNorm2d {
    /// PyTorch defaults: γ = 1, β = 0, momentum 0.1, eps 1e-5.
    pub fn new(store: &mut ParamStore, name: &str, c: usize) -> Self {
        BatchNorm2d {
            weight: store.add_param(
                format!("{name}.weight"),
                Tensor::full(&[c], 1.0),
                ParamGroup::NoDecay,
            ),
            bias: store.add_param(format!("{name}.bias"), Tensor::zeros(&[c]), ParamGroup::NoDecay),
            running_mean: store.add_buffer(format!("{name}.running_mean"), Tensor::zeros(&[c])),
            running_var: store.add_buffer(format!("{name}.running_var"), Tensor::full(&[c], 1.0)),
            momentum: 0.1,
            eps: 1e-5,
        }
    }
    /// Batchnorm of `x` (NCHW): batch statistics in train mode, running statistics in
    /// eval mode.
    pub fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        self.run(cx, x, false)
    }
    /// Batchnorm followed by ReLU, fused into one op.
    pub fn forward_relu(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        self.run(cx, x, true)
    }
    fn run(&self, cx: &mut Fwd, x: Var, relu: bool) -> Result<Var> {
        if let Some(acc) = cx.bn_stats.as_mut() {
            acc.add(self.running_mean, self.running_var, cx.tape.value(x))?;
        }
        let g = cx.tape.param(cx.store, self.weight);
        let b = cx.tape.param(cx.store, self.bias);
        let (rm, rv) = cx.store.buffer_pair_mut(self.running_mean, self.running_var);
        let st = BatchNormState {
            running_mean: rm,
            running_var: rv,
            momentum: self.momentum,
            eps: self.eps,
            relu,
        };
        let y = ops::batch_norm2d(cx.tape, x, g, b, st, cx.mode)?;
        cx.note(
            || {
                if relu {
                    vec![Node::BatchNorm(self.clone()), Node::Relu]
                } else {
                    vec![Node::BatchNorm(self.clone())]
                }
            },
            &[x],
            y,
        );
        Ok(y)
    }
}

/// A fully connected layer: its parameters and the store's record of it.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weights `{name}.weight`, shape (fout, fin).
    pub weight: ParamId,
    /// The bias `{name}.bias`, if the layer has one.
    pub bias: Option<ParamId>,
    /// The store's record of the layer (its name, its place on the macro).
    pub layer: LayerId,
}

impl Linear {
    /// A `fin` → `fout` layer with a bias (zeros), its weights Kaiming-normal from the
    /// store's initialisation stream.
    pub fn init(store: &mut ParamStore, name: &str, fin: usize, fout: usize) -> Self {
        let w = kaiming(&[fout, fin], fin, store.init_rng());
        let weight = store.add_param(format!("{name}.weight"), w, ParamGroup::Weight);
        let bias = Some(store.add_param(
            format!("{name}.bias"),
            Tensor::zeros(&[fout]),
            ParamGroup::NoDecay,
        ));
        Linear { weight, bias, layer: store.add_layer(name, LayerKind::Linear) }
    }
    /// (N, fin) → (N, fout): on the macro when mapped and the pass has a CIM runtime,
    /// else in FP32.
    pub fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let y =
            run_layer(cx, x, self.weight, self.bias, self.layer, &cim::cim_linear, &ops::linear)?;
        let cim = cx.store.layer(self.layer).on_macro;
        cx.note(|| vec![Node::Linear { weight: self.weight, bias: self.bias, cim }], &[x], y);
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Mode, Tape};

    /// A layer given an input of the wrong shape says which layer it is.
    #[test]
    fn shape_errors_name_the_layer() {
        let mut store = ParamStore::new();
        let fc = Linear::init(&mut store, "head.fc", 16, 10);
        let mut tape = Tape::new(false);
        let x = tape.constant(Tensor::zeros(&[2, 32]));
        let mut cx = Fwd::new(&mut tape, &mut store, Mode::Eval);
        let e = fc.forward(&mut cx, x).unwrap_err().to_string();
        assert!(
            e.starts_with("layer 'head.fc': linear: input [2, 32] does not fit weight [10, 16]"),
            "{e}"
        );
    }
}
