//! `dnat bench`: training-step and evaluation throughput of a network on synthetic
//! data of CIFAR shape, plus the process's peak memory.

use super::json;
use crate::Result;
use crate::cim::profile::PARTS;
use crate::cim::{CimProfile, CimRuntime, ClipCounts, LayerClip, clip};
use crate::engine::gradcheck::random;
use crate::engine::ops::softmax_cross_entropy;
use crate::engine::{Mode, Tape};
use crate::nn::{Arch, CimPlan, Fwd, ModelSpec, build};
use crate::optim::{Groups, Optimizer, OptimizerKind};
use std::sync::Arc;
use std::time::Instant;

/// What [`run`] measured.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// The architecture's name.
    pub model: String,
    /// Images per step.
    pub batch: usize,
    /// Worker threads (rayon's pool).
    pub threads: usize,
    /// Median training step (forward, backward, optimizer update), in ms.
    pub train_step_ms: f64,
    /// Training throughput at the median step, images/s.
    pub train_images_per_s: f64,
    /// Evaluation-forward throughput at the median pass, images/s.
    pub eval_images_per_s: f64,
    /// Peak resident memory of the process (`VmHWM`), in MiB; 0 where unknown.
    pub peak_rss_mb: f64,
    /// For CIM runs: the macro, readout source, mode and estimator, and readouts drawn per second.
    pub cim: Option<(String, f64)>,
    /// For CIM runs: the mean training step (ms; `train_step_ms` is the median) split
    /// into the CIM layers' parts ([`crate::cim::profile::PARTS`], each its thread time
    /// over the thread count) and the rest, which includes the threads' idle time.
    pub breakdown: Option<Vec<(&'static str, f64)>>,
    /// For CIM runs: per layer, the partial sums of one evaluation forward that clipped
    /// (beyond the ADC's range).
    pub clipped: Vec<LayerClip>,
}

/// Peak resident set size of this process (VmHWM), in MiB; 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What [`run`] measures: `BenchConfig { batch: 64, ..Default::default() }`.
#[derive(Clone, Copy)]
pub struct BenchConfig<'a> {
    /// The network.
    pub arch: Arch,
    /// Classes of its output layer.
    pub classes: usize,
    /// Images per step.
    pub batch: usize,
    /// Timed steps (the median is reported).
    pub steps: usize,
    /// Untimed steps before them.
    pub warmup: usize,
    /// The runtime and the layers on the macro; `None`: FP32.
    pub cim: Option<(&'a CimRuntime, &'a CimPlan)>,
}

impl Default for BenchConfig<'_> {
    /// ResNet20 for 10 classes, batch 128, 10 steps after 2 of warm-up, FP32 (as
    /// `dnat bench`).
    fn default() -> Self {
        BenchConfig {
            arch: Arch::ResNet20,
            classes: 10,
            batch: 128,
            steps: 10,
            warmup: 2,
            cim: None,
        }
    }
}

