//! What a research program on dnat usually needs, in one `use dnat::prelude::*;`: the
//! layers and the [`Network`] trait, mapping onto the macro, the training and
//! evaluation loops, data, checkpoints, fitting your chip's error model and the
//! deployable export.

pub use crate::cim::em::{FillPolicy, ModelInfo, fit};
pub use crate::cim::{CimRuntime, ErrorModel, Estimator, MacroSpec, Readout, ReadoutMode};
pub use crate::data::{Batcher, Dataset, DatasetKind, Normalize, synthetic};
pub use crate::engine::{Mode, ParamStore, Tape, Var};
pub use crate::io::checkpoint::Checkpoint;
pub use crate::io::deploy::DeployModel;
pub use crate::nn::{
    ActQuantKind, Arch, BatchNorm2d, CimPlan, Conv2d, Conv2dConfig, Fwd, Linear, ModelSpec,
    Network, build, map_to_macro, register,
};
pub use crate::train::{
    ChipChoice, CimTraining, ErrorModelSource, McPlan, ReadoutSource, RunOptions, TrainConfig,
    evaluate, evaluate_mc, recalibrate_bn, train,
};
pub use crate::{Error, Result};
