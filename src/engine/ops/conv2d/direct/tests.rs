//! Tests of `direct.rs`.

use super::super::{Conv2dCfg, ConvGeom, backward, forward};
use crate::engine::gemm::MatRef;
use crate::engine::gradcheck::random;

/// The definition, written out without the engine: per output, one f32 FMA chain
/// over (ci, ky, kx) in order from zero, the padding read as zeros, then the bias.
fn fma_chains(g: &ConvGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0.0f32; g.n * g.out_size()];
    for n in 0..g.n {
        for co in 0..g.cout {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = 0.0f32;
                    for ci in 0..g.cin {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let (iy, ix) = (
                                    (oy + ky) as isize - g.pad as isize,
                                    (ox + kx) as isize - g.pad as isize,
                                );
                                let inside = iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < g.h
                                    && (ix as usize) < g.w;
                                let v = if inside {
                                    x[((n * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize]
                                } else {
                                    0.0
                                };
                                acc =
                                    w[((co * g.cin + ci) * g.kh + ky) * g.kw + kx].mul_add(v, acc);
                            }
                        }
                    }
                    y[((n * g.cout + co) * g.oh + oy) * g.ow + ox] =
                        bias.map_or(acc, |b| acc + b[co]);
                }
            }
        }
    }
    y
}

/// The data gradient as im2col + product + col2im defines it, written out without
/// the engine: per (input channel, tap) in order, for every output the tap reached,
/// one f32 FMA chain over the output channels from zero, added into a zeroed dx.
fn scattered_chains(g: &ConvGeom, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; g.n * g.in_size()];
    for n in 0..g.n {
        for ci in 0..g.cin {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let (iy, ix) = (
                                (oy + ky) as isize - g.pad as isize,
                                (ox + kx) as isize - g.pad as isize,
                            );
                            if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                continue;
                            }
                            let mut acc = 0.0f32;
                            for co in 0..g.cout {
                                let wv = w[((co * g.cin + ci) * g.kh + ky) * g.kw + kx];
                                acc = wv
                                    .mul_add(dy[((n * g.cout + co) * g.oh + oy) * g.ow + ox], acc);
                            }
                            dx[((n * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize] += acc;
                        }
                    }
                }
            }
        }
    }
    dx
}

/// `colᵀ` packed from the padded images equals `colᵀ` packed from the stored patch
/// matrix, as `B` and as `A`, for every block the products cut: blocks starting and
/// ending mid-row and crossing images, partial panels, patch-row ranges (a CIM tile's),
/// more patch rows than a panel, padding 0 to 2, non-square kernels, 1 × 1 kernels
/// (whose runs continue from row to row, through the border when padded), and empty
/// images (all border), packed after a scratch buffer was left full of NaNs.
#[test]
fn patch_columns_pack_as_the_stored_patch_matrix() {
    use crate::engine::gemm::{MR, NR, Operand};
    use crate::engine::ops::conv2d::group_columns;
    let cases: [([usize; 4], [usize; 4], usize); 9] = [
        ([3, 2, 5, 9], [4, 2, 3, 3], 1),
        ([2, 5, 8, 8], [3, 5, 3, 3], 1),
        ([2, 2, 6, 10], [3, 2, 1, 1], 0),
        ([2, 2, 5, 9], [3, 2, 1, 1], 1),
        ([2, 1, 4, 12], [2, 1, 5, 5], 2),
        ([3, 3, 3, 11], [2, 3, 3, 3], 0),
        ([2, 3, 4, 10], [2, 3, 3, 1], 1),
        ([2, 3, 4, 10], [2, 3, 1, 3], 1),
        ([2, 2, 0, 6], [3, 2, 1, 1], 1),
    ];
    for (xs, ws, pad) in cases {
        let g = ConvGeom::new(&xs, &ws, Conv2dCfg { stride: 1, padding: pad }).unwrap();
        let x = random(&xs, 77);
        let n = xs[0];
        // Junk in this thread's scratch pool (NaNs), as an earlier user leaves it.
        crate::engine::scratch::Scratch::take(1 << 12).fill(f32::NAN);
        let padded = super::PaddedImages::new(&g, x.data(), n);
        let positions = n * g.pixels();
        for rows in [0..g.k(), 1..g.k().min(7), g.k() / 2..g.k()] {
            let col = group_columns(&g, x.data(), n, rows.clone());
            let stored = MatRef::rowmajor(&col, rows.len(), positions).t();
            let read = padded.columns_t(rows.clone());
            assert_eq!((read.rows(), read.cols()), (positions, rows.len()));
            let w = rows.len();
            for (p0, kc) in [
                (0, positions),
                (3, positions - 5),
                (g.ow - 1, 2),
                (positions - 1, 1),
                (g.pixels() - 2, 5),
            ] {
                for (j0, nc) in [(0, w), (1, w - 1), (w - 1, 1)] {
                    if nc == 0 || j0 + nc > w {
                        continue;
                    }
                    let len = nc.div_ceil(NR) * kc * NR + 7;
                    let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    read.pack_b(p0, kc, j0, nc, &mut got);
                    stored.pack_b(p0, kc, j0, nc, &mut want);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "B: {xs:?} * {ws:?} pad {pad}, rows {rows:?}, steps {p0}+{kc}, columns {j0}+{nc}"
                    );
                    // As A: positions are its rows, patch rows its reduction.
                    let (i0, mc, q0, qc) = (p0, kc.min(2 * MR + 3), j0, nc);
                    let len = mc.div_ceil(MR) * qc * MR + 7;
                    let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    read.pack_a(i0, mc, q0, qc, &mut got);
                    stored.pack_a(i0, mc, q0, qc, &mut want);
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "A: {xs:?} * {ws:?} pad {pad}, rows {rows:?}, positions {i0}+{mc}, patch rows {q0}+{qc}"
                    );
                }
            }
        }
    }
}

