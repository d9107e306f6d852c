//! Tests of `mod.rs`.

use super::*;

#[test]
fn matches_naive_with_transposes() {
    let (m, k, n) = (5, 7, 3);
    let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
    // B stored as n × k, used transposed.
    let mut c = vec![1.0f32; m * n];
    gemm(2.0, MatRef::rowmajor(&a, m, k), MatRef::rowmajor(&b, n, k).t(), 0.5, &mut c, n);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += a[i * k + p] as f64 * b[j * k + p] as f64;
            }
            let want = 2.0 * s + 0.5;
            assert!((c[i * n + j] as f64 - want).abs() < 1e-5);
        }
    }
}

/// The definition in the module docs, written out: one f32 FMA chain per element.
fn fma_chains(a: &MatRef, b: &MatRef) -> Vec<f32> {
    let mut c = vec![0.0f32; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut acc = 0.0f32;
            for p in 0..a.cols {
                acc = a.data[i * a.rs + p * a.cs].mul_add(b.data[p * b.rs + j * b.cs], acc);
            }
            c[i * b.cols + j] = acc;
        }
    }
    c
}

/// Every kernel this CPU runs gives exactly the FMA chains, bit for bit, on shapes
/// with edge tiles, several reduction blocks, several row and column blocks, and
/// transposed views of either operand.
#[test]
fn every_kernel_computes_the_defined_chains_exactly() {
    let shapes = [
        (1, 1, 1),
        (5, 7, 3),
        (8, 256, 48),
        (17, 300, 50),
        (16, 1024, 144),
        (200, 20, 2400),
        (64, 576, 1024),
    ];
    for kern in Kernel::ALL.into_iter().filter(|k| k.supported()) {
        for &(m, k, n) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let av: Vec<f32> =
                    (0..m * k).map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 2.0) * 1.3e-1).collect();
                let bv: Vec<f32> =
                    (0..k * n).map(|i| ((i * 104729 % 997) as f32 / 300.0 - 1.6).sin()).collect();
                let a =
                    if ta { MatRef::rowmajor(&av, k, m).t() } else { MatRef::rowmajor(&av, m, k) };
                let b =
                    if tb { MatRef::rowmajor(&bv, n, k).t() } else { MatRef::rowmajor(&bv, k, n) };
                let want = fma_chains(&a, &b);
                let mut got = vec![f32::NAN; m * n];
                product(kern, &a, &b, &mut OutView::rowmajor(&mut got, m, n, n));
                let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(
                    same,
                    "kernel {} differs from the FMA chains at {m}×{k}×{n} (ta {ta}, tb {tb})",
                    kern.name()
                );
            }
        }
    }
}

