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
            "mild" => Synthetic { gain: 0.97, offset: 0.3, inl: 1.0, dnl: 0.2, sigma0: 0.3, sigma1: 0.15, tail: 0.02, tail_mean: 2.0, sat: 0.9 },
            "moderate" => Synthetic { gain: 0.92, offset: 1.0, inl: 3.0, dnl: 0.5, sigma0: 0.5, sigma1: 0.4, tail: 0.05, tail_mean: 4.0, sat: 0.75 },
            "severe" => Synthetic { gain: 0.85, offset: 2.0, inl: 6.0, dnl: 1.0, sigma0: 1.0, sigma1: 0.8, tail: 0.10, tail_mean: 8.0, sat: 0.6 },
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

/// A preset over the ideal code range of a macro's ADC.
pub fn preset(name: &str, codes: (i32, i32)) -> Result<ErrorModel> {
    if name == "ideal" {
        return Ok(ErrorModel::ideal(codes.0, codes.1));
    }
    let p = Synthetic::named(name).ok_or_else(|| Error::invalid(format!("unknown error-model preset '{name}' (known: {})", PRESETS.join(", "))))?;
    p.build(name, codes)
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
    fn erfc_is_accurate() {
        for (x, want) in [(0.0, 1.0), (0.5, 0.4795001221869535), (1.0, 0.15729920705028513), (2.0, 0.004677734981047266), (-1.0, 1.8427007929497148)] {
            assert!((erfc(x) - want).abs() < 2e-7, "erfc({x})");
        }
    }
}
