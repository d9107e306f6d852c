//! Evaluation: accuracy and mean loss over a split, batchnorm in eval mode, nothing
//! recorded for backward.

use crate::cim::CimRuntime;
use crate::data::{Batcher, Normalize, Split};
use crate::engine::ops::softmax_cross_entropy;
use crate::engine::{Mode, ParamStore, Tape};
use crate::nn::{Fwd, Network};
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Percent correct.
    pub accuracy: f64,
    pub loss: f64,
    pub images: usize,
}

pub const EVAL_BATCH: usize = 500;

/// Number of correct arg-max predictions in a (B, classes) logits block.
pub fn count_correct(logits: &[f32], classes: usize, labels: &[u32]) -> usize {
    logits
        .chunks(classes)
        .zip(labels)
        .filter(|&(row, &l)| {
            let best = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
            best == l as usize
        })
        .count()
}

/// Accuracy over a split; with `cim`, the network's CIM layers run on the macro (batch
/// `b` of the evaluation is pass `step = b` of the runtime's seed).
pub fn evaluate(net: &dyn Network, store: &mut ParamStore, split: &Split, norm: Normalize, cim: Option<&CimRuntime>) -> Result<EvalResult> {
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
    Ok(EvalResult { accuracy: 100.0 * correct as f64 / n as f64, loss: loss_sum / n as f64, images: split.len() })
}

/// Accuracy over error seeds: mean ± sample standard deviation, and each seed's value.
#[derive(Clone, Debug, PartialEq)]
pub struct McAccuracy {
    pub mean: f64,
    pub std: f64,
    pub per_seed: Vec<f64>,
}

impl McAccuracy {
    pub fn of(per_seed: Vec<f64>) -> Self {
        let n = per_seed.len() as f64;
        let mean = per_seed.iter().sum::<f64>() / n;
        let std = if per_seed.len() > 1 { (per_seed.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        McAccuracy { mean, std, per_seed }
    }
}

/// Monte-Carlo evaluation on a non-ideal macro: one evaluation per seed
/// `rt.seed..rt.seed + seeds`.
pub fn evaluate_mc(net: &dyn Network, store: &mut ParamStore, split: &Split, norm: Normalize, rt: &CimRuntime, seeds: u64) -> Result<McAccuracy> {
    let mut accs = Vec::new();
    for s in 0..seeds {
        let r = CimRuntime { seed: rt.seed + s, ..rt.clone() };
        accs.push(evaluate(net, store, split, norm, Some(&r))?.accuracy);
    }
    Ok(McAccuracy::of(accs))
}
