//! The command line: bad input gets a clear error naming the problem (and the file),
//! and nothing half-written is left behind.

mod common;
use common::*;

fn fails_with(args: &[&str], needle: &str) {
    let o = dnat(args);
    assert!(!o.status.success(), "dnat {args:?} should fail");
    let e = stderr(&o);
    assert!(e.contains(needle), "dnat {args:?}: expected '{needle}' in:\n{e}");
    assert!(!e.contains("panicked"), "dnat {args:?} panicked:\n{e}");
}

#[test]
fn impossible_flags_are_named() {
    let d = tmpdir("flags");
    let out = d.join("x.ckpt");
    let out = out.to_str().unwrap();
    fails_with(
        &["train", "--model", "resnet99", "--epochs", "1", "--out", out],
        "unknown model 'resnet99'",
    );
    fails_with(
        &["train", "--model", "resnet20", "--epochs", "0", "--out", out],
        "--epochs must be at least 1",
    );
    fails_with(
        &["train", "--model", "resnet20", "--epochs", "1", "--batch", "0", "--out", out],
        "--batch 0: must be 1 to 65536",
    );
    fails_with(
        &["train", "--model", "resnet20", "--epochs", "1", "--lr", "-1", "--out", out],
        "--lr must be a positive number",
    );
    fails_with(
        &["train", "--model", "resnet20", "--epochs", "1", "--schedule", "zigzag", "--out", out],
        "bad schedule 'zigzag'",
    );
    fails_with(
        &["train", "--model", "resnet20", "--epochs", "1", "--dataset", "mnist", "--out", out],
        "unknown dataset 'mnist'",
    );
    fails_with(
        &[
            "train",
            "--model",
            "resnet20",
            "--epochs",
            "1",
            "--data",
            "/no/such/place",
            "--out",
            out,
        ],
        "/no/such/place does not exist",
    );
    fails_with(&["bench", "--model", "resnet20", "--batch", "0"], "--batch must be 1 to 65536");
    let qat = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-w4a8-qat-e2-s0.ckpt");
    fails_with(
        &["calibrate", "--checkpoint", qat, "--cim", "--out", "/proc/dnat-nowhere/r.ckpt"],
        "/proc/dnat-nowhere",
    );
    fails_with(&["--threads", "0", "bench", "--model", "resnet20"], "--threads must be 1 to 1024");
    fails_with(
        &["--threads", "4000000000", "bench", "--model", "resnet20"],
        "--threads must be 1 to 1024",
    );
    fails_with(
        &["bench", "--model", "resnet20", "--warmup", "4000000000"],
        "--warmup at most 100000",
    );
    fails_with(
        &[
            "train", "--model", "resnet20", "--epochs", "1", "--cim", "--chip", "chip-a", "--out",
            out,
        ],
        "chip 'chip-a'",
    );
    fails_with(
        &[
            "train",
            "--model",
            "resnet20",
            "--epochs",
            "1",
            "--cim",
            "--error-model",
            "current-domain:col_gain=0.9",
            "--out",
            out,
        ],
        "fixed-pattern spreads",
    );
    assert!(!std::path::Path::new(out).exists(), "a failed run left {out} behind");
    // Recalibration: an FP32 model has nothing on the macro; the output is not written.
    let fp32 = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-fp32-s0.ckpt");
    fails_with(&["calibrate", "--checkpoint", fp32, "--cim", "--out", out], "has no CIM layers");
    assert!(!std::path::Path::new(out).exists(), "a failed calibration left {out} behind");
}

#[test]
fn bad_files_are_named() {
    let d = tmpdir("files");
    let junk = d.join("junk.ckpt");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    fails_with(
        &["eval", "--checkpoint", junk.to_str().unwrap()],
        "junk.ckpt: not a dnat checkpoint",
    );
    fails_with(&["eval", "--checkpoint", d.join("missing.ckpt").to_str().unwrap()], "missing.ckpt");
    let bad_data = d.join("bad.tar.gz");
    std::fs::write(&bad_data, b"\x1f\x8b\x08\x00garbage").unwrap();
    fails_with(
        &[
            "train",
            "--model",
            "resnet20",
            "--epochs",
            "1",
            "--data",
            bad_data.to_str().unwrap(),
            "--out",
            d.join("o.ckpt").to_str().unwrap(),
        ],
        "bad.tar.gz",
    );
    let st = d.join("w.safetensors");
    std::fs::write(&st, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}").unwrap();
    fails_with(
        &[
            "weights",
            "import",
            "--safetensors",
            st.to_str().unwrap(),
            "--out",
            d.join("i.ckpt").to_str().unwrap(),
        ],
        "w.safetensors",
    );
    assert!(!d.join("i.ckpt").exists() && !d.join("o.ckpt").exists());
    // The pipeline: its config file, its overrides, and exports of the wrong model.
    let conf = d.join("p.conf");
    std::fs::write(&conf, "model = resnet20\nqat_epochs = many\n").unwrap();
    fails_with(
        &["pipeline", "--config", conf.to_str().unwrap()],
        "p.conf: line 2: qat_epochs = 'many' is not a valid number",
    );
    std::fs::write(&conf, "model = resnet20\n").unwrap();
    fails_with(
        &["pipeline", "--config", conf.to_str().unwrap(), "--set", "error_model=chip.txt"],
        "error model 'chip.txt' is neither a preset",
    );
    fails_with(
        &["pipeline", "--config", conf.to_str().unwrap(), "--set", "estimator"],
        "--set 'estimator': expected key=value",
    );
    let fp32 = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-fp32-s0.ckpt");
    fails_with(
        &["export", "--checkpoint", fp32, "--out", d.join("m.dnatdepl").to_str().unwrap()],
        "has no CIM layers",
    );
    assert!(!d.join("m.dnatdepl").exists());
}

