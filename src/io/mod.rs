//! Files: checkpoints (dnat's own versioned format), the deployable integer model, and
//! PyTorch weight interchange.

pub mod atomic;
pub mod checkpoint;
pub mod deploy;
pub mod framed;
pub mod safetensors;

pub use checkpoint::Checkpoint;
