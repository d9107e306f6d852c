//! Training and evaluation loops, progress reporting, and the `dnat bench` measurement.

pub mod bench;
pub mod config;
pub mod eval;
pub mod json;
pub mod progress;
pub mod recalibrate;
pub mod trainer;

pub use config::TrainConfig;
pub use config::{ChipChoice, CimTraining, ReadoutSource};
pub use eval::{evaluate, evaluate_mc, noise_seed, EvalResult, McAccuracy};
pub use recalibrate::{recalibrate_bn, RecalImages, Recalibration, BN_RECALIBRATED};
pub use trainer::{train, RunOptions, TrainOutcome};
