//! Tests of `psum.rs`.

use super::*;
use crate::engine::gemm::{MatRef, gemm};

/// A stored `rows × cols` matrix of codes as the patch matrix of a 1×1 convolution
/// over one image of `rows` channels and `1 × cols` pixels (which it is, as it is).
fn as_image(rows: usize, cols: usize) -> ConvGeom {
    ConvGeom {
        n: 1,
        cin: rows,
        h: 1,
        w: cols,
        cout: 1,
        kh: 1,
        kw: 1,
        stride: 1,
        pad: 0,
        oh: 1,
        ow: cols,
    }
}

/// A xorshift64 stream: test data that needs no dependency.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Every path, through both byte planes, gives each tile's partial sums exactly: as
/// a plain i64 loop over the codes computes them, and as the f32 GEMM of the same
/// codes does. Shapes with channel and column remainders, tiles not a multiple of
/// four rows, a short last tile; codes at their extremes (16-bit inputs on 2-row
/// tiles, the most rows whose sums stay below 2^24).
#[test]
fn every_path_gives_the_exact_partial_sums() {
    let mut next = xorshift(0x2545_F491_4F6C_DD1Du64);
    let shapes = [
        (1, 1, 1, 1, 255u32),
        (3, 10, 4, 7, 255),
        (8, 64, 64, 32, 255),
        (10, 150, 64, 33, 255),
        (17, 67, 67, 100, 255),
        (16, 144, 64, 1024, 255),
        (9, 37, 2, 19, 65535),
        (5, 64, 64, 40, 255),
    ];
    // Weight codes of 8 bits (−128..=127), and within ±64 (what `vpmaddubsw` takes).
    for (&(cout, k, rows, cols, input_max), (wlo, whi)) in
        shapes.iter().flat_map(|s| [(s, (-128, 127)), (s, (-64, 64))])
    {
        // Extremes often: 0, the largest input; the weights' ends.
        let x: Vec<f32> = (0..k * cols)
            .map(|_| match next() % 4 {
                0 => 0,
                1 => input_max,
                _ => (next() % (input_max as u64 + 1)) as u32,
            } as f32)
            .collect();
        let wc: Vec<f32> = (0..cout * k)
            .map(|_| match next() % 4 {
                0 => wlo,
                1 => whi,
                _ => (next() % (whi - wlo + 1) as u64) as i32 + wlo,
            } as f32)
            .collect();
        let packed = PackedWeights::new(&wc, cout, k, rows);
        let planes = if input_max > 255 { 2 } else { 1 };
        for t in 0..k.div_ceil(rows) {
            let (r0, r1) = (t * rows, ((t + 1) * rows).min(k));
            let quads = (r1 - r0).div_ceil(4);
            let want: Vec<i64> = (0..cout * cols)
                .map(|e| {
                    (r0..r1)
                        .map(|r| wc[(e / cols) * k + r] as i64 * x[r * cols + e % cols] as i64)
                        .sum()
                })
                .collect();
            let mut by_gemm = vec![0.0f32; cout * cols];
            gemm(
                1.0,
                MatRef { data: &wc[r0..], rows: cout, cols: r1 - r0, rs: k, cs: 1 },
                MatRef::rowmajor(&x[r0 * cols..r1 * cols], r1 - r0, cols),
                0.0,
                &mut by_gemm,
                cols,
            );
            assert!(
                want.iter().zip(&by_gemm).all(|(&w, &g)| w as f32 == g),
                "the f32 GEMM is exact on these codes"
            );
            let geom = as_image(r1 - r0, cols);
            // The weights' own largest code decides which paths are exact on them.
            let max_abs = wc.iter().fold(0, |m, &w| m.max(w.abs() as u32));
            let best = Path::best_for(&packed);
            assert!(best.exact_for(max_abs));
            if max_abs <= BYTE_PAIR_MAX
                && Path::Avx2BytePairs.supported()
                && !Path::Avx512Vnni.supported()
            {
                assert_eq!(
                    best,
                    Path::Avx2BytePairs,
                    "weights within ±{BYTE_PAIR_MAX} on an AVX2 CPU"
                );
            }
            for path in Path::ALL.into_iter().filter(|p| p.supported() && p.exact_for(max_abs)) {
                let mut words = Vec::new();
                let mut total = vec![0i32; cout * cols];
                for plane in 0..planes {
                    CodePlane::new(&geom, &x[r0 * cols..r1 * cols], |v| v, 1, None, plane)
                        .pack_tile(0, r1 - r0, quads, &mut words);
                    let mut part = vec![7i32; cout * cols];
                    plane_product(path, &packed, t, &words, quads, cols, &mut part, false);
                    total.iter_mut().zip(&part).for_each(|(s, &p)| *s += p << (8 * plane));
                }
                for (e, (&got, &w)) in total.iter().zip(&want).enumerate() {
                    assert_eq!(
                        got as i64,
                        w,
                        "{path:?}: {cout}×{k} (tile {t} of {rows} rows) × {cols}, channel {} column {}",
                        e / cols,
                        e % cols
                    );
                }
                // Accumulating adds onto what is there.
                CodePlane::new(&geom, &x[r0 * cols..r1 * cols], |v| v, 1, None, 0).pack_tile(
                    0,
                    r1 - r0,
                    quads,
                    &mut words,
                );
                let mut twice = vec![0i32; cout * cols];
                plane_product(path, &packed, t, &words, quads, cols, &mut twice, false);
                let once = twice.clone();
                plane_product(path, &packed, t, &words, quads, cols, &mut twice, true);
                assert!(
                    twice.iter().zip(&once).all(|(&t2, &o)| t2 == 2 * o),
                    "{path:?} accumulates"
                );
            }
        }
    }
}

