//! Error models that ship with dnat: `ideal` (ADC quantization only) and three
//! **synthetic** fabricated-like models of graded severity. The synthetic ones are
//! not measurements; they are labelled synthetic everywhere they are reported.
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
//! The grades are set by what they do to a network, as the paper's chip did (90 % →
//! 14 % for VGG8): a W4A8 ResNet20 after one QAT epoch on the ideal macro (86.98 % on
//! the CIFAR-10 stand-in) read 59.3 % on `mild`, 17.5 % on `moderate` and 11.0 % on
//! `severe` (`dnat eval --cim`, one error seed). Most of that loss is systematic — the
//! compressive gain and the offset shift every channel's statistics away from what
//! batchnorm learned — which is what non-ideality aware training can learn to absorb;
//! the random part alone (noise and tail of `moderate`) cost 0.5 points.

use super::table::{ErrorModel, FillPolicy, ModelInfo};
use crate::{Error, Result};

pub const PRESETS: [&str; 4] = ["ideal", "mild", "moderate", "severe"];

/// Parameters of a synthetic model (codes are ADC codes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Synthetic {
    pub gain: f64,
    pub offset: f64,
    pub inl: f64,
    pub dnl: f64,
    pub sigma0: f64,
    pub sigma1: f64,
    pub tail: f64,
    pub tail_mean: f64,
    pub sat: f64,
}

impl Synthetic {
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "mild" => Synthetic { gain: 0.85, offset: -0.5, inl: 2.0, dnl: 0.3, sigma0: 0.3, sigma1: 0.2, tail: 0.02, tail_mean: 2.0, sat: 0.9 },
            "moderate" => Synthetic { gain: 0.75, offset: -1.0, inl: 4.0, dnl: 0.5, sigma0: 0.4, sigma1: 0.25, tail: 0.05, tail_mean: 3.0, sat: 0.75 },
            "severe" => Synthetic { gain: 0.6, offset: -2.0, inl: 8.0, dnl: 1.0, sigma0: 0.8, sigma1: 0.5, tail: 0.08, tail_mean: 6.0, sat: 0.6 },
            _ => return None,
        })
    }
    pub fn describe(&self) -> String {
        format!(
            "SYNTHETIC fabricated-like model: gain {}, offset {} codes, INL bow {} codes, DNL ripple {} codes, noise σ = {} + {}·√|k| codes, charge-loss tail p = {} (mean {} codes), saturation at {}·full scale",
            self.gain, self.offset, self.inl, self.dnl, self.sigma0, self.sigma1, self.tail, self.tail_mean, self.sat
        )
    }

    /// The model's PMFs over the ideal code range, as counts per million.
    pub fn build(&self, name: &str, (kmin, kmax): (i32, i32)) -> Result<ErrorModel> {
        let fs = kmin.unsigned_abs().max(kmax.unsigned_abs()).max(1) as f64;
        let (jlo, jhi) = ((-self.sat * fs).floor() as i32, (self.sat * fs).ceil() as i32);
        let (jmin, jmax) = (kmin.min(jlo), kmax.max(jhi));
        let mut entries = Vec::new();
        for k in kmin..=kmax {
            let kf = k as f64;
            let v = self.gain * kf + self.offset + self.inl * (std::f64::consts::PI * kf / fs).sin() + self.dnl * (std::f64::consts::TAU * kf / 16.0).sin();
            let sigma = self.sigma0 + self.sigma1 * kf.abs().sqrt();
            let mut row = vec![0.0f64; (jmax - jmin + 1) as usize];
            let span = (6.0 * sigma + 10.0 * self.tail_mean).ceil() as i32 + 2;
            let (c0, c1) = ((v.round() as i32 - span).max(jmin - span), (v.round() as i32 + span).min(jmax + span));
            for j in c0..=c1 {
                let (a, b) = (j as f64 - 0.5, j as f64 + 0.5);
                let gauss = normal_cdf((b - v) / sigma) - normal_cdf((a - v) / sigma);
                // Charge loss toward zero: displacement e ~ Exp(mean), readout v − s·e.
                let s = if v >= 0.0 { 1.0 } else { -1.0 };
                let (e_lo, e_hi) = if s > 0.0 { (v - b, v - a) } else { (a - v, b - v) };
                let exp_cdf = |e: f64| if e <= 0.0 { 0.0 } else { 1.0 - (-e / self.tail_mean).exp() };
                let tail = exp_cdf(e_hi) - exp_cdf(e_lo);
                let p = (1.0 - self.tail) * gauss + self.tail * tail;
                row[(j.clamp(jlo.max(jmin), jhi.min(jmax)) - jmin) as usize] += p;
            }
            let total: f64 = row.iter().sum();
            for (o, &p) in row.iter().enumerate() {
                let c = (p / total * 1e6).round();
                if c > 0.0 {
                    entries.push((k, jmin + o as i32, c));
                }
            }
        }
        let info = ModelInfo { name: name.to_string(), description: self.describe(), synthetic: true };
        ErrorModel::from_counts(info, (kmin, kmax), (jmin, jmax), FillPolicy::Reject, entries)
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
                    + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
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
            let Some((k, v)) = kv.split_once('=') else { return bad(&format!("'{kv}' is not key=value")) };
            let Ok(v) = v.trim().parse::<f64>() else { return bad(&format!("'{v}' is not a number")) };
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
                other => return bad(&format!("unknown parameter '{other}' (gain, offset, inl, dnl, sigma0, sigma1, tail, tail_mean, sat)")),
            };
            *slot = v;
        }
        let ok = p.gain.is_finite() && p.offset.is_finite() && p.inl.is_finite() && p.dnl.is_finite();
        if !(ok && p.sigma0 > 0.0 && p.sigma1 >= 0.0 && (0.0..1.0).contains(&p.tail) && p.tail_mean > 0.0 && p.sat > 0.0) {
            return Some(Err(Error::invalid(format!(
                "error model '{spec}': needs finite gain/offset/inl/dnl, sigma0 > 0, sigma1 ≥ 0, 0 ≤ tail < 1, tail_mean > 0, sat > 0"
            ))));
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
    let p = Synthetic::parse(name).ok_or_else(|| Error::invalid(format!("unknown error-model preset '{name}' (known: {})", PRESETS.join(", "))))??;
    p.build(name, codes)
}

