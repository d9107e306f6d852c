//! The description of a CIM macro: how a dot product is cut into macro operations and
//! how each one is read out.
//!
//! A layer's reduction axis K is cut into **tiles** of `rows` consecutive elements (the
//! macro's activated rows). Input codes are unsigned `input_bits`-bit integers, weight
//! codes signed `weight_bits`-bit integers (`weight_bits = 1` means ±1). Each tile's
//! integer partial sum goes through the **ADC**: the ideal code is
//! `k = clamp(round(P / step), kmin, kmax)` (ties to even) and the readout is `j · step` for the
//! measured code `j` (see [`super::ErrorModel`]).
//!
//! Inputs can be applied a few bits at a time: with `input_bits_per_cycle = b`, a tile
//! takes `input_bits / b` cycles; cycle `c` multiplies the bits `[c·b, (c+1)·b)` of each
//! input code, is read out on its own, and the readouts are shift-added
//! (`Σ_c 2^(c·b) · R_c`). `b = input_bits` is one readout per tile (the default);
//! `b = 1` is a bit-serial macro.
//!
//! **Array organisation.** The macro has `arrays` arrays of `rows` rows, each with
//! `columns` ADC columns. A layer's weight matrix (K × Cout) is laid on them the way a
//! weight-stationary macro holds it: tile `t` (rows `[t·rows, (t+1)·rows)`) of output
//! channel `co` sits in array `t mod arrays`, column `co mod columns`, so its readouts
//! go through ADC [`MacroSpec::adc_of`]` = (t mod arrays)·columns + (co mod columns)`.
//! The tiles of one output channel land on different arrays (different ADCs, each with
//! its own fixed pattern, see [`super::chip`]) until there are more tiles than arrays;
//! every layer is loaded onto the same macro in turn, so layers share the ADCs.

use crate::{Error, Result};

/// The ADC: ideal code range and the partial-sum value of one code step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adc {
    pub kmin: i32,
    pub kmax: i32,
    pub step: f32,
}

