//! `dnat calibrate`: batchnorm recalibration of a checkpoint through the (non-ideal) macro.

use crate::Result;
use crate::data::{Augment, DatasetKind, Normalize};
use crate::io::checkpoint::Checkpoint;
use crate::train::{RecalImages, json, recalibrate_bn};
use std::path::PathBuf;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "calibrate")]
/// Re-estimate every batchnorm's statistics through the (non-ideal) macro: the cheap
/// fix to try before any training. Weights and quantizer bounds are not touched.
pub struct CalibrateArgs {
    /// checkpoint to recalibrate (dnat format)
    #[argh(option)]
    checkpoint: PathBuf,
    /// where to write the recalibrated checkpoint (atomically)
    #[argh(option)]
    out: PathBuf,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// read the CIM layers through the macro (otherwise a digital forward)
    #[argh(switch)]
    cim: bool,
    /// macro: default, paper-chip, bit-serial, a description (rows=32,adc_bits=7,step=64,…) or a file of key = value lines (with --cim)
    #[argh(option, default = "String::from(\"default\")")]
    r#macro: String,
    /// error model: a preset (dnat em show --preset NAME) or a D-MAC-EM file (with --cim)
    #[argh(option, default = "String::from(\"current-domain\")")]
    error_model: String,
    /// the chip whose fixed pattern the readouts go through (with --cim; default 0)
    #[argh(option, default = "0")]
    chip_seed: u64,
    /// noise seed of the calibration reads (default 0; evaluations start at 1000)
    #[argh(option, default = "0")]
    seed: u64,
    /// read the images without the training augmentation (crop, flip)
    #[argh(switch)]
    no_augment: bool,
    /// training images to read (default 4096)
    #[argh(option, default = "4096")]
    images: usize,
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

/// Runs `dnat calibrate`: writes the recalibrated checkpoint to `--out`, its optimizer
/// state dropped (a different model, not a run to resume).
pub fn run(a: CalibrateArgs) -> Result<()> {
    // The output is written after the forward passes: check it can be, first.
    crate::io::atomic::check_writable(&a.out)?;
    let (mut ck, net, mut store) = Checkpoint::load_network(&a.checkpoint)?;
    let kind = DatasetKind::of_checkpoint(ck.spec.num_classes, &a.checkpoint)?;
    if a.cim && ck.spec.cim.is_none() {
        return Err(crate::Error::format(
            &a.checkpoint,
            "has no CIM layers (an FP32 model): --cim needs a model trained with --cim",
        ));
    }
    let data = super::load_data(a.data.as_deref(), kind, a.quiet)?;
    let rt = if a.cim {
        let mut rt = super::cim_runtime(
            &a.r#macro,
            &a.error_model,
            "sampled",
            "ste",
            crate::train::ReadoutSource::Table,
        )?
        .on_chip(a.chip_seed);
        rt.seed = a.seed;
        Some(rt)
    } else {
        None
    };
    let t = std::time::Instant::now();
    let set = RecalImages {
        split: &data.train,
        norm: Normalize::for_dataset(kind),
        augment: (!a.no_augment).then(Augment::standard),
        count: a.images,
        seed: a.seed,
    };
    let r = recalibrate_bn(net.as_ref(), &mut store, &set, rt.as_ref())?;
    let secs = t.elapsed().as_secs_f64();
    let on = rt.as_ref().map_or("digital forward".to_string(), |rt| {
        format!("{} | {} | chip {}", rt.spec.name, rt.readout.label(), a.chip_seed)
    });
    ck.store = store;
    // A different model now: not a training run to resume.
    ck.optimizer = None;
    ck.meta.push((
        crate::train::BN_RECALIBRATED.into(),
        format!("{on}; {} images; noise seed {}", r.images, a.seed),
    ));
    ck.save(&a.out)?;
    println!(
        "recalibrated {} batchnorm layers on {} images ({on}) in {secs:.1} s -> {}",
        r.layers,
        r.images,
        a.out.display()
    );
    if a.json {
        println!(
            "{}",
            json::object(vec![
                ("layers", r.layers.into()),
                ("images", r.images.into()),
                ("seconds", secs.into()),
                ("on", on.into()),
                ("checkpoint", a.out.display().to_string().into()),
            ])
        );
    }
    Ok(())
}
