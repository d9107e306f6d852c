//! The CIM physics: how a macro computes and reads out, and how it errs.
//!
//! * [`MacroSpec`] — tile rows, input/weight bits, bits per cycle, the ADC.
//! * [`codes`] — validated code ranges (ADC and measured codes).
//! * [`chip`] — fixed-pattern variation: chip instances, per-column gain and offset.
//! * [`em`] — D-MAC-EM, the measured MAC error model (tables, files, presets, fitting).
//! * [`quant`] — E-PACT / PACT activation quantizers and weight codes.
//! * [`readout`] — the readout source trait, forward modes, backward estimators, draw keys.
//! * [`psum`] — a tile's integer partial sums (AVX-512 VNNI, AVX2, portable).
//! * [`conv`] — the `CimConv2d` / `CimLinear` ops: tiles, partial sums, readouts.

pub mod chip;
pub mod clip;
pub mod codes;
pub mod conv;
pub mod em;
pub mod macro_spec;
pub mod profile;
pub mod psum;
pub mod quant;
pub mod readout;

pub use chip::{Chip, FixedPattern};
pub use clip::{ClipCounts, LayerClip};
pub use codes::CodeRange;
pub use conv::{CimCall, cim_conv2d, cim_linear};
pub use em::{ErrorModel, FillPolicy};
pub use macro_spec::{Adc, MacroSpec};
pub use profile::CimProfile;
pub use quant::{ActGrid, InputQuant, epact};
pub use readout::{
    CimRuntime, DrawKey, DrawRun, Estimator, Readout, ReadoutMode, ReadoutTable, SampleOnly,
};
