//! # dnat — data-driven non-ideality aware training for computing-in-memory macros
//!
//! The crate is laid out as separate rooms:
//!
//! * [`engine`] — tensors, the reverse-mode tape and the differentiable ops
//!   (im2col convolution, batchnorm, pooling, fused softmax + cross-entropy).
//! * [`nn`] — parameters, layers and the networks of the paper (ResNet20, VGG8,
//!   ResNet34, VGG16 in their CIFAR forms).
//! * [`optim`] — SGD / Adam, parameter groups and learning-rate schedules.
//! * [`data`] — CIFAR-10 / CIFAR-100 binary readers and per-image augmentation.
//! * [`io`] — checkpoints and PyTorch (`safetensors`) weight interchange.
//! * [`train`] — the training / evaluation loops, progress reporting and benchmarks.
//!
//! Every computation is deterministic: the same seed gives the same bits whatever
//! the number of rayon threads (see `engine::par` for how reductions are split).

pub mod cim;
pub mod data;
pub mod engine;
pub mod error;
pub mod io;
pub mod nn;
pub mod optim;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
