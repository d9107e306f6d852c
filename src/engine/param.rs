//! Parameters and buffers, owned by a [`ParamStore`] and addressed by id.
//!
//! Names follow PyTorch's `state_dict` (`layer1.0.conv1.weight`, `bn1.running_mean`),
//! so checkpoints and safetensors files speak the same language.

use super::Tensor;
use crate::rng::Xoshiro256PlusPlus;

/// A parameter's index in its store ([`ParamStore::add_param`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// A buffer's index in its store ([`ParamStore::add_buffer`]).
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
    /// The group's code in checkpoints: `Weight` 0, `NoDecay` 1, `QuantBound` 2.
    pub fn code(self) -> u8 {
        match self {
            ParamGroup::Weight => 0,
            ParamGroup::NoDecay => 1,
            ParamGroup::QuantBound => 2,
        }
    }
    /// The group of a checkpoint code (`None` for an unknown code).
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(ParamGroup::Weight),
            1 => Some(ParamGroup::NoDecay),
            2 => Some(ParamGroup::QuantBound),
            _ => None,
        }
    }
}

/// A trainable tensor with its gradient and optimizer group.
#[derive(Clone, Debug)]
pub struct Param {
    /// The `state_dict` name (`layer1.0.conv1.weight`).
    pub name: String,
    /// The current value.
    pub value: Tensor,
    /// The gradient, shape of `value`, summed over backward passes until
    /// [`ParamStore::zero_grads`].
    pub grad: Tensor,
    /// Which optimizer group it is in (weight decay, learning rate).
    pub group: ParamGroup,
}

/// A tensor saved with the parameters but not trained (batchnorm's running statistics).
#[derive(Clone, Debug)]
pub struct Buffer {
    /// The `state_dict` name (`bn1.running_mean`).
    pub name: String,
    /// The current value.
    pub value: Tensor,
}

/// A network's parameters, buffers and weight layers, each addressed by id.
#[derive(Clone, Debug)]
pub struct ParamStore {
    params: Vec<Param>,
    buffers: Vec<Buffer>,
    /// The stream layers draw their initial weights from, in the order they are made
    /// (so a network built from one seed is the same network, run after run).
    init_rng: Xoshiro256PlusPlus,
    /// The weight layers (convolutions, linear layers) in the order they were made,
    /// with their place on the macro once mapped ([`crate::nn::map_to_macro`]).
    layers: Vec<WeightLayer>,
}

/// A weight layer's index in its store ([`ParamStore::add_layer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerId(pub usize);

/// A convolution or linear layer as its store knows it.
#[derive(Clone, Debug)]
pub struct WeightLayer {
    /// The layer's name: its parameters are `{name}.weight`, `{name}.bias`, and on the
    /// macro `{name}.act_lo` / `{name}.act_hi`.
    pub name: String,
    /// Convolution or linear layer.
    pub kind: LayerKind,
    /// Where the layer runs when a pass has a CIM runtime (`None`: digital, FP32).
    pub on_macro: Option<MacroSlot>,
}

/// What a [`WeightLayer`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A 2-D convolution.
    Conv,
    /// A fully connected layer.
    Linear,
}

/// A layer mapped onto the macro: its activation quantizer's bounds and its id in the
/// readout draw keys (the order layers were mapped in, so the same network mapped the
/// same way draws the same readouts, run after run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacroSlot {
    /// The lower bound of the layer's input quantizer (`{name}.act_lo`).
    pub lo: ParamId,
    /// The upper bound of the layer's input quantizer (`{name}.act_hi`).
    pub hi: ParamId,
    /// The CIM layer id: the order the layer was mapped in, a key of its readout draws.
    pub id: u64,
}

impl Default for ParamStore {
    fn default() -> Self {
        Self::seeded(0)
    }
}

