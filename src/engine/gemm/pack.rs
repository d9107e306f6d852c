//! Packing: copies a block of `A` or `B` into the panel layout the micro-kernels read
//! with unit stride, zero-padding the last panel. Packing is what makes the strides of
//! the caller's views (transposed or not) irrelevant to the kernel.

use super::kernel::{MR, NR};
use super::{MatRef, Operand};
use crate::engine::scratch::Scratch;

/// `A[i0 .. i0+mc][p0 .. p0+kc]` as panels of MR rows: panel q holds
/// `dst[q·kc·MR + p·MR + i] = A[i0 + q·MR + i][p0 + p]` — the B layout of `Aᵀ`.
pub fn pack_a(a: &MatRef, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    panels(&a.t(), p0, kc, i0, mc, dst, MR)
}

/// `B[p0 .. p0+kc][j0 .. j0+nc]` as panels of NR columns: panel q holds
/// `dst[q·kc·NR + p·NR + j] = B[p0 + p][j0 + q·NR + j]`.
pub fn pack_b(b: &MatRef, p0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
    panels(b, p0, kc, j0, nc, dst, NR)
}

/// Panels `width` columns wide: `dst[q·kc·width + p·width + j] = B[p0 + p][j0 + q·width + j]`,
/// zero beyond column `j0 + nc`.
fn panels(b: &MatRef, p0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32], width: usize) {
    for (q, panel) in dst[..nc.div_ceil(width) * kc * width].chunks_exact_mut(kc * width).enumerate() {
        let cols = width.min(nc - q * width);
        let c0 = j0 + q * width;
        if b.cs == 1 {
            // Row-contiguous: `width` adjacent values per step.
            for (p, step) in panel.chunks_exact_mut(width).enumerate() {
                step[..cols].copy_from_slice(&b.data[(p0 + p) * b.rs + c0..][..cols]);
                step[cols..].fill(0.0);
            }
        } else if b.rs == 1 {
            // Column-contiguous (a transposed row-major matrix): a transpose.
            interleave(&b.data[c0 * b.cs + p0..], b.cs, cols, kc, panel, width);
        } else {
            for (p, step) in panel.chunks_exact_mut(width).enumerate() {
                for (j, v) in step.iter_mut().enumerate() {
                    *v = if j < cols { b.data[(p0 + p) * b.rs + (c0 + j) * b.cs] } else { 0.0 };
                }
            }
        }
    }
}

/// A matrix that is read one row segment at a time, never stored whole: the im2col
/// patches of a convolution, a group of NCHW images seen as `[C][images·pixels]`.
pub trait RowSource {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// `dst[t] = self[r][c0 + t]` for every `t < dst.len()`.
    fn read_row(&self, r: usize, c0: usize, dst: &mut [f32]);
}

/// A [`RowSource`] as an operand, as it is.
pub struct Rows<S>(pub S);

/// Panel layout from `rows` source rows of `kc` values, `ld` apart:
/// `panel[p·width + j] = src[j·ld + p]`, zero for `j ≥ rows`. A transpose: done 16 × 16
/// in registers where AVX-512 is available, else 8 steps at a time, so the rows'
/// reads and the panel's writes stay within a few cache lines.
/// Pure data movement, so the result is the same either way.
pub(super) fn interleave(src: &[f32], ld: usize, rows: usize, kc: usize, panel: &mut [f32], width: usize) {
    assert!(rows <= width && panel.len() >= kc * width);
    assert!(rows == 0 || kc == 0 || (rows - 1) * ld + kc <= src.len());
    let mut done = 0; // steps already laid out for every row
    #[cfg(target_arch = "x86_64")]
    if rows == width && width.is_multiple_of(16) && kc >= 16 && is_x86_feature_detected!("avx512f") {
        done = kc - kc % 16;
        // SAFETY: rows·ld and kc·width bounds asserted above; AVX-512F detected.
        unsafe { interleave_avx512(src, ld, width, done, panel) };
    }
    const B: usize = 8;
    for p0 in (done..kc).step_by(B) {
        let pe = (p0 + B).min(kc);
        for j in 0..width {
            if j < rows {
                for (p, &v) in (p0..pe).zip(&src[j * ld + p0..j * ld + pe]) {
                    panel[p * width + j] = v;
                }
            } else {
                (p0..pe).for_each(|p| panel[p * width + j] = 0.0);
            }
        }
    }
}

