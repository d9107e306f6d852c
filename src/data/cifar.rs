//! CIFAR-10 / CIFAR-100 binary layouts.
//!
//! CIFAR-10: `cifar-10-batches-bin/data_batch_{1..5}.bin` and `test_batch.bin`, 10,000
//! records each of 3,073 bytes (label, then 1,024 R, 1,024 G, 1,024 B, row-major 32×32).
//! CIFAR-100: `cifar-100-binary/train.bin` (50,000) and `test.bin` (10,000), records of
//! 3,074 bytes (coarse label, fine label, pixels); the fine label (100 classes) is used.
//! Both are read straight from the `.tar.gz` (one streaming pass that also hashes the
//! archive) or from an extracted folder, and validated record by record.

use super::tar;
use crate::{Error, Result};
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Bytes of one image: 3 channels of 32×32 u8 pixels, CHW (each channel row-major).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// The most an archive may inflate to (the CIFAR tars are ~180 MB).
const MAX_INFLATED: u64 = 1 << 30;

/// sha256 of the archives dnat recognises by name.
pub const KNOWN_ARCHIVES: [(&str, &str); 3] = [
    (
        "8592eb9ae28b6de5db44075f0c52fe69002a8bfb878f87b44cea959451558491",
        "CIFAR-10 stand-in (cifar-10-binary-jpeg75.tar.gz: JPEG q75 pixels)",
    ),
    (
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "canonical CIFAR-10 (cifar-10-binary.tar.gz)",
    ),
    (
        "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        "canonical CIFAR-100 (cifar-100-binary.tar.gz)",
    ),
];

/// (file name, records it must hold) of one split.
type RecordFiles = Vec<(&'static str, usize)>;

/// Which CIFAR binary layout to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// CIFAR-10: 10 classes, one label byte per record.
    Cifar10,
    /// CIFAR-100: records carry a coarse and a fine label byte; the 100 fine classes are used.
    Cifar100,
}

impl DatasetKind {
    /// The kind named `cifar10` or `cifar100` (as `--dataset` takes it); errors on any other name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cifar10" => Ok(DatasetKind::Cifar10),
            "cifar100" => Ok(DatasetKind::Cifar100),
            _ => Err(Error::invalid(format!("unknown dataset '{s}' (known: cifar10, cifar100)"))),
        }
    }
    /// `"cifar10"` or `"cifar100"`: the name [`DatasetKind::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
        }
    }
    /// Number of classes: 10 or 100.
    pub fn num_classes(self) -> usize {
        match self {
            DatasetKind::Cifar10 => 10,
            DatasetKind::Cifar100 => 100,
        }
    }
    /// The data set a model with `classes` outputs is evaluated on (`None`: no data set
    /// dnat reads has that many classes).
    pub fn for_classes(classes: usize) -> Option<Self> {
        [DatasetKind::Cifar10, DatasetKind::Cifar100]
            .into_iter()
            .find(|k| k.num_classes() == classes)
    }

    /// [`DatasetKind::for_classes`] for the model in `checkpoint`, as an error naming it.
    pub fn of_checkpoint(classes: usize, checkpoint: &std::path::Path) -> crate::Result<Self> {
        Self::for_classes(classes).ok_or_else(|| {
            crate::Error::format(checkpoint, format!("has {classes} output classes; the data sets dnat evaluates on have 10 (CIFAR-10) or 100 (CIFAR-100)"))
        })
    }
    fn label_bytes(self) -> usize {
        match self {
            DatasetKind::Cifar10 => 1,
            DatasetKind::Cifar100 => 2,
        }
    }
    /// Bytes of one record in the binary files: the label byte(s), then the image
    /// (3,073 for CIFAR-10, 3,074 for CIFAR-100).
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }
    /// The folder that holds the record files (`cifar-10-batches-bin` or `cifar-100-binary`).
    pub fn folder(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar-10-batches-bin",
            DatasetKind::Cifar100 => "cifar-100-binary",
        }
    }
    /// The record files of each split (train, test), with the record count each must hold.
    fn files(self) -> (RecordFiles, RecordFiles) {
        match self {
            DatasetKind::Cifar10 => (
                vec![
                    ("data_batch_1.bin", 10_000),
                    ("data_batch_2.bin", 10_000),
                    ("data_batch_3.bin", 10_000),
                    ("data_batch_4.bin", 10_000),
                    ("data_batch_5.bin", 10_000),
                ],
                vec![("test_batch.bin", 10_000)],
            ),
            DatasetKind::Cifar100 => (vec![("train.bin", 50_000)], vec![("test.bin", 10_000)]),
        }
    }
}