/// Times `steps` training steps (after `warmup`) and as many eval forwards; the
/// median step is reported, which is robust to a noisy shared machine. With `cim`, the
/// plan's layers run on the macro with that runtime, in training and in evaluation.
pub fn run(cfg: &BenchConfig) -> Result<BenchResult> {
    let BenchConfig { arch, classes: num_classes, batch, steps, warmup, cim } = *cfg;
    let spec = ModelSpec { arch, num_classes, cim: cim.map(|(_, plan)| plan.clone()) };
    let cim = cim.map(|(rt, _)| rt);
    let (net, mut store) = build(&spec, 1)?;
    let mut opt = Optimizer::new(
        OptimizerKind::Sgd { momentum: 0.9, nesterov: true },
        Groups::default(),
        &store,
    );
    let x = random(&[batch, 3, 32, 32], 5);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % num_classes as u32).collect();
    let mut train_times = Vec::new();
    let profile = Arc::new(CimProfile::default());
    let mut profile_before = [0.0; 4];
    for i in 0..warmup + steps {
        if i == warmup {
            profile_before = profile.seconds();
        }
        let t = Instant::now();
        let mut tape = Tape::new(true);
        let xv = tape.constant(x.clone());
        let rt = cim.map(|rt| CimRuntime {
            step: i as u64,
            profile: Some(profile.clone()),
            ..rt.clone()
        });
        let mut cx = Fwd::new(&mut tape, &mut store, Mode::Train);
        cx.cim = rt.as_ref();
        let logits = net.forward(&mut cx, xv)?;
        let loss = softmax_cross_entropy(&mut tape, logits, &labels, 0.0)?;
        store.zero_grads();
        tape.backward(loss).accumulate_into(&mut store);
        opt.step(&mut store, 0.01);
        if i >= warmup {
            train_times.push(t.elapsed().as_secs_f64());
        }
    }
    let readouts_before =
        cim.map_or(0, |rt| rt.readouts.load(std::sync::atomic::Ordering::Relaxed));
    let mut eval_times = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let mut tape = Tape::new(false);
        let xv = tape.constant(x.clone());
        let mut cx = Fwd::new(&mut tape, &mut store, Mode::Eval);
        cx.cim = cim;
        net.forward(&mut cx, xv)?;
        if i >= warmup {
            eval_times.push(t.elapsed().as_secs_f64());
        }
    }
    // One more, untimed, evaluation forward counts the clipped partial sums per layer.
    let clipped = match cim {
        Some(rt) => {
            let clips = Arc::new(ClipCounts::default());
            let rt = CimRuntime { clips: Some(clips.clone()), ..rt.clone() };
            let mut tape = Tape::new(false);
            let xv = tape.constant(x.clone());
            let mut cx = Fwd::new(&mut tape, &mut store, Mode::Eval);
            cx.cim = Some(&rt);
            net.forward(&mut cx, xv)?;
            clips.per_layer(&store.cim_layers())
        }
        None => Vec::new(),
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mean_step = train_times.iter().sum::<f64>() / steps as f64;
    let threads = rayon::current_num_threads() as f64;
    let breakdown = cim.map(|_| {
        let spent = profile.seconds();
        let mut parts: Vec<(&'static str, f64)> = PARTS
            .iter()
            .zip(spent.iter().zip(&profile_before))
            .map(|(&name, (a, b))| (name, (a - b) / steps as f64 / threads * 1e3))
            .collect();
        let cim_ms: f64 = parts.iter().map(|p| p.1).sum();
        parts.push(("rest", mean_step * 1e3 - cim_ms));
        parts
    });
    let (ts, es) = (median(&mut train_times), median(&mut eval_times));
    // Readouts of one training step: those counted over the training loop, per step.
    let cim = cim.map(|rt| {
        let per_step = readouts_before as f64 / (warmup + steps) as f64;
        let what = format!(
            "{} | layers: {} | {} | {:?} readout | {} estimator",
            rt.spec.describe(),
            spec.cim.as_ref().map_or(String::new(), |p| p.words()),
            rt.readout.label(),
            rt.mode,
            rt.estimator.describe()
        );
        (what, per_step / ts)
    });
    Ok(BenchResult {
        model: arch.name().into(),
        batch,
        threads: rayon::current_num_threads(),
        train_step_ms: ts * 1e3,
        train_images_per_s: batch as f64 / ts,
        eval_images_per_s: batch as f64 / es,
        peak_rss_mb: peak_rss_mb(),
        cim,
        breakdown,
        clipped,
    })
}

impl BenchResult {
    /// The result as a table for people, with the CIM lines when there are any.
    pub fn table(&self) -> String {
        let mut t = format!(
            "model     batch threads  train step ms  train img/s  eval img/s  peak RSS MiB\n{:<9} {:>5} {:>7} {:>14.1} {:>12.1} {:>11.1} {:>13.0}",
            self.model,
            self.batch,
            self.threads,
            self.train_step_ms,
            self.train_images_per_s,
            self.eval_images_per_s,
            self.peak_rss_mb
        );
        if let Some((what, rate)) = &self.cim {
            t.push_str(&format!(
                "\nCIM: {what}\nreadouts drawn: {:.1} M/s (training step)",
                rate / 1e6
            ));
        }
        if let Some(parts) = &self.breakdown {
            let total: f64 = parts.iter().map(|p| p.1).sum();
            t.push_str(&format!("\nmean training step {total:.1} ms (median above), by part (thread time / threads; rest includes idle threads):"));
            for (name, ms) in parts {
                t.push_str(&format!("\n  {name:<14} {ms:>9.1}  {:>5.1} %", 100.0 * ms / total));
            }
        }
        if !self.clipped.is_empty() {
            t.push('\n');
            t.push_str(clip::report(&self.clipped).trim_end());
        }
        t
    }
    /// The result as one JSON object.
    pub fn json(&self) -> String {
        json::object(vec![
            ("model", self.model.clone().into()),
            ("batch", self.batch.into()),
            ("threads", self.threads.into()),
            ("train_step_ms", self.train_step_ms.into()),
            ("train_images_per_s", self.train_images_per_s.into()),
            ("eval_images_per_s", self.eval_images_per_s.into()),
            ("peak_rss_mb", self.peak_rss_mb.into()),
            ("cim", self.cim.is_some().into()),
            ("cim_setup", self.cim.as_ref().map_or(String::new(), |c| c.0.clone()).into()),
            ("readouts_per_s", self.cim.as_ref().map_or(0.0, |c| c.1).into()),
            ("clipped", clip::json(&self.clipped)),
            (
                "step_breakdown_ms",
                json::Value::Raw(json::object(
                    self.breakdown.iter().flatten().map(|&(k, v)| (k, v.into())).collect(),
                )),
            ),
        ])
    }
}
