//! The training loop: seeded, checkpointed after every epoch, resumable bit for bit.
//!
//! Everything an epoch consumes is a function of (seed, epoch): the image order, the
//! augmentation of each image. The checkpoint written after an epoch holds the
//! parameters, buffers and optimizer state, so a resumed run continues exactly where
//! the interrupted one stopped and ends with the same bits. (The last epoch's
//! checkpoint keeps no optimizer state: nothing is left to resume.)

use super::config::TrainConfig;
use super::eval::{count_correct, evaluate};
use super::progress::{Progress, fmt_duration};
use crate::cim::{CimRuntime, quant};
use crate::data::{Augment, Batcher, Dataset, Normalize};
use crate::engine::ops::softmax_cross_entropy;
use crate::engine::{Mode, Tape};
use crate::io::checkpoint::{
    Checkpoint, EpochRecord, OptimizerState, restore_into, restore_weights,
};
use crate::nn::{ActQuantKind, Calibration, Fwd, Network, build};
use crate::optim::Optimizer;
use crate::rng;
use crate::{Error, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// How this invocation runs (not part of the experiment's identity).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from `out` if it holds a checkpoint of the same configuration.
    pub resume: bool,
    /// Stop after this many epochs in total (the checkpoint can be resumed later).
    pub stop_after: Option<usize>,
    /// Stop after this many training steps in total, mid-epoch if need be, with a
    /// checkpoint to resume from (a run cut off at that step, on purpose).
    pub stop_after_steps: Option<u64>,
    /// Also checkpoint within an epoch whenever this much time has passed since the
    /// last checkpoint, so a run killed mid-epoch loses at most this much work.
    pub checkpoint_every: Option<Duration>,
    /// No progress output on stderr.
    pub quiet: bool,
}

/// How often the pipeline's training stages and `dnat train` (by default) checkpoint
/// within an epoch.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(600);

/// The meta key of a checkpoint written mid-epoch: the epoch's running sums.
const EPOCH_IN_PROGRESS: &str = "epoch_in_progress";

/// An epoch's running sums (training loss, correct predictions, images seen), exact
/// in a checkpoint so a resumed epoch reports what the uninterrupted one would.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct EpochSums {
    loss: f64,
    correct: usize,
    seen: usize,
}

impl EpochSums {
    fn record(&self) -> String {
        format!(
            "loss_bits={:016x},correct={},seen={}",
            self.loss.to_bits(),
            self.correct,
            self.seen
        )
    }
    fn parse(s: &str) -> Option<Self> {
        let field = |k: &str| s.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='));
        Some(EpochSums {
            loss: f64::from_bits(u64::from_str_radix(field("loss_bits")?, 16).ok()?),
            correct: field("correct")?.parse().ok()?,
            seen: field("seen")?.parse().ok()?,
        })
    }
}

/// What a training run ends with.
pub struct TrainOutcome {
    /// The run's final state: parameters, history, and the optimizer state while
    /// epochs remain.
    pub checkpoint: Checkpoint,
    /// The network trained (its parameters are in `checkpoint.store`).
    pub net: Box<dyn Network>,
    /// After the last finished epoch (0 before the first).
    pub test_accuracy: f64,
    /// `Some(step)`: stopped mid-epoch at this step by [`RunOptions::stop_after_steps`].
    pub stopped_at_step: Option<u64>,
    /// Training throughput of this invocation, in images per second (0: none trained).
    pub train_images_per_s: f64,
    /// Wall time of this invocation in seconds, evaluation and checkpoints included.
    pub wall_s: f64,
}

/// The optimizer state a checkpoint at `ck`'s progress keeps: all of it while epochs
/// remain, none once the run is finished. A finished run cannot be continued (a longer
/// run is another configuration, and its schedule differs from the first step), so the
/// state would only double the file (SGD's momentum is as large as the weights).
fn optimizer_to_keep(
    ck: &Checkpoint,
    cfg: &TrainConfig,
    opt: &Optimizer,
) -> Option<OptimizerState> {
    let finished = ck.epochs_done as usize >= cfg.epochs;
    (!finished).then(|| OptimizerState {
        kind: cfg.optimizer.name().into(),
        steps: opt.steps,
        slots: opt.state.clone(),
    })
}

