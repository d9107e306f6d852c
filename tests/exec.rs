//! `exec:CMD` with the reference macro host (`examples/c/macro_host.c`, built here with
//! `cc`): a noiseless counts table through the host computes what the ideal macro
//! computes, to the bit; a host that exits, stalls, miscounts, answers outside the ADC
//! range, reports an error or speaks another protocol version is named, with the layer
//! and the operation, within the timeout; nothing is half-written; no host outlives
//! its command.

mod common;

use common::{dnat, dnat_env, stand_in, stderr, stdout, tmpdir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The host, built once per test into `dir`.
fn build_host(dir: &Path) -> PathBuf {
    let exe = dir.join("macro_host");
    let o = Command::new("cc")
        .args(["-std=c99", "-O3", "-march=native", "-pthread", "-Wall", "-Wextra", "-Werror"])
        .arg(root().join("examples/c/macro_host.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-lm")
        .output()
        .expect("run cc (the C compiler .ci/run installs)");
    assert!(o.status.success(), "cc macro_host.c: {}", String::from_utf8_lossy(&o.stderr));
    exe
}

/// An export of the committed QAT ResNet20.
fn export(dir: &Path) -> PathBuf {
    let model = dir.join("qat.dnatd");
    let qat = root().join("models/resnet20-w4a8-qat-e2-s0.ckpt");
    let o =
        dnat(&["export", "--checkpoint", qat.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    model
}

/// The ideal preset's counts table (every code reads itself), in `dir`.
fn noiseless_table(dir: &Path) -> PathBuf {
    let (table, svg) = (dir.join("ideal.txt"), dir.join("ideal.svg"));
    let o = dnat(&[
        "em",
        "show",
        "--preset",
        "ideal",
        "--save",
        table.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    table
}

/// Processes whose command line mentions `needle` (a test's own folder).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    found
}

#[test]
fn a_noiseless_host_computes_the_ideal_macro() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("exec-ideal");
    let (host, model) = (build_host(&d), export(&d));
    let table = noiseless_table(&d);
    let run = |backend: &str, out: &Path| {
        let o = dnat(&[
            "deploy",
            "run",
            "--model",
            model.to_str().unwrap(),
            "--backend",
            backend,
            "--data",
            data.to_str().unwrap(),
            "--images",
            "30",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        std::fs::read_to_string(out).unwrap()
    };
    let exec = format!("exec:{} {}", host.display(), table.display());
    let (a, b) = (run("ideal", &d.join("ideal.csv")), run(&exec, &d.join("exec.csv")));
    assert_eq!(a.lines().count(), 31);
    assert_eq!(a, b, "the same logits through the host");
    assert!(processes_with(d.to_str().unwrap()).is_empty(), "a host outlived its command");
}

#[test]
fn a_faulty_host_is_named_within_the_timeout() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("exec-faults");
    let (host, model) = (build_host(&d), export(&d));
    let table = noiseless_table(&d);
    let exec = format!("exec:{} {}", host.display(), table.display());
    let out = d.join("logits.csv");
    let fails = |fault: &str, wants: &[&str]| {
        let t = Instant::now();
        let o = dnat_env(
            &[
                "deploy",
                "run",
                "--model",
                model.to_str().unwrap(),
                "--backend",
                &exec,
                "--backend-timeout",
                "3",
                "--data",
                data.to_str().unwrap(),
                "--images",
                "20",
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ],
            &[("DNAT_HOST_FAULT", fault)],
        );
        let (secs, err) = (t.elapsed(), stderr(&o));
        assert!(!o.status.success(), "{fault}: succeeded: {}", stdout(&o));
        for w in wants {
            assert!(err.contains(w), "{fault}: wanted '{w}' in: {err}");
        }
        assert!(secs < Duration::from_secs(20), "{fault}: {secs:?}");
        assert!(!out.exists(), "{fault}: a half-written output");
        assert!(processes_with(d.to_str().unwrap()).is_empty(), "{fault}: a host outlived dnat");
    };
    let at = "layer 'layer1.0.conv1', tile 0, cycle 0, operations 0..";
    fails("exit:2", &[&format!("backend '{exec}', "), "compute: ", "exit status: 7"]);
    fails("stall:3", &["no reply within 3 s (--backend-timeout): the host is killed"]);
    fails("count:1", &[at, "operations × ", "-byte reply"]);
    fails("code:1", &[at, "is outside the ADC's -256..=255"]);
    fails("error:1", &[at, "the host reports: injected fault"]);
    fails("version", &["hello: the host speaks protocol version 2, this dnat speaks 1"]);
    // Fine-tuning through a host that dies in its first step: the step's layer named,
    // no deployable model written, no host left.
    let qat = concat!(env!("CARGO_MANIFEST_DIR"), "/models/resnet20-w4a8-qat-e2-s0.ckpt");
    let (ck, deployed) = (d.join("ft.ckpt"), d.join("ft.dnatd"));
    let o = dnat_env(
        &[
            "deploy",
            "finetune",
            "--checkpoint",
            qat,
            "--backend",
            &exec,
            "--backend-timeout",
            "3",
            "--epochs",
            "1",
            "--train-subset",
            "256",
            "--out",
            ck.to_str().unwrap(),
            "--deploy-out",
            deployed.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--quiet",
        ],
        &[("DNAT_HOST_FAULT", "exit:5")],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "finetune through a dying host succeeded");
    assert!(err.contains("layer 'layer1.") && err.contains("exit status: 7"), "{err}");
    assert!(!deployed.exists() && !ck.exists(), "finetune left a file behind");
    assert!(processes_with(d.to_str().unwrap()).is_empty(), "a host outlived dnat deploy finetune");
    // A host that cannot start at all.
    let o = dnat(&[
        "deploy",
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        &format!("exec:{} /nonexistent.txt", host.display()),
        "--data",
        data.to_str().unwrap(),
        "--quiet",
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("hello: ") && err.contains("/nonexistent.txt"),
        "{err}"
    );
}
