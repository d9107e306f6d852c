//! Error models that ship with dnat: `ideal` (ADC quantization only) and **synthetic**
//! fabricated-like models. The synthetic ones are not measurements; they are labelled
//! synthetic everywhere they are reported. They come in two classes:
//!
//! * **Physically motivated** — `current-domain` (the default of the repro) and
//!   `charge-domain` — built from what published macros and simulators report
//!   (`../shared/CIM-PHYSICS.md`), with their errors where a trained network's partial
//!   sums live (ResNet20's ideal codes sit mostly within |k| ≲ 30 of the ±256 range of
//!   the default ADC, so the transfer bends at `knee` = 32 codes, as it would at full
//!   scale on a macro whose ADC is sized to that signal):
//!   - `current-domain`: compressive transfer k/(1 + 0.15·|k|/32) after a 0.95 gain
//!     (ASiM's x/(1+αx); 13 % compression at the knee, CIM-PHYSICS §2.1 gives 5–15 % at
//!     full scale); read noise σ = 0.4 + 0.15·√|k| codes growing with the MAC value,
//!     heavy-tailed (5 % of reads at 3σ) and skewed toward zero (2 % charge loss);
//!     0.5 % outliers of ±1–3 codes and 0.1 % stuck-at-0 readouts (§2.3, a guess — no
//!     published histogram); per-ADC-column gain σ 3 % and offset σ 0.5 codes, per-chip
//!     gain σ 2 % and offset σ 0.25 codes (§2.4). Batchnorm recalibration cannot absorb
//!     a transfer that bends inside the signal range, nor column gains that differ
//!     between the tiles of one channel.
//!   - `charge-domain`: nearly linear (gain 0.98, 2 % compression at the knee), small
//!     Gaussian noise, column gain σ 1 %, offset σ 0.3 codes: a good macro, which should
//!     cost little.
//! * **Affine** — `mild`, `moderate`, `severe`: mostly a gain and an offset of the whole
//!   readout (plus bow and ripple at codes a network rarely reaches). They were graded by
//!   the collapse they cause, but that collapse is almost all a per-channel affine
//!   distortion that batchnorm recalibration undoes (see the
//!   pipeline's BN-recalibration column). Kept for comparison with earlier results.
//!
//! Every synthetic model is the same parametric family, each parameter overridable
//! (`current-domain:col_gain=0.05`):
//!
//! The synthetic readout of ideal code `k` (full scale `F = max(|kmin|, |kmax|)`):
//!
//! * transfer `v(k) = gain·k + offset + inl·sin(π·k/F) + dnl·sin(2π·k/16)` — gain and
//!   offset error, a bow-shaped integral nonlinearity, a code-periodic ripple;
//! * noise that grows with the code: Gaussian with `σ(k) = σ0 + σ1·√|k|`;
//! * not Gaussian: with probability `tail`, a charge-loss event pulls the readout
//!   toward zero by an exponential amount of mean `tail_mean` codes;
//! * saturation: measured codes are clipped to `±sat·F`.
//!
//! The errors grow with the MAC value and are skewed, as the paper describes its chip.
//!
//! The affine grades were set by what they do to a network, as the paper's chip did (90 % →
//! 14 % for VGG8): a W4A8 ResNet20 after one QAT epoch on the ideal macro (86.98 % on
//! the CIFAR-10 stand-in) read 59.3 % on `mild`, 17.5 % on `moderate` and 11.0 % on
//! `severe` (`dnat eval --cim`, one error seed). Most of that loss is systematic — the
//! compressive gain and the offset shift every channel's statistics away from what
//! batchnorm learned — which is what non-ideality aware training can learn to absorb;
//! the random part alone (noise and tail of `moderate`) cost 0.5 points.

use super::table::{ErrorModel, FillPolicy, ModelInfo};
use crate::cim::CodeRange;
use crate::cim::FixedPattern;
use crate::{Error, Result};

/// The names of the shipped presets: `ideal` and the synthetic ones.
pub const PRESETS: [&str; 6] =
    ["ideal", "current-domain", "charge-domain", "mild", "moderate", "severe"];

/// Every parameter a spec can override.
pub const KEYS: [&str; 20] = [
    "gain",
    "offset",
    "inl",
    "dnl",
    "sigma0",
    "sigma1",
    "tail",
    "tail_mean",
    "sat",
    "compress",
    "knee",
    "heavy",
    "heavy_scale",
    "outlier",
    "outlier_size",
    "stuck",
    "col_gain",
    "col_offset",
    "chip_gain",
    "chip_offset",
];

