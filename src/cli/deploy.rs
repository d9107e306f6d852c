//! `dnat deploy`: a deployable model run with a macro backend doing its macro operations.

use crate::data::DatasetKind;
use crate::io::deploy::{Body, DeployModel, DeployOp};
use crate::runtime::{Runtime, parse_backend};
use crate::train::json;
use crate::{Error, Result};
use std::path::PathBuf;

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
    Eval(EvalArgs),
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
#[argh(subcommand, name = "eval")]
/// Accuracy on the test split with the backend computing every macro operation.
struct EvalArgs {
    /// deployable model file (dnat export)
    #[argh(option)]
    model: PathBuf,
    /// backend: ideal, or em:MODEL[,chip=S][,noise=N] (a simulated chip S of error model MODEL, noise seed N; defaults 0 and 1000)
    #[argh(option, default = "String::from(\"ideal\")")]
    backend: String,
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

/// Runs `dnat deploy info|eval`.
pub fn run(a: DeployArgs) -> Result<()> {
    match a.action {
        Action::Info(i) => info(i),
        Action::Eval(e) => eval(e),
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

fn eval(a: EvalArgs) -> Result<()> {
    let m = DeployModel::load(&a.model)?;
    let kind = DatasetKind::for_classes(m.num_classes as usize).ok_or_else(|| {
        Error::format(
            &a.model,
            format!("has {} classes: dnat's data sets have 10 or 100", m.num_classes),
        )
    })?;
    let mut backend = parse_backend(&a.backend, &m.macro_spec)?;
    let mut rt = Runtime::new(&m).map_err(|e| Error::format(&a.model, e.to_string()))?;
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
    let (accuracy, s) = rt.evaluate(backend.as_mut(), &data.test)?;
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
