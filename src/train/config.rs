//! The training configuration, stored in every checkpoint (as key/value strings) so
//! that a resumed run can check it continues the same experiment.

use crate::cim::{CimRuntime, Estimator, MacroSpec, Readout, ReadoutMode, SampleOnly, em};
use crate::data::DatasetKind;
use crate::nn::{ActQuantKind, Arch, CimPlan, ModelSpec};
use crate::optim::{Groups, OptimizerKind, Schedule};
use crate::{Error, Result};
use std::sync::Arc;

/// Training with the network's layers on the macro: quantization-aware training on an
/// ideal macro (`readout = Ideal`), or D-NAT with the error model in the loop
/// (`readout = Sampled`, statistical estimator).
#[derive(Clone, Debug, PartialEq)]
pub struct CimTraining {
    /// A macro: a preset, a description or a file (see [`MacroSpec::parse`]).
    pub macro_name: String,
    /// The error model: a preset or file, a model in memory, or any readout source.
    pub error_model: ErrorModelSource,
    /// The forward mode of the CIM layers: ideal, sampled or expected readouts.
    pub readout: ReadoutMode,
    /// The backward estimator through the readout.
    pub estimator: Estimator,
    /// The CIM layers' activation quantizer (E-PACT or PACT).
    pub act_quant: ActQuantKind,
    /// Which layers run on the macro.
    pub plan: CimPlan,
    /// Which chip instance(s) of the error model's fixed pattern the readouts go through.
    pub chip: ChipChoice,
    /// The error model with its table, or behind [`SampleOnly`] (sampling only).
    pub source: ReadoutSource,
}

/// The error model a CIM run reads through: by name (a preset, a preset with overrides
/// such as `current-domain:col_gain=0.05`, or a D-MAC-EM file; see [`em::resolve`]), a
/// model built in memory (fitted from a log, say), or any [`Readout`] source.
/// `"moderate".into()`, `model.into()` and `Arc::new(source).into()` make one.
///
/// Checkpoints record a named model by its name, the others by their label, and every
/// [`ErrorModel`](em::ErrorModel) by the SHA-256 of its content, so a resumed run
/// refuses a changed model; a [`Readout`] source without a table has no content to hash
/// and resumes on its label alone.
#[derive(Clone)]
pub enum ErrorModelSource {
    /// A preset (with overrides) or a D-MAC-EM file path.
    Named(String),
    /// A D-MAC-EM in memory.
    Model(Arc<em::ErrorModel>),
    /// Any readout source (a replay of recorded readouts, say).
    Readout(Arc<dyn Readout>),
}

impl ErrorModelSource {
    /// The source for the macro `spec` (a named model is resolved against its ADC).
    pub fn readout(&self, spec: &MacroSpec) -> Result<Arc<dyn Readout>> {
        Ok(match self {
            ErrorModelSource::Named(name) => Arc::new(em::resolve(name, spec)?),
            ErrorModelSource::Model(m) => m.clone(),
            ErrorModelSource::Readout(r) => r.clone(),
        })
    }
    /// The SHA-256 of the model's content (its binary D-MAC-EM form); `None` for a
    /// [`Readout`] source, which has no content to hash.
    pub fn sha256(&self, spec: &MacroSpec) -> Result<Option<String>> {
        let hash = |m: &em::ErrorModel| crate::data::cifar::sha256_hex(&em::format::to_binary(m));
        Ok(match self {
            ErrorModelSource::Named(name) => Some(hash(&em::resolve(name, spec)?)),
            ErrorModelSource::Model(m) => Some(hash(m)),
            ErrorModelSource::Readout(_) => None,
        })
    }
    /// How checkpoints record it: the name, or `value:LABEL` (whitespace as `_`) for a
    /// model or source given as a value.
    pub fn describe(&self) -> String {
        let value = |label: String| format!("value:{}", label.replace(char::is_whitespace, "_"));
        match self {
            ErrorModelSource::Named(name) => name.clone(),
            ErrorModelSource::Model(m) => value(Readout::label(m.as_ref())),
            ErrorModelSource::Readout(r) => value(r.label()),
        }
    }
}

