//! Optimizers (SGD with momentum / Nesterov, Adam), parameter groups and schedules.
//!
//! Parameter groups come from [`ParamGroup`]: weight decay applies to `Weight`
//! parameters only (never to biases or batchnorm), and quantizer bounds get their own
//! learning-rate multiplier and decay.

pub mod schedule;

pub use schedule::Schedule;

use crate::engine::{ParamGroup, ParamStore, Tensor};
use crate::{Error, Result};

/// The update rule and its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// SGD with momentum coefficient `momentum` (0: none), Nesterov's variant when
    /// `nesterov`; PyTorch's formulation.
    Sgd {
        /// Momentum coefficient (0: none).
        momentum: f32,
        /// Nesterov's variant.
        nesterov: bool,
    },
    /// Adam with bias correction: moment decay rates `beta1`, `beta2`, and `eps` added to
    /// the denominator.
    Adam {
        /// Decay rate of the first moment (mean of the gradients).
        beta1: f32,
        /// Decay rate of the second moment (mean of the squared gradients).
        beta2: f32,
        /// Added to the denominator, for stability.
        eps: f32,
    },
}

impl OptimizerKind {
    /// `"sgd"` or `"adam"` (as `--optimizer` takes it).
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd { .. } => "sgd",
            OptimizerKind::Adam { .. } => "adam",
        }
    }
    fn slots(&self) -> usize {
        match self {
            OptimizerKind::Sgd { .. } => 1,
            OptimizerKind::Adam { .. } => 2,
        }
    }
}

/// Per-group settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Groups {
    /// L2 weight decay on `Weight` parameters.
    pub weight_decay: f32,
    /// Learning-rate multiplier of `QuantBound` parameters.
    pub bound_lr_scale: f32,
    /// L2 decay on `QuantBound` parameters.
    pub bound_decay: f32,
}

impl Default for Groups {
    fn default() -> Self {
        Groups { weight_decay: 5e-4, bound_lr_scale: 1.0, bound_decay: 0.0 }
    }
}

/// An optimizer for the parameters of one [`ParamStore`]: its rule, group settings and
/// per-parameter state.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Weight decay and learning-rate settings per parameter group.
    pub groups: Groups,
    /// Per parameter: the momentum buffer (SGD) or first and second moments (Adam).
    pub state: Vec<Vec<Tensor>>,
    /// Updates taken so far (Adam's bias correction counts them).
    pub steps: u64,
}

impl Optimizer {
    /// A fresh optimizer (zero state, no steps) for the parameters now in `store`: map layers
    /// onto the macro first, since [`Optimizer::step`] panics if parameters were added since.
    pub fn new(kind: OptimizerKind, groups: Groups, store: &ParamStore) -> Self {
        let state = store
            .params()
            .iter()
            .map(|p| (0..kind.slots()).map(|_| Tensor::zeros(p.value.shape())).collect())
            .collect();
        Optimizer { kind, groups, state, steps: 0 }
    }

    /// Replaces the state (from a checkpoint), checking it fits the parameters.
    pub fn set_state(
        &mut self,
        state: Vec<Vec<Tensor>>,
        steps: u64,
        store: &ParamStore,
    ) -> Result<()> {
        if state.len() != store.params().len()
            || state.iter().zip(store.params()).any(|(s, p)| {
                s.len() != self.kind.slots() || s.iter().any(|t| t.shape() != p.value.shape())
            })
        {
            return Err(Error::invalid("optimizer state does not fit the model's parameters"));
        }
        self.state = state;
        self.steps = steps;
        Ok(())
    }

    /// One update with learning rate `lr`, from the gradients in the store.
    pub fn step(&mut self, store: &mut ParamStore, lr: f32) {
        // A parameter added after the optimizer was made (a layer mapped onto the macro
        // later, say) would silently never train.
        assert_eq!(
            self.state.len(),
            store.params().len(),
            "the optimizer was made for another set of parameters: map layers onto the macro before making it"
        );
        self.steps += 1;
        let t = self.steps as i32;
        for (p, slots) in store.params_mut().iter_mut().zip(&mut self.state) {
            let (lr, wd) = match p.group {
                ParamGroup::Weight => (lr, self.groups.weight_decay),
                ParamGroup::NoDecay => (lr, 0.0),
                ParamGroup::QuantBound => {
                    (lr * self.groups.bound_lr_scale, self.groups.bound_decay)
                }
            };
            let (w, g) = (p.value.data_mut(), p.grad.data());
            match self.kind {
                OptimizerKind::Sgd { momentum, nesterov } => {
                    let buf = slots[0].data_mut();
                    for i in 0..w.len() {
                        let d = g[i] + wd * w[i];
                        buf[i] = momentum * buf[i] + d;
                        let upd = if nesterov { d + momentum * buf[i] } else { buf[i] };
                        w[i] -= lr * upd;
                    }
                }
                OptimizerKind::Adam { beta1, beta2, eps } => {
                    let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
                    let (ms, vs) = slots.split_at_mut(1);
                    let (m, v) = (ms[0].data_mut(), vs[0].data_mut());
                    for i in 0..w.len() {
                        let d = g[i] + wd * w[i];
                        m[i] = beta1 * m[i] + (1.0 - beta1) * d;
                        v[i] = beta2 * v[i] + (1.0 - beta2) * d * d;
                        w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(v: f32, group: ParamGroup) -> ParamStore {
        let mut s = ParamStore::new();
        let id = s.add_param("p", Tensor::full(&[1], v), group);
        s.param_mut(id).grad = Tensor::full(&[1], 1.0);
        s
    }

    #[test]
    fn sgd_momentum_nesterov_and_decay_follow_pytorch() {
        // PyTorch: d = g + wd·w; buf = μ·buf + d; step = d + μ·buf (Nesterov).
        let mut s = store(2.0, ParamGroup::Weight);
        let groups = Groups { weight_decay: 0.1, ..Default::default() };
        let mut o =
            Optimizer::new(OptimizerKind::Sgd { momentum: 0.9, nesterov: true }, groups, &s);
        o.step(&mut s, 0.5);
        // d = 1.2, buf = 1.2, step = 1.2 + 1.08 = 2.28, w = 2 − 1.14 = 0.86
        assert!((s.params()[0].value.data()[0] - 0.86).abs() < 1e-6);
        // No decay on NoDecay parameters.
        let mut s = store(2.0, ParamGroup::NoDecay);
        let mut o =
            Optimizer::new(OptimizerKind::Sgd { momentum: 0.0, nesterov: false }, groups, &s);
        o.step(&mut s, 0.5);
        assert!((s.params()[0].value.data()[0] - 1.5).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_is_lr_sized_and_bounds_use_their_scale() {
        let mut s = store(1.0, ParamGroup::QuantBound);
        let groups = Groups { weight_decay: 0.0, bound_lr_scale: 0.1, bound_decay: 0.0 };
        let mut o =
            Optimizer::new(OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, groups, &s);
        o.step(&mut s, 0.01);
        assert!((s.params()[0].value.data()[0] - (1.0 - 0.001)).abs() < 1e-6);
    }
}
