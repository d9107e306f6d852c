//! The engine: tensors, a flat reverse-mode tape, and the differentiable ops.
//!
//! * [`Tensor`] — a dense, row-major f32 array (activations are NCHW).
//! * [`Tape`] — nodes in creation order; `backward` walks them in reverse, each op's
//!   boxed closure reading the values it needs from the tape and accumulating into
//!   its inputs' gradients in place.
//! * [`ops`] — one file per op: forward, backward and the op's gradient test.
//! * [`gemm`] — the matrix product every contraction goes through: packed panels and
//!   SIMD micro-kernels that all compute the same, defined FMA chains.
//! * [`par`] — the fixed work splits that keep results independent of thread count.
//! * [`scratch`] — reused per-thread buffers for values written whole before they are read.

pub mod alloc;
pub mod gemm;
pub mod gradcheck;
pub mod ops;
pub mod par;
pub mod param;
pub mod scratch;
pub mod tape;
pub mod tensor;

pub use param::{
    BufferId, LayerId, LayerKind, MacroSlot, ParamGroup, ParamId, ParamStore, WeightLayer,
};
pub use tape::{Gradients, Tape, Var};
pub use tensor::Tensor;

/// Whether a forward pass trains (batch statistics, stochastic ops drawn) or evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: batchnorm uses and updates the batch statistics.
    Train,
    /// Evaluation: batchnorm uses its running statistics.
    Eval,
}
