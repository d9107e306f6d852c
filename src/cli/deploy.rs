//! `dnat deploy`: a deployable model run with a macro backend doing its macro operations.

use crate::cim::{Estimator, MacroSpec, ReadoutMode};
use crate::data::{Augment, Batcher, DatasetKind};
use crate::io::checkpoint::Checkpoint;
use crate::io::deploy::{Body, DeployModel, DeployOp};
use crate::nn::ActQuantKind;
use crate::optim::Schedule;
use crate::runtime::{MacroBackend, Runtime, parse_backend};
use crate::train::eval::EVAL_BATCH;
use crate::train::json;
use crate::train::recalibrate::RecalImages;
use crate::train::{
    ChipChoice, CimTraining, ReadoutSource, RunOptions, TrainConfig, train_through,
};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "deploy")]
/// Run a deployable model (dnat export) with a macro backend doing its macro operations.
pub struct DeployArgs {
    #[argh(subcommand)]
    action: Action,
}

#[derive(argh::FromArgs)]
#[argh(subcommand)]
enum Action {
    Info(InfoArgs),
    Run(RunArgs),
    Eval(EvalArgs),
    Calibrate(CalibrateArgs),
    Finetune(FinetuneArgs),
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "info")]
/// The model's input, macro and layers, and what placing it on the macro takes.
struct InfoArgs {
    /// deployable model file (dnat export)
    #[argh(option)]
    model: PathBuf,
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "run")]
/// The logits of test images with the backend computing every macro operation, as CSV.
struct RunArgs {
    /// deployable model file (dnat export)
    #[argh(option)]
    model: PathBuf,
    /// backend: ideal, em:MODEL[,chip=S][,noise=N] (a simulated chip S of error model MODEL, noise seed N; defaults 0 and 1000) or exec:CMD (a macro host process: docs/protocol.md)
    #[argh(option, default = "String::from(\"ideal\")")]
    backend: String,
    /// seconds to wait for each reply of an exec: backend (default 60)
    #[argh(option, default = "60.0")]
    backend_timeout: f64,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// run the first N test images (default 10)
    #[argh(option, default = "10")]
    images: usize,
    /// CSV file to write (atomically): image, label, predicted class, logits (default: stdout)
    #[argh(option)]
    out: Option<PathBuf>,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "eval")]
