//! D-MAC-EM: the measured MAC error model.
//!
//! For every ideal ADC code `k` of a macro, the empirical probability mass function of
//! the code `j` the chip actually reads out. The model is **data**: built from counts
//! (`ideal, measured, count`), saved in a human-readable counts table or a compact
//! binary form ([`format`]), fitted from raw measurement logs ([`fit`]), or generated
//! as a labelled synthetic preset ([`presets`]).
//!
//! Rows (ideal codes) that were never measured are filled by an explicit policy
//! ([`FillPolicy`]); readouts are drawn with per-row alias tables, and the exact
//! expectation `E[j | k]` and its slope are tabulated for the `expected` forward mode
//! and the statistical gradient estimator.

pub mod fit;
pub mod format;
pub mod heatmap;
pub mod presets;
mod table;

pub use table::{ErrorModel, FillPolicy, ModelInfo};