/// The first setting in which `ck`'s recorded training configuration differs from
/// `cfg`: (key, recorded value or `(missing)`, `cfg`'s value).
pub fn first_config_difference(
    ck: &Checkpoint,
    cfg: &TrainConfig,
) -> Option<(String, String, String)> {
    cfg.to_meta().into_iter().find_map(|(k, v)| match ck.meta(&k) {
        Some(have) if have == v => None,
        have => Some((k.clone(), have.unwrap_or("(missing)").to_string(), v)),
    })
}

fn check_resumable(ck: &Checkpoint, cfg: &TrainConfig, out: &Path) -> Result<()> {
    match first_config_difference(ck, cfg) {
        None => Ok(()),
        Some((k, have, want)) => Err(Error::format(
            out,
            format!("cannot resume: checkpoint has {k} = {have}, this run asks for {want}"),
        )),
    }
}

/// Everything about a run that can be checked before any work (and before the data is
/// read): the configuration, the options, and that the checkpoint can be written.
pub fn check_run(cfg: &TrainConfig, out: &Path, opts: &RunOptions) -> Result<()> {
    cfg.validate()?;
    if opts.stop_after == Some(0) {
        return Err(Error::invalid(
            "--stop-after must be at least 1 (epochs to run before stopping)",
        ));
    }
    if opts.stop_after_steps == Some(0) {
        return Err(Error::invalid(
            "--stop-after-steps must be at least 1 (training steps to run before stopping)",
        ));
    }
    if let Some(c) = &cfg.cim {
        c.runtime(cfg.seed)?; // the macro and the error model resolve (milliseconds)
        build(&cfg.spec(), cfg.seed)?; // the plan names layers the network has
    }
    crate::io::atomic::check_writable(out)
}

