use dnat::data::{DatasetKind, Normalize};
use dnat::io::checkpoint::{restore_into, Checkpoint};
use dnat::nn::build;
use dnat::train::{evaluate, json};
use dnat::Result;
use std::path::PathBuf;

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
    /// print one JSON object as the last line of stdout
    #[argh(switch)]
    json: bool,
    /// no progress output
    #[argh(switch)]
    quiet: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let kind = match ck.spec.num_classes {
        100 => DatasetKind::Cifar100,
        _ => DatasetKind::Cifar10,
    };
    let (net, mut store) = build(ck.spec, 0);
    restore_into(&ck.store, &mut store, &a.checkpoint)?;
    let data = super::load_data(a.data.as_deref(), kind, a.quiet)?;
    let t = std::time::Instant::now();
    let r = evaluate(net.as_ref(), &mut store, &data.test, Normalize::for_dataset(kind))?;
    let secs = t.elapsed().as_secs_f64();
    println!("{}: test accuracy {:.2}% ({} images, loss {:.4}, {:.0} images/s)", ck.spec.arch.name(), r.accuracy, r.images, r.loss, r.images as f64 / secs);
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