/// Whether `spec` names a preset (possibly with overrides) rather than a file.
pub fn is_preset(spec: &str) -> bool {
    spec == "ideal" || Synthetic::named(spec.split_once(':').map_or(spec, |(n, _)| n)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_graded_and_grow_with_the_code() {
        let codes = (-256, 255);
        let mut prev_err = 0.0;
        for name in ["mild", "moderate", "severe"] {
            let m = preset(name, codes).unwrap();
            assert!(m.info.synthetic && m.label().contains("synthetic"));
            assert!(m.unmeasured().is_empty());
            // Noise grows with the code.
            assert!(m.std(100) > m.std(10) && m.std(10) > m.std(0) * 0.99, "{name}");
            // Mean squared readout error at typical codes grows with severity.
            let err: f64 = (-60..=60).map(|k| (m.mean(k) as f64 - k as f64).powi(2) + m.std(k).powi(2)).sum::<f64>() / 121.0;
            assert!(err > prev_err, "{name}: {err} vs {prev_err}");
            prev_err = err;
        }
        let severe = preset("severe", codes).unwrap();
        // Saturation: no readout beyond 0.6 of full scale.
        assert!(severe.jmax >= 154 && severe.prob(255, 160) == 0.0 && severe.mean(255) <= 154.0);
        // Skewed toward zero (charge loss): mean below the Gaussian centre at positive codes.
        assert!(preset("ideal", codes).unwrap().mean(7) == 7.0);
        assert!(preset("hot", codes).unwrap_err().to_string().contains("unknown error-model preset 'hot'"));
    }

    #[test]
    fn presets_take_overrides() {
        let p = Synthetic::parse("moderate:offset=6, sigma1=0.5").unwrap().unwrap();
        assert_eq!((p.offset, p.sigma1, p.gain), (6.0, 0.5, Synthetic::named("moderate").unwrap().gain));
        assert!(Synthetic::parse("warm:offset=1").is_none());
        for (spec, msg) in [("mild:offset", "not key=value"), ("mild:offset=x", "not a number"), ("mild:heat=1", "unknown parameter 'heat'"), ("mild:sigma0=0", "sigma0 > 0")] {
            let e = Synthetic::parse(spec).unwrap().unwrap_err().to_string();
            assert!(e.contains(msg), "{spec}: {e}");
        }
        assert!(is_preset("severe:gain=0.5") && is_preset("ideal") && !is_preset("models/chip.dmem"));
        let m = preset("mild:offset=4", (-256, 255)).unwrap();
        let shift = m.mean(0) - preset("mild", (-256, 255)).unwrap().mean(0);
        assert!((shift - 4.5).abs() < 0.3, "{shift}");
    }

    #[test]
    fn erfc_is_accurate() {
        for (x, want) in [(0.0, 1.0), (0.5, 0.4795001221869535), (1.0, 0.15729920705028513), (2.0, 0.004677734981047266), (-1.0, 1.8427007929497148)] {
            assert!((erfc(x) - want).abs() < 2e-7, "erfc({x})");
        }
    }
}
