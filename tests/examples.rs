//! The examples run, end to end, on the tiny data they bring.

use std::process::Command;

mod common;

/// Runs an example with `args` through cargo, so it is (re)built whichever test targets
/// were selected; panics unless it succeeds; returns its stdout and stderr.
fn run_example(name: &str, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{name} {args:?}: {text}");
    text
}

#[test]
fn own_chip_runs_from_log_to_accuracy() {
    let out = run_example("own_chip", &[]);
    assert!(
        out.contains("per-column fit over 256 ADC columns")
            && out.contains("D-NAT through")
            && out.contains("chip σ"),
        "{out}"
    );
}

#[test]
fn custom_network_trains_reloads_and_exports() {
    let out = run_example("custom_network", &[]);
    // The reload's accuracies equal the trained network's and the reloaded export's
    // logits the exported model's (the example asserts both); the export states every
    // op: 4 × (conv, batchnorm folded, relu, pool), flatten, fc.
    assert!(
        out.contains("D-NAT, 2 chips x 3 reads")
            && out.contains("14 nodes exported for name=custom-dnat-w4a8,rows=32"),
        "{out}"
    );
}

/// A program that registers its network and hands over to `dnat::cli::main` has the
/// subcommands for it: train (on the macro), eval, export; the `dnat` binary, which does
/// not know that network, says so rather than calling the file corrupt.
#[test]
fn a_registered_network_gets_every_subcommand() {
    let Some(data) = common::stand_in() else {
        return;
    };
    let dir = common::tmpdir("custom-cli");
    let (ckpt, deploy, data) =
        (dir.join("t.ckpt"), dir.join("t.deploy"), data.to_str().unwrap().to_string());
    let run = |args: &[&str]| run_example("custom_cli", args);
    let c = ckpt.to_str().unwrap();
    let t = run(&[
        "train",
        "--model",
        "tiny-cnn",
        "--cim",
        "--cim-layers",
        "conv",
        "--error-model",
        "moderate",
        "--epochs",
        "1",
        "--train-subset",
        "512",
        "--batch",
        "64",
        "--out",
        c,
        "--quiet",
        "--data",
        &data,
    ]);
    assert!(t.contains("tiny-cnn: 1 epochs"), "{t}");
    let e = run(&[
        "eval",
        "--checkpoint",
        c,
        "--cim",
        "--error-model",
        "moderate",
        "--data",
        &data,
        "--quiet",
    ]);
    assert!(e.contains("tiny-cnn on the macro"), "{e}");
    let x = run(&["export", "--checkpoint", c, "--out", deploy.to_str().unwrap()]);
    assert!(x.contains("tiny-cnn: 6 nodes, 3 layers (1 on the macro"), "{x}");
    let o = Command::new(env!("CARGO_BIN_EXE_dnat"))
        .args(["eval", "--checkpoint", c, "--data", &data])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("holds a \"tiny-cnn\" network, which this program does not know")
            && !err.contains("corrupt"),
        "{err}"
    );
}
