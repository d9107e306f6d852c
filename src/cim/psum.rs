//! Integer partial sums: a tile's `P[co][col] = Σ_r w[co][r]·q[r][col]` computed as
//! the integers it is, with 8-bit multiply-accumulate instructions where the CPU has them.
//!
//! Weight codes are signed and at most 8 bits (`MacroSpec::weight_bits ≤ 8`), so four
//! rows of one output channel fit a 32-bit word ([`PackedWeights`], packed once per
//! layer call). Input codes of one cycle are unsigned and at most 16 bits; they are cut
//! into byte planes (one for ≤ 8-bit cycles, two above), and four rows of a plane fit a
//! word too ([`CodePlane`]). A plane's product is
//! `Σ_q Σ_{b<4} byte_b(a[q][col]) · sbyte_b(w[co][q])`, and `P = Σ_planes 256^plane · P_plane`.
//! Partial sums are integers below 2^24 (`MacroSpec::validate`), so the i32 sums are
//! exact and equal the f32 GEMM of the same codes bit for bit; which path runs changes
//! the speed only (`tests` hold every path to a plain loop and to the f32 GEMM).
//!
//! * **AVX-512 VNNI**: `vpdpbusd` — four u8 × s8 products added into each i32 lane, 64
//!   multiply-adds per instruction; 8 channels × 32 columns of accumulators.
//! * **AVX2, byte pairs**: `vpmaddubsw` (u8 × s8 products, adjacent pairs summed into
//!   i16), then `vpmaddwd` by ones (the two pair sums of a word into i32): 32
//!   multiply-adds per instruction pair, with no widening. An i16 pair sum is at most
//!   255·(|w₀| + |w₁|), exact only while the weight codes stay within ±64 (a 4-bit
//!   macro's −8..=7 do; 8-bit codes would saturate: 255·127·2 > 32,767), so this path
//!   runs only for such weights ([`Path::best_for`]), which it asserts.
//! * **AVX2**: bytes widened to i16 (`vpmovzxbw` / `vpmovsxbw`), then `vpmaddwd` (pairs of
//!   i16 products into i32): exact for any 8-bit weights.
//! * **portable**: the same sums in i32 loops.

use crate::engine::ops::conv2d::ConvGeom;

/// One layer's weight codes, per tile and output channel as words of four rows
/// (`words[(t·cout + co)·quads + q]`, row `4q + b` of the tile in byte `b`, zero past the
/// tile's last row).
pub struct PackedWeights {
    words: Vec<i32>,
    cout: usize,
    quads: usize,
    /// The largest weight code in magnitude (which paths are exact on it).
    max_abs: u32,
}

impl PackedWeights {
    /// `w_codes` is `cout × k`, integer codes in −128..=127 stored as f32, cut into tiles
    /// of `rows` rows along k.
    pub fn new(w_codes: &[f32], cout: usize, k: usize, rows: usize) -> Self {
        assert!(w_codes.len() == cout * k && rows > 0);
        let (tiles, quads) = (k.div_ceil(rows), rows.div_ceil(4));
        let mut words = vec![0i32; tiles * cout * quads];
        for t in 0..tiles {
            let (r0, r1) = (t * rows, ((t + 1) * rows).min(k));
            for co in 0..cout {
                let src = &w_codes[co * k + r0..co * k + r1];
                for (q, word) in words[(t * cout + co) * quads..][..quads].iter_mut().enumerate() {
                    let byte = |b: usize| {
                        src.get(4 * q + b).map_or(0, |&w| {
                            debug_assert!((-128.0..=127.0).contains(&w) && w.fract() == 0.0);
                            w as i8 as u8 as u32
                        })
                    };
                    *word = (byte(0) | byte(1) << 8 | byte(2) << 16 | byte(3) << 24) as i32;
                }
            }
        }
        let max_abs = w_codes.iter().fold(0u32, |m, &w| m.max(w.abs() as u32));
        PackedWeights { words, cout, quads, max_abs }
    }

    /// Tile `t`: `cout` rows of [`Self::quads`] words.
    pub fn tile(&self, t: usize) -> &[i32] {
        &self.words[t * self.cout * self.quads..][..self.cout * self.quads]
    }

    /// Words per channel and tile: the macro's rows, four to a word.
    pub fn quads(&self) -> usize {
        self.quads
    }
}

/// One cycle's byte plane of a group's input codes, with the convolution's zero border:
/// `[images][cin][h + 2·pad][w + 2·pad]` bytes. Every tile's patch rows are read from
/// here ([`CodePlane::pack_tile`]); the codes are converted and padded once per group
/// and plane, not once per tile row.
pub struct CodePlane<'g> {
    g: &'g ConvGeom,
    images: usize,
    bytes: Vec<u8>,
    /// Zero bytes standing for the rows past a short tile's last (one output row's reach).
    zeros: Vec<u8>,
    hp: usize,
    wp: usize,
}

