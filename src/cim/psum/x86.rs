//! The AVX-512 VNNI and AVX2 paths of [`super::plane_product`] (the module docs of
//! `psum.rs` describe each).

use std::arch::x86_64::*;

/// Channels per block of accumulators.
const R: usize = 8;

/// # Safety
/// AVX-512 F + VNNI; `w`, `a`, `out` hold `(cout − 1)·ws + quads`, `quads·cols`,
/// `cout·cols` (checked by `plane_product`).
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn vnni(
    w: &[i32],
    ws: usize,
    a: &[u32],
    cout: usize,
    quads: usize,
    cols: usize,
    out: &mut [i32],
    accumulate: bool,
) {
    let mut co0 = 0;
    while co0 < cout {
        let rows = R.min(cout - co0);
        // SAFETY: forwarded (rows ≤ R channels from co0 < cout).
        unsafe {
            if rows == R {
                vnni_block::<R>(w, ws, a, co0, quads, cols, out, accumulate)
            } else {
                (co0..cout).for_each(|c| vnni_block::<1>(w, ws, a, c, quads, cols, out, accumulate))
            }
        }
        co0 += rows;
    }
}

/// Channels `co0..co0 + N`, every column, 32 at a time (masked at the end).
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn vnni_block<const N: usize>(
    w: &[i32],
    ws: usize,
    a: &[u32],
    co0: usize,
    quads: usize,
    cols: usize,
    out: &mut [i32],
    accumulate: bool,
) {
    let mut j0 = 0;
    while j0 < cols {
        let n = (cols - j0).min(32);
        let m0: __mmask16 = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
        let m1: __mmask16 = if n >= 32 {
            0xFFFF
        } else if n > 16 {
            (1u16 << (n - 16)) - 1
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_si512(); 2]; N];
        for q in 0..quads {
            // Masked lanes are not read, so the pointers may point past the end.
            let p = a.as_ptr().wrapping_add(q * cols + j0) as *const i32;
            // SAFETY: the unmasked lanes are columns j0..j0 + n < cols of row q.
            let (b0, b1) = unsafe {
                (_mm512_maskz_loadu_epi32(m0, p), _mm512_maskz_loadu_epi32(m1, p.wrapping_add(16)))
            };
            for (i, acc) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_epi32(w[(co0 + i) * ws + q]);
                acc[0] = _mm512_dpbusd_epi32(acc[0], b0, wv);
                acc[1] = _mm512_dpbusd_epi32(acc[1], b1, wv);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let o = out.as_mut_ptr().wrapping_add((co0 + i) * cols + j0);
            // SAFETY: as for the loads, on channel co0 + i's row of `out`.
            unsafe {
                let (mut s0, mut s1) = (acc[0], acc[1]);
                if accumulate {
                    s0 = _mm512_add_epi32(s0, _mm512_maskz_loadu_epi32(m0, o));
                    s1 = _mm512_add_epi32(s1, _mm512_maskz_loadu_epi32(m1, o.wrapping_add(16)));
                }
                _mm512_mask_storeu_epi32(o, m0, s0);
                _mm512_mask_storeu_epi32(o.wrapping_add(16), m1, s1);
            }
        }
        j0 += n;
    }
}

/// Four channels × 16 columns at a time (then a block of 8 columns, then the last
/// `cols % 8` portably): per word, `vpmaddubsw` then `vpmaddwd` by ones gives each
/// column's four-row dot product in its own i32 lane.
///
/// # Safety
/// AVX2; sizes as for [`vnni`]. (Every weight byte within ±64 for exact sums, no i16
/// saturation; [`plane_product`] asserts it.)
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn avx2_byte_pairs(
    w: &[i32],
    ws: usize,
    a: &[u32],
    cout: usize,
    quads: usize,
    cols: usize,
    out: &mut [i32],
    accumulate: bool,
) {
    const R2: usize = 4;
    let (by16, by8) = (cols / 16 * 16, cols / 8 * 8);
    let mut co0 = 0;
    while co0 < cout {
        // SAFETY: forwarded: channels within cout, columns below by16 ≤ by8 ≤ cols.
        unsafe {
            if cout - co0 >= R2 {
                byte_pairs_block::<R2, 2>(w, ws, a, co0, quads, cols, 0..by16, out, accumulate);
                byte_pairs_block::<R2, 1>(w, ws, a, co0, quads, cols, by16..by8, out, accumulate);
                co0 += R2;
            } else {
                byte_pairs_block::<1, 2>(w, ws, a, co0, quads, cols, 0..by16, out, accumulate);
                byte_pairs_block::<1, 1>(w, ws, a, co0, quads, cols, by16..by8, out, accumulate);
                co0 += 1;
            }
        }
    }
    if by8 < cols {
        super::portable(w, ws, a, cout, quads, cols, out, by8, accumulate);
    }
}