/// Images (u8, CHW per image, back to back) and labels of one split.
#[derive(Clone, Debug)]
pub struct Split {
    /// The pixels, [`IMAGE_BYTES`] per image, images back to back in record order.
    pub images: Vec<u8>,
    /// Each image's class, `0..num_classes` (CIFAR-100: the fine label).
    pub labels: Vec<u8>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The pixels of image `i` (CHW, [`IMAGE_BYTES`] bytes); panics when `i` is out of range.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }
    /// The first `n` records (a training subset; the file order is already shuffled).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * IMAGE_BYTES);
    }
}

/// What was read, for the run's output and reports.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// The archive read, or the folder holding the record files.
    pub path: PathBuf,
    /// sha256 of the archive, or of the record files in order for a folder.
    pub sha256: String,
    /// "CIFAR-10 stand-in …", "canonical CIFAR-10 …", or "unrecognised …".
    pub description: String,
}

/// A CIFAR data set, read and validated: its train and test splits and where they came from.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Which layout it was read as.
    pub kind: DatasetKind,
    /// The training split (50,000 images as read).
    pub train: Split,
    /// The test split (10,000 images).
    pub test: Split,
    /// What was read, and its checksum.
    pub provenance: Provenance,
}

impl Dataset {
    /// Number of classes: 10 or 100.
    pub fn num_classes(&self) -> usize {
        self.kind.num_classes()
    }
    /// Loads from a `.tar.gz` archive or a folder (the extracted archive, or the folder
    /// holding the record files). See [`super::resolve_data_path`] for finding `path`.
    pub fn load(path: &Path, kind: DatasetKind) -> Result<Self> {
        if path.is_dir() { load_folder(path, kind) } else { load_archive(path, kind) }
    }
}

/// A reader that hashes everything read through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of some bytes, in lowercase hex (how every file is identified here).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn describe(sha: &str, fallback: &str) -> String {
    KNOWN_ARCHIVES
        .iter()
        .find(|(h, _)| *h == sha)
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| fallback.to_string())
}

