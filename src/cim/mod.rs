//! The CIM physics: how a macro computes and reads out, and how it errs.
//!
//! * [`MacroSpec`] — tile rows, input/weight bits, bits per cycle, the ADC.
//! * [`em`] — D-MAC-EM, the measured MAC error model (tables, files, presets, fitting).

pub mod em;
pub mod macro_spec;

pub use em::{ErrorModel, FillPolicy};
pub use macro_spec::{Adc, MacroSpec};
