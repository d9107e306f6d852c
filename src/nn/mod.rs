//! Layers and the networks of the paper, in their CIFAR forms.
//!
//! A network is a plain struct of layer handles; parameters and buffers live in a
//! [`ParamStore`](crate::engine::ParamStore) under PyTorch `state_dict` names, so the
//! same names serve checkpoints and safetensors interchange.

pub mod layers;
pub mod models;
pub mod trace;

pub use layers::{ActQuantKind, BatchNorm2d, Calibration, CimQuant, Conv2d, Conv2dConfig, Fwd, Linear};
pub use trace::{Node, Trace};
pub use models::{build, Arch, CimPlan, ModelSpec, Network};
