//! Tests of `mod.rs`.

use super::*;
use crate::engine::gradcheck::{check, random};

/// Direct 7-loop convolution in f64: the reference every path is held to.
fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, cfg: Conv2dCfg) -> Vec<f64> {
    let g = ConvGeom::new(x.shape(), w.shape(), cfg).unwrap();
    let mut y = vec![0.0f64; g.n * g.out_size()];
    for n in 0..g.n {
        for co in 0..g.cout {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut s = b.map_or(0.0, |b| b.data()[co] as f64);
                    for ci in 0..g.cin {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    s += x.data()
                                        [((n * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize]
                                        as f64
                                        * w.data()[((co * g.cin + ci) * g.kh + ky) * g.kw + kx]
                                            as f64;
                                }
                            }
                        }
                    }
                    y[((n * g.cout + co) * g.oh + oy) * g.ow + ox] = s;
                }
            }
        }
    }
    y
}

fn run(xs: &[usize], ws: &[usize], cfg: Conv2dCfg, bias: bool) {
    let x = random(xs, 1);
    let w = random(ws, 2);
    let b = bias.then(|| random(&[ws[0]], 3));
    let mut t = Tape::new(false);
    let (xv, wv) = (t.constant(x.clone()), t.constant(w.clone()));
    let bv = b.clone().map(|b| t.constant(b));
    let y = conv2d(&mut t, xv, wv, bv, cfg).unwrap();
    let want = reference(&x, &w, b.as_ref(), cfg);
    for (a, r) in t.value(y).data().iter().zip(&want) {
        assert!((*a as f64 - r).abs() < 1e-4, "{a} vs {r}");
    }
}

#[test]
fn matches_direct_convolution() {
    run(&[2, 3, 7, 6], &[4, 3, 3, 3], Conv2dCfg { stride: 1, padding: 1 }, true);
    run(&[3, 2, 8, 8], &[5, 2, 3, 3], Conv2dCfg { stride: 2, padding: 1 }, false);
    run(&[2, 4, 5, 5], &[3, 4, 1, 1], Conv2dCfg { stride: 1, padding: 0 }, true); // 1×1 fast path
    run(&[40, 4, 4, 4], &[3, 4, 1, 1], Conv2dCfg { stride: 1, padding: 0 }, false); // 1×1 grouped
    run(&[2, 3, 9, 9], &[2, 3, 1, 1], Conv2dCfg { stride: 2, padding: 0 }, false); // 1×1 strided
    run(&[70, 2, 4, 4], &[3, 2, 3, 3], Conv2dCfg { stride: 1, padding: 1 }, true); // several groups
    run(&[1, 1, 3, 3], &[1, 1, 5, 5], Conv2dCfg { stride: 1, padding: 2 }, false); // kernel > image
}

#[test]
fn gradient() {
    for (xs, ws, cfg) in [
        ([2, 3, 5, 5], [4, 3, 3, 3], Conv2dCfg { stride: 1, padding: 1 }),
        ([2, 2, 6, 6], [3, 2, 3, 3], Conv2dCfg { stride: 2, padding: 1 }),
        ([70, 1, 3, 3], [2, 1, 3, 3], Conv2dCfg { stride: 1, padding: 1 }),
        // Rows of 9: the weight gradient packs its patches from padded images, in
        // two image groups.
        ([20, 2, 8, 9], [3, 2, 3, 3], Conv2dCfg { stride: 1, padding: 1 }),
    ] {
        check(
            &[random(&xs, 1), random(&ws, 2), random(&[ws[0]], 3)],
            |t, v| conv2d(t, v[0], v[1], Some(v[2]), cfg).unwrap(),
            1e-2,
            2e-3,
        );
    }
}