#[test]
fn bench_prints_a_table_and_a_json_line() {
    let o = dnat(&[
        "bench", "--model", "resnet20", "--batch", "8", "--steps", "1", "--warmup", "0", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let last = out.lines().last().unwrap();
    assert!(out.contains("train img/s"));
    assert!(
        json_number(last, "train_images_per_s") > 0.0 && json_number(last, "peak_rss_mb") > 0.0,
        "{last}"
    );
}

/// With `--cim`, bench reports each CIM layer's clipped partial sums: one line per
/// layer of ResNet20's default plan (18 convolutions), and the same in its JSON.
#[test]
fn bench_reports_the_clipped_partial_sums_per_layer() {
    let o = dnat(&[
        "bench",
        "--model",
        "resnet20",
        "--batch",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--cim",
        "--macro",
        "rows=64,adc_bits=6,step=32",
        "--error-model",
        "ideal",
        "--readout",
        "ideal",
        "--estimator",
        "ste",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let report: Vec<&str> =
        out.lines().skip_while(|l| !l.starts_with("partial sums beyond the ADC's range")).collect();
    assert_eq!(report.iter().filter(|l| l.contains(" %  (")).count(), 18, "{out}");
    assert!(report[1].trim_start().starts_with("layer1.0.conv1 "), "{out}");
    let last = out.lines().last().unwrap();
    assert_eq!(last.matches("\"clipped\": ").count(), 19, "{last}");
}

/// The hostile-input cases, one per failure class: each is refused by name, before any
/// work, with nothing written; names cannot inject lines or escape the directory.
#[test]
fn hostile_input_is_refused_by_name() {
    let d = tmpdir("hostile");
    let out = d.join("x.ckpt");
    let o = out.to_str().unwrap();
    let train = |extra: &[&str], needle: &str| {
        let mut args = vec!["train", "--model", "resnet20", "--epochs", "1", "--out", o];
        args.extend_from_slice(extra);
        fails_with(&args, needle);
    };
    // Numeric flags: finite, signed and bounded, each named (checked before the data is read).
    train(&["--stop-after", "0"], "--stop-after must be at least 1");
    train(&["--weight-decay", "-1"], "--weight-decay must be a number ≥ 0");
    train(&["--weight-decay", "NaN"], "--weight-decay must be a number ≥ 0");
    train(&["--bound-lr-scale", "-0.5"], "--bound-lr-scale must be a number ≥ 0");
    train(&["--schedule", "cosine:nan"], "schedule 'cosine:nan': warm-up NaN");
    train(&["--schedule", "step:5,2"], "milestones must be ascending");
    train(&["--batch", "4000000000"], "--batch 4000000000: must be 1 to 65536");
    train(&["--cim", "--estimator", "stat:4000000000"], "S must be a whole number from 0");
    fails_with(
        &["train", "--model", "resnet20", "--epochs", "1", "--out", d.to_str().unwrap()],
        "is a directory: give a file path",
    );
    train(&["--cim", "--error-model", "mild:sat=1e6"], "sat = 1000000 is outside");
    assert!(!out.exists());
    // An output that cannot be written fails before the data is read or an epoch is run.
    fails_with(
        &["train", "--model", "resnet20", "--epochs", "1", "--out", "/proc/dnat-nowhere/x.ckpt"],
        "/proc/dnat-nowhere",
    );
    fails_with(
        &["bench", "--model", "resnet20", "--classes", "4000000000"],
        "--classes: 4000000000 classes",
    );
    let qat = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-w4a8-qat-e2-s0.ckpt");
    fails_with(
        &["eval", "--checkpoint", qat, "--cim", "--chips", "4000000000"],
        "--chips 4000000000: each 1 to 1000",
    );
    fails_with(
        &["bench", "--model", "resnet20", "--batch", "4000000000"],
        "--batch must be 1 to 65536",
    );
    // A macro described on the command line: used when valid, its errors named.
    fails_with(
        &["bench", "--model", "resnet20", "--cim", "--macro", "rows=0"],
        "rows = 0 is outside",
    );
    let o_ = dnat(&[
        "bench",
        "--model",
        "resnet20",
        "--cim",
        "--macro",
        "rows=32,adc_bits=7,step=64",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(
        o_.status.success() && stdout(&o_).contains("32 rows"),
        "{}{}",
        stdout(&o_),
        stderr(&o_)
    );
    // A bench of named layers says which ones; a pattern that names none is refused.
    let o_ = dnat(&[
        "bench",
        "--model",
        "resnet20",
        "--cim",
        "--cim-layers",
        "layer3.*",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(
        o_.status.success() && stdout(&o_).contains("layers: layer3.*"),
        "{}{}",
        stdout(&o_),
        stderr(&o_)
    );
    fails_with(
        &["bench", "--model", "resnet20", "--cim", "--cim-layers", "features.*"],
        "features.*",
    );
    fails_with(
        &["bench", "--model", "resnet20", "--cim-layers", "layer3.*"],
        "--cim-layers needs --cim",
    );

    // Safetensors metadata claiming 4·10⁹ classes (or none): refused, naming the file.
    let fp32 = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-fp32-s0.ckpt");
    let st = d.join("w.safetensors");
    let o_ = dnat(&["weights", "export", "--checkpoint", fp32, "--out", st.to_str().unwrap()]);
    assert!(o_.status.success(), "{}", stderr(&o_));
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(header.contains("\"num_classes\":\"10\""), "{header}");
    for classes in ["4000000000", "0"] {
        let h = header.replace("\"num_classes\":\"10\"", &format!("\"num_classes\":\"{classes}\""));
        let mut crafted = (h.len() as u64).to_le_bytes().to_vec();
        crafted.extend_from_slice(h.as_bytes());
        crafted.extend_from_slice(&bytes[8 + n..]);
        let p = d.join(format!("classes-{classes}.safetensors"));
        std::fs::write(&p, crafted).unwrap();
        fails_with(
            &["weights", "import", "--safetensors", p.to_str().unwrap(), "--out", o],
            &format!("classes-{classes}.safetensors: metadata num_classes: {classes} classes"),
        );
    }
    fails_with(
        &[
            "weights",
            "import",
            "--safetensors",
            st.to_str().unwrap(),
            "--model",
            "resnet20",
            "--classes",
            "1",
            "--out",
            o,
        ],
        "--classes 1: 1 classes",
    );
    assert!(!out.exists());

    // Fit logs: the ADC step must be a positive number; a model name cannot carry a
    // newline into the text format; a name that is a path stays a file name.
    let log = d.join("chip.log");
    std::fs::write(&log, "0 0\n1 1\n2 1\n-1 -1\n").unwrap();
    let model = d.join("m.txt");
    let m = model.to_str().unwrap();
    for step in ["nan", "inf", "-32", "0"] {
        fails_with(
            &["em", "fit", log.to_str().unwrap(), "--out", m, "--values-step", step],
            "--values-step",
        );
    }
    fails_with(
        &["em", "fit", log.to_str().unwrap(), "--out", m, "--name", "evil\nideal_codes: -10 10"],
        "contains a control character",
    );
    assert!(!model.exists());
    let o_ = dnat(&["em", "fit", log.to_str().unwrap(), "--out", m, "--name", "x/../../escaped"]);
    assert!(o_.status.success(), "{}", stderr(&o_));
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_dnat"))
        .args(["em", "show", m])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", stderr(&show));
    assert!(
        d.join("em-x_.._.._escaped.svg").is_file() && !d.join("../../escaped.svg").exists(),
        "{}",
        stdout(&show)
    );

    // A pipeline name is a directory name; a value cannot carry a newline into a record.
    let conf = d.join("p.conf");
    std::fs::write(&conf, "model = resnet20\n").unwrap();
    fails_with(
        &["pipeline", "--config", conf.to_str().unwrap(), "--set", "name=a\nb"],
        "control character",
    );
    fails_with(
        &["pipeline", "--config", conf.to_str().unwrap(), "--set", "name=../../x"],
        "results directory",
    );

    // Exporting a W4A8 model to a macro of other bit widths would re-quantize it.
    let qat = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-w4a8-qat-e2-s0.ckpt");
    let dep = d.join("m.dnatdepl");
    fails_with(
        &["export", "--checkpoint", qat, "--macro", "paper-chip", "--out", dep.to_str().unwrap()],
        "would re-quantize it",
    );
    assert!(!dep.exists());
}

/// `dnat deploy eval` runs an export with a backend doing the macro operations: on the
/// ideal macro and on a simulated chip, with what it did reported; a backend it does
/// not know is refused by name.
#[test]
fn deploy_eval_runs_an_export_through_a_backend() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("deploy");
    let (model, data) = (d.join("qat.dnatdeploy"), data.to_str().unwrap().to_string());
    let qat = format!("{}/models/resnet20-w4a8-qat-e2-s0.ckpt", env!("CARGO_MANIFEST_DIR"));
    let o = dnat(&["export", "--checkpoint", &qat, "--out", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = model.to_str().unwrap();
    let eval = |backend: &str| {
        let o = dnat(&[
            "deploy",
            "eval",
            "--model",
            m,
            "--backend",
            backend,
            "--data",
            &data,
            "--test-subset",
            "50",
            "--json",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).lines().last().unwrap().to_string()
    };
    let ideal = eval("ideal");
    // 50 images: 36,454,400 operations; 18 layers placed in 96 blocks, programmed once
    // per part of the batch (the simulated macro is copied, a part of 10 images on each
    // copy: 5 parts).
    assert_eq!(
        (json_number(&ideal, "macro_ops"), json_number(&ideal, "programmings")),
        (36454400.0, 5.0 * 96.0)
    );
    assert!(json_number(&ideal, "accuracy") > 70.0, "{ideal}");
    let chip = eval("em:current-domain,chip=1");
    assert!(json_number(&chip, "accuracy") < json_number(&ideal, "accuracy"), "{chip}");
    fails_with(
        &["deploy", "eval", "--model", m, "--backend", "fpga"],
        "backend 'fpga': expected 'ideal', 'em:MODEL[,chip=S][,noise=N]' or 'exec:CMD'",
    );
    fails_with(
        &["deploy", "eval", "--model", m, "--backend", "em:nonesuch"],
        "error model 'nonesuch'",
    );
}

/// `dnat deploy finetune` trains the committed QAT model with a simulated chip in the
/// forward pass and writes the checkpoint and a deployable model that scores, through the
/// same backend, what the run reported; what it cannot do is refused by name.
#[test]
fn deploy_finetune_trains_through_a_backend() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("finetune");
    let data = data.to_str().unwrap().to_string();
    let qat = format!("{}/models/resnet20-w4a8-qat-e2-s0.ckpt", env!("CARGO_MANIFEST_DIR"));
    let fp32 = format!("{}/models/resnet20-fp32-s0.ckpt", env!("CARGO_MANIFEST_DIR"));
    let (ck, model) = (d.join("ft.ckpt"), d.join("ft.dnatd"));
    let (ck, model) = (ck.to_str().unwrap(), model.to_str().unwrap());
    let with = |backend: &str, checkpoint: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "deploy",
            "finetune",
            "--checkpoint",
            checkpoint,
            "--backend",
            backend,
            "--epochs",
            "1",
            "--train-subset",
            "256",
            "--out",
            ck,
            "--deploy-out",
            model,
            "--data",
            &data,
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args =
        |checkpoint: &str, extra: &[&str]| with("em:current-domain,chip=1", checkpoint, extra);
    let run = |v: Vec<String>| dnat(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let fails = |v: Vec<String>, needle: &str| {
        fails_with(&v.iter().map(String::as_str).collect::<Vec<_>>(), needle)
    };
    fails(args(&fp32, &[]), "has no CIM layers (an FP32 model)");
    fails(
        args(&qat, &["--estimator", "stat"]),
        "the statistical estimator needs the macro's error model (--error-model)",
    );
    fails(args(&qat, &["--backend-timeout", "0"]), "--backend-timeout 0");
    assert!(!std::path::Path::new(ck).exists() && !std::path::Path::new(model).exists());
    let o = run(args(&qat, &["--error-model", "current-domain", "--chip", "1", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o).lines().last().unwrap().to_string();
    let reported = json_number(&line, "accuracy");
    // Deterministic, so pinned (the QAT model reads 20.33 % on this chip).
    let want: f64 = golden("deploy.txt", "finetune_qat_two_steps_chip1_accuracy").parse().unwrap();
    assert_eq!(reported, want, "{line}");
    let o = dnat(&[
        "deploy",
        "eval",
        "--model",
        model,
        "--backend",
        "em:current-domain,chip=1",
        "--data",
        &data,
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_number(stdout(&o).lines().last().unwrap(), "accuracy"), reported);
    // It resumes through the same backend only.
    fails(
        with("ideal", &qat, &["--error-model", "current-domain", "--chip", "1", "--resume"]),
        "cannot resume: trained through backend 'em:current-domain (synthetic),chip=1,noise=1000', this run through backend 'ideal'",
    );
}
