//! `dnat weights`: export weights to, or import them from, PyTorch safetensors.

use crate::io::checkpoint::Checkpoint;
use crate::io::{atomic, safetensors};
use crate::nn::{Arch, ModelSpec};
use crate::{Error, Result};
use std::path::PathBuf;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "weights")]
/// Exchange weights with PyTorch through safetensors (state_dict names and layouts).
pub struct WeightsArgs {
    #[argh(subcommand)]
    action: Action,
}

#[derive(argh::FromArgs)]
#[argh(subcommand)]
enum Action {
    Export(ExportArgs),
    Import(ImportArgs),
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "export")]
/// Write a checkpoint's parameters and buffers as a safetensors file.
struct ExportArgs {
    /// checkpoint file (dnat format)
    #[argh(option)]
    checkpoint: PathBuf,
    /// safetensors file to write
    #[argh(option)]
    out: PathBuf,
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "import")]
/// Build a dnat checkpoint from a safetensors file (e.g. a PyTorch state_dict).
struct ImportArgs {
    /// safetensors file to read
    #[argh(option)]
    safetensors: PathBuf,
    /// architecture (needed when the file carries no dnat metadata)
    #[argh(option)]
    model: Option<String>,
    /// number of classes (default 10; with --model)
    #[argh(option, default = "10")]
    classes: usize,
    /// checkpoint file to write
    #[argh(option)]
    out: PathBuf,
}

/// Runs `dnat weights export` or `dnat weights import`.
pub fn run(a: WeightsArgs) -> Result<()> {
    match a.action {
        Action::Export(e) => {
            let (ck, _, store) = Checkpoint::load_network(&e.checkpoint)?;
            atomic::write(&e.out, &safetensors::export(&ck.spec, &store)?)?;
            println!(
                "wrote {} ({} parameters) -> {}",
                ck.spec.arch.name(),
                store.num_scalars(),
                e.out.display()
            );
        }
        Action::Import(i) => {
            let bytes =
                std::fs::read(&i.safetensors).map_err(|err| Error::io(&i.safetensors, err))?;
            let spec = match (&i.model, safetensors::spec_from_metadata(&bytes, &i.safetensors)?) {
                (Some(m), _) => {
                    let spec = ModelSpec::fp32(Arch::parse(m)?, i.classes);
                    spec.validate()
                        .map_err(|e| Error::invalid(format!("--classes {}: {e}", i.classes)))?;
                    spec
                }
                (None, Some(s)) => s,
                (None, None) => {
                    return Err(Error::format(
                        &i.safetensors,
                        "carries no dnat metadata: pass --model (and --classes)",
                    ));
                }
            };
            let store = safetensors::import(&bytes, &spec, &i.safetensors)?;
            let ck = Checkpoint {
                spec: spec.clone(),
                meta: vec![("imported_from".into(), "safetensors".into())],
                epochs_done: 0,
                steps_done: 0,
                store,
                optimizer: None,
                history: vec![],
            };
            ck.save(&i.out)?;
            println!(
                "imported {} from {} -> {}",
                spec.arch.name(),
                i.safetensors.display(),
                i.out.display()
            );
        }
    }
    Ok(())
}
