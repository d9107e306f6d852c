//! Max pooling (window k, stride s, no padding) and global average pooling.

use crate::engine::{Tape, Tensor, Var, par};
use crate::{Error, Result};
use rayon::prelude::*;

/// Max pooling; backward routes each gradient to the saved argmax (first maximum).
pub fn max_pool2d(tape: &mut Tape, x: Var, k: usize, s: usize) -> Result<Var> {
    let xv = tape.value(x);
    if xv.shape().len() != 4 || k == 0 || s == 0 || xv.shape()[2] < k || xv.shape()[3] < k {
        return Err(Error::invalid(format!(
            "max_pool2d: window {k} stride {s} does not fit input {:?}",
            xv.shape()
        )));
    }
    let (n, c, h, w) = xv.nchw();
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut y = par::zeros(n * c * oh * ow);
    let mut arg = vec![0u32; y.len()];
    y.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .zip(xv.data().par_chunks(h * w))
        .for_each(|((yp, ap), xp)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut bi) = (f32::NEG_INFINITY, 0usize);
                    for ky in 0..k {
                        for kx in 0..k {
                            let i = (oy * s + ky) * w + ox * s + kx;
                            if xp[i] > best || (ky == 0 && kx == 0) {
                                best = xp[i];
                                bi = i;
                            }
                        }
                    }
                    yp[oy * ow + ox] = best;
                    ap[oy * ow + ox] = bi as u32;
                }
            }
        });
    let y = Tensor::new(&[n, c, oh, ow], y);
    Ok(tape.push(y, &[x], move |g, _vals, sink| {
        let dx = sink.get(x);
        dx.data_mut()
            .par_chunks_mut(h * w)
            .zip(g.data().par_chunks(oh * ow))
            .zip(arg.par_chunks(oh * ow))
            .for_each(|((dp, gp), ap)| {
                for (gv, &a) in gp.iter().zip(ap) {
                    dp[a as usize] += *gv;
                }
            });
    }))
}

/// Mean over H and W: (N, C, H, W) → (N, C).
pub fn global_avg_pool(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = tape.value(x);
    if xv.shape().len() != 4 {
        return Err(Error::invalid(format!(
            "global_avg_pool needs NCHW input, got {:?}",
            xv.shape()
        )));
    }
    let (n, c, h, w) = xv.nchw();
    let hw = h * w;
    let inv = 1.0 / hw as f32;
    let y: Vec<f32> = xv.data().chunks(hw).map(|p| p.iter().sum::<f32>() * inv).collect();
    Ok(tape.push(Tensor::new(&[n, c], y), &[x], move |g, _vals, sink| {
        let dx = sink.get(x);
        for (dp, gv) in dx.data_mut().chunks_mut(hw).zip(g.data()) {
            dp.iter_mut().for_each(|d| *d += gv * inv);
        }
    }))
}

#[cfg(test)]
mod tests {
    use crate::engine::gradcheck::{check, random};

    #[test]
    fn max_pool_gradient() {
        // Distinct values (a permutation) keep the argmax away from ties.
        let mut x = random(&[2, 2, 4, 6], 1);
        for (i, v) in x.data_mut().iter_mut().enumerate() {
            *v = ((i * 37) % 96) as f32 * 0.1;
        }
        check(&[x.clone()], |t, v| super::max_pool2d(t, v[0], 2, 2).unwrap(), 1e-2, 1e-3);
        check(&[x], |t, v| super::max_pool2d(t, v[0], 3, 1).unwrap(), 1e-2, 1e-3);
    }

    #[test]
    fn avg_pool_gradient() {
        check(
            &[random(&[2, 3, 3, 4], 2)],
            |t, v| super::global_avg_pool(t, v[0]).unwrap(),
            1e-2,
            1e-3,
        );
    }
}