/// The fields the affine presets (`mild`, `moderate`, `severe`) leave at zero (or
/// neutral): a base to write other models from with `..AFFINE`.
pub const AFFINE: Synthetic = Synthetic {
    gain: 1.0,
    offset: 0.0,
    inl: 0.0,
    dnl: 0.0,
    sigma0: 1.0,
    sigma1: 0.0,
    tail: 0.0,
    tail_mean: 1.0,
    sat: 1.0,
    compress: 0.0,
    knee: 32.0,
    heavy: 0.0,
    heavy_scale: 1.0,
    outlier: 0.0,
    outlier_size: 1.0,
    stuck: 0.0,
    col_gain: 0.0,
    col_offset: 0.0,
    chip_gain: 0.0,
    chip_offset: 0.0,
};

/// A current-domain macro whose nonlinearity lives where the signal is (module docs).
const CURRENT_DOMAIN: Synthetic = Synthetic {
    gain: 0.95,
    offset: 0.0,
    inl: 0.5,
    dnl: 0.2,
    sigma0: 0.4,
    sigma1: 0.15,
    tail: 0.02,
    tail_mean: 2.0,
    sat: 0.75,
    compress: 0.15,
    knee: 32.0,
    heavy: 0.05,
    heavy_scale: 3.0,
    outlier: 0.005,
    outlier_size: 3.0,
    stuck: 0.001,
    col_gain: 0.03,
    col_offset: 0.5,
    chip_gain: 0.02,
    chip_offset: 0.25,
};

/// Parameters of a synthetic model (codes are ADC codes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Synthetic {
    /// Gain of the transfer (1: none), in (0, 16].
    pub gain: f64,
    /// Offset of the transfer, in ADC codes.
    pub offset: f64,
    /// Amplitude of the bow-shaped integral nonlinearity `inl·sin(π·k/F)`, in ADC codes.
    pub inl: f64,
    /// Amplitude of the code-periodic ripple `dnl·sin(2π·k/16)`, in ADC codes.
    pub dnl: f64,
    /// Read-noise σ at code 0, in ADC codes (> 0).
    pub sigma0: f64,
    /// Growth of the read-noise σ with the code: `σ(k) = sigma0 + sigma1·√|k|`.
    pub sigma1: f64,
    /// Probability of a charge-loss event, which pulls the readout toward zero.
    pub tail: f64,
    /// Mean of the exponential charge-loss displacement, in ADC codes.
    pub tail_mean: f64,
    /// Saturation: measured codes are clipped to `±sat·F`, in (0, 1] of full scale.
    pub sat: f64,
    /// Compressive transfer (current-domain macros): the code `k` is first bent to
    /// `k / (1 + compress·|k|/knee)`, so it loses `compress/(1+compress)` of itself at
    /// `|k| = knee` codes (0: linear).
    pub compress: f64,
    /// The `|k|` at which `compress` is measured, in ADC codes.
    pub knee: f64,
    /// Heavy-tailed read noise: with probability `heavy` the noise has `heavy_scale`
    /// times its σ (a Gaussian scale mixture; 0: Gaussian).
    pub heavy: f64,
    /// σ multiplier of the heavy-tailed reads, in [1, 100].
    pub heavy_scale: f64,
    /// Outlier readouts: with probability `outlier`, an error of ±1..=`outlier_size`
    /// codes (uniform) around the transfer.
    pub outlier: f64,
    /// Largest outlier error, in ADC codes, in [1, 64].
    pub outlier_size: f64,
    /// Stuck readouts: with probability `stuck` the readout is code 0 (a failed sense).
    pub stuck: f64,
    /// Fixed-pattern spread per ADC column and per chip (see [`crate::cim::chip`]).
    /// This one: the relative gain spread (σ) of each ADC column around its chip's gain.
    pub col_gain: f64,
    /// Offset spread (σ) of each ADC column within a chip, in ADC codes.
    pub col_offset: f64,
    /// Relative gain spread (σ) shared by all columns of a chip, from chip to chip.
    pub chip_gain: f64,
    /// Offset spread (σ) shared by all columns of a chip, in ADC codes.
    pub chip_offset: f64,
}

