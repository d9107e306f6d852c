//! The C ABI from C: `include/dnat.h` against `src/capi.rs`, `examples/c/run_model.c`
//! built with `cc` and run on the committed QAT ResNet20's export (a built-in backend
//! and C callbacks give the Rust runtime's logits), a bad model file through the C API,
//! and the Python `ctypes` snippet of `docs/c-api.md` (where python3 is installed).

mod common;

use common::{stand_in, tmpdir};
use dnat::data::{Batcher, Dataset, DatasetKind};
use dnat::io::checkpoint::Checkpoint;
use dnat::io::deploy::DeployModel;
use dnat::runtime::{Runtime, SimulatedMacro};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The folder holding the `libdnat.so` built with this test (beside the `dnat` binary).
fn lib_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_dnat")).parent().unwrap().to_path_buf();
    assert!(
        dir.join("libdnat.so").is_file(),
        "no libdnat.so in {} (`make test` builds it: cargo build --release --lib)",
        dir.display()
    );
    dir
}

/// `cc` on `source` with the header, linked with libdnat.
fn build_c(source: &str, out: &Path) {
    let o = Command::new("cc")
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("include"))
        .arg(root().join(source))
        .arg("-o")
        .arg(out)
        .arg("-L")
        .arg(lib_dir())
        .args(["-ldnat", "-lm"])
        .output()
        .expect("run cc (the C compiler .ci/run installs)");
    assert!(o.status.success(), "cc {source}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The names of `pattern`'s matches' first group, in order.
fn names(text: &str, before: &str, after: char) -> Vec<String> {
    let mut v = Vec::new();
    for (i, _) in text.match_indices(before) {
        let rest = &text[i + before.len()..];
        if let Some(end) = rest.find(after) {
            let name = rest[..end].trim();
            if name.chars().all(|c| c.is_alphanumeric() || c == '_') && !name.is_empty() {
                v.push(name.to_string());
            }
        }
    }
    v
}

/// The header declares exactly the functions the library exports, its structs have the
/// Rust structs' fields in their order, and its status values are the Rust ones.
#[test]
fn the_header_is_the_rust_abi() {
    let rust = std::fs::read_to_string(root().join("src/capi.rs")).unwrap();
    let header = std::fs::read_to_string(root().join("include/dnat.h")).unwrap();
    let mut exported = names(&rust, "extern \"C\" fn ", '(');
    let mut declared: Vec<String> = header
        .lines()
        .filter(|l| !l.trim_start().starts_with("typedef") && !l.trim_start().starts_with('*'))
        .flat_map(|l| names(l, " dnat_", '(').into_iter().map(|n| format!("dnat_{n}")))
        .collect();
    declared.extend(names(&header, "*dnat_", '(').into_iter().map(|n| format!("dnat_{n}")));
    exported.sort();
    declared.sort();
    declared.dedup();
    assert_eq!(exported, declared, "functions: src/capi.rs vs include/dnat.h");
    assert_eq!(exported.len(), 9, "{exported:?}");
    let fields = |text: &str, open: &str, close: &str| -> Vec<String> {
        let body = &text[text.find(open).unwrap_or_else(|| panic!("{open}"))..];
        let body = &body[..body.find(close).unwrap()];
        body.lines()
            .filter_map(|l| {
                let l = l.trim();
                let decl = l.split(';').next().filter(|_| l.contains(';'))?;
                let name = decl.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit());
                let name = name.trim_end_matches('[').rsplit([' ', ':']).next()?.trim();
                (!name.is_empty() && !l.starts_with("//")).then(|| name.to_string())
            })
            .collect()
    };
    let backend = std::fs::read_to_string(root().join("src/runtime/backend.rs")).unwrap();
    let rust_fields = |text: &str, name: &str| -> Vec<String> {
        let body = &text[text.find(&format!("pub struct {name} {{")).unwrap()..];
        let body = &body[..body.find("\n}").unwrap()];
        body.lines()
            .skip(1)
            .filter_map(|l| l.trim().strip_prefix("pub ")?.split(':').next().map(str::to_string))
            .collect()
    };
    assert_eq!(
        rust_fields(&rust, "Geometry"),
        fields(&header, "typedef struct dnat_geometry {", "} dnat_geometry;")
    );
    assert_eq!(
        rust_fields(&backend, "Operation"),
        fields(&header, "typedef struct dnat_operation {", "} dnat_operation;")
    );
    let rust_status: Vec<(String, String)> = rust[rust.find("pub enum Status").unwrap()..]
        .lines()
        .take_while(|l| !l.starts_with('}'))
        .filter_map(|l| {
            let (n, v) = l.trim().trim_end_matches(',').split_once(" = ")?;
            Some((n.to_uppercase(), v.to_string()))
        })
        .collect();
    for (n, v) in &rust_status {
        assert!(header.contains(&format!("DNAT_{n} = {v}")), "status DNAT_{n} = {v}");
    }
    assert_eq!(rust_status.len(), 6);
}