impl ParamStore {
    /// An empty store whose layers draw their initial weights from seed 0.
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty store whose layers draw their initial weights from `seed`.
    pub fn seeded(seed: u64) -> Self {
        ParamStore {
            params: Vec::new(),
            buffers: Vec::new(),
            init_rng: crate::rng::stream(seed),
            layers: Vec::new(),
        }
    }
    /// The initialisation stream (layers' `init` draw from it).
    pub fn init_rng(&mut self) -> &mut Xoshiro256PlusPlus {
        &mut self.init_rng
    }
    /// Adds a parameter. Names are unique (checkpoints and safetensors address by
    /// name): a second one of a name is a bug in the network's builder, and panics.
    pub fn add_param(
        &mut self,
        name: impl Into<String>,
        value: Tensor,
        group: ParamGroup,
    ) -> ParamId {
        let name = name.into();
        assert!(
            !self.params.iter().any(|p| p.name == name),
            "parameter '{name}' added twice: layer names must be unique"
        );
        let grad = Tensor::zeros(value.shape());
        self.params.push(Param { name, value, grad, group });
        ParamId(self.params.len() - 1)
    }
    /// Adds a buffer (names unique, as for parameters).
    pub fn add_buffer(&mut self, name: impl Into<String>, value: Tensor) -> BufferId {
        let name = name.into();
        assert!(
            !self.buffers.iter().any(|b| b.name == name),
            "buffer '{name}' added twice: layer names must be unique"
        );
        self.buffers.push(Buffer { name, value });
        BufferId(self.buffers.len() - 1)
    }
    /// Records a weight layer (its parameters are added by the caller). Names are
    /// unique, as for parameters.
    pub fn add_layer(&mut self, name: &str, kind: LayerKind) -> LayerId {
        assert!(
            !self.layers.iter().any(|l| l.name == name),
            "layer '{name}' added twice: layer names must be unique"
        );
        self.layers.push(WeightLayer { name: name.to_string(), kind, on_macro: None });
        LayerId(self.layers.len() - 1)
    }
    /// The weight layers, in the order they were made.
    pub fn layers(&self) -> &[WeightLayer] {
        &self.layers
    }
    /// The weight layer `id`.
    pub fn layer(&self, id: LayerId) -> &WeightLayer {
        &self.layers[id.0]
    }
    /// Maps a layer onto the macro: adds its quantizer bounds `{name}.act_lo` (0) and
    /// `{name}.act_hi` (1) and gives it the next CIM layer id. A layer is mapped once
    /// (a second time panics: a bug in the caller, [`crate::nn::map_to_macro`] never does).
    pub fn map_layer(&mut self, id: LayerId) -> MacroSlot {
        let name = self.layers[id.0].name.clone();
        assert!(self.layers[id.0].on_macro.is_none(), "layer '{name}' mapped onto the macro twice");
        let next = self.layers.iter().filter(|l| l.on_macro.is_some()).count() as u64;
        let lo =
            self.add_param(format!("{name}.act_lo"), Tensor::zeros(&[1]), ParamGroup::QuantBound);
        let hi = self.add_param(
            format!("{name}.act_hi"),
            Tensor::full(&[1], 1.0),
            ParamGroup::QuantBound,
        );
        let slot = MacroSlot { lo, hi, id: next };
        self.layers[id.0].on_macro = Some(slot);
        slot
    }
    /// The names of the layers mapped onto the macro, in id order.
    pub fn cim_layers(&self) -> Vec<String> {
        let mut on: Vec<_> =
            self.layers.iter().filter_map(|l| l.on_macro.map(|m| (m.id, l.name.clone()))).collect();
        on.sort();
        on.into_iter().map(|(_, n)| n).collect()
    }
    /// The parameter `id`.
    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }
    /// The parameter `id`, mutably.
    pub fn param_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }
    /// The buffer `id`.
    pub fn buffer(&self, id: BufferId) -> &Buffer {
        &self.buffers[id.0]
    }
    /// The buffer `id`, mutably.
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
    /// Every parameter, in id order (the order they were added).
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    /// Every parameter, mutably, in id order.
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }
    /// Every buffer, in id order (the order they were added).
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }
    /// Every buffer, mutably, in id order.
    pub fn buffers_mut(&mut self) -> &mut [Buffer] {
        &mut self.buffers
    }
    /// Sets every parameter's gradient to zero (before a backward pass).
    pub fn zero_grads(&mut self) {
        for p in &mut self.params {
            p.grad.fill(0.0);
        }
    }
    /// The number of scalars in all parameters (buffers not counted).
    pub fn num_scalars(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }
}
