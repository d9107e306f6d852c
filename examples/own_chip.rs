//! Your chip, end to end: a measurement log → its D-MAC-EM → D-NAT training through it →
//! accuracy over chip instances and reads. Run: `cargo run --release --example own_chip
//! [-- chip.log]` (without a log, one is synthesised: a chip reading 0.9·k − 1 codes with
//! noise, 64 ADC columns of its own gain). `cargo test` runs it on tiny synthetic data.

use dnat::cim::em::{FillPolicy, ModelInfo, fit, format};
use dnat::cim::{Estimator, MacroSpec, ReadoutMode};
use dnat::data::{DatasetKind, Normalize, synthetic};
use dnat::io::checkpoint::restore_into;
use dnat::nn::{ActQuantKind, Arch, CimPlan, build};
use dnat::train::{
    ChipChoice, CimTraining, ReadoutSource, RunOptions, TrainConfig, evaluate_mc, train,
};
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
    let text = std::fs::read_to_string(&log_path).map_err(|e| dnat::Error::io(&log_path, e))?;
    let log = fit::parse_log(&text, &log_path, None)?;
    let info =
        ModelInfo { name: "my-chip".into(), description: "example log".into(), synthetic: true };
    let model =
        fit::fit(&log, (spec.adc.kmin, spec.adc.kmax), FillPolicy::Nearest, info, spec.adcs())?;
    print!("{}", fit::report(&model));
    println!(
        "per-column fit over {} ADC columns: {}",
        model.columns.len(),
        model.fixed_pattern.describe()
    );
    let model_path = dir.join("my-chip.txt");
    format::save(&model, &model_path)?;

    // 3. D-NAT through it: a W4A8 ResNet20 trained with the chip's readouts in the loop
    //    (a real run starts from a QAT checkpoint with `cfg.init` and the real data set).
    let data = synthetic::dataset(256, 128, 7);
    let mut cfg = TrainConfig::new(Arch::ResNet20, DatasetKind::Cifar10, 1, 0);
    (cfg.batch, cfg.lr) = (32, 0.02);
    cfg.cim = Some(CimTraining {
        macro_name: "default".into(),
        error_model: model_path.display().to_string(),
        readout: ReadoutMode::Sampled,
        estimator: Estimator::Statistical { draws: 0 },
        act_quant: ActQuantKind::EPact,
        plan: CimPlan::default(),
        chip: ChipChoice::One(0), // the measured chip (chip 0 of a per-column model)
        source: ReadoutSource::Table,
    });
    let ckpt = dir.join("dnat.ckpt");
    let outcome = train(&cfg, &data, &ckpt, &RunOptions { quiet: true, ..Default::default() })?;

    // 4. Accuracy on the measured chip and two more drawn from its fitted spread, 2 reads each.
    let (net, mut store) = build(&outcome.checkpoint.spec, 0)?;
    restore_into(&outcome.checkpoint.store, &mut store, &ckpt)?;
    let rt = cfg.cim.as_ref().unwrap().runtime(1)?;
    let mc = evaluate_mc(
        net.as_ref(),
        &mut store,
        &data.test,
        Normalize::for_dataset(DatasetKind::Cifar10),
        &rt,
        0,
        3,
        2,
    )?;
    // (One epoch from scratch on 256 synthetic images: the numbers show the flow only.)
    println!(
        "D-NAT through {}: {:.2} ± {:.2} % (chip σ {:.2}, read σ {:.2})",
        model_path.display(),
        mc.mean,
        mc.std,
        mc.chip_std,
        mc.read_std
    );
    Ok(())
}
