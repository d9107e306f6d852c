//! Checks on the CIFAR-10 stand-in (../shared/datasets). Each test says SKIPPED and
//! passes where the stand-in is absent; CI has it.

mod common;
use common::*;

/// The committed FP32 ResNet20s evaluate to their golden accuracies, exactly:
/// evaluation is deterministic, so any change in the engine's numerics shows here.
#[test]
fn fp32_resnet20_golden_accuracy() {
    let Some(data) = stand_in() else { return };
    for (file, key) in [
        ("resnet20-fp32-s0.ckpt", "resnet20_fp32_s0_accuracy"),
        ("resnet20-fp32-e60-s0.ckpt", "resnet20_fp32_e60_s0_accuracy"),
    ] {
        let ckpt = format!("{}/models/{file}", env!("CARGO_MANIFEST_DIR"));
        let o = dnat(&[
            "eval",
            "--checkpoint",
            &ckpt,
            "--data",
            data.to_str().unwrap(),
            "--json",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let acc = json_number(stdout(&o).lines().last().unwrap(), "accuracy");
        let want: f64 = golden("fp32.txt", key).parse().unwrap();
        assert_eq!(acc, want, "accuracy of models/{file} changed");
    }
}

/// The committed FP32 VGG8 likewise (its own test: it takes about a minute and a half
/// on two cores, so it runs beside the others).
#[test]
fn fp32_vgg8_golden_accuracy() {
    let Some(data) = stand_in() else { return };
    let ckpt = format!("{}/models/vgg8-fp32-e6-s0.ckpt", env!("CARGO_MANIFEST_DIR"));
    let o = dnat(&[
        "eval",
        "--checkpoint",
        &ckpt,
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc = json_number(stdout(&o).lines().last().unwrap(), "accuracy");
    let want: f64 = golden("fp32.txt", "vgg8_fp32_e6_s0_accuracy").parse().unwrap();
    assert_eq!(acc, want, "accuracy of models/vgg8-fp32-e6-s0.ckpt changed");
}

/// The CLI reports which archive it read, and a short run gives the same checkpoint
/// bytes at 1 and 2 threads.
#[test]
fn short_cli_run_is_thread_count_independent() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("threads");
    let mut outs = Vec::new();
    for t in ["1", "2"] {
        let out = d.join(format!("t{t}.ckpt"));
        let o = dnat_env(
            &[
                "train",
                "--model",
                "resnet20",
                "--epochs",
                "1",
                "--train-subset",
                "512",
                "--batch",
                "64",
                "--seed",
                "5",
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[("RAYON_NUM_THREADS", t)],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("CIFAR-10 stand-in"),
            "the run must say which archive it read:\n{}",
            stderr(&o)
        );
        outs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outs[0], outs[1], "checkpoints differ between RAYON_NUM_THREADS=1 and 2");
}

/// The committed D-NAT model through the deploy runtime on a simulated chip scores what
/// the training side scores on that chip, both pinned: the runtime draws what the CIM
/// layers draw for every operation of the 10,000 test images.
#[test]
fn dnat_resnet20_through_the_deploy_runtime() {
    let Some(data) = stand_in() else { return };
    let data = data.to_str().unwrap();
    let ckpt =
        format!("{}/models/resnet20-dnat-current-domain-e2-s0.ckpt", env!("CARGO_MANIFEST_DIR"));
    let want: f64 =
        golden("deploy.txt", "resnet20_dnat_current_domain_chip1_accuracy").parse().unwrap();
    let accuracy = |args: &[&str]| {
        let o = dnat(args);
        assert!(o.status.success(), "{}", stderr(&o));
        json_number(stdout(&o).lines().last().unwrap(), "accuracy")
    };
    let trained = accuracy(&[
        "eval",
        "--checkpoint",
        &ckpt,
        "--cim",
        "--error-model",
        "current-domain",
        "--chip-seed",
        "1",
        "--data",
        data,
        "--json",
        "--quiet",
    ]);
    assert_eq!(trained, want, "dnat eval --cim of {ckpt} on chip 1 changed");
    let d = tmpdir("deploy-dnat");
    let model = d.join("dnat.dnatd");
    let o = dnat(&["export", "--checkpoint", &ckpt, "--out", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deployed = accuracy(&[
        "deploy",
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "em:current-domain,chip=1",
        "--data",
        data,
        "--json",
        "--quiet",
    ]);
    assert_eq!(deployed, want, "the deploy runtime on chip 1 disagrees with the training side");
}
