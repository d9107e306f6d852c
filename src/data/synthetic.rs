//! A small, learnable synthetic data set in CIFAR shape, built in memory from a seed:
//! for tests, golden runs and examples that must not depend on files.
//!
//! Class `c` is a colour gradient whose direction and hue depend on `c`, with a bright
//! square at a class-dependent place, shifted and noised per image.

use super::cifar::{Dataset, DatasetKind, IMAGE_BYTES, Provenance, Split};
use crate::rng::KeyedRng;

fn split(n: usize, seed: u64, tag: u64) -> Split {
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = KeyedRng::new(&[seed, tag, i as u64]);
        let c = (r.below(10)) as usize;
        labels.push(c as u8);
        let angle = c as f32 * std::f32::consts::PI / 5.0;
        let (dx, dy) = (angle.cos(), angle.sin());
        let (sx, sy) = (r.below(7) as isize - 3, r.below(7) as isize - 3);
        let (qx, qy) = (4 + (c % 5) * 5, 6 + (c / 5) * 14);
        for ch in 0..3 {
            let hue = ((c * 3 + ch * 7) % 10) as f32 / 10.0;
            for y in 0..32isize {
                for x in 0..32isize {
                    let (u, v) = ((x + sx) as f32 / 31.0 - 0.5, (y + sy) as f32 / 31.0 - 0.5);
                    let mut p = 128.0 + 90.0 * (u * dx + v * dy) * (0.5 + hue);
                    let (xi, yi) = ((x + sx) as usize, (y + sy) as usize);
                    if (qx..qx + 5).contains(&xi) && (qy..qy + 5).contains(&yi) {
                        p += 60.0;
                    }
                    p += (r.unit() - 0.5) * 60.0;
                    images.push(p.clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    Split { images, labels }
}

/// `n_train` + `n_test` images of 10 classes, a pure function of `seed`.
pub fn dataset(n_train: usize, n_test: usize, seed: u64) -> Dataset {
    Dataset {
        kind: DatasetKind::Cifar10,
        train: split(n_train, seed, 1),
        test: split(n_test, seed, 2),
        provenance: Provenance {
            path: "synthetic".into(),
            sha256: format!("synthetic-seed-{seed}"),
            description: format!(
                "synthetic CIFAR-shaped data (seed {seed}, {n_train} train / {n_test} test)"
            ),
        },
    }
}
