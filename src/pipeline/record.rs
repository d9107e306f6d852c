//! The pipeline's small state files: `key = value` lines in insertion order, written
//! atomically, so a stage's result is either all there or not there at all.

use crate::io::atomic;
use crate::{Error, Result};
use std::path::Path;

/// A stage's state file: `key = value` pairs in insertion order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    entries: Vec<(String, String)>,
}

impl Record {
    /// Sets `key` to `value`, in place if present, else appended. Panics on a key holding `=`
    /// or a newline, or a value holding a newline.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        assert!(
            !key.contains('=') && !key.contains('\n') && !value.contains('\n'),
            "record keys and values are single-line"
        );
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key` as a number (`None` when missing or not a number).
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// The first key whose value differs (or is missing on one side): (key, self's, other's).
    pub fn first_difference(&self, other: &Record) -> Option<(String, String, String)> {
        let keys = self.entries.iter().chain(&other.entries).map(|(k, _)| k);
        for k in keys {
            let (a, b) = (self.get(k), other.get(k));
            if a != b {
                return Some((
                    k.clone(),
                    a.unwrap_or("(missing)").into(),
                    b.unwrap_or("(missing)").into(),
                ));
            }
        }
        None
    }

    /// `None` when the file does not exist; a malformed file is an error naming it.
    pub fn load(path: &Path) -> Result<Option<Record>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut r = Record::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (k, v) = line.split_once(" = ").ok_or_else(|| {
                Error::format(path, format!("line {}: expected `key = value`", i + 1))
            })?;
            r.entries.push((k.to_string(), v.to_string()));
        }
        Ok(Some(r))
    }

    /// Writes the record to `path` atomically, one `key = value` line per entry.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text: String = self.entries.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        atomic::write(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_differences() {
        let dir = std::env::temp_dir().join(format!("dnat-record-{}", std::process::id()));
        let path = dir.join("a.rec");
        assert_eq!(Record::load(&path).unwrap(), None);
        let mut r = Record::default();
        r.set("seed1000", "17.5");
        r.set("model", "resnet20");
        r.set("seed1000", "18.25");
        r.save(&path).unwrap();
        let back = Record::load(&path).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(back.get_f64("seed1000"), Some(18.25));
        let mut other = r.clone();
        other.set("model", "vgg8");
        assert_eq!(
            r.first_difference(&other),
            Some(("model".into(), "resnet20".into(), "vgg8".into()))
        );
        other.set("extra", "1");
        other.set("model", "resnet20");
        assert_eq!(r.first_difference(&other).unwrap().0, "extra");
        std::fs::write(&path, "no equals sign\n").unwrap();
        let e = Record::load(&path).unwrap_err().to_string();
        assert!(e.contains("a.rec") && e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