impl Adc {
    /// The ideal ADC code of a partial sum (half-way values round to the even code,
    /// as IEEE rounding does; one instruction, so the layers' code loops vectorise).
    #[inline]
    pub fn code(&self, psum: f32) -> i32 {
        ((psum * (1.0 / self.step)).round_ties_even() as i32).clamp(self.kmin, self.kmax)
    }
    pub fn levels(&self) -> usize {
        (self.kmax as i64 - self.kmin as i64 + 1).max(0) as usize
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MacroSpec {
    pub name: String,
    /// Activated rows: the tile length along the reduction axis.
    pub rows: usize,
    /// Unsigned input code bits.
    pub input_bits: u32,
    /// Signed weight code bits (1 = binary ±1).
    pub weight_bits: u32,
    /// Input bits applied per cycle (= `input_bits`: one readout per tile).
    pub input_bits_per_cycle: u32,
    pub adc: Adc,
    /// Arrays of `rows` rows (tiles of one output channel go to different arrays).
    pub arrays: usize,
    /// ADC columns per array (output channels share columns modulo this).
    pub columns: usize,
}

impl Default for MacroSpec {
    /// The design of DESIGN.md §2: 64 rows, 8-bit unsigned inputs, 4-bit signed weights,
    /// one readout per tile through a 9-bit ADC (codes −256..=255) of step 32, which
    /// covers partial sums of ±8192 — a few standard deviations of a trained network's
    /// tiles — while adding ADC rounding of at most ±16.
    fn default() -> Self {
        MacroSpec {
            name: "dnat-w4a8".into(),
            rows: 64,
            input_bits: 8,
            weight_bits: 4,
            input_bits_per_cycle: 8,
            adc: Adc { kmin: -256, kmax: 255, step: 32.0 },
            arrays: 4,
            columns: 64,
        }
    }
}

impl MacroSpec {
    /// Shaped like the paper's fabricated macro as reported: 64 activated rows,
    /// 7-bit amplitude-coded inputs, 1-bit weights, 7-bit partial-sum readout.
    /// (Signed 7-bit codes −64..=63 with step 128 cover the full ±8128 range.)
    pub fn paper_chip() -> Self {
        MacroSpec {
            name: "paper-chip-64r-a7-w1-p7".into(),
            rows: 64,
            input_bits: 7,
            weight_bits: 1,
            input_bits_per_cycle: 7,
            adc: Adc { kmin: -64, kmax: 63, step: 128.0 },
            arrays: 4,
            columns: 64,
        }
    }

    /// A bit-serial variant of the default macro: one input bit per cycle, with an ADC
    /// sized for one cycle's partial sums (|P| ≤ 64·8 = 512).
    pub fn bit_serial() -> Self {
        MacroSpec {
            name: "dnat-w4a8-bitserial".into(),
            input_bits_per_cycle: 1,
            adc: Adc { kmin: -128, kmax: 127, step: 4.0 },
            ..MacroSpec::default()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "default" | "dnat-w4a8" => Ok(MacroSpec::default()),
            "paper-chip" => Ok(MacroSpec::paper_chip()),
            "bit-serial" => Ok(MacroSpec::bit_serial()),
            _ => Err(Error::invalid(format!("unknown macro '{name}' (known: default, paper-chip, bit-serial)"))),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(format!("macro '{}': {m}", self.name)));
        if self.rows == 0 {
            return bad("rows must be ≥ 1".into());
        }
        if !(1..=16).contains(&self.input_bits) || !(1..=8).contains(&self.weight_bits) {
            return bad(format!("input bits {} / weight bits {} out of range (1..=16 / 1..=8)", self.input_bits, self.weight_bits));
        }
        if self.input_bits_per_cycle == 0 || !self.input_bits.is_multiple_of(self.input_bits_per_cycle) {
            return bad(format!("input bits per cycle {} must divide input bits {}", self.input_bits_per_cycle, self.input_bits));
        }
        if self.arrays == 0 || self.columns == 0 || self.arrays * self.columns > 1 << 20 {
            return bad(format!("{} arrays of {} columns: need 1..=2^20 ADC columns in all", self.arrays, self.columns));
        }
        // No 16-bit cap here (an ideal readout needs no table; error models and the saved
        // codes of the statistical estimator check their own limits); widths are i64.
        if self.adc.kmin > self.adc.kmax || !(self.adc.step.is_finite() && self.adc.step > 0.0) {
            return bad(format!("ADC codes {}..={} with step {} are not a range", self.adc.kmin, self.adc.kmax, self.adc.step));
        }
        // Partial sums must stay exact in f32 (integers below 2^24).
        let max_p = self.rows as f64 * self.cycle_max_input() as f64 * self.weight_max_abs() as f64;
        if max_p >= (1u64 << 24) as f64 {
            return bad(format!("partial sums up to {max_p} would not be exact in f32; use fewer rows or bits"));
        }
        Ok(())
    }

    pub fn cycles(&self) -> u32 {
        self.input_bits / self.input_bits_per_cycle
    }
    /// Largest input code.
    pub fn input_max(&self) -> u32 {
        (1u32 << self.input_bits) - 1
    }
    /// Largest input code applied in one cycle.
    pub fn cycle_max_input(&self) -> u32 {
        (1u32 << self.input_bits_per_cycle) - 1
    }
    /// Weight codes are `weight_min()..=weight_max()` (±1 for one bit).
    pub fn weight_max(&self) -> i32 {
        if self.weight_bits == 1 { 1 } else { (1 << (self.weight_bits - 1)) - 1 }
    }
    pub fn weight_min(&self) -> i32 {
        if self.weight_bits == 1 { -1 } else { -(1 << (self.weight_bits - 1)) }
    }
    fn weight_max_abs(&self) -> i32 {
        self.weight_max().max(-self.weight_min())
    }
    /// ADC columns in all (`arrays · columns`).
    pub fn adcs(&self) -> usize {
        self.arrays * self.columns
    }
    /// The ADC column that reads tile `tile` of output channel `channel` (module docs).
    #[inline]
    pub fn adc_of(&self, tile: usize, channel: usize) -> usize {
        (tile % self.arrays) * self.columns + channel % self.columns
    }
    pub fn tiles(&self, k: usize) -> usize {
        k.div_ceil(self.rows)
    }
    pub fn describe(&self) -> String {
        format!(
            "{}: {} rows, {}-bit inputs ({} per cycle), {}-bit weights, ADC codes {}..={} step {}, {} arrays × {} ADC columns",
            self.name, self.rows, self.input_bits, self.input_bits_per_cycle, self.weight_bits, self.adc.kmin, self.adc.kmax, self.adc.step, self.arrays, self.columns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_shaped_as_described() {
        for n in ["default", "paper-chip", "bit-serial"] {
            MacroSpec::preset(n).unwrap().validate().unwrap();
        }
        let d = MacroSpec::default();
        assert_eq!((d.weight_min(), d.weight_max(), d.input_max(), d.cycles()), (-8, 7, 255, 1));
        let p = MacroSpec::paper_chip();
        assert_eq!((p.weight_min(), p.weight_max(), p.input_max(), p.adc.levels()), (-1, 1, 127, 128));
        assert_eq!(MacroSpec::bit_serial().cycles(), 8);
        assert_eq!(d.adc.code(47.9), 1);
        assert_eq!(d.adc.code(-1e9), -256);
        let mut bad = d.clone();
        bad.input_bits_per_cycle = 3;
        assert!(bad.validate().unwrap_err().to_string().contains("must divide"));
        // Tiles of one channel on different arrays; channels on columns modulo 64.
        assert_eq!((d.adc_of(0, 5), d.adc_of(1, 5), d.adc_of(4, 5), d.adc_of(2, 69)), (5, 69, 5, 133));
        assert_eq!(d.adcs(), 256);
    }
}