/// Parses one record file's bytes into `split`, validating size, count and labels.
fn parse_records(
    bytes: &[u8],
    kind: DatasetKind,
    expect: usize,
    file: &Path,
    split: &mut Split,
) -> Result<()> {
    let rb = kind.record_bytes();
    if !bytes.len().is_multiple_of(rb) {
        return Err(Error::format(
            file,
            format!(
                "{} bytes is not a whole number of {rb}-byte {} records (truncated or wrong dataset?)",
                bytes.len(),
                kind.name()
            ),
        ));
    }
    let n = bytes.len() / rb;
    if n != expect {
        return Err(Error::format(
            file,
            format!("holds {n} records, the {} layout has {expect}", kind.name()),
        ));
    }
    let classes = kind.num_classes();
    split.images.reserve(n * IMAGE_BYTES);
    for (i, rec) in bytes.chunks_exact(rb).enumerate() {
        let label = rec[kind.label_bytes() - 1];
        if label as usize >= classes {
            return Err(Error::format(
                file,
                format!("record {i} has label {label}, outside 0..{classes}"),
            ));
        }
        split.labels.push(label);
        split.images.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(())
}

fn load_archive(path: &Path, kind: DatasetKind) -> Result<Dataset> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hashing = Hashing { inner: BufReader::with_capacity(1 << 20, f), hash: Sha256::new() };
    let (train_files, test_files) = kind.files();
    let mut found: Vec<Option<Vec<u8>>> = vec![None; train_files.len() + test_files.len()];
    let names: Vec<&str> = train_files.iter().chain(&test_files).map(|(n, _)| *n).collect();
    let sizes: Vec<usize> =
        train_files.iter().chain(&test_files).map(|(_, n)| n * kind.record_bytes()).collect();
    {
        // Bounded: an archive that inflates past MAX_INFLATED (a gzip bomb) is refused.
        let mut gz = GzDecoder::new(&mut hashing).take(MAX_INFLATED + 1);
        tar::for_each_file(&mut gz, |entry, r| {
            let (dir, base) = match entry.path.rsplit_once('/') {
                Some((d, b)) => (d, b),
                None => ("", entry.path.as_str()),
            };
            if dir.ends_with(kind.folder())
                && let Some(i) = names.iter().position(|n| *n == base)
            {
                // The layout fixes every record file's size: a header claiming more is
                // refused before anything is allocated for it.
                if entry.size != sizes[i] as u64 {
                    return Err(std::io::Error::other(format!(
                        "{} claims {} bytes, the {} layout has {}",
                        entry.path,
                        entry.size,
                        kind.name(),
                        sizes[i]
                    )));
                }
                let mut buf = Vec::with_capacity(sizes[i]);
                r.read_to_end(&mut buf)?;
                found[i] = Some(buf);
            }
            Ok(())
        })
        .map_err(|msg| {
            // A bomb usually cuts the tar short at the bound: say which it was.
            let why = if gz.limit() == 0 {
                format!("inflates past {} GiB (a gzip bomb?)", MAX_INFLATED >> 30)
            } else {
                msg
            };
            Error::format(path, format!("not a readable {} archive: {why}", kind.name()))
        })?;
        // Read the gzip stream to its end: only there does the decoder check the CRC-32
        // and length of everything it inflated (a flipped byte, a cut-off file).
        std::io::copy(&mut gz, &mut std::io::sink()).map_err(|e| {
            Error::format(
                path,
                format!("damaged gzip stream (checksum, length or truncation): {e}"),
            )
        })?;
        if gz.limit() == 0 {
            return Err(Error::format(
                path,
                format!(
                    "inflates past {} GiB: not a CIFAR archive (a gzip bomb?)",
                    MAX_INFLATED >> 30
                ),
            ));
        }
    }
    // Hash the rest of the file (gzip trailer / padding) so the checksum is the file's.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| Error::io(path, e))?;
    let sha = hex(&hashing.hash.finalize());
    let mut train = Split { images: Vec::new(), labels: Vec::new() };
    let mut test = Split { images: Vec::new(), labels: Vec::new() };
    for (i, (name, expect)) in train_files.iter().chain(&test_files).enumerate() {
        let inner = path.join(kind.folder()).join(name);
        let bytes = found[i].take().ok_or_else(|| {
            Error::format(path, format!("archive has no {}/{name}", kind.folder()))
        })?;
        let split = if i < train_files.len() { &mut train } else { &mut test };
        parse_records(&bytes, kind, *expect, &inner, split)?;
    }
    let description = describe(&sha, "unrecognised archive (not one of the checksums dnat knows)");
    Ok(Dataset {
        kind,
        train,
        test,
        provenance: Provenance { path: path.to_path_buf(), sha256: sha, description },
    })
}

