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
//! noise seeds [`noise_seed`](crate::train::noise_seed)`(EVAL_SEED0, c, r, R)`: the same
//! chips and draws for every model, so the columns of a table differ only by the model.

pub mod config;
pub mod plot;
pub mod record;
pub mod report;
mod stages;

pub use config::PipelineConfig;

use crate::cim::{ReadoutMode, em};
use crate::data::{Dataset, Split};
use crate::io::checkpoint::{Checkpoint, EpochRecord};
use crate::train::McAccuracy;
use crate::train::eval::fmt_spread;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// First noise seed of every Monte-Carlo evaluation (as `dnat eval --cim`).
pub const EVAL_SEED0: u64 = 1000;
/// Key of the noise seeds of batchnorm recalibration passes (never an evaluation's).
const RECAL_TAG: u64 = 0xBA7C;

/// Everything measured on one error model: the model without NAT, the cheap fix, the
/// paper's comparison point and D-NAT, on the same chips and reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The error model's spec, as the config names it (preset or file).
    pub error_model: String,
    /// The QAT model read on the non-ideal macro as it is (stage d).
    pub naive: McAccuracy,
    /// The naive model with batchnorm statistics re-estimated on each chip.
    pub bnrecal: McAccuracy,
    /// NAT with the straight-through estimator (when configured).
    pub natste: Option<McAccuracy>,
    /// The D-NAT model (stage f).
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
    /// The configuration the pipeline ran.
    pub config: PipelineConfig,
    /// Test accuracy of the FP32 model, in percent (stage a).
    pub fp32: f64,
    /// Test accuracy of the QAT model on the ideal macro, in percent (stage c).
    pub quant_ideal: f64,
    /// The main error model's comparison.
    pub main: Comparison,
    /// The D-NAT model read on the ideal macro (stage g). Its batchnorm statistics
    /// and E-PACT bounds were learned through the chip's errors, so this is typically
    /// far below `quant_ideal`: a D-NAT model belongs to its chip.
    pub dnat_on_ideal: f64,
    /// One comparison per error model of the severity sweep, in config order.
    pub sweep: Vec<Comparison>,
    /// Per-epoch test accuracy of the fine-tuning stages: QAT (ideal macro), D-NAT
    /// (non-ideal macro, one fixed noise seed).
    pub history: Vec<(&'static str, Vec<EpochRecord>)>,
    /// Compute time summed over all invocations that did the work.
    pub wall_s: f64,
    /// Description of the data set read.
    pub data: String,
    /// sha256 of the data set read (archive, or record files in order), lowercase hex.
    pub data_sha256: String,
    /// The error model's label and description, the macro's description.
    pub error_model_label: String,
    /// The error model's description.
    pub error_model_description: String,
    /// The error model's chip-to-chip and column-to-column spread, in words.
    pub fixed_pattern: String,
    /// The macro's description ([`crate::cim::MacroSpec::describe`]).
    pub macro_description: String,
    /// Test images each evaluation reads (after `test_subset`).
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
