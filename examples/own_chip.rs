//! Your chip, end to end: a measurement log → its D-MAC-EM → D-NAT training through it →
//! accuracy over chip instances and reads. Run: `cargo run --release --example own_chip
//! [-- chip.log]` (without a log, one is synthesised: a chip reading 0.9·k − 1 codes with
//! noise, 64 ADC columns of its own gain). `cargo test` runs it on tiny synthetic data.

use dnat::cim::em::format;
use dnat::prelude::*;
use std::path::Path;

fn main() -> dnat::Result<()> {
    let dir = std::env::temp_dir().join(format!("dnat-own-chip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| dnat::Error::io(&dir, e))?;
    let result = run(&dir);
    // The working files go, whether the run succeeded or not.
    let cleaned = std::fs::remove_dir_all(&dir).map_err(|e| dnat::Error::io(&dir, e));
    result.and(cleaned)
}

/// The four steps, with their files in `dir`.
fn run(dir: &Path) -> dnat::Result<()> {
    // 1. The log: lines of `ideal measured column` (a CSV header naming them works too).
    let log_path = std::env::args().nth(1).map(Into::into).unwrap_or_else(|| dir.join("chip.log"));
    if !log_path.exists() {
        let mut text = String::from("ideal,measured,column\n");
        for i in 0..20_000u64 {
            let (k, col) = ((dnat::rng::mix64(i) % 81) as i64 - 40, i % 64);
            let gain = 0.9 * (1.0 + 0.02 * ((col % 7) as f64 - 3.0));
            let noise = (dnat::rng::mix64(i ^ 0xA5) % 5) as f64 * 0.5 - 1.0;
            text += &format!("{k},{},{col}\n", (gain * k as f64 - 1.0 + noise).round());
        }
        std::fs::write(&log_path, text).map_err(|e| dnat::Error::io(&log_path, e))?;
    }

    // 2. Fit it for the macro it was measured on (here the default 64-row, 9-bit-ADC one).
    let spec = MacroSpec::parse("default")?;
    let log = fit::Log::read(&log_path, None)?;
    let info =
        ModelInfo { name: "my-chip".into(), description: "example log".into(), synthetic: true };
    let model = fit::fit(&log, &spec, info, FillPolicy::Nearest)?;
    print!("{}", fit::report(&model));
    println!(
        "per-column fit over {} ADC columns: {}",
        model.columns.len(),
        model.fixed_pattern.describe()
    );
    // Saved for `dnat em show` and the command line; training takes the model itself.
    let model_path = dir.join("my-chip.txt");
    format::save(&model, &model_path)?;
    let label = model.label();

    // 3. D-NAT through it: a W4A8 ResNet20 trained with the chip's readouts in the loop
    //    (a real run starts from a QAT checkpoint with `cfg.init` and the real data set).
    let data = synthetic::dataset(256, 128, 7);
    let mut cfg = TrainConfig::new(Arch::ResNet20, DatasetKind::Cifar10, 1, 0);
    (cfg.batch, cfg.lr) = (32, 0.02);
    // Sampled readouts, the statistical estimator, E-PACT, on chip 0 — the measured chip
    // of a per-column model (`CimTraining`'s fields say how to change each).
    cfg.cim = Some(CimTraining::new("default", model));
    let ckpt = dir.join("dnat.ckpt");
    let outcome = train(&cfg, &data, &ckpt, &RunOptions { quiet: true, ..Default::default() })?;

    // 4. Accuracy on the measured chip and two more drawn from its fitted spread, 2 reads each.
    let (net, mut store) = outcome.checkpoint.network()?;
    let rt = cfg.cim.as_ref().unwrap().runtime(1)?;
    let norm = Normalize::for_dataset(DatasetKind::Cifar10);
    let plan = McPlan { chips: 3, reads: 2, ..Default::default() };
    let mc = evaluate_mc(net.as_ref(), &mut store, &data.test, norm, &rt, plan)?;
    // (One epoch from scratch on 256 synthetic images: the numbers show the flow only.)
    println!(
        "D-NAT through {label}: {:.2} ± {:.2} % (chip σ {:.2}, read σ {:.2})",
        mc.mean, mc.std, mc.chip_std, mc.read_std
    );
    Ok(())
}
