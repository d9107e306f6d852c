//! Chips differ, reads differ (DESIGN.md §3).
//!
//! A macro is an array of physical ADC columns (see [`MacroSpec::adc_of`] for where a
//! layer's macro operations land). On a fabricated chip every column has its own gain
//! and offset — bitline capacitance and cell-current mismatch, comparator offsets —
//! fixed for that chip: the **fixed pattern**. Read noise, in contrast, is new at every
//! read and is what the D-MAC-EM table samples.
//!
//! A column acts on the analog partial sum, before the ADC quantizes it: column `c`
//! of a chip turns the partial sum `P` into the code
//! `k = clamp(round(g_c · P / step + o_c), kmin, kmax)`, and the readout is then drawn
//! from the D-MAC-EM row of `k`. The error model carries the population's spread
//! ([`FixedPattern`]); a [`Chip`] is one draw of it, a pure function of
//! (chip seed, column), so chip 7 is the same chip in every run, at any thread count.
//!
//! `g_c = (1 + σ_chip_g·z₀)·(1 + σ_col_g·z_c)` and `o_c = σ_chip_o·z₀' + σ_col_o·z_c'`
//! with standard normals `z` keyed by (chip seed, column): a chip-wide gain and offset
//! (process corner) times each column's own.
//!
//! [`MacroSpec::adc_of`]: super::MacroSpec::adc_of

use crate::rng::{key, normal, stream};

/// The chip-to-chip and column-to-column spread of a macro design (standard
/// deviations; gains are relative, offsets in ADC codes). All zero: every chip is the
/// nominal one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FixedPattern {
    /// Relative gain spread (σ) of each ADC column around its chip's gain (0.03: 3 %).
    pub column_gain: f64,
    /// Offset spread of each ADC column within a chip, in ADC codes.
    pub column_offset: f64,
    /// Relative gain spread shared by all columns of a chip (from chip to chip).
    pub chip_gain: f64,
    /// Offset spread shared by all columns of a chip, in ADC codes.
    pub chip_offset: f64,
}

impl FixedPattern {
    /// Whether every spread is zero (every chip is the nominal one).
    pub fn is_zero(&self) -> bool {
        *self == FixedPattern::default()
    }
    /// Errors unless every spread is finite and ≥ 0 and both gain spreads are below 0.5.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let all = [self.column_gain, self.column_offset, self.chip_gain, self.chip_offset];
        if all.iter().any(|v| !v.is_finite() || *v < 0.0)
            || self.column_gain >= 0.5
            || self.chip_gain >= 0.5
        {
            return Err(format!(
                "fixed-pattern spreads must be finite and ≥ 0, gains below 0.5 (got {self:?})"
            ));
        }
        Ok(())
    }
    /// The spreads in one line, for people: gains in percent, offsets in codes.
    pub fn describe(&self) -> String {
        if self.is_zero() {
            return "no fixed pattern (every chip and column nominal)".into();
        }
        format!(
            "fixed pattern per ADC column: gain σ {:.1} %, offset σ {} codes; per chip: gain σ {:.1} %, offset σ {} codes",
            100.0 * self.column_gain,
            self.column_offset,
            100.0 * self.chip_gain,
            self.chip_offset
        )
    }
}

const CHIP_TAG: u64 = 0xC41F;

/// One chip: the gain and offset of each of its ADC columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Chip {
    /// The chip seed it was drawn from (for a chip given by columns, the seed given).
    pub seed: u64,
    gain: Vec<f32>,
    offset: Vec<f32>,
}

impl Chip {
    /// Chip `seed` of a design with `adcs` ADC columns and spread `p`.
    pub fn draw(p: &FixedPattern, adcs: usize, seed: u64) -> Chip {
        let mut chip_rng = stream(key(&[CHIP_TAG, seed, u64::MAX]));
        let (zg, zo) = (normal(&mut chip_rng), normal(&mut chip_rng));
        let (cg, co) = (1.0 + p.chip_gain * zg, p.chip_offset * zo);
        let (gain, offset) = (0..adcs)
            .map(|c| {
                let mut r = stream(key(&[CHIP_TAG, seed, c as u64]));
                let (zg, zo) = (normal(&mut r), normal(&mut r));
                ((cg * (1.0 + p.column_gain * zg)) as f32, (co + p.column_offset * zo) as f32)
            })
            .unzip();
        Chip { seed, gain, offset }
    }
    /// Chip `seed` of spread `p`, or `None` (the nominal chip) when `p` is zero.
    pub fn of_pattern(p: &FixedPattern, adcs: usize, seed: u64) -> Option<Chip> {
        (!p.is_zero()).then(|| Chip::draw(p, adcs, seed))
    }
    /// A chip given column by column (a measured chip's fitted gains and offsets).
    pub fn from_columns(seed: u64, gain: Vec<f32>, offset: Vec<f32>) -> Chip {
        assert_eq!(gain.len(), offset.len(), "one gain and one offset per column");
        Chip { seed, gain, offset }
    }
    /// Gain and offset of ADC column `adc`.
    #[inline]
    pub fn column(&self, adc: usize) -> (f32, f32) {
        (self.gain[adc], self.offset[adc])
    }
    /// Number of ADC columns.
    pub fn adcs(&self) -> usize {
        self.gain.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chip_is_a_pure_function_of_its_seed_and_column() {
        let p = FixedPattern {
            column_gain: 0.03,
            column_offset: 0.5,
            chip_gain: 0.02,
            chip_offset: 0.2,
        };
        let a = Chip::draw(&p, 256, 7);
        assert_eq!(a, Chip::draw(&p, 256, 7));
        // Column c does not depend on how many columns were drawn.
        let small = Chip::draw(&p, 16, 7);
        assert!((0..16).all(|c| small.column(c) == a.column(c)));
        // Draws run on rayon workers give the same chip.
        use rayon::prelude::*;
        let par: Vec<Chip> = (0..4u64).into_par_iter().map(|_| Chip::draw(&p, 256, 7)).collect();
        assert!(par.iter().all(|c| *c == a));
        let b = Chip::draw(&p, 256, 8);
        assert_ne!(a, b);
        // The spreads are what was asked for (256 columns: loose bounds).
        let (g, o): (Vec<f64>, Vec<f64>) =
            (0..256).map(|c| (a.column(c).0 as f64, a.column(c).1 as f64)).unzip();
        let sd = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
        };
        let gm = g.iter().sum::<f64>() / 256.0;
        assert!((sd(&g) / gm - 0.03).abs() < 0.006, "{}", sd(&g) / gm);
        assert!((sd(&o) - 0.5).abs() < 0.1, "{}", sd(&o));
        // No spread: the nominal chip.
        let n = Chip::draw(&FixedPattern::default(), 8, 3);
        assert!((0..8).all(|c| n.column(c) == (1.0, 0.0)));
    }
}
