//! Packing: copies a block of `A` or `B` into the panel layout the micro-kernels read
//! with unit stride, zero-padding the last panel. Packing is what makes the strides of
//! the caller's views (transposed or not) irrelevant to the kernel.

use super::kernel::{Kernel, MR, NR};
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
    for (q, panel) in
        dst[..nc.div_ceil(width) * kc * width].chunks_exact_mut(kc * width).enumerate()
    {
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
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Number of columns.
    fn cols(&self) -> usize;
    /// `dst[t] = self[r][c0 + t]` for every `t < dst.len()`.
    fn read_row(&self, r: usize, c0: usize, dst: &mut [f32]);
}

/// A [`RowSource`] as an operand, as it is.
pub struct Rows<S>(pub S);

/// Panel layout from `rows` source rows of `kc` values, `ld` apart:
/// `panel[p·width + j] = src[j·ld + p]`, zero for `j ≥ rows` (see [`interleave_rows`]).
pub(super) fn interleave(
    src: &[f32],
    ld: usize,
    rows: usize,
    kc: usize,
    panel: &mut [f32],
    width: usize,
) {
    assert!(rows <= MAX_ROWS, "interleave: {rows} rows, at most {MAX_ROWS}");
    let mut starts = [0usize; MAX_ROWS];
    starts[..rows].iter_mut().enumerate().for_each(|(j, s)| *s = j * ld);
    interleave_rows(src, &starts[..rows], kc, panel, width)
}

/// The widest panel [`interleave_rows`] lays out.
const MAX_ROWS: usize = 64;

/// Panel layout from `starts.len()` source rows of `kc` values, row j starting at
/// `starts[j]`: `panel[p·width + j] = src[starts[j] + p]`, zero for `j ≥ starts.len()`.
/// A transpose: done in registers, 16 steps of 8 or 16 rows at a time, where AVX-512 is
/// available (short panels and step tails by masked loads and stores), 8 × 8 blocks with
/// AVX2, else 8 steps at a time, so the rows' reads and the panel's writes stay within a
/// few cache lines. Pure data movement, so the result is the same either way.
pub fn interleave_rows(src: &[f32], starts: &[usize], kc: usize, panel: &mut [f32], width: usize) {
    interleave_rows_on(crate::engine::gemm::kernel(), src, starts, kc, panel, width)
}

/// [`interleave_rows`] on the instruction set `isa` (the tests run every one the CPU has).
pub(super) fn interleave_rows_on(
    isa: Kernel,
    src: &[f32],
    starts: &[usize],
    kc: usize,
    panel: &mut [f32],
    width: usize,
) {
    assert!(isa.supported(), "{} is not supported by this CPU", isa.name());
    let rows = starts.len();
    assert!(rows <= width && width <= MAX_ROWS && panel.len() >= kc * width);
    assert!(
        kc == 0 || starts.iter().all(|&s| s + kc <= src.len()),
        "interleave: a row runs past the source"
    );
    match isa {
        // SAFETY: AVX-512F is present (supported); the bounds the kernels rely on (rows ≤
        // width, every row's kc steps inside src, kc·width) are asserted above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if width == 8 => unsafe { interleave8_avx512(src, starts, kc, panel) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if width.is_multiple_of(16) => unsafe {
            interleave_avx512(src, starts, width, kc, panel)
        },
        // SAFETY: AVX2 is present (supported, or checked here on an AVX-512 CPU); the
        // bounds as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx2
            if width.is_multiple_of(8) && is_x86_feature_detected!("avx2") =>
        unsafe { interleave_avx2(src, starts, width, kc, panel) },
        _ => interleave_portable(src, starts, kc, panel, width),
    }
}

