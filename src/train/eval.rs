//! Evaluation: accuracy and mean loss over a split, batchnorm in eval mode, nothing
//! recorded for backward.

use crate::Result;
use crate::cim::CimRuntime;
use crate::data::{Batcher, Normalize, Split};
use crate::engine::ops::softmax_cross_entropy;
use crate::engine::{Mode, ParamStore, Tape};
use crate::nn::{Fwd, Network};

/// Accuracy and mean loss over a split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Percent correct.
    pub accuracy: f64,
    /// Mean cross-entropy loss per image (no label smoothing).
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
}

/// Images per evaluation batch (batch `b` is CIM pass `step = b`).
pub const EVAL_BATCH: usize = 500;

/// Number of correct arg-max predictions in a (B, classes) logits block.
pub fn count_correct(logits: &[f32], classes: usize, labels: &[u32]) -> usize {
    logits
        .chunks(classes)
        .zip(labels)
        .filter(|&(row, &l)| {
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0;
            best == l as usize
        })
        .count()
}

/// Accuracy over a split; with `cim`, the network's CIM layers run on the macro (batch
/// `b` of the evaluation is pass `step = b` of the runtime's seed).
pub fn evaluate(
    net: &dyn Network,
    store: &mut ParamStore,
    split: &Split,
    norm: Normalize,
    cim: Option<&CimRuntime>,
) -> Result<EvalResult> {
    crate::engine::alloc::tune_allocator();
    let batcher = Batcher::new(split, norm, None, 0);
    let (mut correct, mut loss_sum) = (0usize, 0.0f64);
    let idx: Vec<usize> = (0..split.len()).collect();
    for (b, chunk) in idx.chunks(EVAL_BATCH).enumerate() {
        let (x, labels) = batcher.batch(chunk, 0);
        let mut tape = Tape::new(false);
        let xv = tape.constant(x);
        let rt = cim.map(|rt| CimRuntime { step: b as u64, ..rt.clone() });
        let mut cx = Fwd::new(&mut tape, store, Mode::Eval);
        cx.cim = rt.as_ref();
        let logits = net.forward(&mut cx, xv)?;
        let classes = tape.value(logits).shape()[1];
        correct += count_correct(tape.value(logits).data(), classes, &labels);
        let l = softmax_cross_entropy(&mut tape, logits, &labels, 0.0)?;
        loss_sum += tape.value(l).data()[0] as f64 * chunk.len() as f64;
    }
    let n = split.len().max(1);
    Ok(EvalResult {
        accuracy: 100.0 * correct as f64 / n as f64,
        loss: loss_sum / n as f64,
        images: split.len(),
    })
}

