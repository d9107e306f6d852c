//! The examples run, end to end, on the tiny data they bring.

use std::process::Command;

#[test]
fn own_chip_runs_from_log_to_accuracy() {
    // Through cargo, so the example is (re)built whichever test targets were selected.
    let o = Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "--example", "own_chip"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("per-column fit over 256 ADC columns") && out.contains("D-NAT through") && out.contains("chip σ"), "{out}");
}
