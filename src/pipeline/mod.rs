//! The D-NAT pipeline: the paper's experiment as resumable stages, driven by a
//! [`PipelineConfig`].
//!
//! | stage | what | kept in `OUT/work/` |
//! |---|---|---|
//! | a | FP32 model: `fp32_checkpoint`, or trained when that file does not exist | `fp32.ckpt` (when trained), `fp32.rec` |
//! | b | W4A8 quantization-aware training with E-PACT on the ideal macro | `qat.ckpt` |
//! | c | evaluation of (b) on the ideal macro | `quant_ideal.rec` |
//! | d | (b) on the non-ideal macro, C chips × R reads: **naive** | `naive-<model>.rec` |
//! | d′ | (b) with its batchnorm statistics re-estimated on each chip: **BN recalibration** | `bnrecal-<model>-chip<c>.ckpt`, `bnrecal-<model>.rec` |
//! | e | NAT with the straight-through estimator on `dnat_chip` (the paper's comparison point; `natste = false` skips it) | `natste-<model>.ckpt`, `natste-<model>.rec` |
//! | f | **D-NAT**: fine-tuning (b) with the error model in the loop, statistical estimator | `dnat.ckpt` (sweep: `dnat-<model>.ckpt`), `dnat-<model>.rec` |
//! | f′ | (f) with batchnorm recalibrated on each chip (transfer to unseen chips) | `dnat-bnrecal-<model>-chip<c>.ckpt`, `dnat-bnrecal-<model>.rec` |
//! | g | (f) on the ideal macro: how chip-specific the D-NAT model is | `dnat_on_ideal.rec` |
//! | sweep | (d)–(f′) for each error model of the severity sweep | as above |
//!
//! Training stages checkpoint every epoch and resume; evaluation stages record each
//! (chip, read) as it finishes. A finished stage is not run again, so an interrupted
//! pipeline, started again with the same command, loses at most one epoch or one
//! evaluation. `work/inputs.rec` pins the configuration (and the FP32 checkpoint's
//! sha256) the work belongs to; a different configuration is refused rather than mixed
//! (a key added to the config format since the work was pinned counts as its default).
//!
//! Every non-ideal evaluation reads chips `0..C` (chip seeds) `R` times each, with
//! noise seeds [`noise_seed`]`(EVAL_SEED0, c, r, R)`: the same chips and draws for every
//! model, so the columns of a table differ only by the model.

pub mod config;
pub mod plot;
pub mod record;
pub mod report;

pub use config::PipelineConfig;

use crate::cim::{CimRuntime, Estimator, ReadoutMode, em};
use crate::data::{Augment, Dataset, Normalize, Split};
use crate::io::checkpoint::{Checkpoint, EpochRecord, restore_into};
use crate::nn::{CimPlan, build};
use crate::optim::Schedule;
use crate::train::eval::fmt_spread;
use crate::train::{
    CimTraining, McAccuracy, ReadoutSource, RecalImages, RunOptions, TrainConfig, evaluate,
    noise_seed, recalibrate_bn, train,
};
use crate::{Error, Result};
use record::Record;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// First noise seed of every Monte-Carlo evaluation (as `dnat eval --cim`).
pub const EVAL_SEED0: u64 = 1000;
/// Key of the noise seeds of batchnorm recalibration passes (never an evaluation's).
const RECAL_TAG: u64 = 0xBA7C;

/// Everything measured on one error model: the model without NAT, the cheap fix, the
/// paper's comparison point and D-NAT, on the same chips and reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub error_model: String,
    pub naive: McAccuracy,
    /// The naive model with batchnorm statistics re-estimated on each chip.
    pub bnrecal: McAccuracy,
    /// NAT with the straight-through estimator (when configured).
    pub natste: Option<McAccuracy>,
    pub dnat: McAccuracy,
    /// The D-NAT model with batchnorm statistics re-estimated on each chip.
    pub dnat_bnrecal: McAccuracy,
    /// D-NAT (and NAT-STE) epochs (0: the QAT model itself, for the ideal macro).
    pub dnat_epochs: usize,
}

impl Comparison {
    /// What D-NAT adds over the cheap fix (means, points).
    pub fn dnat_minus_bnrecal(&self) -> f64 {
        self.dnat.mean - self.bnrecal.mean
    }
    /// The spread a difference of two means must clear to be more than noise: twice
    /// the larger standard deviation over evaluations.
    pub fn resolution(&self) -> f64 {
        2.0 * self.dnat.std.max(self.bnrecal.std)
    }
}

