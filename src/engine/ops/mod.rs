//! Differentiable ops, one per file: forward, backward and gradient test together.
//!
//! Each op takes `&mut Tape` and input [`Var`](super::Var)s and returns its output
//! `Var`; the raw kernels (im2col, batch statistics) are public too so that other
//! ops (the CIM layers) can build on them.

pub mod add;
pub mod batchnorm;
pub mod conv2d;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod relu;
pub mod shape;

pub use add::add;
pub use batchnorm::{BatchNormState, batch_norm2d};
pub use conv2d::{Conv2dCfg, conv2d};
pub use linear::linear;
pub use loss::softmax_cross_entropy;
pub use pool::{global_avg_pool, max_pool2d};
pub use relu::relu;
pub use shape::{flatten, straight_through, subsample_pad_channels};