/// Trains `cfg` on `data`, checkpointing to `out` after every epoch (and within epochs
/// as `opts` asks); with `opts.resume`, continues the run `out` holds.
pub fn train(
    cfg: &TrainConfig,
    data: &Dataset,
    out: &Path,
    opts: &RunOptions,
) -> Result<TrainOutcome> {
    check_run(cfg, out, opts)?;
    crate::engine::alloc::tune_allocator();
    if data.kind != cfg.dataset {
        return Err(Error::invalid("the data set read does not match the configuration"));
    }
    let t_start = Instant::now();
    let (net, mut store) = build(&cfg.spec(), cfg.seed)?;
    // Start from another checkpoint's weights (the FP32 model before QAT, say).
    let mut bounds_known = cfg.cim.is_none();
    if let Some(init) = &cfg.init {
        let p = Path::new(init);
        bounds_known |= restore_weights(&Checkpoint::load(p)?.store, &mut store, p)?;
    }
    let rt_base: Option<CimRuntime> = cfg.cim.as_ref().map(|c| c.runtime(cfg.seed)).transpose()?;
    // Evaluations during training read the macro with draws of their own, fixed seed.
    // (A population run is evaluated on chip 0.)
    let rt_eval = rt_base.as_ref().map(|rt| {
        let rt = if rt.chip.is_none() { rt.on_chip(0) } else { rt.clone() };
        CimRuntime { seed: rng::key(&[cfg.seed, 0xE7A1]), ..rt }
    });
    let mut opt = Optimizer::new(cfg.optimizer, cfg.groups, &store);
    let mut meta = cfg.to_meta();
    meta.push(("data".into(), data.provenance.description.clone()));
    meta.push(("data_sha256".into(), data.provenance.sha256.clone()));
    let em_sha = cfg.cim.as_ref().map(|c| c.error_model_sha256()).transpose()?;
    if let Some(h) = &em_sha {
        meta.push(("error_model_sha256".into(), h.clone()));
    }
    let mut ck = Checkpoint {
        spec: cfg.spec(),
        meta,
        epochs_done: 0,
        steps_done: 0,
        store: store.clone(),
        optimizer: None,
        history: vec![],
    };

    let mut resumed_sums: Option<EpochSums> = None;
    if opts.resume && out.exists() {
        let prev = Checkpoint::load(out)?;
        check_resumable(&prev, cfg, out)?;
        if let Some(how) = prev.meta(super::BN_RECALIBRATED) {
            return Err(Error::format(
                out,
                format!(
                    "cannot resume: its batchnorm was recalibrated after training ({how}); it is another model now"
                ),
            ));
        }
        let (have, want) =
            (prev.meta("data_sha256").unwrap_or("(missing)"), &data.provenance.sha256);
        if have != want {
            return Err(Error::format(
                out,
                format!("cannot resume: trained on data with sha256 {have}, this run reads {want}"),
            ));
        }
        // (Checkpoints written before the error model's hash was recorded resume on trust.)
        if let (Some(have), Some(want)) = (prev.meta("error_model_sha256"), &em_sha)
            && have != want
        {
            return Err(Error::format(
                out,
                format!(
                    "cannot resume: trained through an error model with sha256 {have}, this run's has {want} (the file changed?)"
                ),
            ));
        }
        restore_into(&prev.store, &mut store, out)?;
        match prev.optimizer.as_ref() {
            Some(o) => {
                // Slots follow the checkpoint's parameter order; this build's may differ
                // (the quantizer bounds of checkpoints written before layers were mapped
                // after building sit beside their weights), so they are matched by name.
                let slot_of = |name: &str| {
                    prev.store
                        .params()
                        .iter()
                        .position(|p| p.name == name)
                        .and_then(|i| o.slots.get(i).cloned())
                };
                let slots =
                    store.params().iter().map(|p| slot_of(&p.name)).collect::<Option<Vec<_>>>();
                let slots = slots.ok_or_else(|| {
                    Error::format(
                        out,
                        "cannot resume: the optimizer state does not cover every parameter",
                    )
                })?;
                opt.set_state(slots, o.steps, &store)
                    .map_err(|e| Error::format(out, e.to_string()))?;
            }
            // A finished run keeps none (see `optimizer_to_keep`): there is nothing to train.
            None if prev.epochs_done as usize >= cfg.epochs => {}
            None => {
                return Err(Error::format(out, "cannot resume: no optimizer state saved"));
            }
        }
        if let Some(p) = prev.meta(EPOCH_IN_PROGRESS) {
            resumed_sums = Some(EpochSums::parse(p).ok_or_else(|| {
                Error::format(out, format!("cannot resume: unreadable {EPOCH_IN_PROGRESS} '{p}'"))
            })?);
        }
        ck.epochs_done = prev.epochs_done;
        ck.steps_done = prev.steps_done;
        ck.history = prev.history;
        bounds_known = true;
        if !opts.quiet {
            match resumed_sums {
                Some(_) => eprintln!(
                    "resuming {} within epoch {} of {} (step {})",
                    out.display(),
                    ck.epochs_done + 1,
                    cfg.epochs,
                    ck.steps_done
                ),
                None => eprintln!(
                    "resuming {} from epoch {} of {}",
                    out.display(),
                    ck.epochs_done,
                    cfg.epochs
                ),
            }
        }
    }

    let mut train_split = data.train.clone();
    if let Some(n) = cfg.train_subset {
        train_split.truncate(n);
    }
    let norm = Normalize::for_dataset(cfg.dataset);
    let batcher = Batcher::new(&train_split, norm, cfg.augment.then(Augment::standard), cfg.seed);
    if !bounds_known {
        calibrate(net.as_ref(), &mut store, &batcher, cfg, opts.quiet)?;
    }
    let steps_per_epoch = train_split.len().div_ceil(cfg.batch);
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut test_accuracy = ck.history.last().map_or(0.0, |h| h.test_accuracy as f64);
    // A checkpoint written mid-epoch is at step `steps_done` of epoch `epochs_done + 1`,
    // its running sums over the `skip` full batches before it.
    let skip = (ck.steps_done as usize)
        .checked_sub(ck.epochs_done as usize * steps_per_epoch)
        .filter(|&s| s < steps_per_epoch);
    let skip = match (skip, resumed_sums) {
        (Some(0), None) => 0,
        (Some(s), Some(sums))
            if s > 0 && sums.seen == s * cfg.batch && sums.correct <= sums.seen =>
        {
            s
        }
        _ => {
            return Err(Error::format(
                out,
                format!(
                    "cannot resume: {} steps done does not fit epoch {} of {steps_per_epoch} steps and its recorded sums",
                    ck.steps_done,
                    ck.epochs_done + 1
                ),
            ));
        }
    };
    if opts.stop_after_steps.is_some_and(|n| ck.steps_done >= n) {
        // Already there: nothing to train (as --stop-after at a finished epoch).
        let stopped_at_step = (skip > 0).then_some(ck.steps_done);
        ck.store = store;
        ck.optimizer = optimizer_to_keep(&ck, cfg, &opt);
        return Ok(TrainOutcome {
            checkpoint: ck,
            net,
            test_accuracy,
            stopped_at_step,
            train_images_per_s: 0.0,
            wall_s: t_start.elapsed().as_secs_f64(),
        });
    }
    let mut last_save = Instant::now();
    let last_epoch = opts.stop_after.map_or(cfg.epochs, |s| s.min(cfg.epochs));
    let mut progress = Progress::new(opts.quiet);
    let (mut images_done, mut train_secs) = (0usize, 0.0f64);

    let first_epoch = ck.epochs_done as usize;
    for epoch in first_epoch..last_epoch {
        let t_epoch = Instant::now();
        let order = batcher.epoch_order(epoch as u64);
        let first_step = if epoch == first_epoch { skip } else { 0 };
        let mut sums =
            if first_step > 0 { resumed_sums.unwrap_or_default() } else { EpochSums::default() };
        let seen_before = sums.seen;
        let mut lr = 0.0;
        for (bi, idx) in order.chunks(cfg.batch).enumerate().skip(first_step) {
            let step = epoch * steps_per_epoch + bi;
            lr = cfg.schedule.lr(cfg.lr, step, total_steps, steps_per_epoch);
            let (x, labels) = batcher.batch(idx, epoch as u64);
            let mut tape = Tape::new(true);
            let xv = tape.constant(x);
            let rt =
                rt_base.as_ref().zip(cfg.cim.as_ref()).map(|(rt, c)| c.runtime_at(rt, step as u64));
            let mut cx = Fwd::new(&mut tape, &mut store, Mode::Train);
            cx.cim = rt.as_ref();
            let logits = net.forward(&mut cx, xv)?;
            let classes = tape.value(logits).shape()[1];
            sums.correct += count_correct(tape.value(logits).data(), classes, &labels);
            let loss = softmax_cross_entropy(&mut tape, logits, &labels, cfg.label_smoothing)?;
            let lv = tape.value(loss).data()[0];
            if !lv.is_finite() {
                return Err(Error::invalid(format!(
                    "training diverged: loss is {lv} at epoch {}, step {bi}; lower --lr",
                    epoch + 1
                )));
            }
            sums.loss += lv as f64 * idx.len() as f64;
            sums.seen += idx.len();
            store.zero_grads();
            tape.backward(loss).accumulate_into(&mut store);
            opt.step(&mut store, lr);
            ck.steps_done += 1;

            // Mid-epoch: checkpoint when it is time, or stop here when asked (at an
            // epoch's last step the epoch's own checkpoint follows).
            let stop_now = opts.stop_after_steps.is_some_and(|n| ck.steps_done >= n);
            if bi + 1 < steps_per_epoch
                && (stop_now || opts.checkpoint_every.is_some_and(|d| last_save.elapsed() >= d))
            {
                let mut meta = ck.meta.clone();
                meta.push((EPOCH_IN_PROGRESS.into(), sums.record()));
                let optimizer = optimizer_to_keep(&ck, cfg, &opt); // mid-epoch: always kept
                let (epochs_done, steps_done, history) =
                    (ck.epochs_done, ck.steps_done, ck.history.clone());
                let mut part = Checkpoint {
                    spec: ck.spec.clone(),
                    meta,
                    epochs_done,
                    steps_done,
                    store: store.clone(),
                    optimizer,
                    history,
                };
                part.save(out)?;
                last_save = Instant::now();
                if stop_now {
                    if !opts.quiet {
                        eprintln!(
                            "stopped at step {} (epoch {}, step {} of {steps_per_epoch}); resume with --resume",
                            ck.steps_done,
                            epoch + 1,
                            bi + 1
                        );
                    }
                    part.store = store;
                    let rate = (images_done + sums.seen - seen_before) as f64
                        / (train_secs + t_epoch.elapsed().as_secs_f64()).max(1e-9);
                    let wall_s = t_start.elapsed().as_secs_f64();
                    return Ok(TrainOutcome {
                        checkpoint: part,
                        net,
                        test_accuracy,
                        stopped_at_step: Some(ck.steps_done),
                        train_images_per_s: rate,
                        wall_s,
                    });
                }
            }

            let el = t_epoch.elapsed().as_secs_f64();
            let rate = (sums.seen - seen_before) as f64 / el.max(1e-9);
            let remaining = (total_steps.min(last_epoch * steps_per_epoch) - step - 1) as f64
                * cfg.batch as f64
                / rate;
            progress.tick(false, || {
                format!(
                    "epoch {}/{} step {}/{} loss {:.4} acc {:.2}% lr {:.4} {:.0} img/s ETA {}",
                    epoch + 1,
                    cfg.epochs,
                    bi + 1,
                    steps_per_epoch,
                    sums.loss / sums.seen as f64,
                    100.0 * sums.correct as f64 / sums.seen as f64,
                    lr,
                    rate,
                    fmt_duration(remaining)
                )
            });
        }
        let epoch_train_secs = t_epoch.elapsed().as_secs_f64();
        let seen = sums.seen - seen_before;
        images_done += seen;
        train_secs += epoch_train_secs;
        let ev = evaluate(net.as_ref(), &mut store, &data.test, norm, rt_eval.as_ref())?;
        test_accuracy = ev.accuracy;
        let rec = EpochRecord {
            epoch: epoch as u32 + 1,
            lr,
            train_loss: (sums.loss / sums.seen as f64) as f32,
            train_accuracy: (100.0 * sums.correct as f64 / sums.seen as f64) as f32,
            test_accuracy: ev.accuracy as f32,
        };
        progress.tick(true, || {
            format!(
                "epoch {}/{} done: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} img/s | {}",
                epoch + 1,
                cfg.epochs,
                rec.train_loss,
                rec.train_accuracy,
                ev.loss,
                ev.accuracy,
                seen as f64 / epoch_train_secs,
                fmt_duration(t_epoch.elapsed().as_secs_f64())
            )
        });
        ck.history.push(rec);
        ck.epochs_done = epoch as u32 + 1;
        ck.store = store.clone();
        ck.optimizer = optimizer_to_keep(&ck, cfg, &opt);
        ck.save(out)?;
        last_save = Instant::now();
        if opts.stop_after_steps.is_some_and(|n| ck.steps_done >= n) {
            break;
        }
    }
    ck.store = store;
    ck.optimizer = optimizer_to_keep(&ck, cfg, &opt);
    Ok(TrainOutcome {
        checkpoint: ck,
        net,
        test_accuracy,
        stopped_at_step: None,
        train_images_per_s: if train_secs > 0.0 { images_done as f64 / train_secs } else { 0.0 },
        wall_s: t_start.elapsed().as_secs_f64(),
    })
}

