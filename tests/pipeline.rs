//! The D-NAT pipeline end to end: on data the test builds itself (default suite,
//! golden values pinned to the bit), and a short repro schedule on the CIFAR-10
//! stand-in through the `dnat pipeline` command (skipped where the stand-in is absent).

mod common;
use common::*;
use dnat::data::synthetic;
use dnat::pipeline::{self, report, PipelineConfig};

/// All stages on synthetic data: FP32 trained by the pipeline (no checkpoint given),
/// QAT, naive and D-NAT on two non-ideal macros. A second invocation finds every stage
/// done; losing a stage's record or checkpoint redoes exactly that work, with the same
/// result; a changed configuration is refused.
#[test]
fn synthetic_pipeline_resumes_and_matches_golden() {
    let d = tmpdir("pipeline");
    let text = format!(
        "name = synthetic\nfp32_checkpoint = {}\nfp32_epochs = 2\nqat_epochs = 1\nqat_lr = 0.02\ndnat_epochs = 1\nmc_seeds = 2\nsweep = ideal, mild, moderate\nbatch = 32\nseed = 11\n",
        d.join("no-such-fp32.ckpt").display()
    );
    let cfg = PipelineConfig::parse(&text).unwrap();
    let data = synthetic::dataset(512, 200, 6);
    let out = d.join("out");
    let s = pipeline::run(&cfg, &data, &out, true).unwrap();
    report::write(&s, &out).unwrap();
    for f in ["summary.json", "report.md", "accuracy-per-epoch.svg", "severity.svg", "error-model.svg"] {
        assert!(out.join(f).is_file(), "{f} not written");
    }
    let json = std::fs::read_to_string(out.join("summary.json")).unwrap();
    for key in ["fp32", "quant_ideal", "naive_nonideal_mean", "naive_nonideal_std", "dnat_nonideal_mean", "dnat_nonideal_std", "dnat_on_ideal_macro", "wall_s", "data", "error_model"] {
        assert!(json.contains(&format!("\"{key}\": ")), "summary.json lacks {key}");
    }
    assert_eq!(s.sweep.len(), 3);
    assert_eq!((s.naive.per_seed.len(), s.history[0].1.len(), s.history[1].1.len()), (2, 1, 1));
    assert!(s.fp32 > 40.0 && s.quant_ideal > 40.0, "{} {}", s.fp32, s.quant_ideal);

    // Everything is done: a second run trains and evaluates nothing and agrees.
    let again = pipeline::run(&cfg, &data, &out, true).unwrap();
    assert_eq!((again.naive.clone(), again.dnat.clone(), again.sweep.clone()), (s.naive.clone(), s.dnat.clone(), s.sweep.clone()));
    // Lose the D-NAT checkpoint and an evaluation record: the redone work gives the same bits.
    std::fs::remove_file(out.join("work/dnat.ckpt")).unwrap();
    std::fs::remove_file(out.join("work/dnat-moderate.rec")).unwrap();
    let redone = pipeline::run(&cfg, &data, &out, true).unwrap();
    assert_eq!((redone.dnat.clone(), redone.dnat_on_ideal), (s.dnat.clone(), s.dnat_on_ideal));
    // Work pinned before a config key existed counts as run with that key's default.
    let pin = out.join("work/inputs.rec");
    let pinned = std::fs::read_to_string(&pin).unwrap();
    std::fs::write(&pin, pinned.lines().filter(|l| !l.starts_with("fp32_lr = ")).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    assert_eq!(pipeline::run(&cfg, &data, &out, true).unwrap().dnat, s.dnat);
    // Another configuration in the same directory is refused, naming the difference.
    let other = PipelineConfig::parse(&text.replace("mc_seeds = 2", "mc_seeds = 3")).unwrap();
    let e = pipeline::run(&other, &data, &out, true).unwrap_err().to_string();
    assert!(e.contains("mc_seeds") && e.contains("another configuration"), "{e}");

    // The D-NAT model exports as a deployable integer model that reads back.
    let dep = out.join("resnet20.dnatdepl");
    let o = dnat(&["export", "--checkpoint", out.join("work/dnat.ckpt").to_str().unwrap(), "--out", dep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = dnat::io::deploy::DeployModel::load(&dep).unwrap();
    assert_eq!((m.arch.as_str(), m.layers.len(), m.macro_spec.rows), ("resnet20", 20, 64));

    check_golden(
        "pipeline-synthetic.txt",
        "tests/pipeline.rs::synthetic_pipeline_resumes_and_matches_golden (synthetic data, seed 11)",
        "cargo test --release --test pipeline synthetic_pipeline",
        &[
            ("fp32", format!("{}", s.fp32)),
            ("quant_ideal", format!("{}", s.quant_ideal)),
            ("naive_moderate_per_seed", format!("{:?}", s.naive.per_seed)),
            ("dnat_moderate_per_seed", format!("{:?}", s.dnat.per_seed)),
            ("dnat_on_ideal_macro", format!("{}", s.dnat_on_ideal)),
            ("naive_mild_per_seed", format!("{:?}", s.sweep[1].naive.per_seed)),
            ("dnat_mild_per_seed", format!("{:?}", s.sweep[1].dnat.per_seed)),
            ("dnat_last_train_loss_bits", format!("{:#010x}", s.history[1].1[0].train_loss.to_bits())),
        ],
    );
}

/// A short repro schedule on the stand-in, through the command line: from the
/// committed FP32 ResNet20, one QAT and one D-NAT epoch on 4,096 training images,
/// evaluated on 2,000 test images, R = 2. Pins its accuracies and checks the shape of
/// the result: the naive model collapses on the default error model and D-NAT brings it
/// back most of the way.
#[test]
fn stand_in_short_repro_matches_golden() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("short-repro");
    let conf = d.join("short.conf");
    let fp32 = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-fp32-s0.ckpt");
    std::fs::write(
        &conf,
        format!("name = short-repro\nfp32_checkpoint = {fp32}\nqat_epochs = 1\ndnat_epochs = 1\ntrain_subset = 4096\ntest_subset = 2000\nmc_seeds = 2\nsweep =\n"),
    )
    .unwrap();
    let out = d.join("out");
    let o = dnat(&["pipeline", "--config", conf.to_str().unwrap(), "--out", out.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o).lines().last().unwrap().to_string();
    let v = |k: &str| json_number(&line, k);
    assert!(stdout(&o).contains("| FP32 |") && stdout(&o).contains("+78.98"), "the table is printed beside the paper's recovery:\n{}", stdout(&o));
    assert!(v("naive_nonideal_mean") < 40.0, "the naive model should collapse on the default error model: {line}");
    assert!(v("dnat_nonideal_mean") > v("quant_ideal") - 5.0, "D-NAT should come back near the ideal bound: {line}");
    let keys = ["fp32", "quant_ideal", "naive_nonideal_mean", "dnat_nonideal_mean"];
    let got: Vec<(&str, String)> = keys.iter().map(|k| (*k, format!("{}", v(k)))).collect();
    check_golden(
        "repro-stand-in-short.txt",
        "tests/pipeline.rs::stand_in_short_repro_matches_golden (CIFAR-10 stand-in)",
        "cargo test --release --test pipeline stand_in_short_repro",
        &got,
    );
}
