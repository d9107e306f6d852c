//! `dnat em`: fitting a log, showing models and presets, and clear errors on bad files.

mod common;
use common::*;

#[test]
fn fit_show_and_use_a_measured_model() {
    let d = tmpdir("em");
    let log = d.join("die7.log");
    let mut text = String::from("# ideal measured\n");
    for i in 0..3000 {
        let k = (i % 41) as i32 - 20;
        let j = k + [0, 0, 1, -1, 0, 2][i % 6];
        text.push_str(&format!("{k} {j}\n"));
    }
    std::fs::write(&log, text).unwrap();
    let model = d.join("die7.txt");
    let o = dnat(&[
        "em",
        "fit",
        log.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--description",
        "die 7",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("3000 readouts fitted") && out.contains("filled by policy 'nearest'"),
        "{out}"
    );
    let svg = d.join("h.svg");
    let o = dnat(&["em", "show", model.to_str().unwrap(), "--svg", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    // The fitted file drives a CIM benchmark step.
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
        "--error-model",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o).lines().last().unwrap().to_string();
    assert!(json_number(&line, "readouts_per_s") > 0.0);
    // The step's breakdown: every CIM part took time, and the parts add up to the step.
    let parts: Vec<f64> = ["partial_sums", "readout", "slopes", "backward_gemm", "rest"]
        .iter()
        .map(|k| json_number(&line, k))
        .collect();
    assert!(parts[..4].iter().all(|&ms| ms > 0.0), "{line}");
    let step = json_number(&line, "train_step_ms");
    // (One timed step: its mean is its median, the step reported.)
    assert!((parts.iter().sum::<f64>() - step).abs() <= 1e-6 * step, "{line}");
    // Through a source that can only be sampled: stat:S runs, the exact slope is refused.
    let args = [
        "bench",
        "--model",
        "resnet20",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--cim",
        "--error-model",
        "current-domain",
        "--readout-source",
        "sample-only",
    ];
    let o = dnat(&[&args[..], &["--estimator", "stat:2"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dnat(&args);
    assert!(!o.status.success() && stderr(&o).contains("can only be sampled"), "{}", stderr(&o));
}

#[test]
fn presets_are_labelled_synthetic() {
    let d = tmpdir("em-preset");
    let o = dnat(&["em", "show", "--preset", "mild", "--svg", d.join("m.svg").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("mild (synthetic)") && stdout(&o).contains("SYNTHETIC"));
}

#[test]
fn bad_models_and_logs_are_named() {
    let d = tmpdir("em-bad");
    let junk = d.join("junk.dmacem");
    std::fs::write(&junk, b"DNATDMEM\x01\x00\x00\x00garbage-garbage-garbage").unwrap();
    let o = dnat(&["em", "show", junk.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("junk.dmacem"), "{}", stderr(&o));
    let log = d.join("bad.log");
    std::fs::write(&log, "1 2\n3 x\n").unwrap();
    let o = dnat(&["em", "fit", log.to_str().unwrap(), "--out", d.join("o.txt").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("bad.log: line 2"), "{}", stderr(&o));
    assert!(!d.join("o.txt").exists());
    let narrow = d.join("narrow.txt");
    std::fs::write(&narrow, "format: dnat-dmacem-text 1\nname: n\nsynthetic: false\ndescription:\nideal_codes: -4 4\nmeasured_codes: -4 4\nfill: nearest\nideal measured count\n0 0 5\n").unwrap();
    let o = dnat(&[
        "bench",
        "--model",
        "resnet20",
        "--batch",
        "2",
        "--steps",
        "1",
        "--cim",
        "--error-model",
        narrow.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("narrow.txt: covers ideal codes -4..=4"),
        "{}",
        stderr(&o)
    );
    let o = dnat(&["bench", "--model", "resnet20", "--cim", "--estimator", "stat:x"]);
    assert!(
        !o.status.success() && stderr(&o).contains("S must be a whole number"),
        "{}",
        stderr(&o)
    );
}