/// Everything the pipeline measured.
#[derive(Clone, Debug)]
pub struct Summary {
    pub config: PipelineConfig,
    pub fp32: f64,
    pub quant_ideal: f64,
    /// The main error model's comparison.
    pub main: Comparison,
    /// The D-NAT model read on the ideal macro (stage g). Its batchnorm statistics
    /// and E-PACT bounds were learned through the chip's errors, so this is typically
    /// far below `quant_ideal`: a D-NAT model belongs to its chip.
    pub dnat_on_ideal: f64,
    pub sweep: Vec<Comparison>,
    /// Per-epoch test accuracy of the fine-tuning stages: QAT (ideal macro), D-NAT
    /// (non-ideal macro, one fixed noise seed).
    pub history: Vec<(&'static str, Vec<EpochRecord>)>,
    /// Compute time summed over all invocations that did the work.
    pub wall_s: f64,
    pub data: String,
    pub data_sha256: String,
    /// The error model's label and description, the macro's description.
    pub error_model_label: String,
    pub error_model_description: String,
    /// The error model's chip-to-chip and column-to-column spread, in words.
    pub fixed_pattern: String,
    pub macro_description: String,
    pub test_images: usize,
}

impl Summary {
    /// Points recovered by D-NAT on the main error model (D-NAT − naive, means).
    pub fn recovery(&self) -> f64 {
        self.main.dnat.mean - self.main.naive.mean
    }
}

struct Run<'a> {
    cfg: &'a PipelineConfig,
    data: &'a Dataset,
    test: Split,
    work: PathBuf,
    quiet: bool,
}

/// Runs (or resumes) the pipeline, writing its work under `out/work/`; the report is
/// written by [`report::write`].
pub fn run(cfg: &PipelineConfig, data: &Dataset, out: &Path, quiet: bool) -> Result<Summary> {
    if data.kind != cfg.dataset {
        return Err(Error::invalid(format!(
            "the pipeline is configured for {} but the data set read is {}",
            cfg.dataset.name(),
            data.kind.name()
        )));
    }
    let work = out.join("work");
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let mut test = data.test.clone();
    if let Some(n) = cfg.test_subset {
        test.truncate(n);
    }
    let r = Run { cfg, data, test, work, quiet };
    r.pin_inputs()?;
    r.say(format_args!("pipeline '{}' → {}", cfg.name, out.display()));

    // (a) FP32.
    let fp32_ckpt = r.fp32_checkpoint()?;
    let fp32 = r.scalar_stage("fp32", || r.eval_digital(&fp32_ckpt))?;
    r.say(format_args!("(a) FP32: {fp32:.2}%"));
    // (b) QAT on the ideal macro, (c) its ideal accuracy.
    let qat = r.qat_checkpoint(&fp32_ckpt)?;
    let quant_ideal = r.scalar_stage("quant_ideal", || {
        r.eval_seed(&qat, "ideal", ReadoutMode::Ideal, None, EVAL_SEED0)
    })?;
    r.say(format_args!("(c) quantized, ideal macro: {quant_ideal:.2}%"));
    // (d)–(f′) on the main error model.
    let main = r.compare(&cfg.error_model, &qat, "dnat", cfg.dnat_epochs)?;
    let dnat_ckpt = r.work.join("dnat.ckpt");
    let dnat_on_ideal = r.scalar_stage("dnat_on_ideal", || {
        r.eval_seed(&dnat_ckpt, "ideal", ReadoutMode::Ideal, None, EVAL_SEED0)
    })?;
    r.say(format_args!("(g) D-NAT model on the ideal macro: {dnat_on_ideal:.2}%"));

    // Severity sweep.
    let mut sweep = Vec::new();
    for m in &cfg.sweep {
        let point = if m == "ideal" {
            // On the ideal macro every method is the QAT model.
            let a = McAccuracy::of_reads(vec![quant_ideal]);
            Comparison {
                error_model: m.clone(),
                naive: a.clone(),
                bnrecal: a.clone(),
                natste: cfg.natste.then(|| a.clone()),
                dnat: a.clone(),
                dnat_bnrecal: a,
                dnat_epochs: 0,
            }
        } else if *m == cfg.error_model {
            main.clone()
        } else {
            r.compare(m, &qat, &format!("dnat-{}", slug(m)), cfg.sweep_dnat_epochs)?
        };
        sweep.push(point);
    }

    let mut history = Vec::new();
    for (name, path) in [("QAT (ideal macro)", &qat), ("D-NAT (non-ideal macro)", &dnat_ckpt)] {
        history.push((name, Checkpoint::load(path)?.history));
    }
    let spec = crate::cim::MacroSpec::parse(&cfg.macro_name)?;
    let model = em::resolve(&cfg.error_model, &spec)?;
    Ok(Summary {
        config: cfg.clone(),
        fp32,
        quant_ideal,
        main,
        dnat_on_ideal,
        sweep,
        history,
        wall_s: r.wall_s()?,
        data: data.provenance.description.clone(),
        data_sha256: data.provenance.sha256.clone(),
        error_model_label: model.label(),
        error_model_description: model.info.description.clone(),
        fixed_pattern: if model.columns.is_empty() {
            model.fixed_pattern.describe()
        } else {
            format!(
                "{} (fitted over the {} columns of the measured chip, which is chip 0)",
                model.fixed_pattern.describe(),
                model.columns.len()
            )
        },
        macro_description: spec.describe(),
        test_images: r.test.len(),
    })
}

