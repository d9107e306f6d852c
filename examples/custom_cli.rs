//! Every `dnat` subcommand for your own network: register its builder, then hand over to
//! the `dnat` command line. `cargo run --release --example custom_cli -- train --model
//! tiny-cnn --cim --epochs 1 --out tiny.ckpt`, then `eval`, `export`, `calibrate`, or a
//! pipeline config with `model = tiny-cnn` — as with `resnet20`.

use dnat::prelude::*;

/// conv-BN-ReLU, global average pool, linear.
struct TinyCnn {
    conv: Conv2d,
    bn: BatchNorm2d,
    stem: Conv2d,
    fc: Linear,
}

impl Network for TinyCnn {
    fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
        let h = self.stem.forward(cx, x)?;
        let h = cx.relu(h);
        let h = self.conv.forward(cx, h)?;
        let h = self.bn.forward_relu(cx, h)?;
        let h = cx.global_avg_pool(h)?;
        self.fc.forward(cx, h)
    }
}

fn tiny_cnn(store: &mut ParamStore, classes: usize) -> Box<dyn Network> {
    let stem = Conv2dConfig::new(3, 16, 3).bias(true).init(store, "stem");
    let conv = Conv2dConfig::new(16, 32, 3).stride(2).init(store, "conv");
    let bn = BatchNorm2d::new(store, "bn", 32);
    Box::new(TinyCnn { conv, bn, stem, fc: Linear::init(store, "fc", 32, classes) })
}

fn main() -> std::process::ExitCode {
    if let Err(e) = register("tiny-cnn", tiny_cnn) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    dnat::cli::main()
}
