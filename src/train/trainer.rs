//! The training loop: seeded, checkpointed after every epoch, resumable bit for bit.
//!
//! Everything an epoch consumes is a function of (seed, epoch): the image order, the
//! augmentation of each image. The checkpoint written after an epoch holds the
//! parameters, buffers and optimizer state, so a resumed run continues exactly where
//! the interrupted one stopped and ends with the same bits. (The last epoch's
//! checkpoint keeps no optimizer state: nothing is left to resume.)

mod epoch;

use super::config::TrainConfig;
use super::progress::Progress;
use crate::cim::{CimRuntime, LayerClip, quant};
use crate::data::{Augment, Batcher, Dataset, Normalize};
use crate::engine::{Mode, ParamStore, Tape};
use crate::io::checkpoint::{Checkpoint, OptimizerState, restore_into, restore_weights};
use crate::nn::{ActQuantKind, Calibration, Fwd, Network, build};
use crate::optim::Optimizer;
use crate::rng;
use crate::runtime::MacroBackend;
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

impl RunOptions {
    /// The defaults, without progress output (for programs and tests).
    pub fn quiet() -> Self {
        RunOptions { quiet: true, ..Default::default() }
    }
}

/// How often the pipeline's training stages and `dnat train` (by default) checkpoint
/// within an epoch.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(600);

/// The meta key of the macro backend a run trained through ([`train_through`]).
pub const MACRO_BACKEND: &str = "macro_backend";

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
    /// Per CIM layer, the partial sums that clipped (beyond the ADC's range) in the last
    /// test evaluation of this invocation; empty for a digital network or none run.
    pub clipped: Vec<LayerClip>,
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
    train_on(cfg, data, out, opts, None)
}

/// [`train`] with a macro in the loop (`dnat deploy finetune`): every training step runs
/// the layers on the macro through `backend` — the network's weight codes at that step
/// programmed, the step's inputs read through it, pass `step` — and takes their gradient
/// from the CIM layers of `cfg.cim` (the statistical estimator through its error model,
/// or STE: [`crate::engine::ops::straight_through`]); evaluations read the test split
/// through `backend` too. The checkpoint records the backend's name, and a run resumes
/// only through the same one.
pub fn train_through(
    cfg: &TrainConfig,
    data: &Dataset,
    out: &Path,
    opts: &RunOptions,
    backend: &mut dyn MacroBackend,
) -> Result<TrainOutcome> {
    if cfg.cim.is_none() {
        return Err(Error::invalid(
            "training through a macro backend needs CIM layers (a configuration with cim)",
        ));
    }
    train_on(cfg, data, out, opts, Some(backend))
}

fn train_on<'a>(
    cfg: &'a TrainConfig,
    data: &'a Dataset,
    out: &'a Path,
    opts: &'a RunOptions,
    backend: Option<&'a mut dyn MacroBackend>,
) -> Result<TrainOutcome> {
    check_run(cfg, out, opts)?;
    crate::engine::alloc::tune_allocator();
    if data.kind != cfg.dataset {
        return Err(Error::invalid("the data set read does not match the configuration"));
    }
    let t_start = Instant::now();
    let (mut run, mut bounds_known) = Run::start(cfg, data, out, opts, backend)?;
    let mut resumed_sums: Option<EpochSums> = None;
    if opts.resume && out.exists() {
        resumed_sums = run.resume()?;
        bounds_known = true;
    }

    let mut train_split = data.train.clone();
    if let Some(n) = cfg.train_subset {
        train_split.truncate(n);
    }
    let norm = Normalize::for_dataset(cfg.dataset);
    let batcher = Batcher::new(&train_split, norm, cfg.augment.then(Augment::standard), cfg.seed);
    if !bounds_known {
        calibrate(run.net.as_ref(), &mut run.store, &batcher, cfg, opts.quiet)?;
    }
    let steps_per_epoch = train_split.len().div_ceil(cfg.batch);
    let total_steps = steps_per_epoch * cfg.epochs;
    let test_accuracy = run.ck.history.last().map_or(0.0, |h| h.test_accuracy as f64);
    let skip = run.resume_step(resumed_sums, steps_per_epoch)?;
    if opts.stop_after_steps.is_some_and(|n| run.ck.steps_done >= n) {
        // Already there: nothing to train (as --stop-after at a finished epoch).
        let stopped_at_step = (skip > 0).then_some(run.ck.steps_done);
        return Ok(run.finish(test_accuracy, stopped_at_step, 0.0, t_start, Vec::new()));
    }
    let mut e = Epochs {
        batcher,
        norm,
        steps_per_epoch,
        total_steps,
        last_save: Instant::now(),
        last_epoch: opts.stop_after.map_or(cfg.epochs, |s| s.min(cfg.epochs)),
        progress: Progress::new(opts.quiet),
        images_done: 0,
        train_secs: 0.0,
        test_accuracy,
        clipped: Vec::new(),
    };

    let first_epoch = run.ck.epochs_done as usize;
    for epoch in first_epoch..e.last_epoch {
        let first_step = if epoch == first_epoch { skip } else { 0 };
        let sums =
            if first_step > 0 { resumed_sums.unwrap_or_default() } else { EpochSums::default() };
        if let Some((mut part, rate)) = run.epoch(&mut e, epoch, first_step, sums)? {
            part.store = run.store;
            let wall_s = t_start.elapsed().as_secs_f64();
            return Ok(TrainOutcome {
                checkpoint: part,
                net: run.net,
                test_accuracy: e.test_accuracy,
                stopped_at_step: Some(run.ck.steps_done),
                train_images_per_s: rate,
                wall_s,
                clipped: e.clipped,
            });
        }
        if opts.stop_after_steps.is_some_and(|n| run.ck.steps_done >= n) {
            break;
        }
    }
    let rate = if e.train_secs > 0.0 { e.images_done as f64 / e.train_secs } else { 0.0 };
    Ok(run.finish(e.test_accuracy, None, rate, t_start, e.clipped))
}

