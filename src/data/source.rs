//! Where the data set is found: `--data PATH`, else `$DNAT_DATA`, else the shared
//! stand-in at `../shared/datasets` (beside the checkout), else `datasets/` in the
//! repository (which `make data` fills with the canonical archive, checksum-verified).

use super::DatasetKind;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Archive names looked for inside a folder, in order of preference.
fn archive_names(kind: DatasetKind) -> &'static [&'static str] {
    match kind {
        DatasetKind::Cifar10 => &["cifar-10-binary.tar.gz", "cifar-10-binary-jpeg75.tar.gz"],
        DatasetKind::Cifar100 => &["cifar-100-binary.tar.gz"],
    }
}

/// Inside a folder: the extracted data set, or one of the known archives.
fn find_in(dir: &Path, kind: DatasetKind) -> Option<PathBuf> {
    if dir.join(kind.folder()).is_dir() {
        return Some(dir.to_path_buf());
    }
    archive_names(kind).iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Resolves the path the data set is read from (an archive or a folder).
pub fn resolve_data_path(flag: Option<&Path>, kind: DatasetKind) -> Result<PathBuf> {
    let explicit =
        flag.map(Path::to_path_buf).or_else(|| std::env::var_os("DNAT_DATA").map(PathBuf::from));
    if let Some(p) = explicit {
        if !p.exists() {
            return Err(Error::invalid(format!("data path {} does not exist", p.display())));
        }
        if p.is_dir() {
            // A folder holding record files directly is accepted as is.
            return Ok(find_in(&p, kind).unwrap_or(p));
        }
        return Ok(p);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        PathBuf::from("../shared/datasets"),
        repo.join("../shared/datasets"),
        PathBuf::from("datasets"),
        repo.join("datasets"),
    ];
    for c in &candidates {
        if let Some(found) = find_in(c, kind) {
            return Ok(found);
        }
    }
    Err(Error::invalid(format!(
        "no {} data found: pass --data PATH (a .tar.gz or folder), set DNAT_DATA, or run `make data` to download the canonical archive into datasets/",
        kind.name()
    )))
}
