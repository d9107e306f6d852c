use crate::cim::MacroSpec;
use crate::data::{DatasetKind, Normalize};
use crate::io::checkpoint::{Checkpoint, restore_into};
use crate::io::deploy::{Body, DeployLayer, DeployModel, DeployOp};
use crate::nn::build;
use crate::{Error, Result};
use std::path::PathBuf;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "export")]
/// Write the deployable integer model of a CIM checkpoint: 4-bit weight codes per macro
/// tile, E-PACT bounds, scales, folded batchnorm (format: src/io/deploy.rs).
pub struct ExportArgs {
    /// checkpoint of a QAT or D-NAT run (trained with --cim)
    #[argh(option)]
    checkpoint: PathBuf,
    /// output file (written atomically)
    #[argh(option)]
    out: PathBuf,
    /// macro preset (default: the one the checkpoint was trained for)
    #[argh(option)]
    r#macro: Option<String>,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    if ck.spec.cim.is_none() {
        return Err(Error::format(
            &a.checkpoint,
            "has no CIM layers (an FP32 model): train it with --cim first",
        ));
    }
    // The training configuration names its macro: `cim = macro=NAME error_model=…`.
    let trained_for = ck
        .meta("cim")
        .and_then(|c| c.split_whitespace().find_map(|kv| kv.strip_prefix("macro=")))
        .map(String::from);
    let name = a.r#macro.clone().or(trained_for.clone()).unwrap_or_else(|| "default".into());
    let spec = MacroSpec::parse(&name)?;
    // Another macro may take the model only on the same quantization grid: exporting to
    // other weight or input bits would silently re-quantize what was trained.
    if let Some(t) = trained_for.as_deref().filter(|t| *t != name) {
        let trained = MacroSpec::parse(t)?;
        if (trained.weight_bits, trained.input_bits) != (spec.weight_bits, spec.input_bits) {
            return Err(Error::format(
                &a.checkpoint,
                format!(
                    "was trained for macro '{t}' ({}-bit weights, {}-bit inputs); '{name}' takes {}-bit weights and {}-bit inputs, so exporting would re-quantize it: train for '{name}' first",
                    trained.weight_bits, trained.input_bits, spec.weight_bits, spec.input_bits
                ),
            ));
        }
    }
    let kind = DatasetKind::of_checkpoint(ck.spec.num_classes, &a.checkpoint)?;
    let (net, mut store) = build(&ck.spec, 0)?;
    restore_into(&ck.store, &mut store, &a.checkpoint)?;
    let m = DeployModel::from_network(
        net.as_ref(),
        ck.spec.arch.name(),
        &mut store,
        &spec,
        Normalize::for_dataset(kind),
    )?;
    m.save(&a.out)?;
    let layers: Vec<&DeployLayer> = m
        .nodes
        .iter()
        .filter_map(|n| {
            if let DeployOp::Conv(l) | DeployOp::Linear(l) = &n.op { Some(l) } else { None }
        })
        .collect();
    let on_macro: Vec<_> = layers
        .iter()
        .filter_map(|l| {
            if let Body::Macro { tiles, .. } = l.body {
                Some(tiles as usize * l.cout as usize)
            } else {
                None
            }
        })
        .collect();
    println!(
        "{}: {} nodes, {} layers ({} on the macro, {} macro tile columns), macro {} -> {} ({} bytes)",
        m.arch,
        m.nodes.len(),
        layers.len(),
        on_macro.len(),
        on_macro.iter().sum::<usize>(),
        spec.describe(),
        a.out.display(),
        std::fs::metadata(&a.out).map(|md| md.len()).unwrap_or(0)
    );
    Ok(())
}