impl<'g> CodePlane<'g> {
    /// `codes` holds `images` NCHW images of input codes, integers in 0..2^16 stored as
    /// f32. `bits = Some((shift, width))` keeps those bits of each code (one cycle of a
    /// bit-serial macro); `plane` picks byte 0 or 1 of what is kept.
    pub fn new(
        g: &'g ConvGeom,
        codes: &[f32],
        images: usize,
        bits: Option<(u32, u32)>,
        plane: u32,
    ) -> Self {
        assert!(codes.len() == images * g.in_size() && plane < 2);
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let (shift, mask) = bits.map_or((0, u32::MAX), |(s, w)| (s, (1u32 << w) - 1));
        // Exact on the integer codes, which are below 2^16; anything else is first clamped
        // to 0..=65535 (NaN to 0: `f32::max` ignores it). In range, the conversion needs no
        // saturating fix-ups, so it vectorises (`vcvttps2dq`), where `as` went value by value.
        // `clamp` would pass NaN through, and NaN must not reach `to_int_unchecked`.
        #[allow(clippy::manual_clamp)]
        let byte = |v: f32| {
            // SAFETY: the clamped value is finite and within 0..=65535, so it fits an i32.
            let code = unsafe { v.max(0.0).min(65535.0).to_int_unchecked::<i32>() } as u32;
            (((code >> shift) & mask) >> (8 * plane)) as u8
        };
        let mut bytes = vec![0u8; images * g.cin * hp * wp];
        // An image of no pixels is all border (zeros).
        for (plane_img, src) in
            bytes.chunks_exact_mut(hp * wp).zip(codes.chunks_exact((g.h * g.w).max(1)))
        {
            for (dst, row) in
                plane_img[g.pad * wp..].chunks_exact_mut(wp).zip(src.chunks_exact(g.w))
            {
                dst[g.pad..g.pad + g.w].iter_mut().zip(row).for_each(|(d, &v)| *d = byte(v));
            }
        }
        let reach = (g.ow - 1) * g.stride + 1;
        CodePlane { g, images, bytes, zeros: vec![0u8; reach], hp, wp }
    }

    /// Rows `r0..r1` of the group's patch matrix (`images · pixels` columns), four rows
    /// to a word: `dst[q·cols + j]` holds rows `r0 + 4q .. r0 + 4q + 4` of column `j`,
    /// row `r0 + 4q` in the low byte, zero past row `r1`. `dst` is resized to `quads · cols`.
    pub fn pack_tile(&self, r0: usize, r1: usize, quads: usize, dst: &mut Vec<u32>) {
        let g = self.g;
        assert!(r0 <= r1 && r1 <= g.k() && quads * 4 >= r1 - r0);
        let (pix, image) = (g.pixels(), g.cin * self.hp * self.wp);
        let cols = self.images * pix;
        let reach = self.zeros.len();
        dst.resize(quads * cols, 0);
        for (q, out) in dst.chunks_exact_mut(cols.max(1)).enumerate().take(quads) {
            // Where each of the word's four rows starts in an image: (ci, ky, kx) at output (0, 0).
            let start: [Option<usize>; 4] = std::array::from_fn(|b| {
                let r = r0 + 4 * q + b;
                (r < r1).then(|| {
                    ((r / (g.kh * g.kw) * self.hp + (r / g.kw) % g.kh) * self.wp) + r % g.kw
                })
            });
            for (j, out_img) in out.chunks_exact_mut(pix).enumerate() {
                for (oy, o) in out_img.chunks_exact_mut(g.ow).enumerate() {
                    let at = j * image + oy * g.stride * self.wp;
                    let row = |b: usize| {
                        start[b].map_or(&self.zeros[..], |s| &self.bytes[at + s..][..reach])
                    };
                    let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
                    if g.stride == 1 {
                        for ((((o, &v0), &v1), &v2), &v3) in
                            o.iter_mut().zip(a0).zip(a1).zip(a2).zip(a3)
                        {
                            *o = v0 as u32
                                | (v1 as u32) << 8
                                | (v2 as u32) << 16
                                | (v3 as u32) << 24;
                        }
                    } else {
                        for (x, o) in o.iter_mut().enumerate() {
                            let i = x * g.stride;
                            *o = a0[i] as u32
                                | (a1[i] as u32) << 8
                                | (a2[i] as u32) << 16
                                | (a3[i] as u32) << 24;
                        }
                    }
                }
            }
        }
    }
}

/// The ways a plane's product can be computed; all give the same integers (byte pairs:
/// on weight codes within ±[`BYTE_PAIR_MAX`], the only ones it is chosen for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Avx512Vnni,
    /// `vpmaddubsw`: for weight codes within ±[`BYTE_PAIR_MAX`] only.
    Avx2BytePairs,
    Avx2,
    Portable,
}

