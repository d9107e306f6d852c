//! Batch normalisation over (N, H, W) per channel: one fused forward that keeps the
//! per-channel mean and 1/std, one closed-form backward (llm.c style).
//!
//! Train mode normalises with the batch statistics (biased variance) and updates the
//! running statistics with PyTorch's rule (unbiased variance, `momentum` weight on the
//! new value); eval mode normalises with the running statistics. Statistics are
//! accumulated in f64, one channel per task, so they do not depend on thread count.

use crate::engine::{Mode, Tape, Tensor, Var, par};
use crate::{Error, Result};
use rayon::prelude::*;

/// The running statistics a batchnorm layer carries between batches.
pub struct BatchNormState<'a> {
    /// Running per-channel mean, (C); updated in train mode.
    pub running_mean: &'a mut Tensor,
    /// Running per-channel (unbiased) variance, (C); updated in train mode.
    pub running_var: &'a mut Tensor,
    /// Weight of the batch's statistics in the running update (PyTorch's `momentum`).
    pub momentum: f32,
    /// Added to the variance before its square root.
    pub eps: f32,
    /// Apply ReLU to the output (fused).
    pub relu: bool,
}

/// Per-channel (mean, biased variance) over N, H, W, in f64: per channel, each image's
/// plane summed in order (as `Iterator::sum`) and the planes' sums added in image
/// order; the squared deviations likewise.
///
/// Each sum is one chain of dependent f64 adds, so its speed is the add's latency. Four
/// channels' chains advance in lockstep, one vector add per element, where the CPU has
/// AVX (the private module `lockstep`); every chain keeps its order, so the bits are the plain chains'.
pub fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    assert!(x.len() >= n * c * hw);
    by_channel_blocks(c, |ch0| lockstep::stats(x, n, c, hw, ch0), |ch| plain_stats(x, n, c, hw, ch))
}

/// One pair of sums per channel, in parallel over blocks of four channels: by `four`
/// (the lockstep path) where it runs on this CPU, else channel by channel by `one`.
fn by_channel_blocks(
    c: usize,
    four: impl Fn(usize) -> Option<[(f64, f64); 4]> + Sync,
    one: impl Fn(usize) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c.div_ceil(4))
        .into_par_iter()
        .flat_map_iter(|b| {
            let chs = 4 * b..(4 * b + 4).min(c);
            match (chs.len() == 4).then(|| four(chs.start)).flatten() {
                Some(sums) => sums.to_vec(),
                None => chs.map(&one).collect(),
            }
        })
        .collect()
}

/// One channel's [`channel_stats`], written plainly.
fn plain_stats(x: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> (f64, f64) {
    let mut s = 0.0f64;
    for i in 0..n {
        s += x[(i * c + ch) * hw..][..hw].iter().map(|&v| v as f64).sum::<f64>();
    }
    let m = s / (n * hw) as f64;
    let mut q = 0.0f64;
    for i in 0..n {
        q += x[(i * c + ch) * hw..][..hw]
            .iter()
            .map(|&v| (v as f64 - m) * (v as f64 - m))
            .sum::<f64>();
    }
    (m, q / (n * hw) as f64)
}

/// What backward's per-channel sums read: dY, the output (for the fused ReLU's mask)
/// and x, all NCHW, with the forward's mean and 1/std.
struct GradSums<'a> {
    g: &'a [f32],
    out: &'a [f32],
    x: &'a [f32],
    mean: &'a [f32],
    invstd: &'a [f32],
    relu: bool,
    n: usize,
    c: usize,
    hw: usize,
}

impl GradSums<'_> {
    /// (Σ dy, Σ dy·x̂) per channel, each one chain over the images' planes in order,
    /// with dy passed by the fused ReLU where the output is positive and
    /// x̂ = (x − mean)·invstd in f32. Four channels in lockstep where AVX is present.
    fn all(&self) -> Vec<(f64, f64)> {
        let (n, c, hw) = (self.n, self.c, self.hw);
        assert!(
            self.g.len() >= n * c * hw
                && self.out.len() >= n * c * hw
                && self.x.len() >= n * c * hw
        );
        assert!(self.mean.len() >= c && self.invstd.len() >= c);
        by_channel_blocks(c, |ch0| lockstep::grad_sums(self, ch0), |ch| self.plain(ch))
    }

    /// One channel's sums, written plainly.
    fn plain(&self, ch: usize) -> (f64, f64) {
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        for i in 0..self.n {
            let off = (i * self.c + ch) * self.hw;
            for p in off..off + self.hw {
                let d = if !self.relu || self.out[p] > 0.0 { self.g[p] } else { 0.0 };
                sdy += d as f64;
                sdyx += d as f64 * ((self.x[p] - self.mean[ch]) * self.invstd[ch]) as f64;
            }
        }
        (sdy, sdyx)
    }
}

