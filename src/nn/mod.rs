//! Layers and the networks of the paper, in their CIFAR forms.
//!
//! A network is a plain struct of layer handles; parameters and buffers live in a
//! [`ParamStore`](crate::engine::ParamStore) under PyTorch `state_dict` names, so the
//! same names serve checkpoints and safetensors interchange.

pub mod layers;
pub mod mapping;
pub mod models;
pub mod trace;

pub use layers::{
    ActQuantKind, BatchNorm2d, Calibration, Conv2d, Conv2dConfig, Fwd, Linear, MacroForward,
};
pub use mapping::{CimPlan, map_to_macro};
pub use models::{Arch, Builder, ModelSpec, Network, build, register};
pub use trace::{Node, Trace};
