//! The pipeline's configuration file: one `key = value` per line, `#` starts a comment,
//! unknown keys and malformed values are errors that name the file and line. Every key
//! has a default (below), so a config lists only what differs.
//!
//! ```text
//! # configs/repro-resnet20.conf
//! model = resnet20
//! error_model = moderate      # preset, preset with overrides, or a D-MAC-EM file
//! qat_epochs = 3
//! dnat_epochs = 3
//! ```

use crate::cim::{Estimator, MacroSpec, em};
use crate::data::DatasetKind;
use crate::nn::{ActQuantKind, Arch, CimPlan};
use crate::train::{ChipChoice, ReadoutSource};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Everything a pipeline run is set by; each field is the config key of the same name
/// unless noted (`model`, `macro`).
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// Names the experiment in the report.
    pub name: String,
    /// The network (`model`): resnet20, resnet34, vgg8, vgg16 or a registered name.
    pub arch: Arch,
    /// The data set: cifar10 or cifar100.
    pub dataset: DatasetKind,
    /// Seed of every training stage (initialisation, order, augmentation, draws).
    pub seed: u64,
    /// Stage (a): an FP32 checkpoint to start from; trained with `fp32_epochs` when the
    /// file does not exist.
    pub fp32_checkpoint: PathBuf,
    /// Epochs of the FP32 training, when stage (a) trains.
    pub fp32_epochs: usize,
    /// Peak learning rate of that FP32 training (one-cycle).
    pub fp32_lr: f32,
    /// The macro (`macro`): a preset name, a description or a file ([`MacroSpec::parse`]).
    pub macro_name: String,
    /// The non-ideal macro of stages (d)–(f): a preset, a preset with overrides
    /// (`moderate:offset=6`) or a D-MAC-EM file.
    pub error_model: String,
    /// The activation quantizer of the CIM layers: `epact` or `pact`.
    pub act_quant: ActQuantKind,
    /// Stage (b): a committed QAT checkpoint to start from (`none`: always train). It is
    /// used only when it exists and its recorded training configuration is the one
    /// stage (b) would run (same FP32 checkpoint, epochs, learning rate, seed, data);
    /// otherwise the run stops and says which setting differs.
    pub qat_checkpoint: Option<PathBuf>,
    /// Stage (b): W4A8 quantization-aware training on the ideal macro.
    pub qat_epochs: usize,
    /// Initial learning rate of stage (b) (cosine decay).
    pub qat_lr: f32,
    /// Stage (f): D-NAT fine-tuning with the error model in the loop.
    pub dnat_epochs: usize,
    /// Initial learning rate of NAT-STE and D-NAT (cosine decay).
    pub dnat_lr: f32,
    /// D-NAT's backward estimator (`stat`, `stat:S`; NAT-STE always uses `ste`).
    pub estimator: Estimator,
    /// Where every CIM stage's readouts come from: `table` (the error model) or
    /// `sample-only` (the same model exposing only sampling, as a chip behind a link;
    /// D-NAT then needs `estimator = stat:S`).
    pub readout_source: ReadoutSource,
    /// Which layers go on the macro in every CIM stage: `default` (all but the first
    /// and the last layer), `all`, or comma-separated layer-name patterns.
    pub cim_layers: CimPlan,
    /// Learning-rate multiplier of the quantizer bounds in (b), (e) and (f).
    pub bound_lr_scale: f32,
    /// Monte-Carlo reads (noise seeds) R per chip of every non-ideal evaluation.
    pub mc_seeds: u64,
    /// Chip instances C of every non-ideal evaluation (chip seeds 0..C).
    pub mc_chips: u64,
    /// Training images read through the macro to re-estimate batchnorm statistics (the
    /// BN-recalibration baseline, and D-NAT + BN recalibration).
    pub bnrecal_images: usize,
    /// Train the NAT-with-STE baseline (same epochs and chip as D-NAT).
    pub natste: bool,
    /// The chip D-NAT and NAT-STE train on: a chip seed (one chip, the paper's
    /// setting) or `population` (a new chip every step).
    pub dnat_chip: ChipChoice,
    /// Error models of the severity sweep (naive and D-NAT on each); empty: no sweep.
    pub sweep: Vec<String>,
    /// Epochs of each sweep D-NAT run (the main error model reuses stage (f)).
    pub sweep_dnat_epochs: usize,
    /// Train / test on the first N images only (short schedules, tests).
    pub train_subset: Option<usize>,
    /// Evaluate on the first N test images only (`all`: the whole split).
    pub test_subset: Option<usize>,
    /// Batch size of every training stage.
    pub batch: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "dnat-pipeline".into(),
            arch: Arch::ResNet20,
            dataset: DatasetKind::Cifar10,
            seed: 0,
            fp32_checkpoint: PathBuf::from("models/resnet20-fp32-e60-s0.ckpt"),
            fp32_epochs: 60,
            fp32_lr: 0.1,
            macro_name: "default".into(),
            error_model: "current-domain".into(),
            act_quant: ActQuantKind::EPact,
            qat_checkpoint: None,
            qat_epochs: 3,
            qat_lr: 0.01,
            dnat_epochs: 3,
            dnat_lr: 0.01,
            estimator: Estimator::Statistical { draws: 0 },
            readout_source: ReadoutSource::Table,
            cim_layers: CimPlan::default(),
            bound_lr_scale: 1.0,
            mc_seeds: 2,
            mc_chips: 3,
            bnrecal_images: 4096,
            natste: true,
            dnat_chip: ChipChoice::One(0),
            sweep: ["ideal", "charge-domain", "current-domain"].map(String::from).to_vec(),
            sweep_dnat_epochs: 1,
            train_subset: None,
            test_subset: None,
            batch: 128,
        }
    }
}

