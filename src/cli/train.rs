//! `dnat train`: train a network (FP32, QAT or D-NAT) and checkpoint it every epoch.

use crate::Result;
use crate::cim::{Estimator, ReadoutMode};
use crate::data::DatasetKind;
use crate::nn::{ActQuantKind, Arch};
use crate::optim::{OptimizerKind, Schedule};
use crate::train::json;
use crate::train::{ChipChoice, CimTraining, ReadoutSource};
use crate::train::{RunOptions, TrainConfig, train};
use std::path::PathBuf;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "train")]
/// Train a network (FP32) and write a checkpoint after every epoch.
pub struct TrainArgs {
    /// resnet20, resnet34, vgg8 or vgg16
    #[argh(option)]
    model: String,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// cifar10 (default) or cifar100
    #[argh(option, default = "String::from(\"cifar10\")")]
    dataset: String,
    /// number of epochs
    #[argh(option)]
    epochs: usize,
    /// seed of the run (initialisation, order, augmentation)
    #[argh(option, default = "0")]
    seed: u64,
    /// checkpoint file to write (atomically, after every epoch)
    #[argh(option)]
    out: PathBuf,
    /// train on the first N training images only
    #[argh(option)]
    train_subset: Option<usize>,
    /// batch size (default 128)
    #[argh(option, default = "128")]
    batch: usize,
    /// peak learning rate (default 0.1)
    #[argh(option, default = "0.1")]
    lr: f32,
    /// schedule: onecycle (default), cosine[:WARMUP_EPOCHS], step:E1,E2[:GAMMA], constant
    #[argh(option, default = "String::from(\"onecycle\")")]
    schedule: String,
    /// optimizer: sgd (Nesterov momentum 0.9, default) or adam
    #[argh(option, default = "String::from(\"sgd\")")]
    optimizer: String,
    /// L2 weight decay on conv/linear weights (default 5e-4)
    #[argh(option, default = "5e-4")]
    weight_decay: f32,
    /// label smoothing (default 0)
    #[argh(option, default = "0.0")]
    label_smoothing: f32,
    /// disable augmentation (random crop + flip)
    #[argh(switch)]
    no_augment: bool,
    /// start from this checkpoint's weights (e.g. the FP32 model, for QAT / D-NAT)
    #[argh(option)]
    init: Option<String>,
    /// put the CIM layers on the macro (QAT with --readout ideal; D-NAT with sampled)
    #[argh(switch)]
    cim: bool,
    /// macro: default, paper-chip, bit-serial, a description (rows=32,adc_bits=7,step=64,…) or a file of key = value lines (with --cim)
    #[argh(option, default = "String::from(\"default\")")]
    r#macro: String,
    /// error model: a preset (ideal, current-domain, charge-domain, mild, moderate, severe; KEY=VALUE overrides after a colon) or a D-MAC-EM file (with --cim)
    #[argh(option, default = "String::from(\"current-domain\")")]
    error_model: String,
    /// forward readout: sampled (default), expected or ideal (with --cim)
    #[argh(option, default = "String::from(\"sampled\")")]
    readout: String,
    /// backward estimator: stat (exact slope, default), stat:S (S draws) or ste
    #[argh(option, default = "String::from(\"stat\")")]
    estimator: String,
    /// activation quantizer: epact (learned lower and upper bounds, default) or pact
    #[argh(option, default = "String::from(\"epact\")")]
    act_quant: String,
    /// the chip the macro readouts go through (with --cim): a chip seed (default 0) or
    /// 'population' (a new chip instance of the error model's fixed pattern every step)
    #[argh(option, default = "String::from(\"0\")")]
    chip: String,
    /// readout source (with --cim): table (the error model, default) or sample-only (the
    /// same model exposing only sampling, as a chip behind a link: stat:S or ste)
    #[argh(option, default = "String::from(\"table\")")]
    readout_source: String,
    /// which layers go on the macro (with --cim): default (all but the first and the
    /// last layer), all, or comma-separated layer-name patterns (`*` matches any run of
    /// characters: "layer*.conv1,linear")
    #[argh(option, default = "String::from(\"default\")")]
    cim_layers: String,
    /// learning-rate multiplier of the quantizer bounds (default 1)
    #[argh(option, default = "1.0")]
    bound_lr_scale: f32,
    /// L2 decay on the quantizer bounds (default 0)
    #[argh(option, default = "0.0")]
    bound_decay: f32,
    /// continue from --out if it holds a checkpoint of this configuration
    #[argh(switch)]
    resume: bool,
    /// stop after this many epochs in total (resume later with --resume)
    #[argh(option)]
    stop_after: Option<usize>,
    /// stop after this many training steps in total, mid-epoch if need be (resume later
    /// with --resume)
    #[argh(option)]
    stop_after_steps: Option<u64>,
    /// also checkpoint within an epoch every this many minutes (default 10; 0: only at
    /// the end of each epoch), so a killed run loses at most that much work
    #[argh(option, default = "crate::train::trainer::CHECKPOINT_EVERY.as_secs_f64() / 60.0")]
    checkpoint_minutes: f64,
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

/// Runs `dnat train`.
pub fn run(a: TrainArgs) -> Result<()> {
    let kind = DatasetKind::parse(&a.dataset)?;
    let mut cfg = TrainConfig::new(Arch::parse(&a.model)?, kind, a.epochs, a.seed);
    cfg.batch = a.batch;
    cfg.lr = a.lr;
    cfg.schedule = Schedule::parse(&a.schedule)?;
    cfg.optimizer = match a.optimizer.as_str() {
        "sgd" => OptimizerKind::Sgd { momentum: 0.9, nesterov: true },
        "adam" => OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
        o => {
            return Err(crate::Error::invalid(format!("unknown optimizer '{o}' (sgd or adam)")));
        }
    };
    cfg.groups.weight_decay = a.weight_decay;
    cfg.label_smoothing = a.label_smoothing;
    cfg.train_subset = a.train_subset;
    cfg.augment = !a.no_augment;
    cfg.init = a.init.clone();
    cfg.groups.bound_lr_scale = a.bound_lr_scale;
    cfg.groups.bound_decay = a.bound_decay;
    if a.cim {
        cfg.cim = Some(CimTraining {
            macro_name: a.r#macro.clone(),
            error_model: a.error_model.clone().into(),
            readout: ReadoutMode::parse(&a.readout)?,
            estimator: Estimator::parse(&a.estimator)?,
            act_quant: ActQuantKind::parse(&a.act_quant)?,
            plan: super::cim_plan(&a.cim_layers)?,
            chip: ChipChoice::parse(&a.chip)?,
            source: ReadoutSource::parse(&a.readout_source)?,
        });
    }
    if !(a.checkpoint_minutes >= 0.0 && a.checkpoint_minutes <= 1e6) {
        return Err(crate::Error::invalid(format!(
            "--checkpoint-minutes {}: expected 0 (end of epoch only) to 1000000",
            a.checkpoint_minutes
        )));
    }
    let checkpoint_every = (a.checkpoint_minutes > 0.0)
        .then(|| std::time::Duration::from_secs_f64(a.checkpoint_minutes * 60.0));
    let opts = RunOptions {
        resume: a.resume,
        stop_after: a.stop_after,
        stop_after_steps: a.stop_after_steps,
        checkpoint_every,
        quiet: a.quiet,
    };
    crate::train::trainer::check_run(&cfg, &a.out, &opts)?;
    let data = super::load_data(a.data.as_deref(), kind, a.quiet)?;
    let o = train(&cfg, &data, &a.out, &opts)?;
    match o.stopped_at_step {
        Some(step) => println!(
            "{}: stopped at step {step} (within epoch {}), {:.1} train images/s, wall {:.1}s -> {} (resume with --resume)",
            cfg.arch.name(),
            o.checkpoint.epochs_done + 1,
            o.train_images_per_s,
            o.wall_s,
            a.out.display()
        ),
        None => println!(
            "{}: {} epochs, test accuracy {:.2}%, {:.1} train images/s, wall {:.1}s -> {}",
            cfg.arch.name(),
            o.checkpoint.epochs_done,
            o.test_accuracy,
            o.train_images_per_s,
            o.wall_s,
            a.out.display()
        ),
    }
    if !o.clipped.is_empty() {
        print!("{}", crate::cim::clip::report(&o.clipped));
    }
    if a.json {
        println!(
            "{}",
            json::object(vec![
                ("model", cfg.arch.name().into()),
                ("clipped", crate::cim::clip::json(&o.clipped)),
                ("epochs", (o.checkpoint.epochs_done as usize).into()),
                // No accuracy for an epoch cut short (null), only for finished ones.
                (
                    "accuracy",
                    if o.stopped_at_step.is_some() {
                        f64::NAN.into()
                    } else {
                        o.test_accuracy.into()
                    }
                ),
                ("steps", o.checkpoint.steps_done.into()),
                ("train_images_per_s", o.train_images_per_s.into()),
                ("wall_s", o.wall_s.into()),
                ("seed", cfg.seed.into()),
                ("data", data.provenance.description.clone().into()),
                ("data_sha256", data.provenance.sha256.clone().into()),
                ("checkpoint", a.out.display().to_string().into()),
            ])
        );
    }
    Ok(())
}