/// Accuracy over chip instances and reads: `per_chip[c][r]` is chip `c` read with
/// noise seed `r`. `chip_std` is the spread between chips (sample std of the per-chip
/// means), `read_std` the spread between reads of one chip (pooled within-chip sample
/// std); `std` is the sample std over all evaluations.
#[derive(Clone, Debug, PartialEq)]
pub struct McAccuracy {
    /// Mean accuracy in percent over all evaluations.
    pub mean: f64,
    /// Sample std of all evaluations, in percentage points.
    pub std: f64,
    /// Sample std of the per-chip means, in percentage points.
    pub chip_std: f64,
    /// Pooled within-chip sample std, in percentage points.
    pub read_std: f64,
    /// Accuracy in percent of each evaluation: `per_chip[c][r]` is chip `c`, read `r`.
    pub per_chip: Vec<Vec<f64>>,
    /// Several chips were evaluated, but the error model has no fixed pattern, so they
    /// are one and the same nominal chip: `chip_std` measures read noise only.
    pub chips_identical: bool,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = if v.len() > 1 {
        (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

impl McAccuracy {
    /// From `per_chip[c][r]` (every chip read the same number of times).
    pub fn of(per_chip: Vec<Vec<f64>>) -> Self {
        let all: Vec<f64> = per_chip.iter().flatten().copied().collect();
        let (mean, std) = mean_std(&all);
        let means: Vec<f64> = per_chip.iter().map(|r| mean_std(r).0).collect();
        let chip_std = mean_std(&means).1;
        let (mut ss, mut dof) = (0.0, 0usize);
        for (r, m) in per_chip.iter().zip(&means) {
            ss += r.iter().map(|a| (a - m).powi(2)).sum::<f64>();
            dof += r.len().saturating_sub(1);
        }
        let read_std = if dof > 0 { (ss / dof as f64).sqrt() } else { 0.0 };
        McAccuracy { mean, std, chip_std, read_std, per_chip, chips_identical: false }
    }
    /// Reads of one chip.
    pub fn of_reads(reads: Vec<f64>) -> Self {
        Self::of(vec![reads])
    }
    /// Every evaluation, chip by chip.
    pub fn all(&self) -> Vec<f64> {
        self.per_chip.iter().flatten().copied().collect()
    }
    /// Number of chips evaluated.
    pub fn chips(&self) -> usize {
        self.per_chip.len()
    }
    /// `chip_std` where it was measured (two chips or more); `None` for one chip.
    pub fn chip_spread(&self) -> Option<f64> {
        (self.chips() > 1).then_some(self.chip_std)
    }
    /// `read_std` where it was measured (a chip read twice or more); `None` for one read
    /// per chip.
    pub fn read_spread(&self) -> Option<f64> {
        self.per_chip.iter().any(|r| r.len() > 1).then_some(self.read_std)
    }
}

/// A spread as reports print it: two decimals, or `—` where it was not measured (as the
/// report marks a column that was not run).
pub fn fmt_spread(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.2}"))
}

/// A spread as JSON holds it: a number, or `null` where it was not measured.
pub fn json_spread(v: Option<f64>) -> super::json::Value {
    v.unwrap_or(f64::NAN).into()
}

/// The noise seed of read `r` of chip `c` (of `reads` per chip) in a Monte-Carlo
/// evaluation starting at noise seed `seed0`: every evaluation gets its own.
pub fn noise_seed(seed0: u64, chip: u64, read: u64, reads: u64) -> u64 {
    seed0 + chip * reads + read
}

/// Which chip instances a Monte-Carlo evaluation reads, and how often each:
/// `McPlan { chips: 3, reads: 2, ..Default::default() }` is chips 0, 1, 2, twice each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McPlan {
    /// The first chip seed (chips `first_chip .. first_chip + chips`).
    pub first_chip: u64,
    /// Chip instances (≥ 1).
    pub chips: u64,
    /// Reads of each chip, each with its own noise seed (≥ 1).
    pub reads: u64,
}

impl McPlan {
    /// Chips `0..chips`, read once each: `McPlan::chips(3).reads(2)`.
    pub fn chips(chips: u64) -> Self {
        McPlan { chips, ..Default::default() }
    }
    /// The same chips, each read `reads` times.
    pub fn reads(self, reads: u64) -> Self {
        McPlan { reads, ..self }
    }
    /// The same number of chips, from chip seed `first_chip` on.
    pub fn starting_at(self, first_chip: u64) -> Self {
        McPlan { first_chip, ..self }
    }
}

impl Default for McPlan {
    /// Chip 0, read once.
    fn default() -> Self {
        McPlan { first_chip: 0, chips: 1, reads: 1 }
    }
}

/// Monte-Carlo evaluation on a non-ideal macro: the chips of `plan`, each read
/// `plan.reads` times with noise seeds [`noise_seed`]`(rt.seed, c, r, reads)`.
/// [`McAccuracy::chips_identical`] says when the error model has no fixed pattern, so
/// that the chips differ only by read noise.
pub fn evaluate_mc(
    net: &dyn Network,
    store: &mut ParamStore,
    split: &Split,
    norm: Normalize,
    rt: &CimRuntime,
    plan: McPlan,
) -> Result<McAccuracy> {
    if plan.chips == 0 || plan.reads == 0 {
        return Err(crate::Error::invalid(format!(
            "a Monte-Carlo evaluation of {} chips × {} reads evaluates nothing",
            plan.chips, plan.reads
        )));
    }
    let McPlan { first_chip: chip0, chips, reads } = plan;
    let mut per_chip = Vec::new();
    let mut nominal = true;
    for c in 0..chips {
        let on_chip = rt.on_chip(chip0 + c);
        nominal &= on_chip.chip.is_none();
        let mut accs = Vec::new();
        for r in 0..reads {
            let run = CimRuntime { seed: noise_seed(rt.seed, c, r, reads), ..on_chip.clone() };
            accs.push(evaluate(net, store, split, norm, Some(&run))?.accuracy);
        }
        per_chip.push(accs);
    }
    Ok(McAccuracy { chips_identical: nominal && chips > 1, ..McAccuracy::of(per_chip) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spread is reported only where it was measured: between chips with two chips or
    /// more, between reads where a chip was read twice or more.
    #[test]
    fn spreads_are_reported_only_where_measured() {
        let one = McAccuracy::of(vec![vec![80.0]]);
        assert_eq!((one.chip_spread(), one.read_spread()), (None, None));
        let chips = McAccuracy::of(vec![vec![80.0], vec![82.0], vec![84.0]]);
        assert_eq!((chips.chip_spread(), chips.read_spread()), (Some(2.0), None));
        let reads = McAccuracy::of_reads(vec![80.0, 81.0]);
        assert_eq!(reads.chip_spread(), None);
        assert!((reads.read_spread().unwrap() - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(
            (fmt_spread(None), fmt_spread(Some(1.234))),
            ("—".to_string(), "1.23".to_string())
        );
        assert_eq!(
            super::super::json::object(vec![
                ("a", json_spread(None)),
                ("b", json_spread(Some(0.5)))
            ]),
            r#"{"a": null, "b": 0.5}"#
        );
    }
}