/// 16 × 16 blocks: load 16 rows of 16 steps, transpose in registers (32-, 64-bit
/// unpacks, then two rounds of 128-bit lane shuffles), store 16 steps of 16 rows.
/// The test `avx512_transpose_matches_scalar` holds it to the scalar loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_avx512(src: &[f32], ld: usize, width: usize, kc: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    for j0 in (0..width).step_by(16) {
        for p0 in (0..kc).step_by(16) {
            // SAFETY: rows j0..j0+16 < width = rows, steps p0..p0+16 ≤ kc (caller).
            unsafe {
                let r: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(src.as_ptr().add((j0 + j) * ld + p0)));
                let mut t = [_mm512_setzero_ps(); 16];
                for q in 0..8 {
                    t[2 * q] = _mm512_unpacklo_ps(r[2 * q], r[2 * q + 1]);
                    t[2 * q + 1] = _mm512_unpackhi_ps(r[2 * q], r[2 * q + 1]);
                }
                let mut u = [_mm512_setzero_ps(); 16];
                for q in 0..4 {
                    let (a, b, c, d) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
                    u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
                    u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
                    u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
                    u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
                }
                // u[4q + e] holds, in each 128-bit lane l, step 4l + e of rows 4q..4q+4.
                let mut v = [_mm512_setzero_ps(); 16];
                for e in 0..4 {
                    v[e] = _mm512_shuffle_f32x4::<0x88>(u[e], u[4 + e]);
                    v[4 + e] = _mm512_shuffle_f32x4::<0xdd>(u[e], u[4 + e]);
                    v[8 + e] = _mm512_shuffle_f32x4::<0x88>(u[8 + e], u[12 + e]);
                    v[12 + e] = _mm512_shuffle_f32x4::<0xdd>(u[8 + e], u[12 + e]);
                }
                for e in 0..8 {
                    let lo = _mm512_shuffle_f32x4::<0x88>(v[e], v[8 + e]);
                    let hi = _mm512_shuffle_f32x4::<0xdd>(v[e], v[8 + e]);
                    _mm512_storeu_ps(panel.as_mut_ptr().add((p0 + e) * width + j0), lo);
                    _mm512_storeu_ps(panel.as_mut_ptr().add((p0 + 8 + e) * width + j0), hi);
                }
            }
        }
    }
}

impl<S: RowSource> Operand for Rows<S> {
    fn rows(&self) -> usize {
        self.0.rows()
    }
    fn cols(&self) -> usize {
        self.0.cols()
    }
    fn pack_a(&self, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
        // Rows read from the source before they are laid into panels (each written by
        // `read_row` before `interleave` reads it).
        let mut rows_buf = Scratch::take(MR * kc);
        for (q, panel) in dst[..mc.div_ceil(MR) * kc * MR].chunks_exact_mut(kc * MR).enumerate() {
            let rows = MR.min(mc - q * MR);
            for i in 0..rows {
                self.0.read_row(i0 + q * MR + i, p0, &mut rows_buf[i * kc..(i + 1) * kc]);
            }
            interleave(&rows_buf, kc, rows, kc, panel, MR);
        }
    }
    fn pack_b(&self, p0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        // Each source row once, whole, then cut into the panels.
        let mut row = Scratch::take(nc);
        for p in 0..kc {
            self.0.read_row(p0 + p, j0, &mut row);
            for (q, seg) in row.chunks(NR).enumerate() {
                let step = &mut dst[q * kc * NR + p * NR..][..NR];
                step[..seg.len()].copy_from_slice(seg);
                step[seg.len()..].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx512_transpose_matches_scalar() {
        for (rows, kc, width) in [(32, 48, 32), (32, 37, 32), (16, 16, 16), (5, 20, 8), (32, 3, 32)] {
            let ld = kc + 3;
            let src: Vec<f32> = (0..rows * ld).map(|i| i as f32).collect();
            let mut panel = vec![f32::NAN; kc * width];
            interleave(&src, ld, rows, kc, &mut panel, width);
            for p in 0..kc {
                for j in 0..width {
                    let want = if j < rows { src[j * ld + p] } else { 0.0 };
                    assert_eq!(panel[p * width + j], want, "step {p} row {j} ({rows}×{kc}, width {width})");
                }
            }
        }
    }
}