impl std::fmt::Debug for ErrorModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Named models are equal by name; models and sources given as values only when they
/// are the same value.
impl PartialEq for ErrorModelSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ErrorModelSource::Named(a), ErrorModelSource::Named(b)) => a == b,
            (ErrorModelSource::Model(a), ErrorModelSource::Model(b)) => Arc::ptr_eq(a, b),
            (ErrorModelSource::Readout(a), ErrorModelSource::Readout(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl From<&str> for ErrorModelSource {
    fn from(name: &str) -> Self {
        ErrorModelSource::Named(name.into())
    }
}
impl From<String> for ErrorModelSource {
    fn from(name: String) -> Self {
        ErrorModelSource::Named(name)
    }
}
impl From<em::ErrorModel> for ErrorModelSource {
    fn from(model: em::ErrorModel) -> Self {
        ErrorModelSource::Model(Arc::new(model))
    }
}
impl From<Arc<em::ErrorModel>> for ErrorModelSource {
    fn from(model: Arc<em::ErrorModel>) -> Self {
        ErrorModelSource::Model(model)
    }
}
impl From<Arc<dyn Readout>> for ErrorModelSource {
    fn from(source: Arc<dyn Readout>) -> Self {
        ErrorModelSource::Readout(source)
    }
}

/// Where a CIM run's readouts come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadoutSource {
    /// The error model itself: sampling plus its table of E[readout | code].
    #[default]
    Table,
    /// The error model behind [`SampleOnly`]: sampling only, as a chip behind a link
    /// offers (`stat:S` and `ste` train through it; `stat` and `expected` are refused).
    SampleOnly,
}

impl ReadoutSource {
    /// `table` or `sample-only`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(ReadoutSource::Table),
            "sample-only" => Ok(ReadoutSource::SampleOnly),
            _ => Err(Error::invalid(format!(
                "readout source '{s}': expected 'table' or 'sample-only'"
            ))),
        }
    }
    /// The name [`ReadoutSource::parse`] reads.
    pub fn name(&self) -> &'static str {
        match self {
            ReadoutSource::Table => "table",
            ReadoutSource::SampleOnly => "sample-only",
        }
    }
    /// `model` as this source offers it.
    pub fn wrap(self, model: Arc<dyn Readout>) -> Arc<dyn Readout> {
        match self {
            ReadoutSource::Table => model,
            ReadoutSource::SampleOnly => Arc::new(SampleOnly(model)),
        }
    }
}

/// Train for one chip, or for the population of chips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChipChoice {
    /// Chip `seed` throughout (the paper's setting: that chip's measured model).
    One(u64),
    /// A new chip instance every step (its seed keyed by run seed and step): a model
    /// for any chip of the population.
    Population,
}

impl ChipChoice {
    /// A chip seed, or `population`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "population" => Ok(ChipChoice::Population),
            n => n.parse().map(ChipChoice::One).map_err(|_| {
                Error::invalid(format!(
                    "chip '{s}': expected a chip seed (a whole number) or 'population'"
                ))
            }),
        }
    }
    /// The chip seed, or `population`, as [`ChipChoice::parse`] reads it.
    pub fn describe(&self) -> String {
        match self {
            ChipChoice::One(s) => s.to_string(),
            ChipChoice::Population => "population".into(),
        }
    }
}

const POPULATION_TAG: u64 = 0x909;

impl CimTraining {
    /// D-NAT on `macro_name` (a preset, a description such as
    /// `rows=32,adc_bits=7,step=64`, or a file) through `error_model` (a preset or a
    /// D-MAC-EM file by name, a fitted [`ErrorModel`](em::ErrorModel), or any readout
    /// source: [`ErrorModelSource`]): sampled readouts, the statistical estimator with
    /// the table's slope, E-PACT, first and last layer digital, chip 0, the model's table.
    pub fn new(macro_name: &str, error_model: impl Into<ErrorModelSource>) -> Self {
        CimTraining {
            macro_name: macro_name.into(),
            error_model: error_model.into(),
            readout: ReadoutMode::Sampled,
            estimator: Estimator::Statistical { draws: 0 },
            act_quant: ActQuantKind::EPact,
            plan: CimPlan::default(),
            chip: ChipChoice::One(0),
            source: ReadoutSource::Table,
        }
    }

    /// The same training with the layers of `plan` on the macro.
    pub fn on_layers(self, plan: CimPlan) -> Self {
        CimTraining { plan, ..self }
    }

    /// The SHA-256 of the error model's content (its binary D-MAC-EM form), as
    /// checkpoints record it: a file edited between two runs is not the same model
    /// (`None` for a readout source without a table; see [`ErrorModelSource`]).
    pub fn error_model_sha256(&self) -> Result<Option<String>> {
        self.error_model.sha256(&MacroSpec::parse(&self.macro_name)?)
    }