impl PipelineConfig {
    /// Reads a config file; relative paths in it are taken relative to the current
    /// directory (the repository root for the make targets).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &[])
    }

    /// Reads a config file, then applies `key=value` overrides (the command line's
    /// `--set`, for ablations of one setting).
    pub fn load_with(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let (mut c, mut lines) = Self::parse_lines(&text)
            .map_err(|(line, msg)| Error::format(path, format!("line {line}: {msg}")))?;
        let mut set_by_flag = std::collections::HashMap::new();
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| Error::invalid(format!("--set '{o}': expected key=value")))?;
            c.set(k.trim(), v.trim()).map_err(|m| Error::invalid(format!("--set '{o}': {m}")))?;
            lines.remove(k.trim());
            set_by_flag.insert(k.trim().to_string(), o.clone());
        }
        // A value that is wrong only with the others is reported where it was set.
        c.validate().map_err(|(k, m)| match (lines.get(k), set_by_flag.get(k)) {
            (Some(line), _) => Error::format(path, format!("line {line}: {m}")),
            (None, Some(o)) => Error::invalid(format!("--set '{o}': {m}")),
            (None, None) => Error::format(path, m),
        })?;
        Ok(c)
    }

    /// Parses the text of a config file; errors carry the 1-based line number (0 for a
    /// problem of a key the text does not set).
    pub fn parse(text: &str) -> std::result::Result<Self, (usize, String)> {
        let (c, lines) = Self::parse_lines(text)?;
        c.validate().map_err(|(k, m)| (lines.get(k).copied().unwrap_or(0), m))?;
        Ok(c)
    }

    /// The configuration and the line that set each key.
    fn parse_lines(
        text: &str,
    ) -> std::result::Result<(Self, std::collections::HashMap<String, usize>), (usize, String)>
    {
        let mut c = PipelineConfig::default();
        let mut lines = std::collections::HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |m: String| (i + 1, m);
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| err(format!("expected `key = value`, got '{line}'")))?;
            let (k, v) = (k.trim(), v.trim());
            if lines.insert(k.to_string(), i + 1).is_some() {
                return Err(err(format!("'{k}' is set twice")));
            }
            c.set(k, v).map_err(err)?;
        }
        Ok((c, lines))
    }

    fn set(&mut self, k: &str, v: &str) -> std::result::Result<(), String> {
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> std::result::Result<T, String> {
            v.parse().map_err(|_| format!("{k} = '{v}' is not a valid number"))
        }
        fn subset(k: &str, v: &str) -> std::result::Result<Option<usize>, String> {
            if v == "all" { Ok(None) } else { num(k, v).map(Some) }
        }
        fn e<T>(r: Result<T>) -> std::result::Result<T, String> {
            r.map_err(|e| e.to_string())
        }
        // Values are written into one-line records and reports (a newline would corrupt
        // them) and the name becomes a directory (`results/<name>`).
        if v.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("{k} = '{}' contains a control character", v.escape_debug()));
        }
        match k {
            "name" => {
                let ok = !v.is_empty()
                    && !v.starts_with('.')
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !ok {
                    return Err(format!(
                        "name = '{v}': use letters, digits, '.', '-', '_' (not starting with '.'); it names the results directory"
                    ));
                }
                self.name = v.to_string()
            }
            "model" => self.arch = e(Arch::parse(v))?,
            "dataset" => self.dataset = e(DatasetKind::parse(v))?,
            "seed" => self.seed = num(k, v)?,
            "fp32_checkpoint" => self.fp32_checkpoint = PathBuf::from(v),
            "fp32_epochs" => self.fp32_epochs = num(k, v)?,
            "fp32_lr" => self.fp32_lr = num(k, v)?,
            "macro" => self.macro_name = v.to_string(),
            "error_model" => self.error_model = v.to_string(),
            "act_quant" => self.act_quant = e(ActQuantKind::parse(v))?,
            "qat_checkpoint" => {
                self.qat_checkpoint = (!v.is_empty() && v != "none").then(|| PathBuf::from(v))
            }
            "qat_epochs" => self.qat_epochs = num(k, v)?,
            "qat_lr" => self.qat_lr = num(k, v)?,
            "dnat_epochs" => self.dnat_epochs = num(k, v)?,
            "dnat_lr" => self.dnat_lr = num(k, v)?,
            "estimator" => self.estimator = e(Estimator::parse(v))?,
            "readout_source" => self.readout_source = e(ReadoutSource::parse(v))?,
            "cim_layers" => self.cim_layers = e(CimPlan::from_words(v))?,
            "bound_lr_scale" => self.bound_lr_scale = num(k, v)?,
            "mc_seeds" => self.mc_seeds = num(k, v)?,
            "mc_chips" => self.mc_chips = num(k, v)?,
            "bnrecal_images" => self.bnrecal_images = num(k, v)?,
            "natste" => {
                self.natste =
                    v.parse().map_err(|_| format!("natste = '{v}': expected true or false"))?
            }
            "dnat_chip" => self.dnat_chip = e(ChipChoice::parse(v))?,
            "sweep" => {
                self.sweep =
                    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
            }
            "sweep_dnat_epochs" => self.sweep_dnat_epochs = num(k, v)?,
            "train_subset" => self.train_subset = subset(k, v)?,
            "test_subset" => self.test_subset = subset(k, v)?,
            "batch" => self.batch = num(k, v)?,
            _ => {
                return Err(format!("unknown key '{k}' (see src/pipeline/config.rs for the keys)"));
            }
        }
        Ok(())
    }

    /// Checks the values together; an error names the key it is about.
    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let positive = [
            ("qat_epochs", self.qat_epochs),
            ("dnat_epochs", self.dnat_epochs),
            ("fp32_epochs", self.fp32_epochs),
            ("batch", self.batch),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err((k, format!("{k} must be at least 1")));
        }
        for (k, v) in [("mc_seeds", self.mc_seeds), ("mc_chips", self.mc_chips)] {
            if !(1..=1000).contains(&v) {
                return Err((k, format!("{k} must be 1 to 1000")));
            }
        }
        if self.readout_source == ReadoutSource::SampleOnly
            && self.estimator == (Estimator::Statistical { draws: 0 })
        {
            return Err(("readout_source", "readout_source = sample-only has no table for the exact slope `stat`: use estimator = stat:S (or ste)".into()));
        }
        if self.bnrecal_images < 2 {
            return Err(("bnrecal_images", "bnrecal_images must be at least 2".into()));
        }
        // Named layers must be the network's (checked by building it: milliseconds for
        // ResNet20); first/last-layer plans hold on every network of three layers or more.
        if matches!(self.cim_layers, CimPlan::Named(_)) {
            let spec = crate::nn::ModelSpec {
                arch: self.arch,
                num_classes: self.dataset.num_classes(),
                cim: Some(self.cim_layers.clone()),
            };
            if let Err(e) = crate::nn::build(&spec, 0) {
                return Err(("cim_layers", e.to_string()));
            }
        }
        if !self.sweep.is_empty() && self.sweep_dnat_epochs == 0 {
            return Err(("sweep_dnat_epochs", "sweep_dnat_epochs must be at least 1".into()));
        }
        for (k, lr) in [
            ("fp32_lr", self.fp32_lr),
            ("qat_lr", self.qat_lr),
            ("dnat_lr", self.dnat_lr),
            ("bound_lr_scale", self.bound_lr_scale),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                return Err((k, format!("{k} must be a positive number")));
            }
        }
        for (k, v) in [("train_subset", self.train_subset), ("test_subset", self.test_subset)] {
            if v == Some(0) {
                return Err((k, format!("{k} must be at least 1 (or `all`)")));
            }
        }
        // Resolve the macro and every error model now, so a typo fails before hours of training.
        let spec = MacroSpec::parse(&self.macro_name).map_err(|e| ("macro", e.to_string()))?;
        spec.validate().map_err(|e| ("macro", e.to_string()))?;
        em::resolve(&self.error_model, &spec)
            .map_err(|e| ("error_model", format!("error model: {e}")))?;
        for m in &self.sweep {
            em::resolve(m, &spec).map_err(|e| ("sweep", format!("error model: {e}")))?;
        }
        Ok(())
    }

    /// Key/value form in a fixed order (written beside the results).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let opt = |o: Option<usize>| o.map_or("all".to_string(), |n| n.to_string());
        vec![
            ("name", self.name.clone()),
            ("model", self.arch.name().into()),
            ("dataset", self.dataset.name().into()),
            ("seed", self.seed.to_string()),
            ("fp32_checkpoint", self.fp32_checkpoint.display().to_string()),
            ("fp32_epochs", self.fp32_epochs.to_string()),
            ("fp32_lr", self.fp32_lr.to_string()),
            ("macro", self.macro_name.clone()),
            ("error_model", self.error_model.clone()),
            ("act_quant", self.act_quant.name().into()),
            (
                "qat_checkpoint",
                self.qat_checkpoint.as_ref().map_or("none".into(), |p| p.display().to_string()),
            ),
            ("qat_epochs", self.qat_epochs.to_string()),
            ("qat_lr", self.qat_lr.to_string()),
            ("dnat_epochs", self.dnat_epochs.to_string()),
            ("dnat_lr", self.dnat_lr.to_string()),
            ("estimator", self.estimator.describe()),
            ("readout_source", self.readout_source.name().into()),
            ("cim_layers", self.cim_layers.words()),
            ("bound_lr_scale", self.bound_lr_scale.to_string()),
            ("mc_seeds", self.mc_seeds.to_string()),
            ("mc_chips", self.mc_chips.to_string()),
            ("bnrecal_images", self.bnrecal_images.to_string()),
            ("natste", self.natste.to_string()),
            ("dnat_chip", self.dnat_chip.describe()),
            ("sweep", self.sweep.join(", ")),
            ("sweep_dnat_epochs", self.sweep_dnat_epochs.to_string()),
            ("train_subset", opt(self.train_subset)),
            ("test_subset", opt(self.test_subset)),
            ("batch", self.batch.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_comments_and_defaults() {
        let c = PipelineConfig::parse("# a comment\nmodel = vgg8  # trailing\nerror_model = severe:offset=3\nsweep = mild, severe\ntest_subset = 500\n").unwrap();
        assert_eq!(c.arch, Arch::Vgg8);
        assert_eq!(c.error_model, "severe:offset=3");
        assert_eq!(c.sweep, vec!["mild", "severe"]);
        assert_eq!(c.test_subset, Some(500));
        assert_eq!(c.qat_epochs, PipelineConfig::default().qat_epochs);
        // describe() round-trips through the parser.
        let text: String = c.describe().iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        assert_eq!(PipelineConfig::parse(&text).unwrap(), c);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_problem() {
        for (text, line, msg) in [
            ("model = resnet20\nqat_epochs three", 2, "expected `key = value`"),
            ("colour = red", 1, "unknown key 'colour'"),
            ("qat_lr = fast", 1, "not a valid number"),
            ("seed = 1\nseed = 2", 2, "set twice"),
            ("seed = 3\ndnat_epochs = 0", 2, "dnat_epochs must be at least 1"),
            ("name = x\nerror_model = no/such/file.dmem", 2, "error model"),
            ("sweep = mild, hot", 1, "error model 'hot' is neither a preset"),
            ("name = ../../escaped", 1, "results directory"),
            ("name = a/b", 1, "results directory"),
            ("model = lenet", 1, "lenet"),
        ] {
            let (l, m) = PipelineConfig::parse(text).unwrap_err();
            assert!(l == line && m.contains(msg), "{text:?}: line {l}: {m}");
        }
        let dir = std::env::temp_dir().join(format!("dnat-pcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.conf");
        std::fs::write(&p, "mc_seeds = -1\n").unwrap();
        let e = PipelineConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.conf") && e.contains("line 1"), "{e}");
        std::fs::write(&p, "mc_seeds = 3\n").unwrap();
        let c = PipelineConfig::load_with(&p, &["estimator=ste".into(), "mc_seeds = 2".into()])
            .unwrap();
        assert_eq!((c.estimator, c.mc_seeds), (Estimator::Ste, 2));
        std::fs::write(&p, "seed = 1\nqat_lr = -1\n").unwrap();
        let e = PipelineConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.conf")
                && e.contains("line 2")
                && e.contains("qat_lr must be a positive number"),
            "{e}"
        );
        std::fs::write(&p, "mc_seeds = 3\n").unwrap();
        for (o, msg) in [
            ("estimator", "expected key=value"),
            ("colour=red", "unknown key"),
            ("qat_epochs=0", "--set 'qat_epochs=0': qat_epochs must be at least 1"),
            ("mc_seeds=0", "--set 'mc_seeds=0': mc_seeds must be 1 to 1000"),
            ("name=a\nb", "control character"),
            ("readout_source=chip", "expected 'table' or 'sample-only'"),
            ("cim_layers=layer9.*", "no layer matches 'layer9.*'"),
            (
                "readout_source=sample-only",
                "--set 'readout_source=sample-only': readout_source = sample-only has no table",
            ),
        ] {
            let e = PipelineConfig::load_with(&p, &[o.into()]).unwrap_err().to_string();
            assert!(e.contains(msg), "{o}: {e}");
        }
        let c = PipelineConfig::load_with(
            &p,
            &["readout_source=sample-only".into(), "estimator=stat:4".into()],
        )
        .unwrap();
        assert_eq!(
            (c.readout_source, c.estimator),
            (ReadoutSource::SampleOnly, Estimator::Statistical { draws: 4 })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every committed configuration loads and checks out (VGG8's names the paper's
    /// mapping: the five inner convolutions only).
    #[test]
    fn the_committed_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "conf") {
                let c = PipelineConfig::load(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if c.arch == Arch::Vgg8 {
                    assert_eq!(
                        c.cim_layers.words(),
                        "features.3, features.7, features.10, features.14, features.17"
                    );
                }
                n += 1;
            }
        }
        assert!(n >= 3, "{n} configs in {}", dir.display());
    }
}