/// Initial quantizer bounds from activation statistics: one FP32 forward (eval mode,
/// so batchnorm statistics are untouched) over the first batch of epoch 0, each CIM
/// layer's bounds set to the 0.1 % / 99.9 % quantiles of its inputs (PACT: lower 0).
fn calibrate(
    net: &dyn Network,
    store: &mut crate::engine::ParamStore,
    batcher: &Batcher,
    cfg: &TrainConfig,
    quiet: bool,
) -> Result<()> {
    let order = batcher.epoch_order(0);
    let (x, _) = batcher.batch(&order[..cfg.batch.min(order.len())], 0);
    let mut seen: Calibration = Vec::new();
    {
        let mut tape = Tape::new(false);
        let xv = tape.constant(x);
        let mut cx = Fwd::new(&mut tape, store, Mode::Eval);
        cx.calibration = Some(&mut seen);
        net.forward(&mut cx, xv)?;
    }
    let pact = cfg.cim.as_ref().is_some_and(|c| c.act_quant == ActQuantKind::Pact);
    for (lo, hi, values) in &seen {
        let (l, h) = quant::init_bounds(values);
        let l = if pact { 0.0 } else { l };
        store.param_mut(*lo).value.data_mut()[0] = l;
        store.param_mut(*hi).value.data_mut()[0] = h.max(l + quant::MIN_RANGE);
    }
    if !quiet {
        eprintln!(
            "calibrated the quantizer bounds of {} CIM layers on {} images",
            seen.len(),
            cfg.batch.min(order.len())
        );
    }
    Ok(())
}
