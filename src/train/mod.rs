//! Training and evaluation loops, progress reporting, and the `dnat bench` measurement.

pub mod bench;
pub mod config;
pub mod eval;
pub mod json;
pub mod progress;
pub mod trainer;

pub use config::TrainConfig;
pub use config::CimTraining;
pub use eval::{evaluate, evaluate_mc, EvalResult, McAccuracy};
pub use trainer::{train, RunOptions, TrainOutcome};
