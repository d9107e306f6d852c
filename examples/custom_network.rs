//! Your network on your macro, as `convert_to_analog` is to a PyTorch user: a small CNN
//! written with dnat's layers, registered by name, its middle layers mapped onto a
//! 32-row macro with a 7-bit ADC, trained with D-NAT through an error model, evaluated
//! over chips and reads, saved, reloaded to the same bits, and exported. Run: `cargo run
//! --release --example custom_network` (synthetic data; `cargo test` runs it).

use dnat::prelude::*;

/// Four conv-BN-ReLU-pool stages and a classifier.
struct SmallCnn(Vec<(Conv2d, BatchNorm2d)>, Linear);

impl Network for SmallCnn {
    fn forward(&self, cx: &mut Fwd, mut x: Var) -> Result<Var> {
        for (conv, bn) in &self.0 {
            let h = conv.forward(cx, x)?;
            let h = bn.forward_relu(cx, h)?;
            x = cx.max_pool2d(h, 2, 2)?;
        }
        let h = cx.flatten(x)?;
        self.1.forward(cx, h)
    }
}

/// The layers, by name (`stage0` … `stage3`, `fc`): what the registry builds from.
fn small_cnn(store: &mut ParamStore, classes: usize) -> Box<dyn Network> {
    let w = [3, 16, 32, 32, 64];
    let stages = (0..4)
        .map(|i| {
            let conv = Conv2dConfig::new(w[i], w[i + 1], 3).init(store, &format!("stage{i}"));
            (conv, BatchNorm2d::new(store, &format!("bn{i}"), w[i + 1]))
        })
        .collect();
    Box::new(SmallCnn(stages, Linear::init(store, "fc", 64 * 2 * 2, classes)))
}

fn main() -> Result<()> {
    let data = synthetic::dataset(2048, 500, 7);
    let norm = Normalize::for_dataset(DatasetKind::Cifar10);
    let arch = register("small-cnn", small_cnn)?;
    let mut cfg = TrainConfig::new(arch, DatasetKind::Cifar10, 3, 0);
    (cfg.batch, cfg.lr) = (64, 0.05);
    // Stages 1-3 on the macro (stage0 sees raw pixels, fc makes the logits: digital).
    let cim = CimTraining::new("rows=32,adc_bits=7,step=64", "moderate");
    cfg.cim = Some(cim.clone().on_layers(CimPlan::named(["stage1", "stage2", "stage3"])));
    let path = std::env::temp_dir().join(format!("small-cnn-{}.ckpt", std::process::id()));
    let out = train(&cfg, &data, &path, &RunOptions::quiet())?;

    // Two chips, three reads each (chance is 10 %).
    let (rt, plan) = (cim.runtime(1)?, McPlan::chips(2).reads(3));
    let (net, mut store) = out.checkpoint.network()?;
    let mc = evaluate_mc(net.as_ref(), &mut store, &data.test, norm, &rt, plan)?;
    let (m, s, c, r) = (mc.mean, mc.std, mc.chip_std, mc.read_std);
    println!("D-NAT, 2 chips x 3 reads: {m:.2} ± {s:.2} % (chip σ {c:.2}, read σ {r:.2})");

    // Reload the checkpoint by its architecture's name: the same accuracies, to the bit.
    let (net, mut again) = Checkpoint::load(&path)?.network()?;
    let reloaded = evaluate_mc(net.as_ref(), &mut again, &data.test, norm, &rt, plan)?;
    assert_eq!(reloaded.per_chip, mc.per_chip);

    // The deployable graph (pooling and flatten included): read back, the same logits.
    let export = path.with_extension("dnatdeploy");
    let model = DeployModel::from_checkpoint(&out.checkpoint, None)?;
    model.save(&export)?;
    let image = Batcher::new(&data.test, norm, None, 0).batch(&[0], 0).0; // the first test image
    assert_eq!(DeployModel::load(&export)?.run(image.data())?, model.run(image.data())?);
    println!("{} nodes exported for {}", model.nodes.len(), rt.spec.to_description());
    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    std::fs::remove_file(&export).map_err(|e| Error::io(&export, e))
}
