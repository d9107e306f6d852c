//! `dnat eval`: test accuracy of a checkpoint, digital or on the macro (Monte-Carlo over
//! chips and read seeds).

use crate::Result;
use crate::cim::{ClipCounts, clip};
use crate::data::{DatasetKind, Normalize};
use crate::io::checkpoint::Checkpoint;
use crate::train::eval::{fmt_spread, json_spread};
use crate::train::{McPlan, evaluate, evaluate_mc, json};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "eval")]
/// Evaluate a checkpoint on the test split (accuracy in percent).
pub struct EvalArgs {
    /// checkpoint file (dnat format)
    #[argh(option)]
    checkpoint: PathBuf,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// run the CIM layers on the macro (the checkpoint must come from --cim training)
    #[argh(switch)]
    cim: bool,
    /// macro: default, paper-chip, bit-serial, a description (rows=32,adc_bits=7,step=64,…) or a file of key = value lines (with --cim)
    #[argh(option, default = "String::from(\"default\")")]
    r#macro: String,
    /// error model: a preset (ideal, current-domain, charge-domain, mild, moderate, severe; KEY=VALUE overrides after a colon) or a D-MAC-EM file (with --cim)
    #[argh(option, default = "String::from(\"current-domain\")")]
    error_model: String,
    /// readout: sampled (default), expected or ideal (with --cim)
    #[argh(option, default = "String::from(\"sampled\")")]
    readout: String,
    /// reads (noise seeds) per chip, Monte-Carlo (with --cim; default 1)
    #[argh(option, default = "1")]
    seeds: u64,
    /// first noise seed (default 1000)
    #[argh(option, default = "1000")]
    seed: u64,
    /// chip instances to evaluate on (with --cim; default 1): chips --chip-seed, +1, …
    #[argh(option, default = "1")]
    chips: u64,
    /// first chip seed (default 0): which fabricated chip of the error model's fixed pattern
    #[argh(option, default = "0")]
    chip_seed: u64,
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

/// Runs `dnat eval`: prints the accuracy (and JSON with `--json`).
pub fn run(a: EvalArgs) -> Result<()> {
    let (ck, net, mut store) = Checkpoint::load_network(&a.checkpoint)?;
    let kind = DatasetKind::of_checkpoint(ck.spec.num_classes, &a.checkpoint)?;
    // Each read is a pass over the test split: bounded, so a typo cannot run for days.
    if !(1..=1000).contains(&a.seeds)
        || !(1..=1000).contains(&a.chips)
        || a.seeds * a.chips > 10_000
    {
        return Err(crate::Error::invalid(format!(
            "--seeds {} and --chips {}: each 1 to 1000, at most 10000 reads in all",
            a.seeds, a.chips
        )));
    }
    let data = super::load_data(a.data.as_deref(), kind, a.quiet)?;
    if a.cim {
        if ck.spec.cim.is_none() {
            return Err(crate::Error::format(
                &a.checkpoint,
                "has no CIM layers (an FP32 model): train it with --cim first",
            ));
        }
        let mut rt = super::cim_runtime(
            &a.r#macro,
            &a.error_model,
            &a.readout,
            "ste",
            crate::train::ReadoutSource::Table,
        )?;
        rt.seed = a.seed;
        let clips = Arc::new(ClipCounts::default());
        rt.clips = Some(clips.clone());
        let t = std::time::Instant::now();
        let mc = evaluate_mc(
            net.as_ref(),
            &mut store,
            &data.test,
            Normalize::for_dataset(kind),
            &rt,
            McPlan { first_chip: a.chip_seed, chips: a.chips, reads: a.seeds },
        )?;
        if mc.chips_identical && !a.quiet {
            eprintln!(
                "note: error model '{}' has no fixed pattern, so the {} chips are one nominal chip: their spread is read noise",
                rt.readout.label(),
                a.chips
            );
        }
        let (mean, std, accs) = (mc.mean, mc.std, mc.all());
        let what = format!("{} | {} | {:?} readout", rt.spec.name, rt.readout.label(), rt.mode);
        println!(
            "{} on the macro ({what}): test accuracy {mean:.2}% ± {std:.2} over {} chip(s) × {} read(s): chip-to-chip σ {}, read-to-read σ {} ({:.0} s)",
            ck.spec.arch.name(),
            a.chips,
            a.seeds,
            fmt_spread(mc.chip_spread()),
            fmt_spread(mc.read_spread()),
            t.elapsed().as_secs_f64()
        );
        let clipped = clips.per_layer(&store.cim_layers());
        print!("{}", clip::report(&clipped));
        if a.json {
            println!(
                "{}",
                json::object(vec![
                    ("model", ck.spec.arch.name().into()),
                    ("accuracy", mean.into()),
                    ("accuracy_std", std.into()),
                    ("seeds", a.seeds.into()),
                    ("chips", a.chips.into()),
                    ("chip_std", json_spread(mc.chip_spread())),
                    ("read_std", json_spread(mc.read_spread())),
                    (
                        "per_seed",
                        accs.iter().map(|a| format!("{a:.2}")).collect::<Vec<_>>().join(" ").into()
                    ),
                    ("cim", what.into()),
                    ("clipped", clip::json(&clipped)),
                    ("data", data.provenance.description.clone().into()),
                ])
            );
        }
        return Ok(());
    }
    let t = std::time::Instant::now();
    let r = evaluate(net.as_ref(), &mut store, &data.test, Normalize::for_dataset(kind), None)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}: test accuracy {:.2}% ({} images, loss {:.4}, {:.0} images/s)",
        ck.spec.arch.name(),
        r.accuracy,
        r.images,
        r.loss,
        r.images as f64 / secs
    );
    if a.json {
        println!(
            "{}",
            json::object(vec![
                ("model", ck.spec.arch.name().into()),
                ("accuracy", r.accuracy.into()),
                ("loss", r.loss.into()),
                ("images", r.images.into()),
                ("eval_images_per_s", (r.images as f64 / secs).into()),
                ("data", data.provenance.description.clone().into()),
                ("data_sha256", data.provenance.sha256.clone().into()),
            ])
        );
    }
    Ok(())
}