    /// The macro as checkpoints record it: a preset by its name; a description or a
    /// file by its whole description (a file can change or vanish; the record cannot).
    pub fn macro_recorded(&self) -> String {
        match MacroSpec::preset(&self.macro_name) {
            Ok(_) => self.macro_name.clone(),
            Err(_) => MacroSpec::parse(&self.macro_name)
                .map_or_else(|_| self.macro_name.clone(), |m| m.to_description()),
        }
    }

    /// The runtime of this configuration on its chip (seed and step are set per pass;
    /// for [`ChipChoice::Population`] the chip of each step by [`Self::runtime_at`]).
    pub fn runtime(&self, seed: u64) -> Result<CimRuntime> {
        let spec = MacroSpec::parse(&self.macro_name)?;
        spec.validate()?;
        let model = self.error_model.readout(&spec)?;
        let mut rt = CimRuntime::new(spec, self.source.wrap(model), self.readout, self.estimator)?;
        rt.seed = seed;
        rt.act_quant = self.act_quant;
        Ok(match self.chip {
            ChipChoice::One(c) => rt.on_chip(c),
            ChipChoice::Population => rt,
        })
    }
    /// The runtime of training step `step`, from [`Self::runtime`]'s result.
    pub fn runtime_at(&self, rt: &CimRuntime, step: u64) -> CimRuntime {
        let rt = CimRuntime { step, ..rt.clone() };
        match self.chip {
            ChipChoice::One(_) => rt,
            ChipChoice::Population => rt.on_chip(crate::rng::key(&[rt.seed, POPULATION_TAG, step])),
        }
    }
}

/// Largest batch and epoch count a run accepts (sizes are checked before allocating).
pub const MAX_BATCH: usize = 1 << 16;
/// Largest epoch count a run accepts.
pub const MAX_EPOCHS: usize = 100_000;
/// An experiment: the network, the data set and every training setting
/// ([`TrainConfig::to_meta`] records them).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The network's architecture.
    pub arch: Arch,
    /// The data set trained and tested on.
    pub dataset: DatasetKind,
    /// Epochs to train (the schedule spans them all).
    pub epochs: usize,
    /// Images per training step.
    pub batch: usize,
    /// The base learning rate the schedule scales (its peak for one-cycle).
    pub lr: f32,
    /// SGD (momentum, Nesterov) or Adam, with its settings.
    pub optimizer: OptimizerKind,
    /// Weight decay, and the quantizer bounds' learning-rate scale and decay.
    pub groups: Groups,
    /// The learning-rate schedule, evaluated per step.
    pub schedule: Schedule,
    /// Label smoothing of the training loss, in [0, 1).
    pub label_smoothing: f32,
    /// Seeds the initial weights, the image order, the augmentation and the CIM draws.
    pub seed: u64,
    /// Train on the first N training images only.
    pub train_subset: Option<usize>,
    /// Standard CIFAR augmentation of the training images (4-pixel padding, random
    /// crop, flip).
    pub augment: bool,
    /// Layers on the macro (None: FP32 training).
    pub cim: Option<CimTraining>,
    /// Start from this checkpoint's weights (e.g. the FP32 model before QAT).
    pub init: Option<String>,
}

impl TrainConfig {
    /// The defaults used for the FP32 baselines: SGD + Nesterov momentum 0.9, weight
    /// decay 5e-4, one-cycle schedule with peak lr 0.1, batch 128, standard augmentation.
    pub fn new(arch: Arch, dataset: DatasetKind, epochs: usize, seed: u64) -> Self {
        TrainConfig {
            arch,
            dataset,
            epochs,
            batch: 128,
            lr: 0.1,
            optimizer: OptimizerKind::Sgd { momentum: 0.9, nesterov: true },
            groups: Groups::default(),
            schedule: Schedule::OneCycle { pct_start: 0.15, div: 10.0, final_div: 100.0 },
            label_smoothing: 0.0,
            seed,
            train_subset: None,
            augment: true,
            cim: None,
            init: None,
        }
    }