/// Four channels' sums in lockstep: lane q of a 4 × f64 vector is channel ch0 + q's
/// chain. Four elements of each of the four planes are loaded, widened to f64 and
/// transposed in registers, so that vector k holds element k of every plane; the
/// chains then take them in order, one vector add per element. The same IEEE
/// operations, in the same order, as the plain loops, so the same bits (the test
/// `lockstep_sums_are_the_plain_chains` holds them to it).
mod lockstep {
    use super::GradSums;

    /// [`super::channel_stats`] of channels `ch0..ch0 + 4`, where the CPU has AVX.
    pub(super) fn stats(
        x: &[f32],
        n: usize,
        c: usize,
        hw: usize,
        ch0: usize,
    ) -> Option<[(f64, f64); 4]> {
        assert!(ch0 + 4 <= c && x.len() >= n * c * hw);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present; the channels' planes lie in x (asserted above).
            return Some(unsafe { avx::stats(x, n, c, hw, ch0) });
        }
        None
    }

    /// [`GradSums::all`] of channels `ch0..ch0 + 4`, where the CPU has AVX.
    pub(super) fn grad_sums(s: &GradSums, ch0: usize) -> Option<[(f64, f64); 4]> {
        let len = s.n * s.c * s.hw;
        assert!(
            ch0 + 4 <= s.c
                && s.g.len() >= len
                && s.out.len() >= len
                && s.x.len() >= len
                && s.mean.len() >= s.c
                && s.invstd.len() >= s.c
        );
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present; the slices' sizes are asserted above.
            return Some(unsafe { avx::grad_sums(s, ch0) });
        }
        None
    }

    #[cfg(target_arch = "x86_64")]
    mod avx {
        use super::GradSums;
        use std::arch::x86_64::*;

        /// Rows a, b, c, d → vectors k = 0..4 holding (a[k], b[k], c[k], d[k]).
        #[inline]
        #[target_feature(enable = "avx")]
        fn transpose(r: [__m256d; 4]) -> [__m256d; 4] {
            let t0 = _mm256_unpacklo_pd(r[0], r[1]);
            let t1 = _mm256_unpackhi_pd(r[0], r[1]);
            let t2 = _mm256_unpacklo_pd(r[2], r[3]);
            let t3 = _mm256_unpackhi_pd(r[2], r[3]);
            [
                _mm256_permute2f128_pd::<0x20>(t0, t2),
                _mm256_permute2f128_pd::<0x20>(t1, t3),
                _mm256_permute2f128_pd::<0x31>(t0, t2),
                _mm256_permute2f128_pd::<0x31>(t1, t3),
            ]
        }

        /// Four elements `p..p + 4` of each plane as f32.
        ///
        /// # Safety
        /// AVX; every plane holds `p + 4` values.
        #[inline]
        #[target_feature(enable = "avx")]
        unsafe fn load(planes: &[&[f32]; 4], p: usize) -> [__m128; 4] {
            // SAFETY: p + 4 ≤ each plane's length (caller).
            std::array::from_fn(|q| unsafe { _mm_loadu_ps(planes[q].as_ptr().add(p)) })
        }

        /// Σ over one plane per lane of `term(q, v)`, from −0.0 as `Iterator::sum`
        /// starts; `term4` is the same term on four elements of plane q.
        ///
        /// # Safety
        /// AVX; the planes have equal lengths.
        #[inline]
        #[target_feature(enable = "avx")]
        unsafe fn plane_sums(
            planes: [&[f32]; 4],
            term4: impl Fn(usize, __m128) -> __m256d,
            term: impl Fn(usize, f32) -> f64,
        ) -> [f64; 4] {
            let hw = planes[0].len();
            let mut t = _mm256_set1_pd(-0.0);
            let mut p = 0;
            while p + 4 <= hw {
                // SAFETY: p + 4 ≤ hw.
                let v = unsafe { load(&planes, p) };
                for e in transpose(std::array::from_fn(|q| term4(q, v[q]))) {
                    t = _mm256_add_pd(t, e);
                }
                p += 4;
            }
            let mut out = [0.0f64; 4];
            // SAFETY: four f64 into four f64.
            unsafe { _mm256_storeu_pd(out.as_mut_ptr(), t) };
            for (q, o) in out.iter_mut().enumerate() {
                for &v in &planes[q][p..] {
                    *o += term(q, v);
                }
            }
            out
        }

        /// [`super::stats`], on AVX.
        ///
        /// # Safety
        /// AVX; `x` holds n planes of hw for each of c > ch0 + 3 channels.
        #[target_feature(enable = "avx")]
        pub(super) unsafe fn stats(
            x: &[f32],
            n: usize,
            c: usize,
            hw: usize,
            ch0: usize,
        ) -> [(f64, f64); 4] {
            let planes = |i: usize| -> [&[f32]; 4] {
                std::array::from_fn(|q| &x[(i * c + ch0 + q) * hw..][..hw])
            };
            let count = (n * hw) as f64;
            let mut s = [0.0f64; 4];
            for i in 0..n {
                // SAFETY: AVX (caller); planes of equal length.
                let t =
                    unsafe { plane_sums(planes(i), |_, v| _mm256_cvtps_pd(v), |_, v| v as f64) };
                (0..4).for_each(|q| s[q] += t[q]);
            }
            let m = s.map(|s| s / count);
            let mut var = [0.0f64; 4];
            for i in 0..n {
                let sq4 = |q: usize, v: __m128| {
                    let d = _mm256_sub_pd(_mm256_cvtps_pd(v), _mm256_set1_pd(m[q]));
                    _mm256_mul_pd(d, d)
                };
                // SAFETY: as above.
                let t = unsafe {
                    plane_sums(planes(i), sq4, |q, v| (v as f64 - m[q]) * (v as f64 - m[q]))
                };
                (0..4).for_each(|q| var[q] += t[q]);
            }
            std::array::from_fn(|q| (m[q], var[q] / count))
        }

        /// [`super::grad_sums`], on AVX: both chains, continued across
        /// the images.
        ///
        /// # Safety
        /// AVX; the slices hold what [`GradSums::all`] asserts, and c > ch0 + 3.
        #[target_feature(enable = "avx")]
        pub(super) unsafe fn grad_sums(s: &GradSums, ch0: usize) -> [(f64, f64); 4] {
            let (mut sdy, mut sdyx) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            let mu: [__m128; 4] = std::array::from_fn(|q| _mm_set1_ps(s.mean[ch0 + q]));
            let is: [__m128; 4] = std::array::from_fn(|q| _mm_set1_ps(s.invstd[ch0 + q]));
            let zero = _mm_setzero_ps();
            let (mut tail_dy, mut tail_dyx) = ([0.0f64; 4], [0.0f64; 4]);
            for i in 0..s.n {
                let at = |q: usize| (i * s.c + ch0 + q) * s.hw;
                let g: [&[f32]; 4] = std::array::from_fn(|q| &s.g[at(q)..][..s.hw]);
                let y: [&[f32]; 4] = std::array::from_fn(|q| &s.out[at(q)..][..s.hw]);
                let x: [&[f32]; 4] = std::array::from_fn(|q| &s.x[at(q)..][..s.hw]);
                let mut p = 0;
                while p + 4 <= s.hw {
                    // SAFETY: p + 4 ≤ hw, every plane's length.
                    let (gv, yv, xv) = unsafe { (load(&g, p), load(&y, p), load(&x, p)) };
                    let mut d = [_mm256_setzero_pd(); 4];
                    let mut dx = [_mm256_setzero_pd(); 4];
                    for q in 0..4 {
                        // dy where the output is positive (or always, without ReLU), else 0.
                        let dq = if s.relu {
                            _mm_and_ps(gv[q], _mm_cmpgt_ps(yv[q], zero))
                        } else {
                            gv[q]
                        };
                        let xhat = _mm_mul_ps(_mm_sub_ps(xv[q], mu[q]), is[q]);
                        d[q] = _mm256_cvtps_pd(dq);
                        dx[q] = _mm256_mul_pd(d[q], _mm256_cvtps_pd(xhat));
                    }
                    for (e, f) in transpose(d).into_iter().zip(transpose(dx)) {
                        sdy = _mm256_add_pd(sdy, e);
                        sdyx = _mm256_add_pd(sdyx, f);
                    }
                    p += 4;
                }
                if p < s.hw {
                    // The chains leave the vectors for the tail and come back after it.
                    // SAFETY: four f64 each.
                    unsafe {
                        (
                            _mm256_storeu_pd(tail_dy.as_mut_ptr(), sdy),
                            _mm256_storeu_pd(tail_dyx.as_mut_ptr(), sdyx),
                        )
                    };
                    for q in 0..4 {
                        for k in p..s.hw {
                            let d = if !s.relu || y[q][k] > 0.0 { g[q][k] } else { 0.0 };
                            tail_dy[q] += d as f64;
                            tail_dyx[q] +=
                                d as f64 * ((x[q][k] - s.mean[ch0 + q]) * s.invstd[ch0 + q]) as f64;
                        }
                    }
                    // SAFETY: four f64 each.
                    (sdy, sdyx) = unsafe {
                        (_mm256_loadu_pd(tail_dy.as_ptr()), _mm256_loadu_pd(tail_dyx.as_ptr()))
                    };
                }
            }
            let (mut a, mut b) = ([0.0f64; 4], [0.0f64; 4]);
            // SAFETY: four f64 each.
            unsafe {
                (_mm256_storeu_pd(a.as_mut_ptr(), sdy), _mm256_storeu_pd(b.as_mut_ptr(), sdyx))
            };
            std::array::from_fn(|q| (a[q], b[q]))
        }
    }
}

