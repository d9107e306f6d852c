use dnat::Result;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "weights")]
/// Exchange weights with PyTorch through safetensors (see `weights export|import`).
pub struct WeightsArgs {
    #[argh(positional)]
    action: String,
}

pub fn run(a: WeightsArgs) -> Result<()> {
    Err(dnat::Error::invalid(format!("weights {}: not built yet", a.action)))
}
