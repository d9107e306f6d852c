//! End-to-end training properties on data the test builds itself: learning happens,
//! results are bit-identical at 1 and 2 threads, and an interrupted + resumed run ends
//! with the same bytes as an uninterrupted one.

use dnat::cim::{Estimator, ReadoutMode};
use dnat::data::{DatasetKind, synthetic};
use dnat::io::Checkpoint;
use dnat::nn::{ActQuantKind, Arch, CimPlan};
use dnat::train::{ChipChoice, CimTraining, ReadoutSource, RunOptions, TrainConfig, train};

mod common;
use common::{check_golden, tmpdir};

fn config(epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(Arch::ResNet20, DatasetKind::Cifar10, epochs, 11);
    c.batch = 32;
    c.lr = 0.05;
    c
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

#[test]
fn learns_and_is_identical_at_one_and_two_threads() {
    let dir = tmpdir("train-threads");
    let data = synthetic::dataset(640, 200, 3);
    let cfg = config(2);
    let (p1, p2) = (dir.join("t1.ckpt"), dir.join("t2.ckpt"));
    let o1 = in_pool(1, || train(&cfg, &data, &p1, &quiet()).unwrap());
    in_pool(2, || train(&cfg, &data, &p2, &quiet()).unwrap());
    assert!(o1.test_accuracy > 40.0, "the synthetic task should be learnt: {}%", o1.test_accuracy);
    assert_eq!(
        std::fs::read(&p1).unwrap(),
        std::fs::read(&p2).unwrap(),
        "checkpoints differ between 1 and 2 threads"
    );
}

#[test]
fn resumed_run_ends_with_the_same_bytes() {
    let dir = tmpdir("train-resume");
    let data = synthetic::dataset(320, 100, 4);
    let cfg = config(3);
    let (whole, parts) = (dir.join("whole.ckpt"), dir.join("parts.ckpt"));
    train(&cfg, &data, &whole, &quiet()).unwrap();
    let first = train(&cfg, &data, &parts, &RunOptions { stop_after: Some(1), ..quiet() }).unwrap();
    assert_eq!(first.checkpoint.epochs_done, 1);
    let rest = train(&cfg, &data, &parts, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(rest.checkpoint.epochs_done, 3);
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&parts).unwrap());
    let ck = Checkpoint::load(&parts).unwrap();
    assert_eq!(ck.history.len(), 3);
    // Until the last epoch the checkpoint holds the optimizer state; a finished run does
    // not (nothing is left to resume), and resuming it trains nothing and succeeds.
    assert!(first.checkpoint.optimizer.is_some() && ck.optimizer.is_none());
    let before = std::fs::read(&parts).unwrap();
    let done = train(&cfg, &data, &parts, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(
        (done.checkpoint.epochs_done, done.train_images_per_s, std::fs::read(&parts).unwrap()),
        (3, 0.0, before)
    );

    // A different configuration refuses to resume from it.
    let mut other = cfg.clone();
    other.lr = 0.2;
    let e = train(&other, &data, &parts, &RunOptions { resume: true, ..quiet() })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot resume") && e.contains("lr"), "{e}");
    // Other data (another sha256) refuses too, naming both.
    let other_data = synthetic::dataset(320, 100, 5);
    let e = train(&cfg, &other_data, &parts, &RunOptions { resume: true, ..quiet() })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("cannot resume")
            && e.contains("synthetic-seed-4")
            && e.contains("synthetic-seed-5"),
        "{e}"
    );
    // An unfinished run without optimizer state cannot resume; nor can a recalibrated model.
    let mut cut = Checkpoint::load(&parts).unwrap();
    (cut.epochs_done, cut.history) = (1, ck.history[..1].to_vec());
    cut.steps_done = first.checkpoint.steps_done;
    cut.save(&parts).unwrap();
    let e = train(&cfg, &data, &parts, &RunOptions { resume: true, ..quiet() })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot resume: no optimizer state saved"), "{e}");
    let mut recal = ck.clone();
    recal.meta.push(("bn_recalibrated".into(), "chip 0 of moderate".into()));
    recal.save(&parts).unwrap();
    let e = train(&cfg, &data, &parts, &RunOptions { resume: true, ..quiet() })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("cannot resume")
            && e.contains("recalibrated")
            && e.contains("chip 0 of moderate"),
        "{e}"
    );
}