impl Synthetic {
    /// The parameters of a synthetic preset by name (`None` for `ideal` and unknown names).
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "mild" => Synthetic {
                gain: 0.85,
                offset: -0.5,
                inl: 2.0,
                dnl: 0.3,
                sigma0: 0.3,
                sigma1: 0.2,
                tail: 0.02,
                tail_mean: 2.0,
                sat: 0.9,
                ..AFFINE
            },
            "moderate" => Synthetic {
                gain: 0.75,
                offset: -1.0,
                inl: 4.0,
                dnl: 0.5,
                sigma0: 0.4,
                sigma1: 0.25,
                tail: 0.05,
                tail_mean: 3.0,
                sat: 0.75,
                ..AFFINE
            },
            "severe" => Synthetic {
                gain: 0.6,
                offset: -2.0,
                inl: 8.0,
                dnl: 1.0,
                sigma0: 0.8,
                sigma1: 0.5,
                tail: 0.08,
                tail_mean: 6.0,
                sat: 0.6,
                ..AFFINE
            },
            "current-domain" => CURRENT_DOMAIN,
            "charge-domain" => Synthetic {
                gain: 0.98,
                compress: 0.02,
                sigma0: 0.25,
                sigma1: 0.05,
                heavy: 0.0,
                outlier: 0.001,
                stuck: 0.0,
                tail: 0.0,
                col_gain: 0.01,
                col_offset: 0.3,
                chip_gain: 0.01,
                chip_offset: 0.1,
                ..CURRENT_DOMAIN
            },
            _ => return None,
        })
    }
    /// Every parameter finite and within its range (named when it is not): bounded as
    /// well as signed, so a transfer or noise far beyond any ADC is refused here rather
    /// than tabulated (see also `build`'s work cap).
    pub fn validate(&self) -> std::result::Result<(), String> {
        const BIG: f64 = 65_536.0;
        // (name, value, lower bound, lower bound allowed, upper bound)
        let ranges = [
            ("gain", self.gain, 0.0, false, 16.0),
            ("offset", self.offset, -BIG, true, BIG),
            ("inl", self.inl, -BIG, true, BIG),
            ("dnl", self.dnl, -BIG, true, BIG),
            ("sigma0", self.sigma0, 0.0, false, BIG),
            ("sigma1", self.sigma1, 0.0, true, BIG),
            ("tail", self.tail, 0.0, true, 0.999_999),
            ("tail_mean", self.tail_mean, 0.0, false, BIG),
            ("sat", self.sat, 0.0, false, 1.0),
            ("compress", self.compress, 0.0, true, 10.0),
            ("knee", self.knee, 0.0, false, BIG),
            ("heavy", self.heavy, 0.0, true, 0.999_999),
            ("heavy_scale", self.heavy_scale, 1.0, true, 100.0),
            ("outlier", self.outlier, 0.0, true, 0.999_999),
            ("outlier_size", self.outlier_size, 1.0, true, 64.0),
            ("stuck", self.stuck, 0.0, true, 0.999_999),
        ];
        for (k, v, lo, lo_ok, hi) in ranges {
            if !(v.is_finite() && (v > lo || (lo_ok && v == lo)) && v <= hi) {
                return Err(format!(
                    "{k} = {v} is outside {lo} {} {k} ≤ {hi}",
                    if lo_ok { "≤" } else { "<" }
                ));
            }
        }
        if self.outlier + self.stuck >= 1.0 {
            return Err(format!(
                "outlier + stuck = {} must stay below 1",
                self.outlier + self.stuck
            ));
        }
        self.fixed_pattern().validate().map_err(|e| e.to_string())
    }
    /// The column and chip spreads as a [`FixedPattern`].
    pub fn fixed_pattern(&self) -> FixedPattern {
        FixedPattern {
            column_gain: self.col_gain,
            column_offset: self.col_offset,
            chip_gain: self.chip_gain,
            chip_offset: self.chip_offset,
        }
    }
    /// The parameters in one line, for people, labelled SYNTHETIC.
    pub fn describe(&self) -> String {
        let mut d = format!(
            "SYNTHETIC fabricated-like model: gain {}, offset {} codes, INL bow {} codes, DNL ripple {} codes, noise σ = {} + {}·√|k| codes, charge-loss tail p = {} (mean {} codes), saturation at {}·full scale",
            self.gain,
            self.offset,
            self.inl,
            self.dnl,
            self.sigma0,
            self.sigma1,
            self.tail,
            self.tail_mean,
            self.sat
        );
        if self.compress > 0.0 {
            d += &format!(", compressive transfer k/(1 + {}·|k|/{})", self.compress, self.knee);
        }
        if self.heavy > 0.0 {
            d += &format!(", heavy-tailed noise (p = {} at {}×σ)", self.heavy, self.heavy_scale);
        }
        if self.outlier > 0.0 {
            d += &format!(", outliers p = {} (±1..{} codes)", self.outlier, self.outlier_size);
        }
        if self.stuck > 0.0 {
            d += &format!(", stuck-at-0 readouts p = {}", self.stuck);
        }
        if !self.fixed_pattern().is_zero() {
            d += &format!("; {}", self.fixed_pattern().describe());
        }
        d
    }

    /// The model's PMFs over the ideal code range, as counts per million.
    pub fn build(&self, name: &str, (kmin, kmax): (i32, i32)) -> Result<ErrorModel> {
        let fs = kmin.unsigned_abs().max(kmax.unsigned_abs()).max(1) as f64;
        // Saturation at sat·full scale, never beyond the ADC's own codes.
        let (jlo, jhi) = (
            ((-self.sat * fs).floor() as i32).max(kmin),
            ((self.sat * fs).ceil() as i32).min(kmax),
        );
        // Readouts stay within the ADC's codes (saturation clamps them there).
        let (jmin, jmax) = (kmin, kmax);
        // Sized by this range below: refuse it before any row is built.
        CodeRange::new(kmin, kmax, "ideal codes")?;
        // Each row is integrated over ±span codes around its mean: bound the whole table's
        // work (a few seconds at most) before starting it.
        let sigma_max = self.sigma0 + self.sigma1 * fs.sqrt();
        let span_max = 6.0 * sigma_max * self.heavy_scale.max(1.0) + 10.0 * self.tail_mean + 2.0;
        let (nk, nj) = ((kmax as f64 - kmin as f64 + 1.0), (jmax as f64 - jmin as f64 + 1.0));
        if nk * (2.0 * span_max + 1.0).min(nj + 2.0 * span_max) > (1u64 << 28) as f64 {
            return Err(Error::invalid(format!(
                "error model '{name}': rows of ±{span_max:.0} codes (sigma0, sigma1, heavy_scale, tail_mean) over {nk} ideal codes are too wide to tabulate"
            )));
        }
        let mut entries = Vec::new();
        for k in kmin..=kmax {
            let kf = k as f64;
            let bent = if self.compress > 0.0 {
                kf / (1.0 + self.compress * kf.abs() / self.knee)
            } else {
                kf
            };
            let v = self.gain * bent
                + self.offset
                + self.inl * (std::f64::consts::PI * kf / fs).sin()
                + self.dnl * (std::f64::consts::TAU * kf / 16.0).sin();
            let sigma = self.sigma0 + self.sigma1 * kf.abs().sqrt();
            let mut row = vec![0.0f64; (jmax - jmin + 1) as usize];
            let span =
                (6.0 * sigma * self.heavy_scale.max(1.0) + 10.0 * self.tail_mean).ceil() as i32 + 2;
            let (c0, c1) = (
                (v.round() as i32 - span).max(jmin - span),
                (v.round() as i32 + span).min(jmax + span),
            );
            for j in c0..=c1 {
                let (a, b) = (j as f64 - 0.5, j as f64 + 0.5);
                let mut gauss = normal_cdf((b - v) / sigma) - normal_cdf((a - v) / sigma);
                if self.heavy > 0.0 {
                    let wide = self.heavy_scale * sigma;
                    gauss = (1.0 - self.heavy) * gauss
                        + self.heavy * (normal_cdf((b - v) / wide) - normal_cdf((a - v) / wide));
                }
                // Charge loss toward zero: displacement e ~ Exp(mean), readout v − s·e.
                let s = if v >= 0.0 { 1.0 } else { -1.0 };
                let (e_lo, e_hi) = if s > 0.0 { (v - b, v - a) } else { (a - v, b - v) };
                let exp_cdf = |e: f64| {
                    if e <= 0.0 { 0.0 } else { 1.0 - (-e / self.tail_mean).exp() }
                };
                let tail = exp_cdf(e_hi) - exp_cdf(e_lo);
                let p = (1.0 - self.tail) * gauss + self.tail * tail;
                row[(j.clamp(jlo.max(jmin), jhi.min(jmax)) - jmin) as usize] += p;
            }
            if self.outlier > 0.0 || self.stuck > 0.0 {
                // Rare events on top of the readout distribution (which keeps the rest).
                let clamp = |j: i32| (j.clamp(jlo.max(jmin), jhi.min(jmax)) - jmin) as usize;
                let base: f64 = row.iter().sum();
                row.iter_mut().for_each(|p| *p *= (1.0 - self.outlier - self.stuck) / base);
                let size = self.outlier_size.round().max(1.0) as i32;
                for d in 1..=size {
                    for j in [v.round() as i32 - d, v.round() as i32 + d] {
                        row[clamp(j)] += self.outlier / (2 * size) as f64;
                    }
                }
                row[clamp(0)] += self.stuck;
            }
            let total: f64 = row.iter().sum();
            for (o, &p) in row.iter().enumerate() {
                let c = (p / total * 1e6).round();
                if c > 0.0 {
                    entries.push((k, jmin + o as i32, c));
                }
            }
        }
        let info =
            ModelInfo { name: name.to_string(), description: self.describe(), synthetic: true };
        let mut m =
            ErrorModel::from_counts(info, (kmin, kmax), (jmin, jmax), FillPolicy::Reject, entries)?;
        m.fixed_pattern = self.fixed_pattern();
        Ok(m)
    }
}