/// 1/√(var + ε) per channel, as eval mode computes it (in f64, rounded once).
pub fn invstd(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter().map(|&v| (1.0 / (v as f64 + eps as f64).sqrt()) as f32).collect()
}

/// The per-channel `scale = invstd·γ` and `shift = β − mean·scale` that the op applies as
/// `x·scale + shift` (a deployable model applies a batchnorm with the same two numbers,
/// so that it computes what the network computes, bit for bit).
pub fn fold(mean: &[f32], invstd: &[f32], gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = invstd.iter().zip(gamma).map(|(&s, &g)| s * g).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((&b, &m), &s)| b - m * s).collect();
    (scale, shift)
}

/// y = (x − mean)·invstd·γ + β. Saved for backward: mean and invstd (the affine
/// parameters and x are read from the tape).
pub fn batch_norm2d(
    tape: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    state: BatchNormState,
    mode: Mode,
) -> Result<Var> {
    let xv = tape.value(x);
    if xv.shape().len() != 4 {
        return Err(Error::invalid(format!("batchnorm2d needs NCHW input, got {:?}", xv.shape())));
    }
    let (n, c, h, w) = xv.nchw();
    let hw = h * w;
    for (what, t) in [("weight", tape.value(gamma)), ("bias", tape.value(beta))] {
        if t.shape() != [c] {
            return Err(Error::invalid(format!(
                "batchnorm2d: {what} shape {:?}, expected [{c}]",
                t.shape()
            )));
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
            stats
                .iter()
                .map(|&(mu, var)| (mu as f32, (1.0 / (var + state.eps as f64).sqrt()) as f32))
                .unzip()
        }
        Mode::Eval => {
            (state.running_mean.data().to_vec(), invstd(state.running_var.data(), state.eps))
        }
    };
    let (g, b) = (tape.value(gamma).data(), tape.value(beta).data());
    let (scale, shift) = fold(&mean, &invstd, g, b);
    // One channel plane per chunk; the fused ReLU in the same pass.
    let relu = state.relu;
    let xd = xv.data();
    let y = par::from_chunks(xd.len(), hw, |i, len| {
        let (s, t) = (scale[i % c], shift[i % c]);
        xd[i * hw..][..len].iter().map(
            move |&v| {
                if relu { (v * s + t).max(0.0) } else { v * s + t }
            },
        )
    });
    let y = Tensor::new(xv.shape(), y);
    Ok(tape.push(y, &[x, gamma, beta], move |gout, vals, sink| {
        let xv = vals.get(x);
        let gamma_v = vals.get(gamma).data().to_vec();
        // dy at elements `r`: through the fused ReLU, the gradient passes where the
        // output is positive (read in place: no masked copy).
        let (g, out) = (gout.data(), vals.output().data());
        let dy = move |r: std::ops::Range<usize>| {
            g[r.clone()]
                .iter()
                .zip(&out[r])
                .map(move |(&g, &y)| if !relu || y > 0.0 { g } else { 0.0 })
        };
        // Σ dy and Σ dy·x̂ per channel.
        let sums =
            GradSums { g, out, x: xv.data(), mean: &mean, invstd: &invstd, relu, n, c, hw }.all();
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
mod tests;
