//! Subcommands of the `dnat` binary.

pub mod bench;
pub mod eval;
pub mod train;
pub mod weights;

use dnat::data::{resolve_data_path, Dataset, DatasetKind};
use dnat::Result;
use std::path::Path;

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