/// A run being trained: its configuration and options, the network with its parameters
/// and optimizer, and the checkpoint that records its progress.
struct Run<'a> {
    cfg: &'a TrainConfig,
    data: &'a Dataset,
    out: &'a Path,
    opts: &'a RunOptions,
    net: Box<dyn Network>,
    store: ParamStore,
    opt: Optimizer,
    ck: Checkpoint,
    /// The macro training reads (`None`: a digital network); each step's draws are its own.
    rt_base: Option<CimRuntime>,
    /// The macro evaluations during training read.
    rt_eval: Option<CimRuntime>,
    /// The error model's sha256, recorded in the checkpoint's meta.
    em_sha: Option<String>,
    /// The macro in the loop ([`train_through`]), if any.
    backend: Option<&'a mut dyn MacroBackend>,
}

/// The epoch loop's batches and schedule, and what it carries from one epoch to the next.
struct Epochs<'b> {
    batcher: Batcher<'b>,
    norm: Normalize,
    steps_per_epoch: usize,
    total_steps: usize,
    /// When the last checkpoint was written.
    last_save: Instant,
    /// The epoch this invocation stops before.
    last_epoch: usize,
    progress: Progress,
    /// Images trained on by this invocation, and the time it took.
    images_done: usize,
    train_secs: f64,
    /// After the last finished epoch (0 before the first).
    test_accuracy: f64,
    /// The clipped partial sums of the last test evaluation, per CIM layer.
    clipped: Vec<LayerClip>,
}

impl<'a> Run<'a> {
    /// The network (with `cfg.init`'s weights, when given), the runtimes, the optimizer and
    /// a checkpoint of no progress; and whether the quantizer bounds are known already
    /// (else they are calibrated).
    fn start(
        cfg: &'a TrainConfig,
        data: &'a Dataset,
        out: &'a Path,
        opts: &'a RunOptions,
        backend: Option<&'a mut dyn MacroBackend>,
    ) -> Result<(Self, bool)> {
        let (net, mut store) = build(&cfg.spec(), cfg.seed)?;
        // Start from another checkpoint's weights (the FP32 model before QAT, say).
        let mut bounds_known = cfg.cim.is_none();
        if let Some(init) = &cfg.init {
            let p = Path::new(init);
            bounds_known |= restore_weights(&Checkpoint::load(p)?.store, &mut store, p)?;
        }
        let rt_base: Option<CimRuntime> =
            cfg.cim.as_ref().map(|c| c.runtime(cfg.seed)).transpose()?;
        // Evaluations during training read the macro with draws of their own, fixed seed.
        // (A population run is evaluated on chip 0.)
        let rt_eval = rt_base.as_ref().map(|rt| {
            let rt = if rt.chip.is_none() { rt.on_chip(0) } else { rt.clone() };
            CimRuntime { seed: rng::key(&[cfg.seed, 0xE7A1]), ..rt }
        });
        let opt = Optimizer::new(cfg.optimizer, cfg.groups, &store);
        let mut meta = cfg.to_meta();
        meta.push(("data".into(), data.provenance.description.clone()));
        meta.push(("data_sha256".into(), data.provenance.sha256.clone()));
        let em_sha = cfg.cim.as_ref().map(|c| c.error_model_sha256()).transpose()?.flatten();
        if let Some(h) = &em_sha {
            meta.push(("error_model_sha256".into(), h.clone()));
        }
        if let Some(b) = &backend {
            meta.push((MACRO_BACKEND.into(), b.name()));
        }
        let ck = Checkpoint {
            spec: cfg.spec(),
            meta,
            epochs_done: 0,
            steps_done: 0,
            store: store.clone(),
            optimizer: None,
            history: vec![],
        };
        let run =
            Run { cfg, data, out, opts, net, store, opt, ck, rt_base, rt_eval, em_sha, backend };
        Ok((run, bounds_known))
    }