/// A run cut off mid-epoch (twice), or checkpointing at every step, resumes to the same
/// bytes as the uninterrupted run: the epoch's image order, augmentation, draw keys and
/// running sums all continue where they stopped.
#[test]
fn a_run_cut_off_mid_epoch_resumes_to_the_same_bytes() {
    let dir = tmpdir("train-mid-epoch");
    let data = synthetic::dataset(320, 100, 4);
    let cfg = config(3); // 10 steps an epoch
    let (whole, parts) = (dir.join("mid-whole.ckpt"), dir.join("mid-parts.ckpt"));
    train(&cfg, &data, &whole, &quiet()).unwrap();
    let a =
        train(&cfg, &data, &parts, &RunOptions { stop_after_steps: Some(4), ..quiet() }).unwrap();
    assert_eq!((a.checkpoint.epochs_done, a.checkpoint.steps_done), (0, 4));
    assert!(Checkpoint::load(&parts).unwrap().meta("epoch_in_progress").is_some());
    let b = train(
        &cfg,
        &data,
        &parts,
        &RunOptions {
            resume: true,
            stop_after_steps: Some(17),
            checkpoint_every: Some(std::time::Duration::ZERO),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!((b.checkpoint.epochs_done, b.checkpoint.steps_done), (1, 17));
    // Asked to stop where it already is, a resumed run trains nothing.
    let before = std::fs::read(&parts).unwrap();
    let again = train(
        &cfg,
        &data,
        &parts,
        &RunOptions { resume: true, stop_after_steps: Some(17), ..quiet() },
    )
    .unwrap();
    assert_eq!((again.stopped_at_step, std::fs::read(&parts).unwrap()), (Some(17), before));
    train(&cfg, &data, &parts, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&parts).unwrap(),
        "resumed mid-epoch, the run ends differently"
    );
    // A stop at an epoch's last step is that epoch's own checkpoint.
    let at_end = dir.join("mid-at-end.ckpt");
    let c =
        train(&cfg, &data, &at_end, &RunOptions { stop_after_steps: Some(10), ..quiet() }).unwrap();
    let ck = Checkpoint::load(&at_end).unwrap();
    assert_eq!((c.checkpoint.epochs_done, ck.epochs_done, ck.history.len()), (1, 1, 1));
    assert!(ck.meta("epoch_in_progress").is_none());
}

fn cim(readout: ReadoutMode, estimator: Estimator, error_model: &str) -> CimTraining {
    CimTraining {
        macro_name: "default".into(),
        error_model: error_model.into(),
        readout,
        estimator,
        act_quant: ActQuantKind::EPact,
        plan: CimPlan::default(),
        chip: ChipChoice::One(0),
        source: ReadoutSource::Table,
    }
}

/// The D-NAT chain on synthetic data: FP32 → QAT on the ideal macro (from the FP32
/// weights, bounds calibrated) → D-NAT fine-tuning with sampled readouts and the
/// statistical estimator; each step learns, and the D-NAT step is bit-identical at 1
/// and 2 threads and across an interruption.
#[test]
fn fp32_then_qat_then_dnat() {
    let dir = tmpdir("train-chain");
    let data = synthetic::dataset(512, 200, 6);
    let fp32 = dir.join("chain-fp32.ckpt");
    let o = train(&config(2), &data, &fp32, &quiet()).unwrap();
    assert!(o.test_accuracy > 40.0, "FP32: {}", o.test_accuracy);

    let mut qat = config(1);
    qat.init = Some(fp32.to_str().unwrap().into());
    qat.lr = 0.02;
    qat.cim = Some(cim(ReadoutMode::Ideal, Estimator::Ste, "ideal"));
    let qat_out = dir.join("chain-qat.ckpt");
    let q = train(&qat, &data, &qat_out, &quiet()).unwrap();
    assert!(q.test_accuracy > 40.0, "QAT on the ideal macro: {}", q.test_accuracy);
    let ck = Checkpoint::load(&qat_out).unwrap();
    assert!(ck.spec.cim.is_some());
    let bound =
        ck.store.params().iter().find(|p| p.name == "layer1.0.conv2.act_hi").unwrap().value.data()
            [0];
    assert!(bound > 0.0 && bound != 1.0, "bounds were calibrated and trained: {bound}");

    let mut dnat_cfg = config(2);
    dnat_cfg.init = Some(qat_out.to_str().unwrap().into());
    dnat_cfg.lr = 0.01;
    dnat_cfg.cim = Some(cim(ReadoutMode::Sampled, Estimator::Statistical { draws: 0 }, "moderate"));
    let (a, b, c) =
        (dir.join("dnat-1.ckpt"), dir.join("dnat-2.ckpt"), dir.join("dnat-resumed.ckpt"));
    in_pool(1, || train(&dnat_cfg, &data, &a, &quiet()).unwrap());
    in_pool(2, || train(&dnat_cfg, &data, &b, &quiet()).unwrap());
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "D-NAT differs between 1 and 2 threads"
    );
    train(&dnat_cfg, &data, &c, &RunOptions { stop_after: Some(1), ..quiet() }).unwrap();
    let d = train(&dnat_cfg, &data, &c, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap(), "resumed D-NAT differs");
    assert!(d.test_accuracy > 30.0, "D-NAT on the moderate model: {}", d.test_accuracy);

    // Golden values: the whole chain is deterministic, so its results are pinned to the
    // bit. Re-bless (after an intended numeric change) with
    //   DNAT_BLESS=1 cargo test --release --test training fp32_then_qat_then_dnat
    let last = Checkpoint::load(&a).unwrap().history.last().cloned().unwrap();
    let got = [
        ("fp32_test_accuracy", format!("{}", o.test_accuracy)),
        ("qat_ideal_test_accuracy", format!("{}", q.test_accuracy)),
        ("dnat_test_accuracy", format!("{}", d.test_accuracy)),
        ("dnat_last_train_loss_bits", format!("{:#010x}", last.train_loss.to_bits())),
    ];
    check_golden(
        "dnat-synthetic.txt",
        "tests/training.rs::fp32_then_qat_then_dnat (synthetic data, seed 11)",
        "cargo test --release --test training fp32_then_qat_then_dnat",
        &got,
    );
}

