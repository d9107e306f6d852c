//! Conv2d, BatchNorm2d and Linear: parameter handles plus a forward on the tape.

use crate::engine::ops::{self, BatchNormState, Conv2dCfg};
use crate::engine::{BufferId, Mode, ParamGroup, ParamId, ParamStore, Tape, Tensor, Var};
use crate::rng::{normal, Xoshiro256PlusPlus};
use crate::Result;

/// What a forward pass needs: the tape, the parameters (batchnorm updates its running
/// statistics in train mode) and the mode.
pub struct Fwd<'a> {
    pub tape: &'a mut Tape,
    pub store: &'a mut ParamStore,
    pub mode: Mode,
}

/// Kaiming-normal initialisation for a ReLU network: std = √(2 / fan_in).
fn kaiming(shape: &[usize], fan_in: usize, rng: &mut Xoshiro256PlusPlus) -> Tensor {
    let std = (2.0 / fan_in as f64).sqrt();
    let n = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| (normal(rng) * std) as f32).collect())
}

#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub cfg: Conv2dCfg,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        cfg: Conv2dCfg,
        bias: bool,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Self {
        let shape = [cout, cin, kernel, kernel];
        let weight = store.add_param(format!("{name}.weight"), kaiming(&shape, cin * kernel * kernel, rng), ParamGroup::Weight);
        let bias = bias.then(|| store.add_param(format!("{name}.bias"), Tensor::zeros(&[cout]), ParamGroup::NoDecay));
        Conv2d { weight, bias, cfg }
    }
    pub fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let w = cx.tape.param(cx.store, self.weight);
        let b = self.bias.map(|b| cx.tape.param(cx.store, b));
        ops::conv2d(cx.tape, x, w, b, self.cfg)
    }
}

#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub weight: ParamId,
    pub bias: ParamId,
    pub running_mean: BufferId,
    pub running_var: BufferId,
    pub momentum: f32,
    pub eps: f32,
}

impl BatchNorm2d {
    /// PyTorch defaults: γ = 1, β = 0, momentum 0.1, eps 1e-5.
    pub fn new(store: &mut ParamStore, name: &str, c: usize) -> Self {
        BatchNorm2d {
            weight: store.add_param(format!("{name}.weight"), Tensor::full(&[c], 1.0), ParamGroup::NoDecay),
            bias: store.add_param(format!("{name}.bias"), Tensor::zeros(&[c]), ParamGroup::NoDecay),
            running_mean: store.add_buffer(format!("{name}.running_mean"), Tensor::zeros(&[c])),
            running_var: store.add_buffer(format!("{name}.running_var"), Tensor::full(&[c], 1.0)),
            momentum: 0.1,
            eps: 1e-5,
        }
    }
    pub fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        self.run(cx, x, false)
    }
    /// Batchnorm followed by ReLU, fused into one op.
    pub fn forward_relu(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        self.run(cx, x, true)
    }
    fn run(&self, cx: &mut Fwd, x: Var, relu: bool) -> Result<Var> {
        let g = cx.tape.param(cx.store, self.weight);
        let b = cx.tape.param(cx.store, self.bias);
        let (rm, rv) = cx.store.buffer_pair_mut(self.running_mean, self.running_var);
        let st = BatchNormState { running_mean: rm, running_var: rv, momentum: self.momentum, eps: self.eps, relu };
        ops::batch_norm2d(cx.tape, x, g, b, st, cx.mode)
    }
}

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Linear {
    pub fn new(store: &mut ParamStore, name: &str, fin: usize, fout: usize, bias: bool, rng: &mut Xoshiro256PlusPlus) -> Self {
        let weight = store.add_param(format!("{name}.weight"), kaiming(&[fout, fin], fin, rng), ParamGroup::Weight);
        let bias = bias.then(|| store.add_param(format!("{name}.bias"), Tensor::zeros(&[fout]), ParamGroup::NoDecay));
        Linear { weight, bias }
    }
    pub fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let w = cx.tape.param(cx.store, self.weight);
        let b = self.bias.map(|b| cx.tape.param(cx.store, b));
        ops::linear(cx.tape, x, w, b)
    }
}