    /// The network this configuration trains: its architecture, the data set's class
    /// count, the CIM plan.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: self.arch,
            num_classes: self.dataset.num_classes(),
            cim: self.cim.as_ref().map(|c| c.plan.clone()),
        }
    }

    /// Every numeric setting finite and in range, each error naming its flag.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("--epochs must be at least 1"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(Error::invalid(format!(
                "--batch {}: must be 1 to {MAX_BATCH}",
                self.batch
            )));
        }
        if self.epochs > MAX_EPOCHS {
            return Err(Error::invalid(format!("--epochs {}: at most {MAX_EPOCHS}", self.epochs)));
        }
        // Every other number the optimizer reads: finite and of the right sign.
        for (flag, v) in [
            ("--weight-decay", self.groups.weight_decay),
            ("--bound-decay", self.groups.bound_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(format!("{flag} must be a number ≥ 0, got {v}")));
            }
        }
        if !(self.groups.bound_lr_scale.is_finite() && self.groups.bound_lr_scale >= 0.0) {
            return Err(Error::invalid(format!(
                "--bound-lr-scale must be a number ≥ 0 (0 freezes the bounds), got {}",
                self.groups.bound_lr_scale
            )));
        }
        self.schedule
            .validate()
            .map_err(|m| Error::invalid(format!("--schedule {}: {m}", self.schedule.describe())))?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(format!("--lr must be a positive number, got {}", self.lr)));
        }
        if self.train_subset == Some(0) {
            return Err(Error::invalid("--train-subset must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid("--label-smoothing must be in [0, 1)"));
        }
        Ok(())
    }

    /// Key/value form, in a fixed order (stored in checkpoints).
    pub fn to_meta(&self) -> Vec<(String, String)> {
        let opt = match self.optimizer {
            OptimizerKind::Sgd { momentum, nesterov } => {
                format!("sgd momentum={momentum} nesterov={nesterov}")
            }
            OptimizerKind::Adam { beta1, beta2, eps } => {
                format!("adam beta1={beta1} beta2={beta2} eps={eps}")
            }
        };
        [
            ("model", self.arch.name().to_string()),
            ("dataset", self.dataset.name().to_string()),
            ("epochs", self.epochs.to_string()),
            ("batch", self.batch.to_string()),
            ("lr", self.lr.to_string()),
            ("optimizer", opt),
            ("weight_decay", self.groups.weight_decay.to_string()),
            ("bound_lr_scale", self.groups.bound_lr_scale.to_string()),
            ("bound_decay", self.groups.bound_decay.to_string()),
            ("schedule", self.schedule.describe()),
            ("label_smoothing", self.label_smoothing.to_string()),
            ("seed", self.seed.to_string()),
            ("train_subset", self.train_subset.map_or("all".into(), |n| n.to_string())),
            ("augment", self.augment.to_string()),
            ("init", self.init.clone().unwrap_or_else(|| "none".into())),
            (
                "cim",
                self.cim.as_ref().map_or("none".into(), |c| {
                    format!(
                        "macro={} error_model={} readout={:?} estimator={} act_quant={:?} {} chip={}",
                        c.macro_recorded(),
                        c.error_model.describe(),
                        c.readout,
                        c.estimator.describe(),
                        c.act_quant,
                        // Space-separated flags, as records written before named plans have them.
                        c.plan.describe().replace(',', " "),
                        c.chip.describe()
                    ) + match c.source {
                        // Omitted for the table, so records written before the key match.
                        ReadoutSource::Table => "",
                        ReadoutSource::SampleOnly => " source=sample-only",
                    }
                }),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chip_keeps_its_chip_the_population_draws_one_per_step() {
        let mut c = CimTraining {
            macro_name: "default".into(),
            error_model: "current-domain".into(),
            readout: ReadoutMode::Sampled,
            estimator: Estimator::Statistical { draws: 0 },
            act_quant: ActQuantKind::EPact,
            plan: CimPlan::default(),
            chip: ChipChoice::One(7),
            source: ReadoutSource::Table,
        };
        let rt = c.runtime(3).unwrap();
        assert_eq!(rt.chip.as_ref().unwrap().seed, 7);
        assert_eq!(c.runtime_at(&rt, 5).chip, rt.chip);
        c.chip = ChipChoice::Population;
        let rt = c.runtime(3).unwrap();
        let (a, b) = (c.runtime_at(&rt, 5).chip, c.runtime_at(&rt, 6).chip);
        assert!(a.is_some() && a != b && a == c.runtime_at(&rt, 5).chip);
        assert_eq!(ChipChoice::parse("population").unwrap(), ChipChoice::Population);
        assert_eq!(ChipChoice::parse("12").unwrap(), ChipChoice::One(12));
        assert!(ChipChoice::parse("chip-a").unwrap_err().to_string().contains("'chip-a'"));
    }
}
