//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn dnat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dnat")).args(args).output().expect("run dnat")
}

pub fn dnat_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dnat"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run dnat")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fresh temporary folder for one test, removed when the test passes and kept (its
/// path printed) when it fails, for a look at what the run left.
pub fn tmpdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("dnat-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// See [`tmpdir`].
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// The CIFAR-10 stand-in beside the checkout, if this machine has it.
pub fn stand_in() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/datasets/cifar-10-binary-jpeg75.tar.gz");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: the CIFAR-10 stand-in is not at {} (tests on it run where it is)",
            p.display()
        );
        None
    }
}

/// Reads `key = value` from a golden file (lines starting with # are comments).
pub fn golden(file: &str, key: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            l.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{}: no key {key}", path.display()))
}

/// The value of `"key": number` in a one-line JSON object.
pub fn json_number(line: &str, key: &str) -> f64 {
    let at = line.find(&format!("\"{key}\": ")).unwrap_or_else(|| panic!("no {key} in {line}"));
    let rest = &line[at + key.len() + 4..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim().parse().unwrap()
}

/// Compares `got` with the golden file `tests/golden/<file>`, or (re)writes that file
/// when `DNAT_BLESS` is set. `produced_by` is the command that blesses it; it heads the
/// file so the values always travel with the command that made them.
pub fn check_golden(file: &str, about: &str, produced_by: &str, got: &[(&str, String)]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(file);
    if std::env::var_os("DNAT_BLESS").is_some() {
        let mut text = format!(
            "# Golden values of {about}.\n# Produced by: DNAT_BLESS=1 {produced_by}\n# Bit-exact on x86-64 machines alike: every GEMM kernel computes the same FMA chains; exp/ln come from the platform's libm.\n"
        );
        for (k, v) in got {
            text.push_str(&format!("{k} = {v}\n"));
        }
        std::fs::write(&path, text).unwrap();
        eprintln!("blessed {}", path.display());
        return;
    }
    for (k, v) in got {
        assert_eq!(
            v,
            &golden(file, k),
            "golden value {k} of {} changed (re-bless with: DNAT_BLESS=1 {produced_by})",
            path.display()
        );
    }
}
