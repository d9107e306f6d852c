//! Batch normalisation over (N, H, W) per channel: one fused forward that keeps the
//! per-channel mean and 1/std, one closed-form backward (llm.c style).
//!
//! Train mode normalises with the batch statistics (biased variance) and updates the
//! running statistics with PyTorch's rule (unbiased variance, `momentum` weight on the
//! new value); eval mode normalises with the running statistics. Statistics are
//! accumulated in f64, one channel per task, so they do not depend on thread count.

use crate::engine::{par, Mode, Tape, Tensor, Var};
use crate::{Error, Result};
use rayon::prelude::*;

/// The running statistics a batchnorm layer carries between batches.
pub struct BatchNormState<'a> {
    pub running_mean: &'a mut Tensor,
    pub running_var: &'a mut Tensor,
    pub momentum: f32,
    pub eps: f32,
    /// Apply ReLU to the output (fused).
    pub relu: bool,
}

/// Per-channel (mean, biased variance) over N, H, W, in f64.
pub fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut s = 0.0f64;
            for i in 0..n {
                s += x[(i * c + ch) * hw..][..hw].iter().map(|&v| v as f64).sum::<f64>();
            }
            let m = s / (n * hw) as f64;
            let mut q = 0.0f64;
            for i in 0..n {
                q += x[(i * c + ch) * hw..][..hw].iter().map(|&v| (v as f64 - m) * (v as f64 - m)).sum::<f64>();
            }
            (m, q / (n * hw) as f64)
        })
        .collect()
}

/// y = (x − mean)·invstd·γ + β. Saved for backward: mean and invstd (the affine
/// parameters and x are read from the tape).
pub fn batch_norm2d(tape: &mut Tape, x: Var, gamma: Var, beta: Var, state: BatchNormState, mode: Mode) -> Result<Var> {
    let xv = tape.value(x);
    if xv.shape().len() != 4 {
        return Err(Error::invalid(format!("batchnorm2d needs NCHW input, got {:?}", xv.shape())));
    }
    let (n, c, h, w) = xv.nchw();
    let hw = h * w;
    for (what, t) in [("weight", tape.value(gamma)), ("bias", tape.value(beta))] {
        if t.shape() != [c] {
            return Err(Error::invalid(format!("batchnorm2d: {what} shape {:?}, expected [{c}]", t.shape())));
        }
    }
    let (mean, invstd): (Vec<f32>, Vec<f32>) = match mode {
        Mode::Train => {
            let stats = channel_stats(xv.data(), n, c, hw);
            let count = (n * hw) as f64;
            let m = state.momentum as f64;
            for (ch, &(mu, var)) in stats.iter().enumerate() {
                let unbiased = if count > 1.0 { var * count / (count - 1.0) } else { var };
                let rm = &mut state.running_mean.data_mut()[ch];
                *rm = ((1.0 - m) * *rm as f64 + m * mu) as f32;
                let rv = &mut state.running_var.data_mut()[ch];
                *rv = ((1.0 - m) * *rv as f64 + m * unbiased) as f32;
            }
            stats.iter().map(|&(mu, var)| (mu as f32, (1.0 / (var + state.eps as f64).sqrt()) as f32)).unzip()
        }
        Mode::Eval => state
            .running_mean
            .data()
            .iter()
            .zip(state.running_var.data())
            .map(|(&mu, &var)| (mu, (1.0 / (var as f64 + state.eps as f64).sqrt()) as f32))
            .unzip(),
    };
    let (g, b) = (tape.value(gamma).data(), tape.value(beta).data());
    // Fold into one scale and shift per channel.
    let scale: Vec<f32> = (0..c).map(|ch| invstd[ch] * g[ch]).collect();
    let shift: Vec<f32> = (0..c).map(|ch| b[ch] - mean[ch] * scale[ch]).collect();
    // One channel plane per chunk; the fused ReLU in the same pass.
    let relu = state.relu;
    let xd = xv.data();
    let y = par::from_chunks(xd.len(), hw, |i, len| {
        let (s, t) = (scale[i % c], shift[i % c]);
        xd[i * hw..][..len].iter().map(move |&v| if relu { (v * s + t).max(0.0) } else { v * s + t })
    });
    let y = Tensor::new(xv.shape(), y);
    Ok(tape.push(y, &[x, gamma, beta], move |gout, vals, sink| {
        let xv = vals.get(x);
        let gamma_v = vals.get(gamma).data().to_vec();
        // dy at elements `r`: through the fused ReLU, the gradient passes where the
        // output is positive (read in place: no masked copy).
        let (g, out) = (gout.data(), vals.output().data());
        let dy = move |r: std::ops::Range<usize>| g[r.clone()].iter().zip(&out[r]).map(move |(&g, &y)| if !relu || y > 0.0 { g } else { 0.0 });
        // Σ dy and Σ dy·x̂ per channel.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
                for i in 0..n {
                    let off = (i * c + ch) * hw;
                    for (d, &v) in dy(off..off + hw).zip(&xv.data()[off..off + hw]) {
                        sdy += d as f64;
                        sdyx += d as f64 * ((v - mean[ch]) * invstd[ch]) as f64;
                    }
                }
                (sdy, sdyx)
            })
            .collect();
        if sink.wants(x) {
            let m = (n * hw) as f32;
            // Train: dx = γ·invstd/M · (M·dy − Σdy − x̂·Σdy·x̂); eval: dx = γ·invstd·dy.
            let coef: Vec<(f32, f32, f32)> = (0..c)
                .map(|ch| match mode {
                    Mode::Train => (
                        gamma_v[ch] * invstd[ch],
                        (sums[ch].0 / m as f64) as f32,
                        (sums[ch].1 / m as f64) as f32,
                    ),
                    Mode::Eval => (gamma_v[ch] * invstd[ch], 0.0, 0.0),
                })
                .collect();
            // One channel plane per chunk, as in forward.
            let xd = xv.data();
            sink.accumulate(x, hw, |i, len| {
                let ch = i % c;
                let ((k, mdy, mdyx), (mu, is)) = (coef[ch], (mean[ch], invstd[ch]));
                dy(i * hw..i * hw + len).zip(&xd[i * hw..][..len]).map(move |(d, &v)| {
                    let xhat = (v - mu) * is;
                    k * (d - mdy - xhat * mdyx)
                })
            });
        }
        if sink.wants(gamma) {
            let dg = sink.get(gamma);
            for (o, s) in dg.data_mut().iter_mut().zip(&sums) {
                *o += s.1 as f32;
            }
        }
        if sink.wants(beta) {
            let db = sink.get(beta);
            for (o, s) in db.data_mut().iter_mut().zip(&sums) {
                *o += s.0 as f32;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{check, random};

    fn bn(mode: Mode, relu: bool) -> impl Fn(&mut Tape, &[Var]) -> Var {
        move |t, v| {
            let mut rm = random(&[3], 9);
            let mut rv = Tensor::full(&[3], 1.5);
            let st = BatchNormState { running_mean: &mut rm, running_var: &mut rv, momentum: 0.1, eps: 1e-5, relu };
            batch_norm2d(t, v[0], v[1], v[2], st, mode).unwrap()
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
        let st = BatchNormState { running_mean: &mut rm, running_var: &mut rv, momentum: 1.0, eps: 0.0, relu: false };
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
}