/// The largest weight code in magnitude for which `vpmaddubsw`'s i16 pair sums cannot
/// saturate: 255·(64 + 64) = 32,640 ≤ 32,767.
pub const BYTE_PAIR_MAX: u32 = 64;

impl Path {
    pub const ALL: [Path; 4] = [Path::Avx512Vnni, Path::Avx2BytePairs, Path::Avx2, Path::Portable];

    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Vnni => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2BytePairs | Path::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx512Vnni | Path::Avx2BytePairs | Path::Avx2 => false,
            Path::Portable => true,
        }
    }

    /// Whether the path computes exact sums for weight codes up to `max_abs` in magnitude.
    pub fn exact_for(self, max_abs: u32) -> bool {
        self != Path::Avx2BytePairs || max_abs <= BYTE_PAIR_MAX
    }

    /// The fastest path this CPU runs exactly on these weights (the CPU's part decided once).
    pub fn best_for(w: &PackedWeights) -> Path {
        static SUPPORTED: std::sync::OnceLock<Vec<Path>> = std::sync::OnceLock::new();
        let supported =
            SUPPORTED.get_or_init(|| Path::ALL.into_iter().filter(|p| p.supported()).collect());
        supported.iter().copied().find(|p| p.exact_for(w.max_abs)).unwrap_or(Path::Portable)
    }
}

/// `out[co·cols + j] (+)= Σ_{q < quads} dot4(a[q·cols + j], w[co][q])` for every channel
/// of tile `t` of `weights`: one byte plane's product, written over `out` (`accumulate =
/// false`) or added to it. `quads` may be fewer than [`PackedWeights::quads`], for a
/// tile shorter than the macro's rows (the rest of its words are zero).
#[allow(clippy::too_many_arguments)]
pub fn plane_product(
    path: Path,
    weights: &PackedWeights,
    t: usize,
    a: &[u32],
    quads: usize,
    cols: usize,
    out: &mut [i32],
    accumulate: bool,
) {
    let (w, ws, cout) = (weights.tile(t), weights.quads, weights.cout);
    assert!(quads <= ws && a.len() >= quads * cols && out.len() >= cout * cols);
    assert!(path.supported(), "partial-sum path {path:?} is not supported by this CPU");
    assert!(
        path.exact_for(weights.max_abs),
        "{path:?} is not exact on weight codes up to ±{}",
        weights.max_abs
    );
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: supported (checked above); the slices hold the sizes asserted above.
        Path::Avx512Vnni => unsafe { x86::vnni(w, ws, a, cout, quads, cols, out, accumulate) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 => unsafe { x86::avx2(w, ws, a, cout, quads, cols, out, accumulate) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above (the weights' bound, asserted above, is for exact sums only).
        Path::Avx2BytePairs => unsafe {
            x86::avx2_byte_pairs(w, ws, a, cout, quads, cols, out, accumulate)
        },
        _ => portable(w, ws, a, cout, quads, cols, out, 0, accumulate),
    }
}

/// Four unsigned bytes of `a` times four signed bytes of `w`, summed.
#[inline]
fn dot4(a: u32, w: i32) -> i32 {
    (0..4).map(|b| ((a >> (8 * b)) & 0xFF) as i32 * (w >> (8 * b)) as i8 as i32).sum()
}

/// Columns `j0..cols` of every channel, in i32 loops (also the vector paths' tails).
#[allow(clippy::too_many_arguments)]
fn portable(
    w: &[i32],
    ws: usize,
    a: &[u32],
    cout: usize,
    quads: usize,
    cols: usize,
    out: &mut [i32],
    j0: usize,
    accumulate: bool,
) {
    for co in 0..cout {
        let o = &mut out[co * cols + j0..(co + 1) * cols];
        if !accumulate {
            o.fill(0);
        }
        for (q, &wq) in w[co * ws..co * ws + quads].iter().enumerate() {
            for (ov, &av) in o.iter_mut().zip(&a[q * cols + j0..(q + 1) * cols]) {
                *ov += dot4(av, wq);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
                    (co0..cout)
                        .for_each(|c| vnni_block::<1>(w, ws, a, c, quads, cols, out, accumulate))
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
                    (
                        _mm512_maskz_loadu_epi32(m0, p),
                        _mm512_maskz_loadu_epi32(m1, p.wrapping_add(16)),
                    )
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
                    byte_pairs_block::<R2, 1>(
                        w,
                        ws,
                        a,
                        co0,
                        quads,
                        cols,
                        by16..by8,
                        out,
                        accumulate,
                    );
                    co0 += R2;
                } else {
                    byte_pairs_block::<1, 2>(w, ws, a, co0, quads, cols, 0..by16, out, accumulate);
                    byte_pairs_block::<1, 1>(
                        w,
                        ws,
                        a,
                        co0,
                        quads,
                        cols,
                        by16..by8,
                        out,
                        accumulate,
                    );
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
}

#[cfg(test)]
mod tests;