/// [`interleave_rows`] without SIMD.
fn interleave_portable(src: &[f32], starts: &[usize], kc: usize, panel: &mut [f32], width: usize) {
    const B: usize = 8;
    for p0 in (0..kc).step_by(B) {
        let pe = (p0 + B).min(kc);
        for j in 0..width {
            if let Some(&s) = starts.get(j) {
                for (p, &v) in (p0..pe).zip(&src[s + p0..s + pe]) {
                    panel[p * width + j] = v;
                }
            } else {
                (p0..pe).for_each(|p| panel[p * width + j] = 0.0);
            }
        }
    }
}

/// Up to R rows `j0..` of steps `p0..p0 + 16`, each as one vector: steps at or beyond
/// `kc` and rows at or beyond `starts.len()` read as zero (masked loads touch nothing there).
///
/// # Safety
/// AVX-512F; `p0 < kc`; every row j holds steps up to `kc` in `src` from `starts[j]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load_block<const R: usize>(
    src: &[f32],
    starts: &[usize],
    kc: usize,
    j0: usize,
    p0: usize,
) -> [std::arch::x86_64::__m512; R] {
    use std::arch::x86_64::*;
    let steps: u16 = if kc - p0 >= 16 { u16::MAX } else { (1u16 << (kc - p0)) - 1 };
    std::array::from_fn(|j| {
        if let Some(&s) = starts.get(j0 + j) {
            // SAFETY: row j0 + j holds steps p0.. (masked to < kc) from s (caller).
            unsafe { _mm512_maskz_loadu_ps(steps, src.as_ptr().add(s + p0)) }
        } else {
            _mm512_setzero_ps()
        }
    })
}

/// The first two rounds of a register transpose: within each 128-bit lane, the 4 × 4
/// blocks of rows `4q..4q + 4` (32- then 64-bit unpacks), so that `u[4q + e]` holds, in
/// lane l, step `4l + e` of rows `4q..4q + 4`. R is a multiple of 4.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn lane_transpose<const R: usize>(
    r: [std::arch::x86_64::__m512; R],
) -> [std::arch::x86_64::__m512; R] {
    use std::arch::x86_64::*;
    const { assert!(R.is_multiple_of(4)) };
    // t[2q], t[2q + 1]: rows 2q and 2q + 1 interleaved, steps 4l, 4l + 1 / 4l + 2, 4l + 3.
    let t: [__m512; R] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
    });
    let pd = _mm512_castps_pd;
    std::array::from_fn(|i| {
        // u[4q + e] from t[4q + (e / 2)] and t[4q + 2 + (e / 2)], low or high halves.
        let (q, e) = (i / 4, i % 4);
        let (a, c) = (pd(t[4 * q + e / 2]), pd(t[4 * q + 2 + e / 2]));
        _mm512_castpd_ps(if e % 2 == 0 {
            _mm512_unpacklo_pd(a, c)
        } else {
            _mm512_unpackhi_pd(a, c)
        })
    })
}

/// 16 × 16 blocks: load 16 rows of 16 steps, transpose in registers (32-, 64-bit
/// unpacks, then two rounds of 128-bit lane shuffles), store 16 steps of 16 rows.
/// Rows beyond `starts.len()` come out zero; steps beyond `kc` are not stored.
/// The test `every_transpose_path_lays_out_the_panel` holds it to the scalar loop.
///
/// # Safety
/// AVX-512F; `width` a multiple of 16, `starts.len() ≤ width`, the rows in `src` as
/// [`interleave_rows`] asserts, and `panel` at least `kc·width` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_avx512(
    src: &[f32],
    starts: &[usize],
    width: usize,
    kc: usize,
    panel: &mut [f32],
) {
    use std::arch::x86_64::*;
    for j0 in (0..width).step_by(16) {
        for p0 in (0..kc).step_by(16) {
            // SAFETY: the caller's bounds, as `load_block` needs them.
            let r: [__m512; 16] = unsafe { load_block(src, starts, kc, j0, p0) };
            // u[4q + e] holds, in each 128-bit lane l, step 4l + e of rows 4q..4q+4.
            let u = lane_transpose(r);
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
                for (p, x) in [(p0 + e, lo), (p0 + 8 + e, hi)] {
                    if p < kc {
                        // SAFETY: step p < kc of a panel of kc·width values.
                        unsafe { _mm512_storeu_ps(panel.as_mut_ptr().add(p * width + j0), x) };
                    }
                }
            }
        }
    }
}

