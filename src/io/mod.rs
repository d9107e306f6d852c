//! Files: checkpoints (dnat's own versioned format) and PyTorch weight interchange.

pub mod atomic;
pub mod checkpoint;
pub mod safetensors;

pub use checkpoint::Checkpoint;