/// Accuracy on the test split with the backend computing every macro operation.
struct EvalArgs {
    /// deployable model file (dnat export)
    #[argh(option)]
    model: PathBuf,
    /// backend: ideal, em:MODEL[,chip=S][,noise=N] (a simulated chip S of error model MODEL, noise seed N; defaults 0 and 1000) or exec:CMD (a macro host process: docs/protocol.md)
    #[argh(option, default = "String::from(\"ideal\")")]
    backend: String,
    /// seconds to wait for each reply of an exec: backend (default 60)
    #[argh(option, default = "60.0")]
    backend_timeout: f64,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// evaluate the first N test images only
    #[argh(option)]
    test_subset: Option<usize>,
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "calibrate")]
/// Re-estimate every batchnorm from training images read through the backend, as dnat calibrate does on the training side, and write the recalibrated deployable model.
struct CalibrateArgs {
    /// deployable model file (dnat export)
    #[argh(option)]
    model: PathBuf,
    /// backend: ideal, em:MODEL[,chip=S][,noise=N] (noise=0 reads what dnat calibrate --seed 0 reads) or exec:CMD (a macro host process: docs/protocol.md)
    #[argh(option)]
    backend: String,
    /// seconds to wait for each reply of an exec: backend (default 60)
    #[argh(option, default = "60.0")]
    backend_timeout: f64,
    /// where to write the recalibrated deployable model (atomically)
    #[argh(option)]
    out: PathBuf,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// training images to read (default 4096)
    #[argh(option, default = "4096")]
    images: usize,
    /// seed of the images' order and augmentation (default 0, as dnat calibrate's)
    #[argh(option, default = "0")]
    seed: u64,
    /// read the images without the training augmentation (crop, flip)
    #[argh(switch)]
    no_augment: bool,
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "finetune")]
/// Fine-tune a CIM checkpoint with the backend in the forward pass (the network's weight codes programmed every step) and the gradient from the error model's statistical estimator, or STE without one; write the checkpoint and its deployable model.
struct FinetuneArgs {
    /// the CIM checkpoint to fine-tune (the float weights the deployable model's codes are made from)
    #[argh(option)]
    checkpoint: PathBuf,
    /// backend: ideal, em:MODEL[,chip=S][,noise=N] or exec:CMD (a macro host process: docs/protocol.md)
    #[argh(option)]
    backend: String,
    /// seconds to wait for each reply of an exec: backend (default 60)
    #[argh(option, default = "60.0")]
    backend_timeout: f64,
    /// the macro's D-MAC-EM (a preset or a file, as dnat train --error-model) for the backward pass; without one, STE (physics-aware training)
    #[argh(option)]
    error_model: Option<String>,
    /// the chip of --error-model whose columns' gains the backward pass uses (default 0: a measured model's own chip)
    #[argh(option, default = "0")]
    chip: u64,
    /// backward estimator: stat (default with --error-model), stat:S or ste (default without)
    #[argh(option)]
    estimator: Option<String>,
    /// number of epochs
    #[argh(option)]
    epochs: usize,
    /// learning rate, decayed by a cosine (default 0.01)
    #[argh(option, default = "0.01")]
    lr: f32,
    /// batch size (default 128)
    #[argh(option, default = "128")]
    batch: usize,
    /// seed of the run (image order, augmentation; default 0)
    #[argh(option, default = "0")]
    seed: u64,
    /// train on the first N training images only
    #[argh(option)]
    train_subset: Option<usize>,
    /// the fine-tuned checkpoint to write (atomically, after every epoch)
    #[argh(option)]
    out: PathBuf,
    /// the fine-tuned deployable model to write (atomically, at the end)
    #[argh(option)]
    deploy_out: PathBuf,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// continue from --out if it holds a checkpoint of this run
    #[argh(switch)]
    resume: bool,
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

/// The model at `path`, the data set it classifies, and the backend `description`.
fn open(
    path: &Path,
    description: &str,
    timeout: f64,
) -> Result<(DeployModel, DatasetKind, Box<dyn MacroBackend>)> {
    let m = DeployModel::load(path)?;
    let kind = DatasetKind::for_classes(m.num_classes as usize).ok_or_else(|| {
        Error::format(
            path,
            format!("has {} classes: dnat's data sets have 10 or 100", m.num_classes),
        )
    })?;
    let backend = backend(description, &m.macro_spec, timeout)?;
    Ok((m, kind, backend))
}

/// The backend `description` for macro `spec`, each exec: reply awaited at most
/// `timeout` seconds (`--backend-timeout`, checked).
fn backend(description: &str, spec: &MacroSpec, timeout: f64) -> Result<Box<dyn MacroBackend>> {
    if !(timeout > 0.0 && timeout <= 1e6) {
        return Err(Error::invalid(format!(
            "--backend-timeout {timeout}: must be a number of seconds in (0, 10^6]"
        )));
    }
    parse_backend(description, spec, Duration::from_secs_f64(timeout))
}

/// Runs `dnat deploy info|run|eval|calibrate|finetune`.
pub fn run(a: DeployArgs) -> Result<()> {
    match a.action {
        Action::Info(i) => info(i),
        Action::Run(r) => run_images(r),
        Action::Eval(e) => eval(e),
        Action::Calibrate(c) => calibrate(c),
        Action::Finetune(f) => finetune(f),
    }
}

fn info(a: InfoArgs) -> Result<()> {
    let m = DeployModel::load(&a.model)?;
    let spec = &m.macro_spec;
    println!("{}: {} classes, input {:?}, {} nodes", m.arch, m.num_classes, m.input, m.nodes.len());
    println!("macro {}", spec.describe());
    let (mut blocks, mut layers) = (0usize, 0usize);
    for n in &m.nodes {
        if let DeployOp::Conv(l) | DeployOp::Linear(l) = &n.op {
            let place = match &l.body {
                Body::Macro { tiles, .. } => {
                    let b = *tiles as usize * (l.cout as usize).div_ceil(spec.columns);
                    layers += 1;
                    blocks += b;
                    format!("macro: {tiles} tiles × {} channels, {b} array programmings", l.cout)
                }
                Body::Digital { .. } => "digital".to_string(),
            };
            println!(
                "  {:<20} {}→{} k{} s{} p{}  {place}",
                l.name, l.cin, l.cout, l.kernel, l.stride, l.padding
            );
        }
    }
    println!(
        "{layers} layers on the macro: {blocks} array programmings per batch on {} arrays of {} rows × {} columns",
        spec.arrays, spec.rows, spec.columns
    );
    Ok(())
}

fn run_images(a: RunArgs) -> Result<()> {
    if let Some(out) = &a.out {
        crate::io::atomic::check_writable(out)?;
    }
    let (m, kind, mut backend) = open(&a.model, &a.backend, a.backend_timeout)?;
    let mut rt = Runtime::new(m.clone()).map_err(|e| Error::format(&a.model, e.to_string()))?;
    let data = super::load_data(a.data.as_deref(), kind, a.quiet)?;
    if a.images == 0 || a.images > data.test.len() {
        return Err(Error::invalid(format!(
            "--images {}: must be 1 to the test split's {} images",
            a.images,
            data.test.len()
        )));
    }
    let batcher = Batcher::new(&data.test, m.norm, None, 0);
    let classes = m.num_classes as usize;
    let mut csv = String::from("image,label,predicted");
    (0..classes).for_each(|c| csv.push_str(&format!(",logit{c}")));
    csv.push('\n');
    let idx: Vec<usize> = (0..a.images).collect();
    for (b, chunk) in idx.chunks(EVAL_BATCH).enumerate() {
        let (x, labels) = batcher.batch(chunk, 0);
        let logits = rt.run(backend.as_mut(), x.data(), b as u64)?;
        for ((i, label), l) in chunk.iter().zip(&labels).zip(logits.chunks(classes)) {
            let best = (0..classes).fold(0, |a, c| if l[c] > l[a] { c } else { a });
            csv.push_str(&format!("{i},{label},{best}"));
            l.iter().for_each(|v| csv.push_str(&format!(",{v}")));
            csv.push('\n');
        }
    }
    match &a.out {
        Some(out) => {
            crate::io::atomic::write(out, csv.as_bytes())?;
            let s = rt.stats;
            println!(
                "{} images through backend {} -> {} ({} macro operations, {} array programmings, {:.1} s)",
                s.images,
                backend.name(),
                out.display(),
                s.macro_ops,
                s.programmings,
                s.total_s
            );
        }
        None => print!("{csv}"),
    }
    Ok(())
}

fn calibrate(a: CalibrateArgs) -> Result<()> {
    crate::io::atomic::check_writable(&a.out)?;
    let (m, kind, mut backend) = open(&a.model, &a.backend, a.backend_timeout)?;
    let mut rt = Runtime::new(m.clone()).map_err(|e| Error::format(&a.model, e.to_string()))?;
    let data = super::load_data(a.data.as_deref(), kind, a.quiet)?;
    let set = RecalImages {
        split: &data.train,
        norm: m.norm,
        augment: (!a.no_augment).then(Augment::standard),
        count: a.images,
        seed: a.seed,
    };
    let (new, r) = rt.calibrate(backend.as_mut(), &set)?;
    new.save(&a.out)?;
    let s = rt.stats;
    println!(
        "recalibrated {} batchnorm layers on {} training images through backend {} in {:.1} s ({} macro operations, {} array programmings) -> {}",
        r.layers,
        r.images,
        backend.name(),
        s.total_s,
        s.macro_ops,
        s.programmings,
        a.out.display()
    );
    if a.json {
        println!(
            "{}",
            json::object(vec![
                ("layers", r.layers.into()),
                ("images", r.images.into()),
                ("seconds", s.total_s.into()),
                ("backend", backend.name().into()),
                ("model", a.out.display().to_string().into()),
            ])
        );
    }
    Ok(())
}

/// The fine-tuning run of `a`: the checkpoint's network, macro, activation quantizer
/// and mapping, trained from its weights with the backward pass of `a`.
fn finetune_config(a: &FinetuneArgs, ck: &Checkpoint) -> Result<TrainConfig> {
    let at = |e: Error| Error::format(&a.checkpoint, e.to_string());
    let plan = ck.spec.cim.clone().ok_or_else(|| {
        Error::format(&a.checkpoint, "has no CIM layers (an FP32 model): train it with --cim first")
    })?;
    let kind = DatasetKind::for_classes(ck.spec.num_classes).ok_or_else(|| {
        Error::format(&a.checkpoint, format!("has {} classes", ck.spec.num_classes))
    })?;
    let act_quant = match ck.cim_setting("act_quant") {
        Some(q) => ActQuantKind::parse(&q.to_lowercase()).map_err(at)?,
        None => ActQuantKind::EPact,
    };
    let (error_model, readout) = match &a.error_model {
        // The forward values are the backend's; the training side's readout only serves
        // the backward pass (the expected readout: no draws, the table's slopes).
        Some(m) => (m.clone(), ReadoutMode::Expected),
        None => ("ideal".to_string(), ReadoutMode::Ideal),
    };
    let estimator = match (&a.estimator, &a.error_model) {
        (Some(e), _) => Estimator::parse(e)?,
        (None, Some(_)) => Estimator::Statistical { draws: 0 },
        (None, None) => Estimator::Ste,
    };
    if a.error_model.is_none() && estimator != Estimator::Ste {
        return Err(Error::invalid(format!(
            "--estimator {}: the statistical estimator needs the macro's error model (--error-model)",
            estimator.describe()
        )));
    }
    let mut cfg = TrainConfig::new(ck.spec.arch, kind, a.epochs, a.seed);
    cfg.batch = a.batch;
    cfg.lr = a.lr;
    cfg.schedule = Schedule::Cosine { warmup_epochs: 0.0 };
    cfg.train_subset = a.train_subset;
    cfg.init = Some(a.checkpoint.display().to_string());
    cfg.cim = Some(CimTraining {
        macro_name: ck.cim_setting("macro").unwrap_or("default").into(),
        error_model: error_model.into(),
        readout,
        estimator,
        act_quant,
        plan,
        chip: ChipChoice::One(a.chip),
        source: ReadoutSource::Table,
    });
    Ok(cfg)
}

fn finetune(a: FinetuneArgs) -> Result<()> {
    crate::io::atomic::check_writable(&a.deploy_out)?;
    let ck = Checkpoint::load(&a.checkpoint)?;
    let cfg = finetune_config(&a, &ck)?;
    let opts = RunOptions {
        resume: a.resume,
        checkpoint_every: Some(crate::train::trainer::CHECKPOINT_EVERY),
        quiet: a.quiet,
        ..Default::default()
    };
    crate::train::trainer::check_run(&cfg, &a.out, &opts)?;
    let mut backend = backend(&a.backend, &ck.trained_macro()?, a.backend_timeout)?;
    let data = super::load_data(a.data.as_deref(), cfg.dataset, a.quiet)?;
    let o = train_through(&cfg, &data, &a.out, &opts, backend.as_mut())?;
    let model = DeployModel::from_checkpoint(&o.checkpoint, None)?;
    model.save(&a.deploy_out)?;
    println!(
        "{}: fine-tuned {} epochs through backend {}: test accuracy {:.2}% through it, {:.1} train images/s, wall {:.1}s -> {}, {}",
        cfg.arch.name(),
        o.checkpoint.epochs_done,
        backend.name(),
        o.test_accuracy,
        o.train_images_per_s,
        o.wall_s,
        a.out.display(),
        a.deploy_out.display()
    );
    if a.json {
        println!(
            "{}",
            json::object(vec![
                ("model", cfg.arch.name().into()),
                ("backend", backend.name().into()),
                ("epochs", (o.checkpoint.epochs_done as usize).into()),
                ("accuracy", o.test_accuracy.into()),
                ("train_images_per_s", o.train_images_per_s.into()),
                ("wall_s", o.wall_s.into()),
                ("checkpoint", a.out.display().to_string().into()),
                ("deploy_model", a.deploy_out.display().to_string().into()),
            ])
        );
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let (m, kind, mut backend) = open(&a.model, &a.backend, a.backend_timeout)?;
    let mut rt = Runtime::new(m.clone()).map_err(|e| Error::format(&a.model, e.to_string()))?;
    let mut data = super::load_data(a.data.as_deref(), kind, a.quiet)?;
    if let Some(n) = a.test_subset {
        if n == 0 || n > data.test.len() {
            return Err(Error::invalid(format!(
                "--test-subset {n}: must be 1 to the test split's {} images",
                data.test.len()
            )));
        }
        let bytes = n * crate::data::cifar::IMAGE_BYTES;
        data.test.images.truncate(bytes);
        data.test.labels.truncate(n);
    }
    let (ev, s) = rt.evaluate(backend.as_mut(), &data.test)?;
    let accuracy = ev.accuracy;
    println!(
        "{} through backend {}: test accuracy {accuracy:.2}% ({} images, {:.1} images/s; {} macro operations, {} array programmings; backend {:.0} % of {:.1} s)",
        m.arch,
        backend.name(),
        s.images,
        s.images as f64 / s.total_s,
        s.macro_ops,
        s.programmings,
        100.0 * s.backend_s / s.total_s,
        s.total_s
    );
    if a.json {
        println!(
            "{}",
            json::object(vec![
                ("model", m.arch.clone().into()),
                ("backend", backend.name().into()),
                ("accuracy", accuracy.into()),
                ("images", s.images.into()),
                ("images_per_s", (s.images as f64 / s.total_s).into()),
                ("macro_ops", s.macro_ops.into()),
                ("programmings", s.programmings.into()),
                ("backend_share", (s.backend_s / s.total_s).into()),
                ("data", data.provenance.description.clone().into()),
            ])
        );
    }
    Ok(())
}