/// VGG8 (the paper's chip-validated network) end to end on a few hundred synthetic
/// images: one FP32 epoch, then one D-NAT epoch from it on `current-domain` with the
/// paper's mapping (first conv and classifier output digital), pinned to the bit.
#[test]
fn vgg8_fp32_then_dnat_golden() {
    let dir = tmpdir("train-vgg8");
    let data = synthetic::dataset(256, 100, 8);
    let mut fp = TrainConfig::new(Arch::Vgg8, DatasetKind::Cifar10, 1, 3);
    (fp.batch, fp.lr) = (32, 0.005);
    let fp_out = dir.join("vgg8-fp32.ckpt");
    let f = train(&fp, &data, &fp_out, &quiet()).unwrap();
    let mut dn = fp.clone();
    dn.init = Some(fp_out.to_str().unwrap().into());
    dn.lr = 0.01;
    dn.cim = Some(cim(ReadoutMode::Sampled, Estimator::Statistical { draws: 0 }, "current-domain"));
    let dn_out = dir.join("vgg8-dnat.ckpt");
    let d = train(&dn, &data, &dn_out, &quiet()).unwrap();
    // Both learn (10 classes: chance is 10 %).
    assert!(
        f.test_accuracy > 20.0 && d.test_accuracy > 20.0,
        "FP32 {} %, D-NAT {} %",
        f.test_accuracy,
        d.test_accuracy
    );
    let ck = Checkpoint::load(&dn_out).unwrap();
    let on_macro: Vec<_> =
        ck.store.params().iter().filter_map(|p| p.name.strip_suffix(".act_hi")).collect();
    assert_eq!(
        on_macro,
        ["features.3", "features.7", "features.10", "features.14", "features.17", "classifier.0"]
    );
    let got = [
        ("fp32_test_accuracy", format!("{}", f.test_accuracy)),
        ("fp32_train_loss_bits", format!("{:#010x}", f.checkpoint.history[0].train_loss.to_bits())),
        ("dnat_test_accuracy", format!("{}", d.test_accuracy)),
        ("dnat_train_loss_bits", format!("{:#010x}", ck.history[0].train_loss.to_bits())),
    ];
    check_golden(
        "vgg8-synthetic.txt",
        "tests/training.rs::vgg8_fp32_then_dnat_golden (synthetic data, seed 3)",
        "cargo test --release --test training vgg8_fp32_then_dnat_golden",
        &got,
    );
}