/// A value that is not a code (NaN, negative, 2^16 or more) saturates to 0 or 65,535
/// before it is cut into bytes; the codes themselves keep their bytes.
#[test]
fn byte_planes_saturate_what_is_not_a_code() {
    let codes = [f32::NAN, -3.0, 65_536.0, 1e30, f32::INFINITY, 255.0, 65_535.0, 258.0];
    let geom = as_image(1, codes.len());
    let mut words = Vec::new();
    for (plane, want) in
        [(0, [0u32, 0, 255, 255, 255, 255, 255, 2]), (1, [0, 0, 255, 255, 255, 0, 255, 1])]
    {
        CodePlane::new(&geom, &codes, |v| v, 1, None, plane).pack_tile(0, 1, 1, &mut words);
        assert_eq!(words, want, "plane {plane}");
    }
}

/// `vpmaddubsw` would saturate on a weight code beyond ±64: that path refuses it
/// rather than return a wrong sum, and is never chosen for such weights.
#[test]
fn the_byte_pair_path_refuses_weights_it_would_saturate_on() {
    if !Path::Avx2BytePairs.supported() {
        return;
    }
    for wide in [65.0, -65.0, -128.0, 127.0] {
        let packed = PackedWeights::new(&[wide, 1.0, 0.0, 0.0], 1, 4, 4);
        assert_ne!(Path::best_for(&packed), Path::Avx2BytePairs);
        let mut out = [0i32; 8];
        let r = std::panic::catch_unwind(move || {
            plane_product(Path::Avx2BytePairs, &packed, 0, &[u32::MAX; 8], 1, 8, &mut out, false)
        });
        assert!(r.is_err(), "weight {wide}");
    }
}

/// A tile's words are the patch matrix's rows as im2col defines them, written out
/// here from the definition: zero on the padding and past the tile's last row, the
/// cycle's bits and the plane's byte of every code. Strides 1 and 2, padding 0–2,
/// 1×1 to 5×5 kernels, several images, tiles cut anywhere (not at multiples of four).
#[test]
fn tiles_are_the_patch_rows_of_the_definition() {
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15u64);
    // (images, cin, h, w, kh, kw, stride, pad)
    for &(images, cin, h, w, kh, kw, stride, pad) in &[
        (1, 1, 1, 1, 1, 1, 1, 0),
        (2, 3, 5, 7, 3, 3, 1, 1),
        (3, 2, 8, 8, 3, 3, 2, 1),
        (1, 4, 6, 5, 5, 5, 1, 2),
        (2, 5, 4, 9, 1, 3, 2, 0),
        (1, 16, 8, 8, 3, 3, 1, 1),
    ] {
        let geom = ConvGeom::new(
            &[images, cin, h, w],
            &[1, cin, kh, kw],
            crate::engine::ops::conv2d::Conv2dCfg { stride, padding: pad },
        )
        .unwrap();
        let (k, pix) = (geom.k(), geom.pixels());
        let cols = images * pix;
        let codes: Vec<f32> =
            (0..images * geom.in_size()).map(|_| (next() % 65536) as f32).collect();
        let code_at = |j: usize, r: usize, col: usize| -> u32 {
            let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
            let (oy, ox) = (col / geom.ow, col % geom.ow);
            let (iy, ix) = (
                (oy * stride + ky) as isize - pad as isize,
                (ox * stride + kx) as isize - pad as isize,
            );
            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                return 0;
            }
            codes[((j * cin + ci) * h + iy as usize) * w + ix as usize] as u32
        };
        for bits in [None, Some((0, 8)), Some((3, 5)), Some((12, 4))] {
            for plane in 0..2 {
                let cp = CodePlane::new(&geom, &codes, |v| v, images, bits, plane);
                for (r0, r1) in [(0, k), (0, k.min(5)), (k / 3, k), (k - 1, k)] {
                    let quads = (r1 - r0).div_ceil(4);
                    let mut words = vec![0xDEAD_BEEF; 3];
                    cp.pack_tile(r0, r1, quads, &mut words);
                    assert_eq!(words.len(), quads * cols);
                    for q in 0..quads {
                        for c in 0..cols {
                            let want = (0..4).fold(0u32, |acc, b| {
                                let r = r0 + 4 * q + b;
                                let v = if r < r1 { code_at(c / pix, r, c % pix) } else { 0 };
                                let kept = bits.map_or(v, |(s, wd)| (v >> s) & ((1 << wd) - 1));
                                acc | ((kept >> (8 * plane)) & 0xFF) << (8 * b)
                            });
                            assert_eq!(
                                words[q * cols + c],
                                want,
                                "{images}×{cin}×{h}×{w}, {kh}×{kw} s{stride} p{pad}, bits {bits:?} plane {plane}, rows {r0}..{r1}: quad {q} column {c}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// An array's codes as a macro holds them pack to the words of the same codes given
/// channel by channel, for rows that fill their last word and rows that do not.
#[test]
fn an_array_packs_as_its_columns_do() {
    let mut next = xorshift(11);
    for (rows, cols) in [(64, 64), (7, 3), (1, 5)] {
        let w: Vec<i8> = (0..rows * cols).map(|_| (next() % 16) as i8 - 8).collect();
        assert!(w.iter().any(|&x| x < 0), "negative codes, whose sign bits must not spill");
        let by_column: Vec<f32> =
            (0..cols * rows).map(|i| w[(i % rows) * cols + i / rows] as f32).collect();
        let (a, b) = (
            PackedWeights::of_array(&w, rows, cols),
            PackedWeights::new(&by_column, cols, rows, rows),
        );
        assert_eq!(
            (a.words.clone(), a.cout, a.quads, a.max_abs),
            (b.words, b.cout, b.quads, b.max_abs)
        );
    }
}
