//! Tests of `batchnorm.rs`.

use super::*;
use crate::engine::gradcheck::{check, random};

fn bn(mode: Mode, relu: bool) -> impl Fn(&mut Tape, &[Var]) -> Var {
    move |t, v| {
        let mut rm = random(&[3], 9);
        let mut rv = Tensor::full(&[3], 1.5);
        let st = BatchNormState {
            running_mean: &mut rm,
            running_var: &mut rv,
            momentum: 0.1,
            eps: 1e-5,
            relu,
        };
        batch_norm2d(t, v[0], v[1], v[2], st, mode).unwrap()
    }
}

/// The sums with four channels in lockstep are, bit for bit, the one-channel
/// chains of `Iterator::sum` and plain loops, on channel counts that leave a
/// remainder, planes with a tail, signed zeros, a wide range of magnitudes and
/// outputs at zero (the ReLU mask).
#[test]
fn lockstep_sums_are_the_plain_chains() {
    for (n, c, hw) in [(3, 1, 5), (2, 6, 7), (4, 7, 9), (2, 16, 33), (3, 8, 64)] {
        let wide = |t: Tensor| -> Vec<f32> {
            t.data()
                .iter()
                .enumerate()
                .map(|(i, &v)| match i % 7 {
                    0 => -0.0,
                    1 => v * 1e4,
                    2 => v * 1e-5,
                    3 => 0.0,
                    _ => v,
                })
                .collect()
        };
        let x = wide(random(&[n, c, hw], 11));
        let got = channel_stats(&x, n, c, hw);
        for ch in 0..c {
            let plane = |i: usize| &x[(i * c + ch) * hw..][..hw];
            let s: f64 =
                (0..n).fold(0.0, |s, i| s + plane(i).iter().map(|&v| v as f64).sum::<f64>());
            let m = s / (n * hw) as f64;
            let q: f64 = (0..n).fold(0.0, |q, i| {
                q + plane(i).iter().map(|&v| (v as f64 - m) * (v as f64 - m)).sum::<f64>()
            });
            let want = (m, q / (n * hw) as f64);
            assert_eq!(
                (got[ch].0.to_bits(), got[ch].1.to_bits()),
                (want.0.to_bits(), want.1.to_bits()),
                "stats {n}×{c}×{hw} channel {ch}"
            );
        }
        let (g, y) = (wide(random(&[n, c, hw], 12)), wide(random(&[n, c, hw], 13)));
        let mean: Vec<f32> = got.iter().map(|s| s.0 as f32).collect();
        let invstd: Vec<f32> = got.iter().map(|s| (1.0 / (s.1 + 1e-5).sqrt()) as f32).collect();
        for relu in [false, true] {
            let sums =
                GradSums { g: &g, out: &y, x: &x, mean: &mean, invstd: &invstd, relu, n, c, hw }
                    .all();
            for ch in 0..c {
                let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
                for i in 0..n {
                    for p in 0..hw {
                        let at = (i * c + ch) * hw + p;
                        let d = if !relu || y[at] > 0.0 { g[at] } else { 0.0 };
                        sdy += d as f64;
                        sdyx += d as f64 * ((x[at] - mean[ch]) * invstd[ch]) as f64;
                    }
                }
                assert_eq!(
                    (sums[ch].0.to_bits(), sums[ch].1.to_bits()),
                    (sdy.to_bits(), sdyx.to_bits()),
                    "sums {n}×{c}×{hw} channel {ch} (relu {relu})"
                );
            }
        }
    }
}

#[test]
fn gradient_train_and_eval() {
    let inputs = [random(&[4, 3, 3, 2], 1), random(&[3], 2), random(&[3], 3)];
    check(&inputs, bn(Mode::Train, false), 1e-2, 5e-3);
    check(&inputs, bn(Mode::Eval, false), 1e-2, 2e-3);
}

#[test]
fn fused_relu_matches_separate_ops() {
    let inputs = [random(&[4, 3, 3, 2], 4), random(&[3], 5), random(&[3], 6)];
    // Gradient of the fused op (away from the kink: no output lands within eps of 0
    // for these inputs, checked by the finite differences themselves).
    check(&inputs, bn(Mode::Train, true), 1e-3, 5e-3);
    let run = |fused: bool| {
        let mut t = Tape::new(true);
        let v: Vec<Var> = inputs.iter().map(|i| t.leaf(i.clone())).collect();
        let y = bn(Mode::Train, fused)(&mut t, &v);
        let y = if fused { y } else { crate::engine::ops::relu(&mut t, y) };
        let out = t.value(y).clone();
        let l = crate::engine::gradcheck::project(&mut t, y, random(out.shape(), 8));
        let g = t.backward(l);
        (out, g.get(v[0]).unwrap().clone(), g.get(v[1]).unwrap().clone())
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn normalises_and_tracks_running_stats() {
    let x = random(&[5, 2, 4, 4], 4);
    let mut t = Tape::new(false);
    let xv = t.constant(x.clone());
    let g = t.constant(Tensor::full(&[2], 1.0));
    let b = t.constant(Tensor::zeros(&[2]));
    let (mut rm, mut rv) = (Tensor::zeros(&[2]), Tensor::full(&[2], 1.0));
    let st = BatchNormState {
        running_mean: &mut rm,
        running_var: &mut rv,
        momentum: 1.0,
        eps: 0.0,
        relu: false,
    };
    let y = batch_norm2d(&mut t, xv, g, b, st, Mode::Train).unwrap();
    let stats = channel_stats(t.value(y).data(), 5, 2, 16);
    for (m, v) in stats {
        assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-4);
    }
    // momentum 1: running mean is the batch mean, running var the unbiased variance.
    let raw = channel_stats(x.data(), 5, 2, 16);
    assert!((rm.data()[0] as f64 - raw[0].0).abs() < 1e-6);
    assert!((rv.data()[1] as f64 - raw[1].1 * 80.0 / 79.0).abs() < 1e-5);
}
