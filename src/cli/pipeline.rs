//! `dnat pipeline`: run or resume the D-NAT pipeline of a config file, then its report.

use crate::Result;
use crate::pipeline::{self, PipelineConfig, report};
use std::path::PathBuf;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "pipeline")]
/// Run (or resume) the D-NAT pipeline of a config file: FP32 → QAT (ideal macro) →
/// naive on the non-ideal macro → D-NAT → evaluation, then the report.
pub struct PipelineArgs {
    /// pipeline config file (see configs/ and src/pipeline/config.rs)
    #[argh(option)]
    config: PathBuf,
    /// output directory (default results/NAME, NAME the config's name); work is kept in OUT/work
    #[argh(option)]
    out: Option<PathBuf>,
    /// override a config key, e.g. --set estimator=ste (repeatable; for ablations)
    #[argh(option)]
    set: Vec<String>,
    /// data set archive or folder (default: $DNAT_DATA, ../shared/datasets, datasets/)
    #[argh(option)]
    data: Option<PathBuf>,
    /// print summary.json's content as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

/// Runs `dnat pipeline`: the stages, then the report (default folder `results/NAME`).
pub fn run(a: PipelineArgs) -> Result<()> {
    let cfg = PipelineConfig::load_with(&a.config, &a.set)?;
    let out = a.out.unwrap_or_else(|| PathBuf::from("results").join(&cfg.name));
    let data = super::load_data(a.data.as_deref(), cfg.dataset, a.quiet)?;
    let s = pipeline::run(&cfg, &data, &out, a.quiet)?;
    report::write(&s, &out)?;
    println!("\n{}", report::table(&s));
    println!("{}\n", report::verdict(&s.main, s.quant_ideal));
    println!(
        "compute time {:.0} s; report, summary.json and pictures in {}",
        s.wall_s,
        out.display()
    );
    if a.json {
        println!("{}", report::summary_json(&s).replace('\n', ""));
    }
    Ok(())
}