/// `mean ± std (chip σ, read σ)` for progress lines (the report's tables print `mean ± std`).
pub fn pm_spread(a: &McAccuracy) -> String {
    if a.all().len() > 1 {
        format!(
            "{:.2} ± {:.2} (chip σ {}, read σ {})",
            a.mean,
            a.std,
            fmt_spread(a.chip_spread()),
            fmt_spread(a.read_spread())
        )
    } else {
        format!("{:.2}", a.mean)
    }
}

/// A file-name-safe form of an error-model spec or path.
pub fn slug(s: &str) -> String {
    let name = Path::new(s).file_name().map_or(s.to_string(), |n| n.to_string_lossy().into_owned());
    let name = if em::presets::is_preset(s) { s.to_string() } else { name };
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect()
}

impl Run<'_> {
    fn say(&self, msg: std::fmt::Arguments) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// Refuses to mix the work of different configurations in one directory.
    fn pin_inputs(&self) -> Result<()> {
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

    fn wall_s(&self) -> Result<f64> {
        Ok(Record::load(&self.work.join("time.rec"))?
            .and_then(|r| r.get_f64("compute_s"))
            .unwrap_or(0.0))
    }

    fn fp32_checkpoint(&self) -> Result<PathBuf> {
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
    fn qat_checkpoint(&self, fp32: &Path) -> Result<PathBuf> {
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
    fn compare(&self, m: &str, qat: &Path, dnat_name: &str, epochs: usize) -> Result<Comparison> {
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
        let mut ck = Checkpoint::load(src)?;
        let plan = ck.spec.cim.clone().ok_or_else(|| Error::format(src, "has no CIM layers"))?;
        let (net, mut store) = build(&ck.spec, 0)?;
        restore_into(&ck.store, &mut store, src)?;
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
            error_model: error_model.to_string(),
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
    fn scalar_stage(&self, name: &str, f: impl FnOnce() -> Result<f64>) -> Result<f64> {
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
    fn eval_seed(
        &self,
        ckpt: &Path,
        error_model: &str,
        readout: ReadoutMode,
        chip: Option<u64>,
        seed: u64,
    ) -> Result<f64> {
        let ck = Checkpoint::load(ckpt)?;
        let plan = ck.spec.cim.clone().ok_or_else(|| Error::format(ckpt, "has no CIM layers"))?;
        let (net, mut store) = build(&ck.spec, 0)?;
        restore_into(&ck.store, &mut store, ckpt)?;
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

    fn eval_digital(&self, ckpt: &Path) -> Result<f64> {
        let ck = Checkpoint::load(ckpt)?;
        if ck.spec.arch != self.cfg.arch
            || ck.spec.num_classes != self.cfg.dataset.num_classes()
            || ck.spec.cim.is_some()
        {
            return Err(Error::format(
                ckpt,
                format!("is not an FP32 {} for {}", self.cfg.arch.name(), self.cfg.dataset.name()),
            ));
        }
        let (net, mut store) = build(&ck.spec, 0)?;
        restore_into(&ck.store, &mut store, ckpt)?;
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
