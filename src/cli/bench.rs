//! `dnat bench`: training-step and evaluation throughput and peak memory of a model.

use crate::Result;
use crate::nn::Arch;
use crate::train::bench;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "bench")]
/// Measure training-step and evaluation throughput (images/s) and peak memory.
pub struct BenchArgs {
    /// resnet20, resnet34, vgg8 or vgg16
    #[argh(option)]
    model: String,
    /// batch size (default 128)
    #[argh(option, default = "128")]
    batch: usize,
    /// timed steps (default 10; the median is reported)
    #[argh(option, default = "10")]
    steps: usize,
    /// untimed warm-up steps (default 2)
    #[argh(option, default = "2")]
    warmup: usize,
    /// classes of the output layer (default 10)
    #[argh(option, default = "10")]
    classes: usize,
    /// run the CIM layers on the macro (sampled readout, statistical estimator unless overridden)
    #[argh(switch)]
    cim: bool,
    #[argh(option, default = "String::from(\"default\")")]
    /// macro: default, paper-chip, bit-serial, a description (rows=32,adc_bits=7,step=64,…) or a file of key = value lines
    r#macro: String,
    /// error model: a preset (ideal, current-domain, charge-domain, mild, moderate, severe) or a D-MAC-EM file
    #[argh(option, default = "String::from(\"moderate\")")]
    error_model: String,
    /// forward readout: sampled (default), expected or ideal
    #[argh(option, default = "String::from(\"sampled\")")]
    readout: String,
    /// backward estimator: stat (exact slope, the default, as for train), stat:S (S draws) or ste
    #[argh(option, default = "String::from(\"stat\")")]
    estimator: String,
    /// readout source: table (the error model, default) or sample-only (sampling only, as a chip behind a link: stat:S or ste)
    #[argh(option, default = "String::from(\"table\")")]
    readout_source: String,
    /// which layers go on the macro (with --cim): default (all but the first and the
    /// last layer), all, or comma-separated layer-name patterns (as train's)
    #[argh(option, default = "String::from(\"default\")")]
    cim_layers: String,
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
}

/// Runs `dnat bench`: prints the result table (and JSON with `--json`).
pub fn run(a: BenchArgs) -> Result<()> {
    use crate::train::config::MAX_BATCH;
    if !(1..=MAX_BATCH).contains(&a.batch)
        || a.steps == 0
        || a.steps > 100_000
        || a.warmup > 100_000
    {
        return Err(crate::Error::invalid(format!(
            "--batch must be 1 to {MAX_BATCH}, --steps 1 to 100000 and --warmup at most 100000"
        )));
    }
    crate::nn::ModelSpec::fp32(Arch::parse(&a.model)?, a.classes)
        .validate()
        .map_err(|e| crate::Error::invalid(format!("--classes: {e}")))?;
    let rt = if a.cim {
        Some(super::cim_runtime(
            &a.r#macro,
            &a.error_model,
            &a.readout,
            &a.estimator,
            crate::train::ReadoutSource::parse(&a.readout_source)?,
        )?)
    } else {
        None
    };
    let plan = super::cim_plan(&a.cim_layers)?;
    if !a.cim && a.cim_layers != "default" {
        return Err(crate::Error::invalid("--cim-layers needs --cim"));
    }
    let r = bench::run(&bench::BenchConfig {
        arch: Arch::parse(&a.model)?,
        classes: a.classes,
        batch: a.batch,
        steps: a.steps,
        warmup: a.warmup,
        cim: rt.as_ref().map(|rt| (rt, &plan)),
    })?;
    println!("{}", r.table());
    if a.json {
        println!("{}", r.json());
    }
    Ok(())
}