fn load_folder(path: &Path, kind: DatasetKind) -> Result<Dataset> {
    let dir = if path.join(kind.folder()).is_dir() {
        path.join(kind.folder())
    } else {
        path.to_path_buf()
    };
    let (train_files, test_files) = kind.files();
    let mut hash = Sha256::new();
    let mut train = Split { images: Vec::new(), labels: Vec::new() };
    let mut test = Split { images: Vec::new(), labels: Vec::new() };
    for (i, (name, expect)) in train_files.iter().chain(&test_files).enumerate() {
        let file = dir.join(name);
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        hash.update(&bytes);
        let split = if i < train_files.len() { &mut train } else { &mut test };
        parse_records(&bytes, kind, *expect, &file, split)?;
    }
    let sha = hex(&hash.finalize());
    let description =
        format!("extracted {} folder (sha256 over its record files in order)", kind.name());
    Ok(Dataset {
        kind,
        train,
        test,
        provenance: Provenance { path: dir, sha256: sha, description },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn records(n: usize, label_of: impl Fn(usize) -> u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(n * 3073);
        for i in 0..n {
            v.push(label_of(i));
            v.extend((0..IMAGE_BYTES).map(|p| ((i + p) % 251) as u8));
        }
        v
    }

    fn archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let named: Vec<(String, &[u8])> = files
            .iter()
            .map(|(n, d)| (format!("cifar-10-batches-bin/{n}"), d.as_slice()))
            .collect();
        let refs: Vec<(&str, &[u8])> = named.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let tar = tar::tests::build(&refs);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn full_files() -> Vec<(&'static str, Vec<u8>)> {
        let mut v: Vec<(&str, Vec<u8>)> = [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ]
        .into_iter()
        .map(|n| (n, records(10_000, |i| (i % 10) as u8)))
        .collect();
        v.push(("test_batch.bin", records(10_000, |i| (i % 7) as u8)));
        v
    }

    #[test]
    fn reads_archive_and_folder_alike() {
        let dir = std::env::temp_dir().join(format!("dnat-cifar-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cifar-10-batches-bin")).unwrap();
        let files = full_files();
        let arc = dir.join("c10.tar.gz");
        std::fs::write(&arc, archive(&files)).unwrap();
        for (n, d) in &files {
            std::fs::write(dir.join("cifar-10-batches-bin").join(n), d).unwrap();
        }
        let a = Dataset::load(&arc, DatasetKind::Cifar10).unwrap();
        let f = Dataset::load(&dir, DatasetKind::Cifar10).unwrap();
        assert_eq!((a.train.len(), a.test.len()), (50_000, 10_000));
        assert_eq!(a.train.labels, f.train.labels);
        assert_eq!(a.test.images, f.test.images);
        assert_eq!(a.test.labels[8], 1);
        assert!(a.provenance.description.contains("unrecognised"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("dnat-cifar-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = full_files();
        // A label out of range.
        files[5].1[3073 * 3] = 10;
        let p = dir.join("badlabel.tar.gz");
        std::fs::write(&p, archive(&files)).unwrap();
        let e = Dataset::load(&p, DatasetKind::Cifar10).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin") && e.contains("record 3 has label 10"), "{e}");
        // A truncated record file.
        files[5].1[3073 * 3] = 1;
        files[1].1.truncate(3073 * 10 + 5);
        let p = dir.join("short.tar.gz");
        std::fs::write(&p, archive(&files)).unwrap();
        let e = Dataset::load(&p, DatasetKind::Cifar10).unwrap_err().to_string();
        assert!(e.contains("data_batch_2.bin") && e.contains("claims 30735 bytes"), "{e}");
        // A member whose header claims 68 GB: refused by its size, nothing allocated.
        let mut tar = tar::tests::build(&[("cifar-10-batches-bin/data_batch_1.bin", &[0u8; 16])]);
        tar[124..136].copy_from_slice(format!("{:012o}", 68_000_000_000u64).as_bytes());
        tar[148..156].copy_from_slice(b"        ");
        let sum: u64 = tar[..512].iter().map(|&b| b as u64).sum();
        tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let p = dir.join("huge.tar.gz");
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let e = Dataset::load(&p, DatasetKind::Cifar10).unwrap_err().to_string();
        assert!(e.contains("huge.tar.gz") && e.contains("claims 68000000000 bytes"), "{e}");
        // A flipped byte in the gzip trailer (CRC-32), or the archive cut by 1–8 bytes:
        // the tar inside reads fine, only the gzip checks can tell.
        let bytes = archive(&full_files());
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 6] ^= 0x40;
        for (name, b) in [
            ("flipped.tar.gz", &flipped[..]),
            ("cut1.tar.gz", &bytes[..n - 1]),
            ("cut8.tar.gz", &bytes[..n - 8]),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, b).unwrap();
            let e = Dataset::load(&p, DatasetKind::Cifar10).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("damaged gzip stream"), "{e}");
        }
        // A truncated archive.
        let bytes = archive(&full_files());
        let p = dir.join("cut.tar.gz");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = Dataset::load(&p, DatasetKind::Cifar10).unwrap_err().to_string();
        assert!(e.contains("cut.tar.gz"), "{e}");
        // Not an archive at all.
        let p = dir.join("random.tar.gz");
        std::fs::write(&p, [0x1fu8, 0x8b, 1, 2, 3, 4]).unwrap();
        let e = Dataset::load(&p, DatasetKind::Cifar10).unwrap_err().to_string();
        assert!(e.contains("random.tar.gz"), "{e}");
        // Missing file.
        let e =
            Dataset::load(&dir.join("nope.tar.gz"), DatasetKind::Cifar10).unwrap_err().to_string();
        assert!(e.contains("nope.tar.gz"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