/// Eight rows (an A panel, MR = 8) in blocks of 16 steps: load 8 rows of 16 steps,
/// transpose in registers (32-, 64-bit unpacks, then two rounds of 128-bit lane
/// shuffles), store 16 steps of 8 rows as 8 vectors of two steps each. Rows beyond
/// `starts.len()` come out zero; steps beyond `kc` are not stored. The test
/// `every_transpose_path_lays_out_the_panel` holds it to the scalar loop.
///
/// # Safety
/// As [`interleave_avx512`] with `width` 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave8_avx512(src: &[f32], starts: &[usize], kc: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    const _: () = assert!(MR == 8);
    for p0 in (0..kc).step_by(16) {
        // SAFETY: the caller's bounds, as `load_block` needs them.
        let r: [__m512; 8] = unsafe { load_block(src, starts, kc, 0, p0) };
        // u[e] (u[4 + e]): in lane l, step 4l + e of rows 0..4 (rows 4..8).
        let u = lane_transpose(r);
        // v[e] holds lanes 0, 1 of u[e] then of u[4 + e]; w[e] lanes 2, 3 likewise.
        let v: [__m512; 4] = std::array::from_fn(|e| _mm512_shuffle_f32x4::<0x44>(u[e], u[4 + e]));
        let w: [__m512; 4] = std::array::from_fn(|e| _mm512_shuffle_f32x4::<0xee>(u[e], u[4 + e]));
        // Output vector m: steps 2m and 2m + 1 (= 4l + e, 4l + e + 1 with e even), each
        // as rows 0..4 then rows 4..8; only the steps below kc are stored.
        let mut out = |m: usize, x: __m512| {
            let p = p0 + 2 * m;
            if p >= kc {
                return; // no step of this vector is in the panel (nor may its address be formed)
            }
            let half: u16 = if p + 1 < kc { u16::MAX } else { 0x00ff };
            // SAFETY: step p < kc starts inside the panel of kc·8 values, and the mask
            // stores step p + 1 only when it is below kc too.
            unsafe { _mm512_mask_storeu_ps(panel.as_mut_ptr().add(p * 8), half, x) };
        };
        for e in [0, 2] {
            let m = e / 2;
            out(m, _mm512_shuffle_f32x4::<0x88>(v[e], v[e + 1]));
            out(m + 2, _mm512_shuffle_f32x4::<0xdd>(v[e], v[e + 1]));
            out(m + 4, _mm512_shuffle_f32x4::<0x88>(w[e], w[e + 1]));
            out(m + 6, _mm512_shuffle_f32x4::<0xdd>(w[e], w[e + 1]));
        }
    }
}

