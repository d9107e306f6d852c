//! One epoch of a run: its training steps, the checkpoints written within it, and the
//! evaluation and checkpoint that end it.

use super::{EPOCH_IN_PROGRESS, EpochSums, Epochs, Run, optimizer_to_keep};
use crate::cim::{CimRuntime, ClipCounts};
use crate::data::Normalize;
use crate::engine::ops::softmax_cross_entropy;
use crate::engine::{Mode, ParamStore, Tape};
use crate::io::checkpoint::{Checkpoint, EpochRecord};
use crate::io::deploy::DeployModel;
use crate::nn::{Fwd, MacroForward, Network};
use crate::runtime::{InTheLoop, Runtime};
use crate::train::TrainConfig;
use crate::train::eval::{count_correct, evaluate};
use crate::train::progress::fmt_duration;
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Instant;

impl Run<'_> {
    /// Trains epoch `epoch` from step `first_step` on (`sums`: the running sums of the
    /// steps before it), then evaluates and checkpoints it. Stopped within the epoch by
    /// [`super::RunOptions::stop_after_steps`], returns the checkpoint written there (its
    /// parameters are the run's) and this invocation's training throughput.
    pub(super) fn epoch(
        &mut self,
        e: &mut Epochs,
        epoch: usize,
        first_step: usize,
        mut sums: EpochSums,
    ) -> Result<Option<(Checkpoint, f64)>> {
        let (cfg, opts) = (self.cfg, self.opts);
        let steps_per_epoch = e.steps_per_epoch;
        let t_epoch = Instant::now();
        let order = e.batcher.epoch_order(epoch as u64);
        let seen_before = sums.seen;
        let mut lr = 0.0;
        for (bi, idx) in order.chunks(cfg.batch).enumerate().skip(first_step) {
            let step = epoch * steps_per_epoch + bi;
            lr = cfg.schedule.lr(cfg.lr, step, e.total_steps, steps_per_epoch);
            self.step(e, epoch, bi, idx, lr, &mut sums)?;

            // Mid-epoch: checkpoint when it is time, or stop here when asked (at an
            // epoch's last step the epoch's own checkpoint follows).
            let stop_now = opts.stop_after_steps.is_some_and(|n| self.ck.steps_done >= n);
            if bi + 1 < steps_per_epoch
                && (stop_now || opts.checkpoint_every.is_some_and(|d| e.last_save.elapsed() >= d))
            {
                let part = self.save_mid_epoch(&sums)?;
                e.last_save = Instant::now();
                if stop_now {
                    if !opts.quiet {
                        eprintln!(
                            "stopped at step {} (epoch {}, step {} of {steps_per_epoch}); resume with --resume",
                            self.ck.steps_done,
                            epoch + 1,
                            bi + 1
                        );
                    }
                    let rate = (e.images_done + sums.seen - seen_before) as f64
                        / (e.train_secs + t_epoch.elapsed().as_secs_f64()).max(1e-9);
                    return Ok(Some((part, rate)));
                }
            }

            let el = t_epoch.elapsed().as_secs_f64();
            let rate = (sums.seen - seen_before) as f64 / el.max(1e-9);
            let remaining = (e.total_steps.min(e.last_epoch * steps_per_epoch) - step - 1) as f64
                * cfg.batch as f64
                / rate;
            e.progress.tick(false, || {
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
        e.images_done += seen;
        e.train_secs += epoch_train_secs;
        let clips = self.rt_eval.as_ref().map(|_| Arc::new(ClipCounts::default()));
        let rt_eval =
            self.rt_eval.as_ref().map(|rt| CimRuntime { clips: clips.clone(), ..rt.clone() });
        let ev = match (self.backend.as_deref_mut(), rt_eval.as_ref()) {
            (Some(backend), Some(rt)) => {
                let model = deployable(self.cfg, self.net.as_ref(), &mut self.store, rt, e.norm)?;
                Runtime::new(model)?.evaluate(backend, &self.data.test)?.0
            }
            _ => evaluate(
                self.net.as_ref(),
                &mut self.store,
                &self.data.test,
                e.norm,
                rt_eval.as_ref(),
            )?,
        };
        if let Some(c) = clips {
            e.clipped = c.per_layer(&self.store.cim_layers());
        }
        e.test_accuracy = ev.accuracy;
        let rec = EpochRecord {
            epoch: epoch as u32 + 1,
            lr,
            train_loss: (sums.loss / sums.seen as f64) as f32,
            train_accuracy: (100.0 * sums.correct as f64 / sums.seen as f64) as f32,
            test_accuracy: ev.accuracy as f32,
        };
        e.progress.tick(true, || {
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
        let ck = &mut self.ck;
        ck.history.push(rec);
        ck.epochs_done = epoch as u32 + 1;
        ck.store = self.store.clone();
        ck.optimizer = optimizer_to_keep(ck, cfg, &self.opt);
        ck.save(self.out)?;
        e.last_save = Instant::now();
        Ok(None)
    }

    /// One training step, on batch `bi` (images `idx`) of epoch `epoch` at learning rate
    /// `lr`: forward, loss, backward and the optimizer's step, added to the epoch's `sums`.
    fn step(
        &mut self,
        e: &Epochs,
        epoch: usize,
        bi: usize,
        idx: &[usize],
        lr: f32,
        sums: &mut EpochSums,
    ) -> Result<()> {
        let cfg = self.cfg;
        let step = epoch * e.steps_per_epoch + bi;
        let (x, labels) = e.batcher.batch(idx, epoch as u64);
        let mut tape = Tape::new(true);
        let xv = tape.constant(x);
        let rt = self
            .rt_base
            .as_ref()
            .zip(cfg.cim.as_ref())
            .map(|(rt, c)| c.runtime_at(rt, step as u64));
        // With a macro in the loop, the network as it is now, on the macro.
        let mut device = match (self.backend.as_deref_mut(), rt.as_ref()) {
            (Some(backend), Some(rt)) => {
                let model = deployable(cfg, self.net.as_ref(), &mut self.store, rt, e.norm)?;
                Some(InTheLoop::new(model, backend, step as u64)?)
            }
            _ => None,
        };
        let mut cx = Fwd::new(&mut tape, &mut self.store, Mode::Train);
        cx.cim = rt.as_ref();
        cx.macro_forward = device.as_mut().map(|d| d as &mut dyn MacroForward);
        let logits = self.net.forward(&mut cx, xv)?;
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
        self.store.zero_grads();
        tape.backward(loss).accumulate_into(&mut self.store);
        self.opt.step(&mut self.store, lr);
        self.ck.steps_done += 1;
        Ok(())
    }

    /// Writes the checkpoint of the run within an epoch (its running `sums` in the meta,
    /// the optimizer state kept) and returns it.
    fn save_mid_epoch(&self, sums: &EpochSums) -> Result<Checkpoint> {
        let ck = &self.ck;
        let mut meta = ck.meta.clone();
        meta.push((EPOCH_IN_PROGRESS.into(), sums.record()));
        let optimizer = optimizer_to_keep(ck, self.cfg, &self.opt); // mid-epoch: always kept
        let (epochs_done, steps_done, history) =
            (ck.epochs_done, ck.steps_done, ck.history.clone());
        let part = Checkpoint {
            spec: ck.spec.clone(),
            meta,
            epochs_done,
            steps_done,
            store: self.store.clone(),
            optimizer,
            history,
        };
        part.save(self.out)?;
        Ok(part)
    }
}

/// The network as it is now, as a deployable model on `rt`'s macro (what a macro in the
/// loop is programmed with).
fn deployable(
    cfg: &TrainConfig,
    net: &dyn Network,
    store: &mut ParamStore,
    rt: &CimRuntime,
    norm: Normalize,
) -> Result<DeployModel> {
    DeployModel::from_network(net, cfg.arch.name(), store, &rt.spec, norm)
}
