//! End-to-end training properties on data the test builds itself: learning happens,
//! results are bit-identical at 1 and 2 threads, and an interrupted + resumed run ends
//! with the same bytes as an uninterrupted one.

use dnat::data::{synthetic, DatasetKind};
use dnat::io::Checkpoint;
use dnat::nn::Arch;
use dnat::train::{train, RunOptions, TrainConfig};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dnat-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn config(epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(Arch::ResNet20, DatasetKind::Cifar10, epochs, 11);
    c.batch = 32;
    c.lr = 0.05;
    c
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

#[test]
fn learns_and_is_identical_at_one_and_two_threads() {
    let data = synthetic::dataset(640, 200, 3);
    let cfg = config(2);
    let (p1, p2) = (tmp("t1.ckpt"), tmp("t2.ckpt"));
    let o1 = in_pool(1, || train(&cfg, &data, &p1, &quiet()).unwrap());
    in_pool(2, || train(&cfg, &data, &p2, &quiet()).unwrap());
    assert!(o1.test_accuracy > 40.0, "the synthetic task should be learnt: {}%", o1.test_accuracy);
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap(), "checkpoints differ between 1 and 2 threads");
}

#[test]
fn resumed_run_ends_with_the_same_bytes() {
    let data = synthetic::dataset(320, 100, 4);
    let cfg = config(3);
    let (whole, parts) = (tmp("whole.ckpt"), tmp("parts.ckpt"));
    train(&cfg, &data, &whole, &quiet()).unwrap();
    let first = train(&cfg, &data, &parts, &RunOptions { stop_after: Some(1), ..quiet() }).unwrap();
    assert_eq!(first.checkpoint.epochs_done, 1);
    let rest = train(&cfg, &data, &parts, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert_eq!(rest.checkpoint.epochs_done, 3);
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&parts).unwrap());
    let ck = Checkpoint::load(&parts).unwrap();
    assert_eq!(ck.history.len(), 3);

    // A different configuration refuses to resume from it.
    let mut other = cfg.clone();
    other.lr = 0.2;
    let e = train(&other, &data, &parts, &RunOptions { resume: true, ..quiet() }).err().unwrap().to_string();
    assert!(e.contains("cannot resume") && e.contains("lr"), "{e}");
}
