//! Subcommands of the `dnat` binary.

pub mod bench;
pub mod calibrate;
pub mod em;
pub mod eval;
pub mod export;
pub mod pipeline;
pub mod train;
pub mod weights;

use dnat::cim::{CimRuntime, Estimator, MacroSpec, ReadoutMode};
use dnat::train::ReadoutSource;
use dnat::data::{resolve_data_path, Dataset, DatasetKind};
use dnat::Result;
use std::path::Path;
use std::sync::Arc;

/// A CIM runtime from command-line words, the error model behind `source`.
pub fn cim_runtime(macro_name: &str, model: &str, readout: &str, estimator: &str, source: ReadoutSource) -> Result<CimRuntime> {
    let spec = MacroSpec::parse(macro_name)?;
    spec.validate()?;
    let em = dnat::cim::em::resolve(model, &spec)?;
    CimRuntime::new(spec, source.wrap(Arc::new(em)), ReadoutMode::parse(readout)?, Estimator::parse(estimator)?)
}

/// Finds and loads the data set, saying which one was read.
pub fn load_data(flag: Option<&Path>, kind: DatasetKind, quiet: bool) -> Result<Dataset> {
    let path = resolve_data_path(flag, kind)?;
    let t = std::time::Instant::now();
    let ds = Dataset::load(&path, kind)?;
    if !quiet {
        eprintln!(
            "data: {} — {} ({} train / {} test images, sha256 {}…, read in {:.1}s)",
            ds.provenance.path.display(),
            ds.provenance.description,
            ds.train.len(),
            ds.test.len(),
            &ds.provenance.sha256[..16],
            t.elapsed().as_secs_f64()
        );
    }
    Ok(ds)
}
