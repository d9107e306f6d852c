//! Code ranges — ADC codes, measured codes — validated once, in i64 arithmetic.
//!
//! Every range a file, a log, a macro description or a preset override brings in is
//! checked here before anything is sized by it: non-empty, and at most [`MAX_CODES`]
//! codes wide (a 16-bit ADC). Its width is computed in i64, so a range such as
//! `-2147483648..=2147483647` is refused by name instead of wrapping around. Inside a
//! validated range, `k − lo` fits an i32 for every code `k` of the range.

use crate::{Error, Result};

/// The widest code range dnat models (a 16-bit ADC).
pub const MAX_CODES: i64 = 1 << 16;

/// An inclusive range of codes `lo..=hi`, validated by [`CodeRange::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeRange {
    /// Lowest code of the range.
    pub lo: i32,
    /// Highest code of the range (inclusive).
    pub hi: i32,
}

impl CodeRange {
    /// `lo..=hi`, named `what` in the error (`ideal codes`, `ADC codes`, …).
    pub fn new(lo: i32, hi: i32, what: &str) -> Result<Self> {
        let width = hi as i64 - lo as i64 + 1;
        if width < 1 {
            return Err(Error::invalid(format!("{what} {lo}..={hi}: an empty range")));
        }
        if width > MAX_CODES {
            return Err(Error::invalid(format!(
                "{what} {lo}..={hi}: {width} codes, more than any ADC dnat models (65,536)"
            )));
        }
        Ok(CodeRange { lo, hi })
    }

    /// Number of codes (≥ 1, ≤ 65,536).
    #[allow(clippy::len_without_is_empty)] // a range always holds at least one code
    pub fn len(&self) -> usize {
        (self.hi as i64 - self.lo as i64 + 1) as usize
    }

    /// Whether `k` lies in `lo..=hi`.
    pub fn contains(&self, k: i32) -> bool {
        (self.lo..=self.hi).contains(&k)
    }

    /// The offset of `k` clamped into the range.
    pub fn index(&self, k: i32) -> usize {
        (k.clamp(self.lo, self.hi) as i64 - self.lo as i64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_ranges_are_refused_by_name() {
        for (lo, hi, msg) in
            [(i32::MIN, i32::MAX, "4294967296 codes"), (5, 4, "empty"), (0, 65_536, "65537 codes")]
        {
            let e = CodeRange::new(lo, hi, "ideal codes").unwrap_err().to_string();
            assert!(e.contains("ideal codes") && e.contains(msg), "{e}");
        }
        let r = CodeRange::new(i32::MIN, i32::MIN + 65_535, "x").unwrap();
        assert_eq!((r.len(), r.index(i32::MAX), r.index(i32::MIN)), (65_536, 65_535, 0));
    }
}