/// Channels `co0..co0 + N`, columns `js` in blocks of `8·V`.
///
/// # Safety
/// As [`avx2_byte_pairs`]; `js` within `cols` in whole blocks, `co0 + N ≤ cout`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn byte_pairs_block<const N: usize, const V: usize>(
    w: &[i32],
    ws: usize,
    a: &[u32],
    co0: usize,
    quads: usize,
    cols: usize,
    js: std::ops::Range<usize>,
    out: &mut [i32],
    accumulate: bool,
) {
    let ones = _mm256_set1_epi16(1);
    for j0 in js.step_by(8 * V) {
        let mut acc = [[_mm256_setzero_si256(); V]; N];
        for q in 0..quads {
            // SAFETY: columns j0..j0 + 8·V of row q (the caller's bounds).
            let av: [__m256i; V] = std::array::from_fn(|v| unsafe {
                _mm256_loadu_si256(a.as_ptr().add(q * cols + j0 + 8 * v) as *const __m256i)
            });
            for (i, acc) in acc.iter_mut().enumerate() {
                let wv = _mm256_set1_epi32(w[(co0 + i) * ws + q]);
                for (acc, &av) in acc.iter_mut().zip(&av) {
                    *acc = _mm256_add_epi32(
                        *acc,
                        _mm256_madd_epi16(_mm256_maddubs_epi16(av, wv), ones),
                    );
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (v, &sums) in acc.iter().enumerate() {
                // SAFETY: columns j0 + 8v..+8 of channel co0 + i's row.
                unsafe {
                    let o = out.as_mut_ptr().add((co0 + i) * cols + j0 + 8 * v) as *mut __m256i;
                    let sums = if accumulate {
                        _mm256_add_epi32(_mm256_loadu_si256(o), sums)
                    } else {
                        sums
                    };
                    _mm256_storeu_si256(o, sums);
                }
            }
        }
    }
}

/// Four channels × eight columns at a time; the last `cols % 8` columns portably.
///
/// # Safety
/// AVX2; sizes as for [`vnni`].
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn avx2(
    w: &[i32],
    ws: usize,
    a: &[u32],
    cout: usize,
    quads: usize,
    cols: usize,
    out: &mut [i32],
    accumulate: bool,
) {
    const R2: usize = 4;
    let full = cols / 8 * 8;
    // Lane order after the final `hadd` of (columns 0–3, columns 4–7): 0 1 4 5 | 2 3 6 7.
    let order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    let mut co0 = 0;
    while co0 < cout {
        let rows = R2.min(cout - co0);
        for j0 in (0..full).step_by(8) {
            // Per channel: i32 pair sums for columns j0..j0+4 (lo) and j0+4..j0+8 (hi).
            let mut lo = [_mm256_setzero_si256(); R2];
            let mut hi = [_mm256_setzero_si256(); R2];
            for q in 0..quads {
                // SAFETY: columns j0..j0 + 8, within 0..full ≤ cols, of row q.
                let (alo, ahi) = unsafe {
                    let p = a.as_ptr().add(q * cols + j0) as *const __m128i;
                    (
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(p)),
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(1))),
                    )
                };
                for i in 0..rows {
                    // The word's four signed bytes as i16, repeated for four columns.
                    let wv = _mm256_cvtepi8_epi16(_mm_set1_epi32(w[(co0 + i) * ws + q]));
                    lo[i] = _mm256_add_epi32(lo[i], _mm256_madd_epi16(alo, wv));
                    hi[i] = _mm256_add_epi32(hi[i], _mm256_madd_epi16(ahi, wv));
                }
            }
            for i in 0..rows {
                let sums = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo[i], hi[i]), order);
                // SAFETY: columns j0..j0 + 8 of channel co0 + i's row.
                unsafe {
                    let o = out.as_mut_ptr().add((co0 + i) * cols + j0) as *mut __m256i;
                    let sums = if accumulate {
                        _mm256_add_epi32(_mm256_loadu_si256(o), sums)
                    } else {
                        sums
                    };
                    _mm256_storeu_si256(o, sums);
                }
            }
        }
        co0 += rows;
    }
    if full < cols {
        super::portable(w, ws, a, cout, quads, cols, out, full, accumulate);
    }
}
