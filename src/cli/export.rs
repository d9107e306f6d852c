//! `dnat export`: the deployable integer model of a CIM checkpoint.

use crate::cim::MacroSpec;
use crate::io::checkpoint::Checkpoint;
use crate::io::deploy::{Body, DeployLayer, DeployModel, DeployOp};
use crate::{Error, Result};
use std::path::PathBuf;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "export")]
/// Write the deployable integer model of a CIM checkpoint: 4-bit weight codes per macro
/// tile, E-PACT bounds, scales, batchnorms with their fold (format: src/io/deploy/mod.rs).
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

/// Runs `dnat export`: writes the deploy model to `--out` and prints a one-line summary.
pub fn run(a: ExportArgs) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let on = a.r#macro.as_deref().map(MacroSpec::parse).transpose()?;
    let m = DeployModel::from_checkpoint(&ck, on.as_ref())
        .map_err(|e| Error::format(&a.checkpoint, e.to_string()))?;
    let spec = &m.macro_spec;
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
