//! D-MAC-EM: the measured MAC error model.
//!
//! For every ideal ADC code `k` of a macro, the empirical probability mass function of
//! the code `j` the chip actually reads out. The model is **data**: built from counts
//! (`ideal, measured, count`), saved in a human-readable counts table or a compact
//! binary form ([`format`](mod@format)), fitted from raw measurement logs ([`fit`]), or generated
//! as a labelled synthetic preset ([`presets`]).
//!
//! Rows (ideal codes) that were never measured are filled by an explicit policy
//! ([`FillPolicy`]); readouts are drawn with per-row alias tables, and the exact
//! expectation `E[j | k]` and its slope are tabulated for the `expected` forward mode
//! and the statistical gradient estimator.

mod draw;
pub mod fit;
pub mod format;
pub mod heatmap;
pub mod presets;
mod table;

pub use table::{ErrorModel, FillPolicy, ModelInfo};

/// An error model by preset name (`ideal`, `mild`, `moderate`, `severe`, optionally with
/// overrides such as `moderate:offset=6`) or file path, checked to cover the macro's
/// ADC codes.
pub fn resolve(name_or_path: &str, spec: &crate::cim::MacroSpec) -> crate::Result<ErrorModel> {
    use crate::Error;
    use std::path::Path;
    if presets::is_preset(name_or_path) {
        return presets::preset(name_or_path, (spec.adc.kmin, spec.adc.kmax));
    }
    let path = Path::new(name_or_path);
    if !path.exists() {
        return Err(Error::invalid(format!(
            "error model '{name_or_path}' is neither a preset ({}) nor an existing file",
            presets::PRESETS.join(", ")
        )));
    }
    let m = format::load(path)?;
    if !m.columns.is_empty() && m.columns.len() != spec.adcs() {
        return Err(Error::format(
            path,
            format!(
                "measures {} ADC columns, the macro has {} ({} arrays × {} columns)",
                m.columns.len(),
                spec.adcs(),
                spec.arrays,
                spec.columns
            ),
        ));
    }
    if m.kmin > spec.adc.kmin || m.kmax < spec.adc.kmax {
        return Err(Error::format(
            path,
            format!(
                "covers ideal codes {}..={}, the macro's ADC produces {}..={}",
                m.kmin, m.kmax, spec.adc.kmin, spec.adc.kmax
            ),
        ));
    }
    Ok(m)
}