/// Every stride-1 shape the direct path takes gives the defined chains bit for bit,
/// forward and (where the padding is below the kernel) data gradient:
/// channel counts off the 8-row panels, rows of one whole tile (32), of whole tiles
/// and a short one (40, 70), narrow rows whose tiles span several (8 × 8, 3 × 5),
/// padding 0 to 2, non-square kernels, kernels wider than the image, several image
/// groups.
#[test]
fn direct_paths_are_the_defined_chains_exactly() {
    let cases: [([usize; 4], [usize; 4], usize); 10] = [
        ([1, 2, 5, 40], [11, 2, 3, 3], 1),
        ([1, 3, 4, 70], [8, 3, 3, 3], 1),
        ([2, 3, 7, 6], [5, 3, 3, 3], 1),
        ([3, 16, 8, 8], [16, 16, 3, 3], 1),
        ([2, 4, 32, 32], [13, 4, 3, 3], 1),
        ([2, 2, 3, 5], [9, 2, 3, 3], 0),
        ([1, 3, 6, 9], [4, 3, 5, 5], 2),
        ([2, 3, 5, 7], [3, 3, 1, 3], 1),
        ([1, 1, 3, 3], [2, 1, 5, 5], 2),
        ([70, 2, 4, 4], [8, 2, 3, 3], 1),
    ];
    for (i, (xs, ws, pad)) in cases.into_iter().enumerate() {
        let g = ConvGeom::new(&xs, &ws, Conv2dCfg { stride: 1, padding: pad }).unwrap();
        assert!(super::applies(&g), "case {i} should take the direct path");
        let (x, w, b) =
            (random(&xs, 10 + i as u64), random(&ws, 20 + i as u64), random(&[ws[0]], 30));
        for bias in [None, Some(b.data())] {
            let got = forward(&g, x.data(), w.data(), bias);
            let want = fma_chains(&g, x.data(), w.data(), bias);
            for (at, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "case {i} ({xs:?} * {ws:?}, pad {pad}, bias {}) element {at}",
                    bias.is_some()
                );
            }
        }
        if super::applies_to_data_gradient(&g) {
            let dy = random(&[g.n * g.out_size()], 40 + i as u64);
            let (dx, ..) = backward(&g, x.data(), w.data(), dy.data(), true);
            let want = scattered_chains(&g, w.data(), dy.data());
            for (at, (g, w)) in dx.unwrap().iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "data gradient, case {i} ({xs:?} * {ws:?}, pad {pad}) element {at}"
                );
            }
        }
    }
}
