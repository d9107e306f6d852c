//! A forward pass written down as a graph the deployable format can state.
//!
//! Every layer ([`super::Conv2d`], [`super::Linear`], [`super::BatchNorm2d`]) and every
//! op a network calls through [`Fwd`](super::Fwd) (`relu`, `add`, `max_pool2d`,
//! `global_avg_pool`, `flatten`, `subsample_pad_channels`) adds a node when the pass
//! carries a [`Trace`]. `dnat export` traces one forward pass and writes the graph, so
//! any network built from these pieces exports whole, pooling and shortcuts included.
//! A value produced by anything else (a tape op called directly) is one the trace
//! cannot explain: the first such use is kept in [`Trace::untraced`] and the export
//! refuses by naming it, rather than writing a partial model.

use super::layers::BatchNorm2d;
use crate::engine::ops::Conv2dCfg;
use crate::engine::{MacroSlot, ParamId, Var};
use std::collections::HashMap;

/// One op of a traced pass.
#[derive(Clone, Debug)]
pub enum Node {
    /// A 2-D convolution of an NCHW value: `weight` (cout, cin, kernel, kernel), the optional
    /// `bias`, stride and padding in `cfg`, and `cim` the layer's macro slot when it is
    /// mapped onto the macro (`None`: digital).
    Conv {
        /// The weight, (cout, cin, kernel, kernel).
        weight: ParamId,
        /// The bias, (cout), if any.
        bias: Option<ParamId>,
        /// Stride and padding.
        cfg: Conv2dCfg,
        /// The layer's macro slot when it is mapped onto the macro (`None`: digital).
        cim: Option<MacroSlot>,
    },
    /// A fully connected layer on an (N, fin) value: `weight` (fout, fin), the optional
    /// `bias`, and `cim` the layer's macro slot when it is mapped onto the macro (`None`: digital).
    Linear {
        /// The weight, (fout, fin).
        weight: ParamId,
        /// The bias, (fout), if any.
        bias: Option<ParamId>,
        /// The layer's macro slot when it is mapped onto the macro (`None`: digital).
        cim: Option<MacroSlot>,
    },
    /// A batchnorm layer (its parameters and running-statistics buffers).
    BatchNorm(BatchNorm2d),
    /// max(x, 0), elementwise.
    Relu,
    /// Elementwise sum of two values of one shape (a residual connection).
    Add,
    /// The maximum over `kernel`×`kernel` windows every `stride` pixels (no padding).
    MaxPool {
        /// Window side, in pixels.
        kernel: usize,
        /// Step between windows, in pixels.
        stride: usize,
    },
    /// (N, C, H, W) → (N, C): the mean over each channel's pixels.
    GlobalAvgPool,
    /// (N, C, H, W) → (N, C·H·W).
    Flatten,
    /// The option-A shortcut: every `stride`-th pixel, channels zero-padded to `cout`
    /// (half before, half after).
    SubsamplePad {
        /// Subsampling step, in pixels.
        stride: usize,
        /// Output channels (≥ the input's).
        cout: usize,
    },
}

impl Node {
    /// The kind of op in words ("conv", "max-pool", …), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Node::Conv { .. } => "conv",
            Node::Linear { .. } => "linear",
            Node::BatchNorm(_) => "batchnorm",
            Node::Relu => "relu",
            Node::Add => "add",
            Node::MaxPool { .. } => "max-pool",
            Node::GlobalAvgPool => "global average pool",
            Node::Flatten => "flatten",
            Node::SubsamplePad { .. } => "subsample + channel padding",
        }
    }
}

/// A node and the values it reads. Value 0 is the pass's input; node `i` produces
/// value `i + 1`.
#[derive(Clone, Debug)]
pub struct TracedOp {
    /// The op.
    pub node: Node,
    /// The value ids it reads, in order ([`UNKNOWN`] for a value no traced op produced).
    pub inputs: Vec<usize>,
}

/// The graph of one forward pass (see the module docs).
#[derive(Debug, Default)]
pub struct Trace {
    /// The traced ops in the order they ran; op `i` produces value `i + 1`.
    pub ops: Vec<TracedOp>,
    /// Value id of each tape variable a traced op produced (the input is value 0).
    ids: HashMap<Var, usize>,
    /// The first use of a value no traced op produced, in words.
    pub untraced: Option<String>,
}

/// Marks an input that no traced op produced.
pub const UNKNOWN: usize = usize::MAX;

impl Trace {
    /// A trace whose value 0 is `input`.
    pub fn new(input: Var) -> Self {
        Trace { ids: HashMap::from([(input, 0)]), ..Default::default() }
    }

    /// Records `nodes` applied in turn (the first reads `inputs`, each next one the
    /// previous one's output; fused ops such as batchnorm + ReLU give two), `output`
    /// being the last one's result on the tape.
    pub fn record(&mut self, nodes: Vec<Node>, inputs: &[Var], output: Var) {
        let mut first_inputs = Vec::with_capacity(inputs.len());
        for v in inputs {
            match self.ids.get(v) {
                Some(&id) => first_inputs.push(id),
                None => {
                    if self.untraced.is_none() {
                        self.untraced = Some(format!(
                            "the input of op {} ({}) comes from an op outside the layer API",
                            self.ops.len(),
                            nodes[0].name()
                        ));
                    }
                    first_inputs.push(UNKNOWN);
                }
            }
        }
        for (j, node) in nodes.into_iter().enumerate() {
            let inputs =
                if j == 0 { std::mem::take(&mut first_inputs) } else { vec![self.ops.len()] };
            self.ops.push(TracedOp { node, inputs });
        }
        self.ids.insert(output, self.ops.len());
    }

    /// The value id of `v`, when a traced op produced it.
    pub fn id_of(&self, v: Var) -> Option<usize> {
        self.ids.get(&v).copied()
    }
}
