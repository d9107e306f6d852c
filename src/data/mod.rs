//! Data: CIFAR-10 / CIFAR-100 in their binary layouts, and per-image augmentation.
//!
//! * [`source`] — where the data is: `--data`, else `DNAT_DATA`, else
//!   `../shared/datasets`, else `datasets/` (filled by `make data`).
//! * [`cifar`] — reading and validating the records from a `.tar.gz` or a folder,
//!   and naming which archive was read (by checksum).
//! * [`tar`] — a minimal streaming tar reader (ustar), enough for these archives.
//! * [`batch`] — batches as NCHW tensors: random crop with padding, horizontal flip,
//!   per-channel normalisation; every draw keyed by (seed, epoch, image).

pub mod batch;
pub mod cifar;
pub mod source;
pub mod synthetic;
pub mod tar;

pub use batch::{Augment, Batcher, Normalize};
pub use cifar::{Dataset, DatasetKind, Provenance, Split};
pub use source::resolve_data_path;