/// 8 × 8 blocks: load 8 rows of 8 steps (masked past `kc`; rows beyond `starts.len()`
/// are zero), transpose in registers (32-, 64-bit unpacks, then a 128-bit lane swap),
/// store the block's steps below `kc`. The test `every_transpose_path_lays_out_the_panel`
/// holds it to the scalar loop.
///
/// # Safety
/// AVX2; `width` a multiple of 8, `starts.len() ≤ width`, the rows in `src` as
/// [`interleave_rows`] asserts, and `panel` at least `kc·width` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interleave_avx2(
    src: &[f32],
    starts: &[usize],
    width: usize,
    kc: usize,
    panel: &mut [f32],
) {
    use std::arch::x86_64::*;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for p0 in (0..kc).step_by(8) {
        // Lane i loads step p0 + i only where that is below kc.
        let steps = _mm256_cmpgt_epi32(_mm256_set1_epi32((kc - p0).min(8) as i32), lanes);
        for j0 in (0..width).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|j| match starts.get(j0 + j) {
                // SAFETY: row j0 + j holds steps up to kc from s; the mask stops there.
                Some(&s) => unsafe { _mm256_maskload_ps(src.as_ptr().add(s + p0), steps) },
                None => _mm256_setzero_ps(),
            });
            // t: rows 2q, 2q + 1 interleaved; u[4h + e]: in each 128-bit lane l, step
            // 4l + e of rows 4h..4h + 4.
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 { _mm256_unpacklo_ps(a, b) } else { _mm256_unpackhi_ps(a, b) }
            });
            let u: [__m256; 8] = std::array::from_fn(|i| {
                let (h, e) = (i / 4, i % 4);
                let (a, c) = (t[4 * h + e / 2], t[4 * h + 2 + e / 2]);
                if e % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(a, c)
                } else {
                    _mm256_shuffle_ps::<0xee>(a, c)
                }
            });
            for e in 0..4 {
                // Step p0 + e: lane 0 of rows 0..4 and of rows 4..8; step p0 + 4 + e: lane 1.
                let lo = _mm256_permute2f128_ps::<0x20>(u[e], u[4 + e]);
                let hi = _mm256_permute2f128_ps::<0x31>(u[e], u[4 + e]);
                for (p, x) in [(p0 + e, lo), (p0 + 4 + e, hi)] {
                    if p < kc {
                        // SAFETY: step p < kc of a panel of kc·width values, j0 + 8 ≤ width.
                        unsafe { _mm256_storeu_ps(panel.as_mut_ptr().add(p * width + j0), x) };
                    }
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

    /// Rows start anywhere (out of order, overlapping, as a convolution's patch rows
    /// do in a padded image) or at a constant stride (a stored matrix); every path lays
    /// out the same panel and writes nothing beyond its kc steps.
    #[test]
    fn every_transpose_path_lays_out_the_panel() {
        for (rows, kc, width) in [
            (32, 48, 32),
            (32, 37, 32),
            (16, 16, 16),
            (5, 20, 8),
            (32, 3, 32),
            (8, 48, 8),
            (8, 37, 8),
            (8, 16, 8),
            (8, 15, 8),
            (8, 1, 8),
            (3, 33, 8),
            (27, 50, 32),
            (17, 7, 32),
            (1, 16, 16),
            (0, 9, 8),
        ] {
            let ld = kc + 3;
            let src: Vec<f32> = (0..rows * ld + 40).map(|i| i as f32).collect();
            let strided: Vec<usize> = (0..rows).map(|j| j * ld).collect();
            let scattered: Vec<usize> =
                (0..rows).map(|j| (j * 7919) % (rows * ld + 40 - kc)).collect();
            for starts in [&strided, &scattered] {
                // Every instruction set the CPU has (portable included), and the scalar loop.
                let isas =
                    Kernel::ALL.into_iter().filter(|k| k.supported()).map(Some).chain([None]);
                for isa in isas {
                    let path = isa.map_or("scalar loop", |k| k.name());
                    let mut panel = vec![f32::NAN; kc * width + 5];
                    match isa {
                        Some(k) => interleave_rows_on(k, &src, starts, kc, &mut panel, width),
                        None => interleave_portable(&src, starts, kc, &mut panel, width),
                    }
                    for p in 0..kc {
                        for j in 0..width {
                            let want = if j < rows { src[starts[j] + p] } else { 0.0 };
                            assert_eq!(
                                panel[p * width + j],
                                want,
                                "{path}: step {p} row {j} ({rows}×{kc}, width {width}, starts {starts:?})"
                            );
                        }
                    }
                    // Nothing written beyond the kc steps.
                    assert!(
                        panel[kc * width..].iter().all(|v| v.is_nan()),
                        "{path}: wrote beyond {kc} steps ({rows} rows, width {width})"
                    );
                }
            }
            // The constant-stride form is the same layout.
            let (mut a, mut b) = (vec![f32::NAN; kc * width], vec![f32::NAN; kc * width]);
            interleave(&src, ld, rows, kc, &mut a, width);
            interleave_rows(&src, &strided, kc, &mut b, width);
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