/// The first `n` test images in the CIFAR binary layout, and the export of the
/// committed QAT ResNet20.
fn fixtures(dir: &Path, data: &Path, n: usize) -> (PathBuf, PathBuf, Dataset) {
    let ds = Dataset::load(data, DatasetKind::Cifar10).unwrap();
    let per = dnat::data::cifar::IMAGE_BYTES;
    let mut bin = Vec::new();
    for i in 0..n {
        bin.push(ds.test.labels[i]);
        bin.extend(&ds.test.images[i * per..(i + 1) * per]);
    }
    let batch = dir.join("test_batch.bin");
    std::fs::write(&batch, bin).unwrap();
    let ck = Checkpoint::load(&root().join("models/resnet20-w4a8-qat-e2-s0.ckpt")).unwrap();
    let model = dir.join("qat.dnatd");
    DeployModel::from_checkpoint(&ck, None).unwrap().save(&model).unwrap();
    (model, batch, ds)
}

/// The Rust runtime's accuracy on the first `n` test images, on the ideal macro.
fn rust_accuracy(model: &Path, ds: &Dataset, n: usize) -> f64 {
    let m = DeployModel::load(model).unwrap();
    let batcher = Batcher::new(&ds.test, m.norm, None, 0);
    let (x, labels) = batcher.batch(&(0..n).collect::<Vec<_>>(), 0);
    let logits = Runtime::new(m.clone())
        .unwrap()
        .run(&mut SimulatedMacro::ideal(&m.macro_spec), x.data(), 0)
        .unwrap();
    let correct = logits
        .chunks(10)
        .zip(&labels)
        .filter(|(l, y)| (0..10).fold(0, |a, c| if l[c] > l[a] { c } else { a }) == **y as usize)
        .count();
    100.0 * correct as f64 / n as f64
}

#[test]
fn the_c_example_runs_the_model_through_builtin_and_callback_backends() {
    let Some(data) = stand_in() else { return };
    let d = tmpdir("capi");
    let n = 100;
    let (model, batch, ds) = fixtures(&d, &data, n);
    let exe = d.join("run_model");
    build_c("examples/c/run_model.c", &exe);
    let run = |args: &[&Path]| {
        Command::new(&exe).args(args).env("LD_LIBRARY_PATH", lib_dir()).output().unwrap()
    };
    let o = run(&[&model, &batch, Path::new(&n.to_string())]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let acc = rust_accuracy(&model, &ds, n);
    let want = format!("ideal: {acc:.2} %; callbacks: {acc:.2} %; logits identical");
    assert!(out.contains(&want), "{out}\nwanted: {want}");
    assert!(out.contains("macro 4 arrays of 64 x 64, 18 layers on it"), "{out}");
    // A file that is not a model: the C API's error string, not a crash.
    let o = run(&[&batch, &batch, Path::new("1")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("dnat_model_open: ") && err.contains("not a dnat deployable model"),
        "{err}"
    );
}

/// The `ctypes` snippet of docs/c-api.md, run as the page shows it.
#[test]
fn the_python_snippet_runs() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no python3 on this machine");
        return;
    }
    let Some(data) = stand_in() else { return };
    let d = tmpdir("capi-python");
    let (model, batch, ds) = fixtures(&d, &data, 20);
    let page = std::fs::read_to_string(root().join("docs/c-api.md")).unwrap();
    let start = page.find("```python\n").expect("a python block") + "```python\n".len();
    let snippet = &page[start..start + page[start..].find("```").unwrap()];
    let script = d.join("snippet.py");
    std::fs::write(&script, snippet).unwrap();
    let o = Command::new("python3")
        .arg(&script)
        .args([&lib_dir().join("libdnat.so"), &model, &batch])
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}{err}");
    // The 20 first test images on the ideal macro, and the error string of a file that
    // is not a model.
    let want = format!("20 images, accuracy {:.2} %", rust_accuracy(&model, &ds, 20));
    assert!(out.contains(&want), "{out}\nwanted: {want}");
    assert!(out.contains("not a dnat deployable model (bad magic bytes)"), "{out}");
}
