//! `dnat em`: fit a D-MAC-EM error model from a measurement log, or show one.

use crate::cim::MacroSpec;
use crate::cim::em::{FillPolicy, ModelInfo, fit, format, heatmap};
use crate::io::atomic;
use crate::{Error, Result};
use std::path::PathBuf;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "em")]
/// D-MAC-EM error models: fit from measurement logs, show, convert.
pub struct EmArgs {
    #[argh(subcommand)]
    action: Action,
}

#[derive(argh::FromArgs)]
#[argh(subcommand)]
enum Action {
    Fit(FitArgs),
    Show(ShowArgs),
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "fit")]
/// Build an error model from a measurement log (lines of "ideal measured" ADC codes, or
/// "ideal measured column" for a per-column model).
struct FitArgs {
    /// the measurement log
    #[argh(positional)]
    log: PathBuf,
    /// model file to write (.txt/.tsv/.csv: counts table; otherwise binary)
    #[argh(option)]
    out: PathBuf,
    /// macro whose ADC codes the model covers: default, paper-chip, bit-serial, a description or a file
    #[argh(option, default = "String::from(\"default\")")]
    r#macro: String,
    /// policy for ideal codes never measured: nearest (default), identity, reject
    #[argh(option, default = "String::from(\"nearest\")")]
    fill: String,
    /// model name (default: the log's file stem)
    #[argh(option)]
    name: Option<String>,
    /// free-text description (chip, die, temperature, ...)
    #[argh(option, default = "String::new()")]
    description: String,
    /// the log holds readout values, not codes: divide by this ADC step and round
    #[argh(option)]
    values_step: Option<f64>,
    /// label the model synthetic (it was not measured on a chip)
    #[argh(switch)]
    synthetic: bool,
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "show")]
/// Summarise an error model (file or preset) and draw its heat-map (SVG).
struct ShowArgs {
    /// model file (counts table or binary)
    #[argh(positional)]
    file: Option<PathBuf>,
    /// a preset instead of a file: ideal, current-domain, charge-domain, mild, moderate, severe
    #[argh(option)]
    preset: Option<String>,
    /// macro whose ADC codes a preset covers (default: default)
    #[argh(option, default = "String::from(\"default\")")]
    r#macro: String,
    /// heat-map file to write (default: em-NAME.svg)
    #[argh(option)]
    svg: Option<PathBuf>,
    /// draw codes -K..=K only (default: the whole range)
    #[argh(option)]
    zoom: Option<i32>,
    /// also save the model to this file (.txt: counts table; otherwise binary)
    #[argh(option)]
    save: Option<PathBuf>,
}

/// Runs `dnat em fit` or `dnat em show`.
pub fn run(a: EmArgs) -> Result<()> {
    match a.action {
        Action::Fit(f) => {
            let spec = MacroSpec::parse(&f.r#macro)?;
            let log = fit::Log::read(&f.log, f.values_step)?;
            let name = f.name.unwrap_or_else(|| {
                f.log.file_stem().map_or("measured".into(), |s| s.to_string_lossy().into_owned())
            });
            let info = ModelInfo { name, description: f.description, synthetic: f.synthetic };
            let model = fit::fit(&log, &spec, info, FillPolicy::parse(&f.fill)?)
                .map_err(|e| Error::format(&f.log, e.to_string()))?;
            print!("{}", fit::report(&model));
            if !model.columns.is_empty() {
                println!(
                    "per-column fit over {} ADC columns: {}",
                    model.columns.len(),
                    model.fixed_pattern.describe()
                );
            }
            println!("{} readouts fitted -> {}", log.pairs.len(), f.out.display());
            format::save(&model, &f.out)
        }
        Action::Show(s) => {
            let model = match (&s.file, &s.preset) {
                (Some(p), None) => format::load(p)?,
                (None, Some(name)) => {
                    let spec = MacroSpec::parse(&s.r#macro)?;
                    crate::cim::em::presets::preset(name, (spec.adc.kmin, spec.adc.kmax))?
                }
                _ => {
                    return Err(Error::invalid(
                        "em show: give a model file or --preset NAME (one of them)",
                    ));
                }
            };
            print!("{}", fit::report(&model));
            let (k0, k1) = match s.zoom {
                Some(z) if z > 0 => ((-z).max(model.kmin), z.min(model.kmax)),
                Some(z) => return Err(Error::invalid(format!("--zoom must be ≥ 1, got {z}"))),
                None => (model.kmin, model.kmax),
            };
            let svg = s
                .svg
                .unwrap_or_else(|| PathBuf::from(format!("em-{}.svg", model.info.file_stem())));
            atomic::write(&svg, heatmap::svg(&model, k0, k1).as_bytes())?;
            println!("heat-map -> {}", svg.display());
            if let Some(p) = s.save {
                format::save(&model, &p)?;
                println!("model -> {}", p.display());
            }
            Ok(())
        }
    }
}