    /// Continues the run `out` holds, refused unless it is this configuration's, on the
    /// same data and error model, and not recalibrated since: its parameters, optimizer
    /// state and progress. Returns the running sums of the epoch it stopped within.
    fn resume(&mut self) -> Result<Option<EpochSums>> {
        let (cfg, data, out, opts) = (self.cfg, self.data, self.out, self.opts);
        let mut resumed_sums: Option<EpochSums> = None;
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
        if let (Some(have), Some(want)) = (prev.meta("error_model_sha256"), &self.em_sha)
            && have != want
        {
            return Err(Error::format(
                out,
                format!(
                    "cannot resume: trained through an error model with sha256 {have}, this run's has {want} (the file changed?)"
                ),
            ));
        }
        let want = self.backend.as_ref().map(|b| b.name());
        if prev.meta(MACRO_BACKEND) != want.as_deref() {
            let name =
                |b: Option<&str>| b.map_or("no macro backend".into(), |b| format!("backend '{b}'"));
            return Err(Error::format(
                out,
                format!(
                    "cannot resume: trained through {}, this run through {}",
                    name(prev.meta(MACRO_BACKEND)),
                    name(want.as_deref())
                ),
            ));
        }
        restore_into(&prev.store, &mut self.store, out)?;
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
                let slots = self
                    .store
                    .params()
                    .iter()
                    .map(|p| slot_of(&p.name))
                    .collect::<Option<Vec<_>>>();
                let slots = slots.ok_or_else(|| {
                    Error::format(
                        out,
                        "cannot resume: the optimizer state does not cover every parameter",
                    )
                })?;
                self.opt
                    .set_state(slots, o.steps, &self.store)
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
        let ck = &mut self.ck;
        ck.epochs_done = prev.epochs_done;
        ck.steps_done = prev.steps_done;
        ck.history = prev.history;
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
        Ok(resumed_sums)
    }

    /// The step of its epoch the run resumes at (0: the epoch's start), checked against
    /// the running sums a checkpoint written mid-epoch recorded.
    fn resume_step(
        &self,
        resumed_sums: Option<EpochSums>,
        steps_per_epoch: usize,
    ) -> Result<usize> {
        let (cfg, ck) = (self.cfg, &self.ck);
        // A checkpoint written mid-epoch is at step `steps_done` of epoch `epochs_done + 1`,
        // its running sums over the `skip` full batches before it.
        let skip = (ck.steps_done as usize)
            .checked_sub(ck.epochs_done as usize * steps_per_epoch)
            .filter(|&s| s < steps_per_epoch);
        match (skip, resumed_sums) {
            (Some(0), None) => Ok(0),
            (Some(s), Some(sums))
                if s > 0 && sums.seen == s * cfg.batch && sums.correct <= sums.seen =>
            {
                Ok(s)
            }
            _ => Err(Error::format(
                self.out,
                format!(
                    "cannot resume: {} steps done does not fit epoch {} of {steps_per_epoch} steps and its recorded sums",
                    ck.steps_done,
                    ck.epochs_done + 1
                ),
            )),
        }
    }

    /// What the run ends with: its checkpoint holding the final parameters (and the
    /// optimizer state while epochs remain).
    fn finish(
        self,
        test_accuracy: f64,
        stopped_at_step: Option<u64>,
        train_images_per_s: f64,
        t_start: Instant,
        clipped: Vec<LayerClip>,
    ) -> TrainOutcome {
        let mut ck = self.ck;
        ck.store = self.store;
        ck.optimizer = optimizer_to_keep(&ck, self.cfg, &self.opt);
        TrainOutcome {
            checkpoint: ck,
            net: self.net,
            test_accuracy,
            stopped_at_step,
            train_images_per_s,
            wall_s: t_start.elapsed().as_secs_f64(),
            clipped,
        }
    }
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
