//! Parameters and buffers, owned by a [`ParamStore`] and addressed by id.
//!
//! Names follow PyTorch's `state_dict` (`layer1.0.conv1.weight`, `bn1.running_mean`),
//! so checkpoints and safetensors files speak the same language.

use super::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId(pub usize);

/// Which optimizer group a parameter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGroup {
    /// Conv / linear weights: weight decay applies.
    Weight,
    /// Biases and batchnorm affine parameters: no weight decay.
    NoDecay,
    /// Quantizer clipping bounds (E-PACT): their own learning rate and decay.
    QuantBound,
}

impl ParamGroup {
    pub fn code(self) -> u8 {
        match self {
            ParamGroup::Weight => 0,
            ParamGroup::NoDecay => 1,
            ParamGroup::QuantBound => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(ParamGroup::Weight),
            1 => Some(ParamGroup::NoDecay),
            2 => Some(ParamGroup::QuantBound),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
    pub group: ParamGroup,
}

#[derive(Clone, Debug)]
pub struct Buffer {
    pub name: String,
    pub value: Tensor,
}

#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    buffers: Vec<Buffer>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add_param(&mut self, name: impl Into<String>, value: Tensor, group: ParamGroup) -> ParamId {
        let grad = Tensor::zeros(value.shape());
        self.params.push(Param { name: name.into(), value, grad, group });
        ParamId(self.params.len() - 1)
    }
    pub fn add_buffer(&mut self, name: impl Into<String>, value: Tensor) -> BufferId {
        self.buffers.push(Buffer { name: name.into(), value });
        BufferId(self.buffers.len() - 1)
    }
    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }
    pub fn param_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }
    pub fn buffer(&self, id: BufferId) -> &Buffer {
        &self.buffers[id.0]
    }
    pub fn buffer_mut(&mut self, id: BufferId) -> &mut Buffer {
        &mut self.buffers[id.0]
    }
    /// Two distinct buffers, mutably (batchnorm's running mean and variance).
    pub fn buffer_pair_mut(&mut self, a: BufferId, b: BufferId) -> (&mut Tensor, &mut Tensor) {
        assert_ne!(a, b, "buffer_pair_mut needs two distinct buffers");
        let (lo, hi, swap) = if a.0 < b.0 { (a.0, b.0, false) } else { (b.0, a.0, true) };
        let (left, right) = self.buffers.split_at_mut(hi);
        let (x, y) = (&mut left[lo].value, &mut right[0].value);
        if swap { (y, x) } else { (x, y) }
    }
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }
    pub fn buffers_mut(&mut self) -> &mut [Buffer] {
        &mut self.buffers
    }
    pub fn zero_grads(&mut self) {
        for p in &mut self.params {
            p.grad.fill(0.0);
        }
    }
    pub fn num_scalars(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }
}
