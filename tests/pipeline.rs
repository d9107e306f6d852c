//! The D-NAT pipeline end to end: on data the test builds itself (default suite,
//! golden values pinned to the bit), and a short repro schedule on the CIFAR-10
//! stand-in through the `dnat pipeline` command (skipped where the stand-in is absent).

mod common;
use common::*;
use dnat::data::synthetic;
use dnat::io::deploy::DeployOp;
use dnat::pipeline::{self, PipelineConfig, report};

/// All stages on synthetic data: FP32 trained by the pipeline (no checkpoint given),
/// QAT, then naive, BN recalibration, NAT-STE, D-NAT and D-NAT + BN recalibration on
/// three non-ideal macros (one with chip-to-chip fixed pattern), 2 chips × 2 reads. A second invocation finds every stage
/// done; losing a stage's record or checkpoint redoes exactly that work, with the same
/// result; a changed configuration is refused.
#[test]
fn synthetic_pipeline_resumes_and_matches_golden() {
    let d = tmpdir("pipeline");
    let text = format!(
        "name = synthetic\nerror_model = moderate\nfp32_checkpoint = {}\nfp32_epochs = 2\nqat_epochs = 1\nqat_lr = 0.02\ndnat_epochs = 1\nmc_seeds = 2\nmc_chips = 2\nbnrecal_images = 256\nsweep = ideal, mild, moderate, current-domain\nbatch = 32\nseed = 11\n",
        d.join("no-such-fp32.ckpt").display()
    );
    let cfg = PipelineConfig::parse(&text).unwrap();
    let data = synthetic::dataset(512, 200, 6);
    let out = d.join("out");
    let s = pipeline::run(&cfg, &data, &out, true).unwrap();
    report::write(&s, &out).unwrap();
    for f in
        ["summary.json", "report.md", "accuracy-per-epoch.svg", "severity.svg", "error-model.svg"]
    {
        assert!(out.join(f).is_file(), "{f} not written");
    }
    let json = std::fs::read_to_string(out.join("summary.json")).unwrap();
    for key in [
        "fp32",
        "quant_ideal",
        "naive_nonideal_mean",
        "naive_nonideal_std",
        "bnrecal_nonideal_mean",
        "bnrecal_nonideal_std",
        "natste_nonideal_mean",
        "natste_nonideal_std",
        "dnat_nonideal_mean",
        "dnat_nonideal_std",
        "dnat_nonideal_chip_std",
        "dnat_nonideal_read_std",
        "dnat_minus_bnrecal",
        "dnat_on_ideal_macro",
        "verdict",
        "wall_s",
        "data",
        "error_model",
    ] {
        assert!(json.contains(&format!("\"{key}\": ")), "summary.json lacks {key}");
    }
    assert_eq!(s.sweep.len(), 4);
    assert_eq!(
        (
            s.main.naive.chips(),
            s.main.naive.all().len(),
            s.history[0].1.len(),
            s.history[1].1.len()
        ),
        (2, 4, 1, 1)
    );
    // Chips of a model without fixed pattern are all the nominal chip; with it they differ.
    let cd = &s.sweep[3];
    assert_eq!(cd.error_model, "current-domain");
    assert!(
        cd.naive.chip_std > 0.0 && cd.naive.per_chip[0] != cd.naive.per_chip[1],
        "{:?}",
        cd.naive
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("What D-NAT adds")
            && report.contains("chip-to-chip σ")
            && report.contains("naive + BN recal."),
        "{report}"
    );
    assert!(s.fp32 > 40.0 && s.quant_ideal > 40.0, "{} {}", s.fp32, s.quant_ideal);

    // Everything is done: a second run trains and evaluates nothing and agrees.
    let again = pipeline::run(&cfg, &data, &out, true).unwrap();
    assert_eq!((again.main.clone(), again.sweep.clone()), (s.main.clone(), s.sweep.clone()));
    // Lose the D-NAT checkpoint and an evaluation record: the redone work gives the same bits.
    std::fs::remove_file(out.join("work/dnat.ckpt")).unwrap();
    std::fs::remove_file(out.join("work/dnat-moderate.rec")).unwrap();
    std::fs::remove_file(out.join("work/bnrecal-moderate-chip1.ckpt")).unwrap();
    std::fs::remove_file(out.join("work/bnrecal-moderate.rec")).unwrap();
    let redone = pipeline::run(&cfg, &data, &out, true).unwrap();
    assert_eq!((redone.main.clone(), redone.dnat_on_ideal), (s.main.clone(), s.dnat_on_ideal));
    // Work pinned before a config key existed counts as run with that key's default.
    let pin = out.join("work/inputs.rec");
    let pinned = std::fs::read_to_string(&pin).unwrap();
    std::fs::write(
        &pin,
        pinned
            .lines()
            .filter(|l| !l.starts_with("fp32_lr = "))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    assert_eq!(pipeline::run(&cfg, &data, &out, true).unwrap().main, s.main);
    // Another configuration in the same directory is refused, naming the difference.
    let other = PipelineConfig::parse(&text.replace("mc_seeds = 2", "mc_seeds = 3")).unwrap();
    let e = pipeline::run(&other, &data, &out, true).unwrap_err().to_string();
    assert!(e.contains("mc_seeds") && e.contains("another configuration"), "{e}");

    // A committed QAT model is used only when stage (b) of this configuration made it.
    let (fp32, qat) = (out.join("work/fp32.ckpt"), out.join("work/qat.ckpt"));
    let committed = text
        .replace(
            &format!("fp32_checkpoint = {}", d.join("no-such-fp32.ckpt").display()),
            &format!("fp32_checkpoint = {}", fp32.display()),
        )
        .replace("sweep = ideal, mild, moderate, current-domain", "sweep =")
        .replace("mc_seeds = 2\nmc_chips = 2", "mc_seeds = 1\nmc_chips = 1")
        + &format!("qat_checkpoint = {}\nnatste = false\n", qat.display());
    let wrong =
        PipelineConfig::parse(&committed.replace("qat_lr = 0.02", "qat_lr = 0.03")).unwrap();
    let e = pipeline::run(&wrong, &data, &d.join("wrong"), true).unwrap_err().to_string();
    assert!(e.contains("qat.ckpt") && e.contains("lr = 0.02") && e.contains("0.03"), "{e}");
    let reused =
        pipeline::run(&PipelineConfig::parse(&committed).unwrap(), &data, &d.join("reused"), true)
            .unwrap();
    assert_eq!(
        (reused.quant_ideal, reused.history[0].1.clone()),
        (s.quant_ideal, s.history[0].1.clone())
    );
    assert!(!d.join("reused/work/qat.ckpt").exists(), "QAT was retrained");
    // One chip read once: neither spread was measured, and the report and summary say so.
    report::write(&reused, &d.join("reused")).unwrap();
    let json = std::fs::read_to_string(d.join("reused/summary.json")).unwrap();
    assert!(
        json.contains("\"dnat_nonideal_chip_std\": null")
            && json.contains("\"dnat_nonideal_read_std\": null"),
        "{json}"
    );
    let md = std::fs::read_to_string(d.join("reused/report.md")).unwrap();
    assert!(md.lines().any(|l| l.starts_with("| D-NAT |") && l.contains("| — | — |")), "{md}");

    // The D-NAT model exports as a deployable integer model that reads back.
    let dep = out.join("resnet20.dnatdepl");
    let o = dnat(&[
        "export",
        "--checkpoint",
        out.join("work/dnat.ckpt").to_str().unwrap(),
        "--out",
        dep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = dnat::io::deploy::DeployModel::load(&dep).unwrap();
    let layers =
        m.nodes.iter().filter(|n| matches!(n.op, DeployOp::Conv(_) | DeployOp::Linear(_))).count();
    assert_eq!((m.arch.as_str(), layers, m.macro_spec.rows), ("resnet20", 20, 64));

    check_golden(
        "pipeline-synthetic.txt",
        "tests/pipeline.rs::synthetic_pipeline_resumes_and_matches_golden (synthetic data, seed 11)",
        "cargo test --release --test pipeline synthetic_pipeline",
        &[
            ("fp32", format!("{}", s.fp32)),
            ("quant_ideal", format!("{}", s.quant_ideal)),
            ("naive_moderate_per_chip", format!("{:?}", s.main.naive.per_chip)),
            ("bnrecal_moderate_per_chip", format!("{:?}", s.main.bnrecal.per_chip)),
            ("natste_moderate_per_chip", format!("{:?}", s.main.natste.as_ref().unwrap().per_chip)),
            ("dnat_moderate_per_chip", format!("{:?}", s.main.dnat.per_chip)),
            ("dnat_bnrecal_moderate_per_chip", format!("{:?}", s.main.dnat_bnrecal.per_chip)),
            ("dnat_on_ideal_macro", format!("{}", s.dnat_on_ideal)),
            ("naive_mild_per_chip", format!("{:?}", s.sweep[1].naive.per_chip)),
            ("dnat_mild_per_chip", format!("{:?}", s.sweep[1].dnat.per_chip)),
            ("naive_current_domain_per_chip", format!("{:?}", cd.naive.per_chip)),
            ("bnrecal_current_domain_per_chip", format!("{:?}", cd.bnrecal.per_chip)),
            ("dnat_current_domain_per_chip", format!("{:?}", cd.dnat.per_chip)),
            (
                "dnat_last_train_loss_bits",
                format!("{:#010x}", s.history[1].1[0].train_loss.to_bits()),
            ),
        ],
    );
}

/// A short repro schedule on the stand-in, through the command line: from the
/// committed FP32 ResNet20, one QAT and one D-NAT epoch on 4,096 training images,
/// evaluated on 2,000 test images, R = 2, on the affine `moderate` model. Pins its
/// accuracies and checks the shape of the result: the naive model collapses, and both
/// BN recalibration (no training) and D-NAT bring it back most of the way.
#[test]
fn stand_in_short_repro_matches_golden() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("short-repro");
    let conf = d.join("short.conf");
    let fp32 = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-fp32-s0.ckpt");
    std::fs::write(
        &conf,
        format!("name = short-repro\nerror_model = moderate\nfp32_checkpoint = {fp32}\nqat_epochs = 1\ndnat_epochs = 1\ntrain_subset = 4096\ntest_subset = 2000\nmc_seeds = 2\nmc_chips = 1\nnatste = false\nbnrecal_images = 1024\nsweep =\n"),
    )
    .unwrap();
    let out = d.join("out");
    let o = dnat(&[
        "pipeline",
        "--config",
        conf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o).lines().last().unwrap().to_string();
    let v = |k: &str| json_number(&line, k);
    assert!(
        stdout(&o).contains("| FP32 |") && stdout(&o).contains("+78.98"),
        "the table is printed beside the paper's recovery:\n{}",
        stdout(&o)
    );
    assert!(
        v("naive_nonideal_mean") < 40.0,
        "the naive model should collapse on the default error model: {line}"
    );
    assert!(
        v("dnat_nonideal_mean") > v("quant_ideal") - 5.0,
        "D-NAT should come back near the ideal bound: {line}"
    );
    assert!(
        v("bnrecal_nonideal_mean") > v("quant_ideal") - 5.0,
        "on an affine model BN recalibration alone should too: {line}"
    );
    let keys = [
        "fp32",
        "quant_ideal",
        "naive_nonideal_mean",
        "bnrecal_nonideal_mean",
        "dnat_nonideal_mean",
        "dnat_bnrecal_nonideal_mean",
    ];
    let got: Vec<(&str, String)> = keys.iter().map(|k| (*k, format!("{}", v(k)))).collect();
    check_golden(
        "repro-stand-in-short.txt",
        "tests/pipeline.rs::stand_in_short_repro_matches_golden (CIFAR-10 stand-in)",
        "cargo test --release --test pipeline stand_in_short_repro",
        &got,
    );
}
