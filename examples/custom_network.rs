//! Your network on your macro, as `convert_to_analog` is to a PyTorch user: a small CNN
//! written with dnat's layers, registered by name, its middle layers mapped onto a
//! 32-row macro with a 7-bit ADC, trained with D-NAT through an error model, evaluated
//! over chips and reads, saved, reloaded to the same bits, and exported. Run: `cargo run
//! --release --example custom_network` (tiny synthetic data; `cargo test` runs it).

use dnat::prelude::*;

/// Four conv-BN-ReLU-pool stages and a classifier.
struct SmallCnn {
    stages: Vec<(Conv2d, BatchNorm2d)>,
    fc: Linear,
}

impl Network for SmallCnn {
    fn forward(&self, cx: &mut Fwd, mut x: Var) -> Result<Var> {
        for (conv, bn) in &self.stages {
            let h = conv.forward(cx, x)?;
            let h = bn.forward_relu(cx, h)?;
            x = cx.max_pool2d(h, 2, 2)?;
        }
        let h = cx.flatten(x)?;
        self.fc.forward(cx, h)
    }
}

/// The layers, by name (`stage0` … `stage3`, `fc`): what the registry builds from.
fn small_cnn(store: &mut ParamStore, classes: usize) -> Box<dyn Network> {
    let widths = [3, 16, 32, 32, 64];
    let stages = (0..4)
        .map(|i| {
            (
                Conv2dConfig::new(widths[i], widths[i + 1], 3).init(store, &format!("stage{i}")),
                BatchNorm2d::new(store, &format!("bn{i}"), widths[i + 1]),
            )
        })
        .collect();
    Box::new(SmallCnn { stages, fc: Linear::init(store, "fc", 64 * 2 * 2, classes) })
}

fn main() -> Result<()> {
    let arch = register("small-cnn", small_cnn)?;
    let (data, norm) =
        (synthetic::dataset(256, 128, 7), Normalize::for_dataset(DatasetKind::Cifar10));
    let mut cfg = TrainConfig::new(arch, DatasetKind::Cifar10, 2, 0);
    (cfg.batch, cfg.lr) = (32, 0.05);
    // Stages 1-3 on the macro (stage0 sees raw pixels, fc makes the logits: digital).
    cfg.cim = Some(CimTraining {
        plan: CimPlan::named(["stage1", "stage2", "stage3"]),
        ..CimTraining::new("rows=32,adc_bits=7,step=64", "moderate")
    });
    let path = std::env::temp_dir().join(format!("small-cnn-{}.ckpt", std::process::id()));
    let out = train(&cfg, &data, &path, &RunOptions { quiet: true, ..Default::default() })?;
    let (rt, mut store) = (cfg.cim.as_ref().unwrap().runtime(1)?, out.checkpoint.store.clone());
    let mc = evaluate_mc(out.net.as_ref(), &mut store, &data.test, norm, &rt, 0, 2, 3)?;
    println!(
        "D-NAT, 2 chips x 3 reads: {:.2} ± {:.2} % (chip σ {:.2}, read σ {:.2})",
        mc.mean, mc.std, mc.chip_std, mc.read_std
    );

    // Reload the checkpoint by its architecture's name: the same accuracies, to the bit.
    let ck = Checkpoint::load(&path)?;
    let (net, mut again) = build(&ck.spec, 0)?;
    restore_into(&ck.store, &mut again, &path)?;
    assert_eq!(
        evaluate_mc(net.as_ref(), &mut again, &data.test, norm, &rt, 0, 2, 3)?.per_chip,
        mc.per_chip
    );
    // The deployable graph (pooling and flatten included): read back, it computes the same logits.
    let (export, model) = (
        path.with_extension("dnatdeploy"),
        DeployModel::from_network(net.as_ref(), ck.spec.arch.name(), &mut again, &rt.spec, norm)?,
    );
    model.save(&export)?;
    let image = Batcher::new(&data.test, norm, None, 0).batch(&[0], 0).0; // the first test image
    assert_eq!(DeployModel::load(&export)?.run(image.data())?, model.run(image.data())?);
    println!("{} nodes exported for {}", model.nodes.len(), rt.spec.to_description());
    [path, export].iter().try_for_each(|p| std::fs::remove_file(p).map_err(|e| Error::io(p, e)))
}