/// Φ(x) via erfc (Numerical Recipes' Chebyshev fit, |relative error| < 1.2e-7).
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

impl Synthetic {
    /// A synthetic model from a spec `PRESET[:key=value,...]`: a named preset with some
    /// parameters overridden, e.g. `moderate:offset=6,sigma1=0.5`. Keys are the field
    /// names of [`Synthetic`]. Returns `None` when `spec` does not start with a
    /// synthetic preset's name.
    pub fn parse(spec: &str) -> Option<Result<Self>> {
        let (name, overrides) = spec.split_once(':').unwrap_or((spec, ""));
        let mut p = Synthetic::named(name)?;
        for kv in overrides.split(',').filter(|s| !s.trim().is_empty()) {
            let bad = |m: &str| Some(Err(Error::invalid(format!("error model '{spec}': {m}"))));
            let Some((k, v)) = kv.split_once('=') else {
                return bad(&format!("'{kv}' is not key=value"));
            };
            let Ok(v) = v.trim().parse::<f64>() else {
                return bad(&format!("'{v}' is not a number"));
            };
            let slot = match k.trim() {
                "gain" => &mut p.gain,
                "offset" => &mut p.offset,
                "inl" => &mut p.inl,
                "dnl" => &mut p.dnl,
                "sigma0" => &mut p.sigma0,
                "sigma1" => &mut p.sigma1,
                "tail" => &mut p.tail,
                "tail_mean" => &mut p.tail_mean,
                "sat" => &mut p.sat,
                "compress" => &mut p.compress,
                "knee" => &mut p.knee,
                "heavy" => &mut p.heavy,
                "heavy_scale" => &mut p.heavy_scale,
                "outlier" => &mut p.outlier,
                "outlier_size" => &mut p.outlier_size,
                "stuck" => &mut p.stuck,
                "col_gain" => &mut p.col_gain,
                "col_offset" => &mut p.col_offset,
                "chip_gain" => &mut p.chip_gain,
                "chip_offset" => &mut p.chip_offset,
                other => {
                    return bad(&format!("unknown parameter '{other}' ({})", KEYS.join(", ")));
                }
            };
            *slot = v;
        }
        if let Err(e) = p.validate() {
            return Some(Err(Error::invalid(format!("error model '{spec}': {e}"))));
        }
        Some(Ok(p))
    }
}

/// A preset (or a synthetic spec with overrides, see [`Synthetic::parse`]) over the
/// ideal code range of a macro's ADC.
pub fn preset(name: &str, codes: (i32, i32)) -> Result<ErrorModel> {
    if name == "ideal" {
        return Ok(ErrorModel::ideal(codes.0, codes.1));
    }
    let p = Synthetic::parse(name).ok_or_else(|| {
        Error::invalid(format!(
            "unknown error-model preset '{name}' (known: {})",
            PRESETS.join(", ")
        ))
    })??;
    p.build(name, codes)
}

/// Whether `spec` names a preset (possibly with overrides) rather than a file.
pub fn is_preset(spec: &str) -> bool {
    spec == "ideal" || Synthetic::named(spec.split_once(':').map_or(spec, |(n, _)| n)).is_some()
}

#[cfg(test)]
mod tests;
