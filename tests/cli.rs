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
    fails_with(&["train", "--model", "resnet99", "--epochs", "1", "--out", out], "unknown model 'resnet99'");
    fails_with(&["train", "--model", "resnet20", "--epochs", "0", "--out", out], "--epochs must be at least 1");
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--batch", "0", "--out", out], "--batch must be at least 1");
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--lr", "-1", "--out", out], "--lr must be a positive number");
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--schedule", "zigzag", "--out", out], "bad schedule 'zigzag'");
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--dataset", "mnist", "--out", out], "unknown dataset 'mnist'");
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--data", "/no/such/place", "--out", out], "/no/such/place does not exist");
    fails_with(&["bench", "--model", "resnet20", "--batch", "0"], "--batch and --steps must be");
    fails_with(&["--threads", "0", "bench", "--model", "resnet20"], "--threads must be at least 1");
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--cim", "--chip", "chip-a", "--out", out], "chip 'chip-a'");
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--cim", "--error-model", "current-domain:col_gain=0.9", "--out", out], "fixed-pattern spreads");
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
    fails_with(&["eval", "--checkpoint", junk.to_str().unwrap()], "junk.ckpt: not a dnat checkpoint");
    fails_with(&["eval", "--checkpoint", d.join("missing.ckpt").to_str().unwrap()], "missing.ckpt");
    let bad_data = d.join("bad.tar.gz");
    std::fs::write(&bad_data, b"\x1f\x8b\x08\x00garbage").unwrap();
    fails_with(&["train", "--model", "resnet20", "--epochs", "1", "--data", bad_data.to_str().unwrap(), "--out", d.join("o.ckpt").to_str().unwrap()], "bad.tar.gz");
    let st = d.join("w.safetensors");
    std::fs::write(&st, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}").unwrap();
    fails_with(&["weights", "import", "--safetensors", st.to_str().unwrap(), "--out", d.join("i.ckpt").to_str().unwrap()], "w.safetensors");
    assert!(!d.join("i.ckpt").exists() && !d.join("o.ckpt").exists());
    // The pipeline: its config file, its overrides, and exports of the wrong model.
    let conf = d.join("p.conf");
    std::fs::write(&conf, "model = resnet20\nqat_epochs = many\n").unwrap();
    fails_with(&["pipeline", "--config", conf.to_str().unwrap()], "p.conf: line 2: qat_epochs = 'many' is not a valid number");
    std::fs::write(&conf, "model = resnet20\n").unwrap();
    fails_with(&["pipeline", "--config", conf.to_str().unwrap(), "--set", "error_model=chip.txt"], "error model 'chip.txt' is neither a preset");
    fails_with(&["pipeline", "--config", conf.to_str().unwrap(), "--set", "estimator"], "--set 'estimator': expected key=value");
    let fp32 = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-fp32-s0.ckpt");
    fails_with(&["export", "--checkpoint", fp32, "--out", d.join("m.dnatdepl").to_str().unwrap()], "has no CIM layers");
    assert!(!d.join("m.dnatdepl").exists());
}

#[test]
fn bench_prints_a_table_and_a_json_line() {
    let o = dnat(&["bench", "--model", "resnet20", "--batch", "8", "--steps", "1", "--warmup", "0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let last = out.lines().last().unwrap();
    assert!(out.contains("train img/s"));
    assert!(json_number(last, "train_images_per_s") > 0.0 && json_number(last, "peak_rss_mb") > 0.0, "{last}");
}
