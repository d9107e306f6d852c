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

    /// One array's codes as a macro holds them, `weights[row · columns + column]`: one
    /// tile of `rows` rows, a channel per column (what [`Self::new`] makes of the
    /// transposed codes, without the float round trip).
    pub fn of_array(weights: &[i8], rows: usize, columns: usize) -> Self {
        assert!(weights.len() == rows * columns && rows > 0);
        let quads = rows.div_ceil(4);
        let mut words = vec![0u32; columns * quads];
        for (r, row) in weights.chunks_exact(columns).enumerate() {
            let (q, shift) = (r / 4, 8 * (r % 4));
            for (co, &w) in row.iter().enumerate() {
                words[co * quads + q] |= (w as u8 as u32) << shift;
            }
        }
        let max_abs = weights.iter().fold(0u32, |m, &w| m.max(w.unsigned_abs() as u32));
        let words = words.into_iter().map(|w| w as i32).collect();
        PackedWeights { words, cout: columns, quads, max_abs }
    }

    /// Tile `t`: `cout` rows of [`Self::quads`] words.
    pub fn tile(&self, t: usize) -> &[i32] {
        &self.words[t * self.cout * self.quads..][..self.cout * self.quads]
    }

    /// Words per channel and tile: the macro's rows, four to a word.
    pub fn quads(&self) -> usize {
        self.quads
    }

    /// The first `channels` output channels of a one-tile pack (an array whose other
    /// columns a layer does not use: their products need not be computed).
    pub fn first_channels(&self, channels: usize) -> PackedWeights {
        assert!(channels <= self.cout && self.words.len() == self.cout * self.quads);
        let words = self.words[..channels * self.quads].to_vec();
        let max_abs = words.iter().fold(0u32, |m, &w| {
            (0..4).fold(m, |m, b| m.max(((w >> (8 * b)) as i8).unsigned_abs() as u32))
        });
        PackedWeights { words, cout: channels, quads: self.quads, max_abs }
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
}

impl<'g> CodePlane<'g> {
    /// `values` holds `images` NCHW images whose input codes are `code(value)`, integers
    /// in 0..2^16 as f32 (a CIM layer's E-PACT codes, made here rather than in a pass of
    /// their own; the identity for values that are codes). `bits = Some((shift, width))`
    /// keeps those bits of each code (one cycle of a bit-serial macro); `plane` picks
    /// byte 0 or 1 of what is kept.
    pub fn new(
        g: &'g ConvGeom,
        values: &[f32],
        code: impl Fn(f32) -> f32,
        images: usize,
        bits: Option<(u32, u32)>,
        plane: u32,
    ) -> Self {
        assert!(values.len() == images * g.in_size() && plane < 2);
        let (hp, wp) = g.padded();
        let (shift, mask) = bits.map_or((0, u32::MAX), |(s, w)| (s, (1u32 << w) - 1));
        // Exact on the integer codes, which are below 2^16; anything else is first clamped
        // to 0..=65535 (NaN to 0: `f32::max` ignores it). In range, the conversion needs no
        // saturating fix-ups, so it vectorises (`vcvttps2dq`), where `as` went value by value.
        // `clamp` would pass NaN through, and NaN must not reach `to_int_unchecked`.
        #[allow(clippy::manual_clamp)]
        let byte = |v: f32| {
            // SAFETY: the clamped value is finite and within 0..=65535, so it fits an i32.
            let code = unsafe { code(v).max(0.0).min(65535.0).to_int_unchecked::<i32>() } as u32;
            (((code >> shift) & mask) >> (8 * plane)) as u8
        };
        let mut bytes = vec![0u8; images * g.padded_size()];
        // An image of no pixels is all border (zeros).
        for (plane_img, src) in
            bytes.chunks_exact_mut(hp * wp).zip(values.chunks_exact((g.h * g.w).max(1)))
        {
            for (dst, row) in
                plane_img[g.pad * wp..].chunks_exact_mut(wp).zip(src.chunks_exact(g.w))
            {
                dst[g.pad..g.pad + g.w].iter_mut().zip(row).for_each(|(d, &v)| *d = byte(v));
            }
        }
        let reach = (g.ow - 1) * g.stride + 1;
        CodePlane { g, images, bytes, zeros: vec![0u8; reach] }
    }

    /// Rows `r0..r1` of the group's patch matrix (`images · pixels` columns), four rows
    /// to a word: `dst[q·cols + j]` holds rows `r0 + 4q .. r0 + 4q + 4` of column `j`,
    /// row `r0 + 4q` in the low byte, zero past row `r1`. `dst` is resized to `quads · cols`.
    pub fn pack_tile(&self, r0: usize, r1: usize, quads: usize, dst: &mut Vec<u32>) {
        let g = self.g;
        assert!(r0 <= r1 && r1 <= g.k() && quads * 4 >= r1 - r0);
        let (pix, image, wp) = (g.pixels(), g.padded_size(), g.padded().1);
        let cols = self.images * pix;
        let reach = self.zeros.len();
        dst.resize(quads * cols, 0);
        for (q, out) in dst.chunks_exact_mut(cols.max(1)).enumerate().take(quads) {
            // Where each of the word's four rows starts in an image: (ci, ky, kx) at output (0, 0).
            let start: [Option<usize>; 4] = std::array::from_fn(|b| {
                let r = r0 + 4 * q + b;
                (r < r1).then(|| g.padded_offset(r))
            });
            for (j, out_img) in out.chunks_exact_mut(pix).enumerate() {
                for (oy, o) in out_img.chunks_exact_mut(g.ow).enumerate() {
                    let at = j * image + oy * g.stride * wp;
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
    /// `vpdpbusd` (AVX-512 VNNI): four u8 × s8 products into each i32 lane.
    Avx512Vnni,
    /// `vpmaddubsw`: for weight codes within ±[`BYTE_PAIR_MAX`] only.
    Avx2BytePairs,
    /// Bytes widened to i16, then `vpmaddwd` (AVX2): exact for any 8-bit weights.
    Avx2,
    /// The same sums in plain i32 loops, on any CPU.
    Portable,
}

/// The largest weight code in magnitude for which `vpmaddubsw`'s i16 pair sums cannot
/// saturate: 255·(64 + 64) = 32,640 ≤ 32,767.
pub const BYTE_PAIR_MAX: u32 = 64;

impl Path {
    /// Every path, fastest first.
    pub const ALL: [Path; 4] = [Path::Avx512Vnni, Path::Avx2BytePairs, Path::Avx2, Path::Portable];

    /// Whether this CPU can run the path.
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
mod x86;

#[cfg(test)]
mod tests;
