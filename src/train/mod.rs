//! Training and evaluation loops, progress reporting, and the `dnat bench` measurement.

pub mod bench;
pub mod config;
pub mod eval;
pub mod json;
pub mod progress;
pub mod recalibrate;
pub mod trainer;

pub use config::TrainConfig;
pub use config::{ChipChoice, CimTraining, ErrorModelSource, ReadoutSource};
pub use eval::{EvalResult, McAccuracy, McPlan, evaluate, evaluate_mc, noise_seed};
pub use recalibrate::{BN_RECALIBRATED, RecalImages, Recalibration, recalibrate_bn};
pub use trainer::{MACRO_BACKEND, RunOptions, TrainOutcome, train, train_through};