/// The parameters and buffers of a checkpoint, bit for bit.
fn store_bits(ck: &Checkpoint) -> Vec<(String, Vec<u32>)> {
    let bits = |t: &dnat::engine::Tensor| t.data().iter().map(|v| v.to_bits()).collect();
    let params = ck.store.params().iter().map(|p| (p.name.clone(), bits(&p.value)));
    params.chain(ck.store.buffers().iter().map(|b| (b.name.clone(), bits(&b.value)))).collect()
}

/// Fine-tuning with a macro in the loop is training: through a simulated chip that draws
/// what the CIM layers draw (chip 1, noise seed = the run's seed), every step's forward
/// values and so its parameters are D-NAT training's, bit for bit; through the ideal
/// macro with STE, QAT's. Only the evaluations (through the backend, with the backend's
/// noise seed) and the recorded backend differ.
#[test]
fn training_through_a_backend_is_training_on_its_macro() {
    use dnat::cim::{MacroSpec, em::presets};
    use dnat::runtime::SimulatedMacro;
    use dnat::train::{MACRO_BACKEND, train_through};
    use std::sync::Arc;
    let dir = tmpdir("train-through");
    let data = synthetic::dataset(96, 40, 12);
    let spec = MacroSpec::default();
    let model: Arc<dyn dnat::cim::Readout> =
        Arc::new(presets::preset("current-domain", (spec.adc.kmin, spec.adc.kmax)).unwrap());
    for (readout, estimator, em) in [
        (ReadoutMode::Sampled, Estimator::Statistical { draws: 0 }, "current-domain"),
        (ReadoutMode::Ideal, Estimator::Ste, "ideal"),
    ] {
        let mut cfg = config(1);
        cfg.cim = Some(CimTraining { chip: ChipChoice::One(1), ..cim(readout, estimator, em) });
        let (on_macro, through) =
            (dir.join(format!("{em}.ckpt")), dir.join(format!("{em}-b.ckpt")));
        let a = train(&cfg, &data, &on_macro, &quiet()).unwrap();
        let mut backend = match readout {
            ReadoutMode::Ideal => SimulatedMacro::ideal(&spec),
            _ => SimulatedMacro::chip(&spec, model.clone(), 1, cfg.seed),
        };
        let b = train_through(&cfg, &data, &through, &quiet(), &mut backend).unwrap();
        let (ca, cb) = (Checkpoint::load(&on_macro).unwrap(), Checkpoint::load(&through).unwrap());
        assert_eq!(ca.steps_done, 3);
        assert!(store_bits(&ca) == store_bits(&cb), "{em}: parameters differ through the backend");
        let (ha, hb) = (&ca.history[0], &cb.history[0]);
        assert_eq!(ha.train_loss.to_bits(), hb.train_loss.to_bits(), "{em}: training loss");
        assert_eq!(
            cb.meta(MACRO_BACKEND),
            Some(dnat::runtime::MacroBackend::name(&backend).as_str())
        );
        assert!(ca.meta(MACRO_BACKEND).is_none());
        if readout == ReadoutMode::Ideal {
            // The ideal macro has no noise: the evaluation through it is the network's.
            assert_eq!(a.test_accuracy, b.test_accuracy);
        }
        // A run resumes through the backend it trained through only.
        let e = train(&cfg, &data, &through, &RunOptions { resume: true, ..quiet() })
            .err()
            .expect("resuming without the backend is refused");
        assert!(e.to_string().contains("cannot resume: trained through backend"), "{e}");
        if readout == ReadoutMode::Sampled {
            // The forward values are the backend's: other reads, other parameters.
            let mut other = SimulatedMacro::chip(&spec, model.clone(), 1, cfg.seed + 1);
            let c = dir.join("other-reads.ckpt");
            train_through(&cfg, &data, &c, &quiet(), &mut other).unwrap();
            let cc = Checkpoint::load(&c).unwrap();
            assert!(store_bits(&ca) != store_bits(&cc), "the backend's reads were not used");
        }
    }
}
