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
    let o = dnat(&["em", "fit", log.to_str().unwrap(), "--out", model.to_str().unwrap(), "--description", "die 7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("3000 readouts fitted") && out.contains("filled by policy 'nearest'"), "{out}");
    let svg = d.join("h.svg");
    let o = dnat(&["em", "show", model.to_str().unwrap(), "--svg", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    // The fitted file drives a CIM benchmark step.
    let o = dnat(&["bench", "--model", "resnet20", "--batch", "4", "--steps", "1", "--warmup", "0", "--cim", "--error-model", model.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(json_number(stdout(&o).lines().last().unwrap(), "readouts_per_s") > 0.0);
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
    let o = dnat(&["bench", "--model", "resnet20", "--batch", "2", "--steps", "1", "--cim", "--error-model", narrow.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("narrow.txt: covers ideal codes -4..=4"), "{}", stderr(&o));
    let o = dnat(&["bench", "--model", "resnet20", "--cim", "--estimator", "stat:x"]);
    assert!(!o.status.success() && stderr(&o).contains("S must be a whole number"), "{}", stderr(&o));
}
