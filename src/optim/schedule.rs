//! Learning-rate schedules, evaluated per optimizer step.

use crate::{Error, Result};

/// How the learning rate changes over a run, from the base rate.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` at each epoch in `milestones`.
    Step {
        /// Epochs (0-based, ascending) from which one more factor `gamma` applies.
        milestones: Vec<usize>,
        /// Factor per milestone passed, in (0, 1e6].
        gamma: f32,
    },
    /// Linear warm-up over `warmup_epochs`, then cosine decay to 0.
    Cosine {
        /// Length of the linear warm-up, in epochs (≥ 0, may be fractional).
        warmup_epochs: f32,
    },
    /// One-cycle: warm up from lr/`div` to lr over `pct_start` of the run (cosine),
    /// then anneal (cosine) to lr/(div·`final_div`).
    OneCycle {
        /// Fraction of the run spent warming up, in [0, 1).
        pct_start: f32,
        /// The starting rate is lr/`div` (≥ 1).
        div: f32,
        /// The final rate is lr/(`div`·`final_div`) (≥ 1).
        final_div: f32,
    },
}

impl Schedule {
    /// Parses `constant`, `cosine`, `cosine:WARMUP_EPOCHS`, `onecycle`, `step:E1,E2[:GAMMA]`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        let bad = || {
            Error::invalid(format!(
                "bad schedule '{s}' (use constant, cosine[:WARMUP], onecycle, step:E1,E2[:GAMMA])"
            ))
        };
        Ok(match (name, arg) {
            ("constant", None) => Schedule::Constant,
            ("cosine", None) => Schedule::Cosine { warmup_epochs: 0.0 },
            ("cosine", Some(w)) => {
                Schedule::Cosine { warmup_epochs: w.parse().map_err(|_| bad())? }
            }
            ("onecycle", None) => {
                Schedule::OneCycle { pct_start: 0.15, div: 10.0, final_div: 100.0 }
            }
            ("step", Some(a)) => {
                let (ms, gamma) = a.split_once(':').map_or((a, "0.1"), |(m, g)| (m, g));
                let milestones = ms
                    .split(',')
                    .map(|m| m.parse().map_err(|_| bad()))
                    .collect::<Result<Vec<usize>>>()?;
                Schedule::Step { milestones, gamma: gamma.parse().map_err(|_| bad())? }
            }
            _ => return Err(bad()),
        })
        .and_then(|sch| {
            sch.validate().map(|_| sch).map_err(|m| Error::invalid(format!("schedule '{s}': {m}")))
        })
    }

    /// Parameters finite and in range: warm-up ≥ 0 epochs, 0 < gamma ≤ 1e6, milestones
    /// ascending.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Schedule::Constant => Ok(()),
            Schedule::Cosine { warmup_epochs }
                if !(warmup_epochs.is_finite() && *warmup_epochs >= 0.0) =>
            {
                Err(format!("warm-up {warmup_epochs} must be a number of epochs ≥ 0"))
            }
            Schedule::Step { gamma, .. }
                if !(gamma.is_finite() && *gamma > 0.0 && *gamma <= 1e6) =>
            {
                Err(format!("gamma {gamma} must be in (0, 1e6]"))
            }
            Schedule::Step { milestones, .. } if milestones.windows(2).any(|w| w[0] >= w[1]) => {
                Err("milestones must be ascending".into())
            }
            Schedule::OneCycle { pct_start, div, final_div }
                if !((0.0..1.0).contains(pct_start)
                    && div.is_finite()
                    && *div >= 1.0
                    && final_div.is_finite()
                    && *final_div >= 1.0) =>
            {
                Err("one-cycle needs 0 ≤ pct_start < 1, div ≥ 1, final_div ≥ 1".into())
            }
            _ => Ok(()),
        }
    }

    /// The schedule in [`Schedule::parse`]'s words; a one-cycle schedule is named without
    /// its parameters (`onecycle` parses to the defaults).
    pub fn describe(&self) -> String {
        match self {
            Schedule::Constant => "constant".into(),
            Schedule::Cosine { warmup_epochs } => format!("cosine:{warmup_epochs}"),
            Schedule::OneCycle { .. } => "onecycle".into(),
            Schedule::Step { milestones, gamma } => {
                format!(
                    "step:{}:{gamma}",
                    milestones.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(",")
                )
            }
        }
    }

    /// Learning rate at `step` (0-based) of `total` steps, `steps_per_epoch` per epoch.
    pub fn lr(&self, base: f32, step: usize, total: usize, steps_per_epoch: usize) -> f32 {
        let t = step as f64;
        let total = total.max(1) as f64;
        let cos = |from: f64, to: f64, frac: f64| {
            to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * frac.clamp(0.0, 1.0)).cos())
        };
        let base = base as f64;
        let lr = match self {
            Schedule::Constant => base,
            Schedule::Step { milestones, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                base * (*gamma as f64)
                    .powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
            Schedule::Cosine { warmup_epochs } => {
                let w = *warmup_epochs as f64 * steps_per_epoch as f64;
                if t < w {
                    base * (t + 1.0) / w
                } else {
                    cos(base, 0.0, (t - w) / (total - w).max(1.0))
                }
            }
            Schedule::OneCycle { pct_start, div, final_div } => {
                let up = (*pct_start as f64 * total).max(1.0);
                let start = base / *div as f64;
                if t < up {
                    cos(base, start, 1.0 - t / up)
                } else {
                    cos(base, start / *final_div as f64, (t - up) / (total - up).max(1.0))
                }
            }
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let oc = Schedule::parse("onecycle").unwrap();
        assert!((oc.lr(1.0, 0, 100, 10) - 0.1).abs() < 1e-6);
        assert!((oc.lr(1.0, 15, 100, 10) - 1.0).abs() < 1e-6);
        assert!(oc.lr(1.0, 99, 100, 10) < 0.002);
        let st = Schedule::parse("step:2,4:0.5").unwrap();
        assert_eq!(st.lr(1.0, 19, 100, 10), 1.0);
        assert_eq!(st.lr(1.0, 20, 100, 10), 0.5);
        assert_eq!(st.lr(1.0, 45, 100, 10), 0.25);
        let c = Schedule::parse("cosine:1").unwrap();
        assert!((c.lr(1.0, 9, 100, 10) - 1.0).abs() < 1e-6);
        assert!(c.lr(1.0, 99, 100, 10) < 1e-3);
        assert!(Schedule::parse("zigzag").is_err());
        assert_eq!(Schedule::parse(&st.describe()).unwrap(), st);
    }
}
