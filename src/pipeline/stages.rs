//! The pipeline's stages, as methods of the run that [`super::run`] drives: training and
//! evaluation stages that record their results in the work directory and resume.

use super::record::Record;
use super::{Comparison, EVAL_SEED0, PipelineConfig, RECAL_TAG, Run, pm_spread, slug};
use crate::cim::{CimRuntime, Estimator, ReadoutMode};
use crate::data::{Augment, Normalize};
use crate::io::checkpoint::Checkpoint;
use crate::nn::CimPlan;
use crate::optim::Schedule;
use crate::train::{
    CimTraining, McAccuracy, ReadoutSource, RecalImages, RunOptions, TrainConfig, evaluate,
    noise_seed, recalibrate_bn, train,
};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Run<'_> {
    pub(super) fn say(&self, msg: std::fmt::Arguments) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// Refuses to mix the work of different configurations in one directory.
    pub(super) fn pin_inputs(&self) -> Result<()> {
        let mut want = Record::default();
        for (k, v) in self.cfg.describe() {
            want.set(k, v);
        }
        want.set("data_sha256", self.data.provenance.sha256.clone());
        if self.cfg.fp32_checkpoint.exists() {
            let bytes = std::fs::read(&self.cfg.fp32_checkpoint)
                .map_err(|e| Error::io(&self.cfg.fp32_checkpoint, e))?;
            want.set("fp32_sha256", crate::data::cifar::sha256_hex(&bytes));
        }
        if let Some(p) = self.cfg.qat_checkpoint.as_ref().filter(|p| p.exists()) {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            want.set("qat_sha256", crate::data::cifar::sha256_hex(&bytes));
        }
        let path = self.work.join("inputs.rec");
        if let Some(mut have) = Record::load(&path)? {
            // Work pinned before a config key existed ran with that key's default.
            for (k, v) in PipelineConfig::default().describe() {
                if have.get(k).is_none() {
                    have.set(k, v);
                }
            }
            if let Some((k, a, b)) = have.first_difference(&want) {
                return Err(Error::format(
                    &path,
                    format!(
                        "this work directory belongs to another configuration ({k} = {a}, now {b}); delete {} or choose another --out",
                        self.work.display()
                    ),
                ));
            }
            return Ok(());
        }
        want.save(&path)
    }

    fn add_time(&self, secs: f64) -> Result<()> {
        let path = self.work.join("time.rec");
        let mut r = Record::load(&path)?.unwrap_or_default();
        let total = r.get_f64("compute_s").unwrap_or(0.0) + secs;
        r.set("compute_s", format!("{total:.1}"));
        r.save(&path)
    }

    pub(super) fn wall_s(&self) -> Result<f64> {
        Ok(Record::load(&self.work.join("time.rec"))?
            .and_then(|r| r.get_f64("compute_s"))
            .unwrap_or(0.0))
    }

    pub(super) fn fp32_checkpoint(&self) -> Result<PathBuf> {
        if self.cfg.fp32_checkpoint.exists() {
            return Ok(self.cfg.fp32_checkpoint.clone());
        }
        self.say(format_args!(
            "(a) {} not found: training the FP32 model ({} epochs)",
            self.cfg.fp32_checkpoint.display(),
            self.cfg.fp32_epochs
        ));
        let mut tc =
            TrainConfig::new(self.cfg.arch, self.cfg.dataset, self.cfg.fp32_epochs, self.cfg.seed);
        tc.batch = self.cfg.batch;
        tc.lr = self.cfg.fp32_lr;
        tc.train_subset = self.cfg.train_subset;
        self.train_stage("fp32", "(a) FP32", tc)
    }

    /// Stage (b): the committed QAT checkpoint when the config names one that this
    /// configuration's QAT stage produced, else QAT trained into the work directory.
    pub(super) fn qat_checkpoint(&self, fp32: &Path) -> Result<PathBuf> {
        let tc = self.qat_config(fp32);
        let Some(p) = self.cfg.qat_checkpoint.as_ref().filter(|p| p.exists()) else {
            return self.train_stage("qat", "(b) W4A8 QAT, ideal macro", tc);
        };
        let ck = Checkpoint::load(p)?;
        let difference = crate::train::trainer::first_config_difference(&ck, &tc)
            .or_else(|| {
                (ck.epochs_done as usize != tc.epochs).then(|| {
                    ("epochs done".into(), ck.epochs_done.to_string(), tc.epochs.to_string())
                })
            })
            .or_else(|| {
                let (have, want) =
                    (ck.meta("data_sha256").unwrap_or("(missing)"), &self.data.provenance.sha256);
                (have != want).then(|| ("data_sha256".into(), have.to_string(), want.clone()))
            });
        if let Some((k, have, want)) = difference {
            return Err(Error::format(
                p,
                format!(
                    "is not this configuration's QAT model: it was trained with {k} = {have}, stage (b) would use {want} (set qat_checkpoint = none to train it)"
                ),
            ));
        }
        self.say(format_args!(
            "(b) W4A8 QAT, ideal macro: {} (committed; trained by this configuration's stage (b))",
            p.display()
        ));
        Ok(p.clone())
    }

    fn qat_config(&self, fp32: &Path) -> TrainConfig {
        self.cim_config(
            fp32,
            "ideal",
            ReadoutMode::Ideal,
            Estimator::Ste,
            self.cfg.qat_epochs,
            self.cfg.qat_lr,
        )
    }

    fn nat_config(
        &self,
        qat: &Path,
        error_model: &str,
        estimator: Estimator,
        epochs: usize,
    ) -> TrainConfig {
        self.cim_config(qat, error_model, ReadoutMode::Sampled, estimator, epochs, self.cfg.dnat_lr)
    }

    /// Naive, BN recalibration, NAT-STE and D-NAT (and D-NAT + BN recalibration) on
    /// error model `m`, D-NAT's checkpoint in `work/<dnat_name>.ckpt`.
    pub(super) fn compare(
        &self,
        m: &str,
        qat: &Path,
        dnat_name: &str,
        epochs: usize,
    ) -> Result<Comparison> {
        let sm = slug(m);
        let naive = self.mc_stage(&format!("naive-{sm}"), m, &|_| Ok(qat.to_path_buf()))?;
        self.say(format_args!("(d) without NAT, {m}: {}", pm_spread(&naive)));
        let bnrecal = self.mc_stage(&format!("bnrecal-{sm}"), m, &|c| {
            self.bnrecal_stage(qat, &format!("bnrecal-{sm}"), m, c)
        })?;
        self.say(format_args!("(d′) BN recalibration, {m}: {}", pm_spread(&bnrecal)));
        let natste = if self.cfg.natste {
            let ck = self.train_stage(
                &format!("natste-{sm}"),
                &format!("(e) NAT-STE on {m}"),
                self.nat_config(qat, m, Estimator::Ste, epochs),
            )?;
            let a = self.mc_stage(&format!("natste-{sm}"), m, &|_| Ok(ck.clone()))?;
            self.say(format_args!("(e) NAT-STE, {m}: {}", pm_spread(&a)));
            Some(a)
        } else {
            None
        };
        let ck = self.train_stage(
            dnat_name,
            &format!("(f) D-NAT on {m}"),
            self.nat_config(qat, m, self.cfg.estimator, epochs),
        )?;
        let dnat = self.mc_stage(&format!("dnat-{sm}"), m, &|_| Ok(ck.clone()))?;
        self.say(format_args!("(f) D-NAT, {m}: {}", pm_spread(&dnat)));
        let dnat_bnrecal = self.mc_stage(&format!("dnat-bnrecal-{sm}"), m, &|c| {
            self.bnrecal_stage(&ck, &format!("dnat-bnrecal-{sm}"), m, c)
        })?;
        self.say(format_args!("(f′) D-NAT + BN recalibration, {m}: {}", pm_spread(&dnat_bnrecal)));
        Ok(Comparison {
            error_model: m.to_string(),
            naive,
            bnrecal,
            natste,
            dnat,
            dnat_bnrecal,
            dnat_epochs: epochs,
        })
    }

    /// `src` with its batchnorm statistics re-estimated on chip `chip` of `m`:
    /// `work/<name>-chip<c>.ckpt`.
    fn bnrecal_stage(&self, src: &Path, name: &str, m: &str, chip: u64) -> Result<PathBuf> {
        let out = self.work.join(format!("{name}-chip{chip}.ckpt"));
        if out.exists() {
            return Ok(out);
        }
        let t = Instant::now();
        let (mut ck, net, mut store) = Checkpoint::load_network(src)?;
        let plan = ck.spec.cim.clone().ok_or_else(|| Error::format(src, "has no CIM layers"))?;
        let rt = self
            .cim_training(m, ReadoutMode::Sampled, plan)
            .runtime(crate::rng::key(&[RECAL_TAG, chip]))?
            .on_chip(chip);
        let mut train = self.data.train.clone();
        if let Some(n) = self.cfg.train_subset {
            train.truncate(n);
        }
        let images = self.cfg.bnrecal_images.min(train.len());
        let set = RecalImages {
            split: &train,
            norm: Normalize::for_dataset(self.cfg.dataset),
            augment: Some(Augment::standard()),
            count: images,
            seed: self.cfg.seed,
        };
        recalibrate_bn(net.as_ref(), &mut store, &set, Some(&rt))?;
        ck.store = store;
        ck.optimizer = None;
        ck.meta.push((
            crate::train::BN_RECALIBRATED.into(),
            format!("error_model={m} chip={chip} images={images}"),
        ));
        ck.save(&out)?;
        self.add_time(t.elapsed().as_secs_f64())?;
        Ok(out)
    }

    fn cim_training(&self, error_model: &str, readout: ReadoutMode, plan: CimPlan) -> CimTraining {
        CimTraining {
            macro_name: self.cfg.macro_name.clone(),
            error_model: error_model.into(),
            readout,
            estimator: Estimator::Ste,
            act_quant: self.cfg.act_quant,
            plan,
            chip: self.cfg.dnat_chip,
            // The ideal macro never reads the source (QAT's model is the same either way,
            // so a committed QAT checkpoint serves both).
            source: if readout == ReadoutMode::Ideal {
                ReadoutSource::Table
            } else {
                self.cfg.readout_source
            },
        }
    }

    /// Fine-tuning on the macro from `init`: SGD + Nesterov, cosine decay from `lr`.
    fn cim_config(
        &self,
        init: &Path,
        error_model: &str,
        readout: ReadoutMode,
        estimator: Estimator,
        epochs: usize,
        lr: f32,
    ) -> TrainConfig {
        let mut tc = TrainConfig::new(self.cfg.arch, self.cfg.dataset, epochs, self.cfg.seed);
        tc.batch = self.cfg.batch;
        tc.lr = lr;
        tc.schedule = Schedule::Cosine { warmup_epochs: 0.0 };
        tc.train_subset = self.cfg.train_subset;
        tc.groups.bound_lr_scale = self.cfg.bound_lr_scale;
        tc.init = Some(init.display().to_string());
        tc.cim = Some(CimTraining {
            estimator,
            ..self.cim_training(error_model, readout, self.cfg.cim_layers.clone())
        });
        tc
    }

    /// A training stage: resumes `work/<name>.ckpt`; a finished one returns at once.
    fn train_stage(&self, name: &str, what: &str, tc: TrainConfig) -> Result<PathBuf> {
        let out = self.work.join(format!("{name}.ckpt"));
        if out.exists() && Checkpoint::load(&out)?.epochs_done as usize >= tc.epochs {
            return Ok(out);
        }
        self.say(format_args!("{what}: {} epochs → {}", tc.epochs, out.display()));
        let t = Instant::now();
        let opts = RunOptions {
            resume: true,
            checkpoint_every: Some(crate::train::trainer::CHECKPOINT_EVERY),
            quiet: self.quiet,
            ..Default::default()
        };
        let o = train(&tc, self.data, &out, &opts)?;
        self.add_time(t.elapsed().as_secs_f64())?;
        self.say(format_args!("{what}: done, test accuracy {:.2}%", o.test_accuracy));
        Ok(out)
    }

    /// A single-number stage, recorded in `work/<name>.rec`.
    pub(super) fn scalar_stage(&self, name: &str, f: impl FnOnce() -> Result<f64>) -> Result<f64> {
        let path = self.work.join(format!("{name}.rec"));
        if let Some(v) = Record::load(&path)?.and_then(|r| r.get_f64("accuracy")) {
            return Ok(v);
        }
        let t = Instant::now();
        let v = f()?;
        self.add_time(t.elapsed().as_secs_f64())?;
        let mut r = Record::default();
        r.set("accuracy", format!("{v}"));
        r.save(&path)?;
        Ok(v)
    }

    /// Monte-Carlo evaluation over C chips × R reads, each recorded as it finishes;
    /// `ckpt(c)` is the model read on chip `c`.
    fn mc_stage(
        &self,
        name: &str,
        error_model: &str,
        ckpt: &dyn Fn(u64) -> Result<PathBuf>,
    ) -> Result<McAccuracy> {
        let path = self.work.join(format!("{name}.rec"));
        let mut rec = Record::load(&path)?.unwrap_or_default();
        let (chips, reads) = (self.cfg.mc_chips, self.cfg.mc_seeds);
        let mut per_chip = Vec::new();
        for c in 0..chips {
            let mut accs = Vec::new();
            for r in 0..reads {
                let key = format!("chip{c}-read{r}");
                if let Some(a) = rec.get_f64(&key) {
                    accs.push(a);
                    continue;
                }
                let model = ckpt(c)?;
                let t = Instant::now();
                let a = self.eval_seed(
                    &model,
                    error_model,
                    ReadoutMode::Sampled,
                    Some(c),
                    noise_seed(EVAL_SEED0, c, r, reads),
                )?;
                self.add_time(t.elapsed().as_secs_f64())?;
                self.say(format_args!(
                    "  {name}: chip {c}, read {}/{reads}: {a:.2}% ({:.0} s)",
                    r + 1,
                    t.elapsed().as_secs_f64()
                ));
                rec.set(&key, format!("{a}"));
                rec.save(&path)?;
                accs.push(a);
            }
            per_chip.push(accs);
        }
        Ok(McAccuracy::of(per_chip))
    }

    /// One evaluation of `ckpt` on chip `chip` (`None`: the nominal chip) with noise seed `seed`.
    pub(super) fn eval_seed(
        &self,
        ckpt: &Path,
        error_model: &str,
        readout: ReadoutMode,
        chip: Option<u64>,
        seed: u64,
    ) -> Result<f64> {
        let (ck, net, mut store) = Checkpoint::load_network(ckpt)?;
        let plan = ck.spec.cim.clone().ok_or_else(|| Error::format(ckpt, "has no CIM layers"))?;
        let base = self.cim_training(error_model, readout, plan).runtime(seed)?;
        let rt = match chip {
            Some(c) => base.on_chip(c),
            None => CimRuntime { chip: None, ..base },
        };
        Ok(evaluate(
            net.as_ref(),
            &mut store,
            &self.test,
            Normalize::for_dataset(self.cfg.dataset),
            Some(&rt),
        )?
        .accuracy)
    }

    pub(super) fn eval_digital(&self, ckpt: &Path) -> Result<f64> {
        let (ck, net, mut store) = Checkpoint::load_network(ckpt)?;
        if ck.spec.arch != self.cfg.arch
            || ck.spec.num_classes != self.cfg.dataset.num_classes()
            || ck.spec.cim.is_some()
        {
            return Err(Error::format(
                ckpt,
                format!("is not an FP32 {} for {}", self.cfg.arch.name(), self.cfg.dataset.name()),
            ));
        }
        Ok(evaluate(
            net.as_ref(),
            &mut store,
            &self.test,
            Normalize::for_dataset(self.cfg.dataset),
            None,
        )?
        .accuracy)
    }
}