/// Every kernel this CPU runs gives, for B rows read in place at arbitrary offsets,
/// the defined chain (one, or segments from zero added in order into zero), bit for
/// bit, on every panel of an A whose rows are not a multiple of MR.
#[test]
fn offset_tiles_are_the_defined_chains_exactly() {
    let (m, k, seg) = (13, 60, 12);
    let av: Vec<f32> =
        (0..m * k).map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 2.0) * 1.3e-1).collect();
    let src: Vec<f32> = (0..400).map(|i| ((i * 104729 % 997) as f32 / 300.0 - 1.6).sin()).collect();
    let offsets: Vec<usize> = (0..k).map(|p| (p * 37) % 300).collect();
    let a = PackedA::new(&MatRef::rowmajor(&av, m, k));
    let q0 = 17;
    let b_at = |p: usize, j: usize| src[q0 + offsets[p] + j];
    for kern in Kernel::ALL.into_iter().filter(|k| k.supported()) {
        for segmented in [false, true] {
            let rows = if segmented {
                RowOffsets::segmented(offsets.clone(), seg)
            } else {
                RowOffsets::new(offsets.clone())
            };
            for panel in 0..m.div_ceil(MR) {
                let mut got = vec![f32::NAN; MR * NR];
                offset_tile_with(kern, &a, panel, &src, q0, &rows, &mut got, NR);
                for i in 0..MR {
                    for j in 0..NR {
                        let r = panel * MR + i;
                        let chain = |ps: std::ops::Range<usize>| {
                            ps.fold(0.0f32, |acc, p| {
                                if r < m { av[r * k + p] } else { 0.0 }.mul_add(b_at(p, j), acc)
                            })
                        };
                        let want = if segmented {
                            (0..k / seg).fold(0.0f32, |s, t| s + chain(t * seg..(t + 1) * seg))
                        } else {
                            chain(0..k)
                        };
                        assert_eq!(
                            got[i * NR + j].to_bits(),
                            want.to_bits(),
                            "kernel {} segmented {segmented} row {r} column {j}",
                            kern.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn leading_dimension_and_beta_keep_the_rest_of_c() {
    let (m, k, n, ldc) = (9, 5, 50, 53);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.01).collect();
    let mut c = vec![7.0f32; m * ldc];
    gemm(1.0, MatRef::rowmajor(&a, m, k), MatRef::rowmajor(&b, k, n), 0.0, &mut c, ldc);
    let want = fma_chains(&MatRef::rowmajor(&a, m, k), &MatRef::rowmajor(&b, k, n));
    for i in 0..m {
        assert_eq!(&c[i * ldc..i * ldc + n], &want[i * n..(i + 1) * n]);
        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0), "padding columns touched");
    }
}

/// Row sources ([`Rows`], over plain and transposed views) into a
/// row-major output or one block per image ([`OutView::images`]), give the same
/// bits as the strided views.
#[test]
fn row_sources_and_image_blocked_output_match_strided_views() {
    let (m, k, n) = (19, 300, 70);
    let av: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 113) as f32 - 56.0) * 0.01).collect();
    let bv: Vec<f32> = (0..k * n).map(|i| ((i * 17 % 101) as f32 - 50.0) * 0.02).collect();
    let (a, b) = (MatRef::rowmajor(&av, m, k), MatRef::rowmajor(&bv, k, n));
    // The same matrices stored transposed, read through transposed views.
    let avt: Vec<f32> = (0..k * m).map(|i| av[(i % m) * k + i / m]).collect();
    let bvt: Vec<f32> = (0..n * k).map(|i| bv[(i % k) * n + i / k]).collect();
    let (at, bt) = (MatRef::rowmajor(&avt, k, m).t(), MatRef::rowmajor(&bvt, n, k).t());
    let want = fma_chains(&a, &b);
    let mut got = vec![0.0f32; m * n];
    matmul(&Rows(a), &Rows(b), &mut OutView::rowmajor(&mut got, m, n, n));
    assert_eq!(got, want);
    matmul(&Rows(at), &Rows(bt), &mut OutView::rowmajor(&mut got, m, n, n));
    assert_eq!(got, want);
    // Views strided both ways (every other element of a buffer twice the size).
    let (a2, b2): (Vec<f32>, Vec<f32>) = (
        av.iter().flat_map(|&v| [v, f32::NAN]).collect(),
        bv.iter().flat_map(|&v| [v, f32::NAN]).collect(),
    );
    let a2v = MatRef { data: &a2, rows: m, cols: k, rs: 2 * k, cs: 2 };
    let b2v = MatRef { data: &b2, rows: k, cols: n, rs: 2 * n, cs: 2 };
    gemm(1.0, a2v, b2v, 0.0, &mut got, n);
    assert_eq!(got, want);
    // n = 5 images of 14 pixels: C[i][img·14 + px] lands at (img·m + i)·14 + px.
    let mut nchw = vec![f32::NAN; m * n];
    matmul(&a, &Rows(b), &mut OutView::images(&mut nchw, 5, m, 14));
    for i in 0..m {
        for j in 0..n {
            assert_eq!(nchw[((j / 14) * m + i) * 14 + j % 14].to_bits(), want[i * n + j].to_bits());
        }
    }
}