/// Packing the patches straight from the images (and writing NCHW directly) is a
/// layout change only: the bits equal the stored-patch-matrix product, on shapes
/// whose image groups do not line up with the kernel's 32-column panels.
#[test]
fn packed_patches_give_the_bits_of_the_stored_patch_matrix() {
    use crate::engine::gemm::gemm;
    for (xs, ws, cfg) in [
        ([5usize, 3, 7, 6], [4usize, 3, 3, 3], Conv2dCfg { stride: 1, padding: 1 }),
        ([9, 2, 9, 9], [5, 2, 3, 3], Conv2dCfg { stride: 2, padding: 1 }),
        ([300, 3, 5, 5], [8, 3, 3, 3], Conv2dCfg { stride: 1, padding: 1 }),
    ] {
        let (x, w) = (random(&xs, 4), random(&ws, 5));
        let g = ConvGeom::new(&xs, &ws, cfg).unwrap();
        let y = forward(&g, x.data(), w.data(), None);
        let (gs, pix) = (g.group(), g.pixels());
        for i0 in (0..g.n).step_by(gs) {
            let gi = gs.min(g.n - i0);
            let col = group_columns(
                &g,
                &x.data()[i0 * g.in_size()..(i0 + gi) * g.in_size()],
                gi,
                0..g.k(),
            );
            let mut c = vec![0.0f32; g.cout * gi * pix];
            gemm(
                1.0,
                MatRef::rowmajor(w.data(), g.cout, g.k()),
                MatRef::rowmajor(&col, g.k(), gi * pix),
                0.0,
                &mut c,
                gi * pix,
            );
            for j in 0..gi {
                for co in 0..g.cout {
                    for p in 0..pix {
                        let got = y[((i0 + j) * g.cout + co) * pix + p];
                        assert_eq!(
                            got.to_bits(),
                            c[co * gi * pix + j * pix + p].to_bits(),
                            "{xs:?} image {} channel {co} pixel {p}",
                            i0 + j
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let mut t = Tape::new(false);
    let x = t.constant(Tensor::zeros(&[1, 3, 4, 4]));
    let w = t.constant(Tensor::zeros(&[2, 2, 3, 3]));
    let err = conv2d(&mut t, x, w, None, Conv2dCfg::default()).unwrap_err().to_string();
    assert!(err.contains("3 channels"), "{err}");
}

/// No channels or an empty kernel is refused with the shapes named (it used to
/// panic deep in the product); an empty batch gives an empty output and zero
/// gradients; an empty image with padding is all padding: the output is the bias,
/// and the gradients are the reference's.
#[test]
fn empty_shapes_are_refused_or_computed() {
    let cfg = Conv2dCfg { stride: 1, padding: 1 };
    for (x, w) in [
        ([2, 0, 8, 8], [4, 0, 3, 3]),
        ([2, 3, 8, 8], [0, 3, 3, 3]),
        ([2, 3, 8, 8], [4, 3, 0, 3]),
        ([2, 3, 8, 8], [4, 3, 3, 0]),
    ] {
        let err = ConvGeom::new(&x, &w, cfg).unwrap_err().to_string();
        assert!(
            err.contains("empty")
                && err.contains(&format!("{x:?}"))
                && err.contains(&format!("{w:?}")),
            "{err}"
        );
    }
    let g = ConvGeom::new(&[0, 3, 8, 8], &[4, 3, 3, 3], cfg).unwrap();
    let w = vec![0.5f32; 4 * 27];
    assert!(forward(&g, &[], &w, Some(&[1.0; 4])).is_empty());
    let (dx, dw, db) = backward(&g, &[], &w, &[], true);
    assert_eq!((dx.unwrap().len(), dw, db), (0, vec![0.0; 4 * 27], vec![0.0; 4]));
    // Images of no pixels, padded by 1: a 1 × 1 kernel sees a 2 × 2 border of zeros.
    for (shape, kernel) in [([3, 2, 0, 0], [4, 2, 1, 1]), ([2, 2, 0, 5], [3, 2, 1, 3])] {
        let g = ConvGeom::new(&shape, &kernel, cfg).unwrap();
        let w: Vec<f32> = (0..kernel.iter().product::<usize>()).map(|i| i as f32 - 2.5).collect();
        let bias: Vec<f32> = (0..g.cout).map(|c| c as f32 + 0.25).collect();
        let y = forward(&g, &[], &w, Some(&bias));
        assert_eq!(y.len(), g.n * g.out_size());
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, bias[(i / g.pixels()) % g.cout], "output {i} of {shape:?}");
        }
        let dy: Vec<f32> = (0..y.len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let (dx, dw, db) = backward(&g, &[], &w, &dy, true);
        let db_ref: Vec<f32> = (0..g.cout)
            .map(|co| {
                (0..g.n).flat_map(|j| &dy[(j * g.cout + co) * g.pixels()..][..g.pixels()]).sum()
            })
            .collect();
        assert_eq!((dx.unwrap().len(), dw, db), (0, vec![0.0; w.len()], db_ref));
    }
}

/// The banded backward's data gradient (per band: the product written out, then
/// col2im) equals the plain definition bit for bit: per
/// patch row, the chain over the output channels (`mul_add` in channel order, as the
/// kernels' FMAs), then the rows added onto dx in row order; for bands of 7, 16 and
/// 64 rows (panels cut mid-band), strides 1 and 2, padding, and image groups whose
/// columns are not a multiple of the tile width.
#[test]
fn banded_data_gradient_is_the_definition_exactly() {
    for (xs, ws, stride, pad, band) in [
        ([3usize, 5, 7, 9], [6usize, 5, 3, 3], 1usize, 1usize, 7usize),
        ([2, 8, 6, 6], [3, 8, 3, 3], 2, 1, 16),
        ([2, 16, 5, 11], [9, 16, 3, 3], 1, 0, 64),
        ([1, 3, 9, 4], [4, 3, 1, 1], 1, 0, 2),
    ] {
        let g = ConvGeom::new(&xs, &ws, Conv2dCfg { stride, padding: pad }).unwrap();
        let (k, pix, cols) = (g.k(), g.pixels(), g.n * g.pixels());
        let x = random(&xs, 5);
        let w = random(&ws, 6);
        let dy = random(&[g.n, g.cout, g.oh, g.ow], 7);
        // Band t sees dY scaled by (1 + t/4) per element, a different E per band.
        let e_of = |t: usize, co: usize, q: usize| {
            dy.data()[((q / pix) * g.cout + co) * pix + q % pix] * (1.0 + t as f32 / 4.0)
        };
        let write = |i0: usize, gi: usize, t: usize, e: &mut [f32]| {
            for co in 0..g.cout {
                for q in 0..gi * pix {
                    e[co * gi * pix + q] = e_of(t, co, i0 * pix + q);
                }
            }
        };
        let bands = Bands { rows: band, write: &write, input: None, dw_scale: 1.0 };
        let (dx, _, _) = backward_in_bands(&g, x.data(), w.data(), dy.data(), true, Some(&bands));
        let mut want = vec![0.0f32; g.n * g.in_size()];
        for r in 0..k {
            let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
            for q in 0..cols {
                let d = (0..g.cout).fold(0.0f32, |acc, co| {
                    w.data()[co * k + r].mul_add(e_of(r / band, co, q), acc)
                });
                let (j, oy, ox) = (q / pix, (q % pix) / g.ow, q % g.ow);
                let (iy, ix) = (
                    (oy * stride + ky) as isize - pad as isize,
                    (ox * stride + kx) as isize - pad as isize,
                );
                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                    want[((j * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize] += d;
                }
            }
        }
        let got = dx.unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "{xs:?} {ws:?} stride {stride} pad {pad} bands of {band}"
        );
    }
}
