//! Tests of the CIM layers against plain references. Here: the helpers they share, the
//! forward's exactness (ideal mode, chip columns, a fine ADC), bit-identical results at
//! any thread count, and images of no pixels; the readout modes, backward and the
//! vectorised kernels in the files beside this one.

mod adc;
mod backward;
mod readout;

use super::*;
use crate::cim::em::presets::{self, Synthetic};
use crate::cim::*;
use crate::engine::gemm::Kernel;
use crate::engine::gradcheck::{project, random};
use crate::engine::ops::conv2d::{self, Conv2dCfg, ConvGeom};
use crate::engine::{Tape, Tensor, Var};
use std::sync::Arc;

fn spec(rows: usize, step: f32, kmin: i32, kmax: i32, bpc: u32) -> MacroSpec {
    MacroSpec {
        name: "test".into(),
        rows,
        input_bits: 8,
        weight_bits: 4,
        input_bits_per_cycle: bpc,
        adc: Adc { kmin, kmax, step },
        arrays: 4,
        columns: 64,
    }
}

fn runtime(
    spec: MacroSpec,
    model: ErrorModel,
    mode: ReadoutMode,
    estimator: Estimator,
) -> CimRuntime {
    CimRuntime { seed: 9, ..CimRuntime::new(spec, Arc::new(model), mode, estimator).unwrap() }
}

/// The input quantizer whose grid is `grid`: its bounds as constants on the tape.
fn quant_of(t: &mut Tape, grid: ActGrid) -> InputQuant {
    InputQuant {
        lo: t.constant(Tensor::full(&[1], grid.lo)),
        hi: t.constant(Tensor::full(&[1], grid.hi)),
    }
}

/// Activations exactly on the E-PACT grid (codes spread over the range).
fn on_grid(shape: &[usize], grid: ActGrid, seed: u64) -> Tensor {
    let r = random(shape, seed);
    let d = r
        .data()
        .iter()
        .map(|v| grid.value(((v + 1.0) * 0.5 * grid.max_code as f32).round()))
        .collect();
    Tensor::from_vec(shape, d).unwrap()
}

/// Direct f64 reference of the macro dataflow in ideal mode; with `chip`, the ADC
/// column reading tile `t` of channel `co` — `(t mod arrays)·columns + co mod columns` —
/// applies its gain and offset to `P/step` before rounding. With `draws`, each code is
/// read out as the model's draw at `key.forward(op)`, `op` the operation's index
/// `(((t·cycles + c)·Cout + co)·N + n)·pixels + pixel` (the sampled mode).
#[allow(clippy::too_many_arguments)] // the layer's own inputs, one by one, as the reference sees them
fn reference(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    cfg: Conv2dCfg,
    grid: ActGrid,
    spec: &MacroSpec,
    chip: Option<&Chip>,
    draws: Option<(&ErrorModel, DrawKey)>,
) -> Vec<f64> {
    reference_and_clips(x, w, b, cfg, grid, spec, chip, draws).0
}

/// [`reference`], and how many of its macro operations clipped (their rounded
/// `P/step` beyond the ADC's range).
#[allow(clippy::too_many_arguments)] // as `reference`
fn reference_and_clips(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    cfg: Conv2dCfg,
    grid: ActGrid,
    spec: &MacroSpec,
    chip: Option<&Chip>,
    draws: Option<(&ErrorModel, DrawKey)>,
) -> (Vec<f64>, u64) {
    let mut clipped = 0u64;
    let g = ConvGeom::new(x.shape(), w.shape(), cfg).unwrap();
    let (codes, scales) = quant::weight_codes(w, spec);
    let k = g.k();
    let mut y = vec![0.0f64; g.n * g.out_size()];
    let bits = spec.input_bits_per_cycle;
    for n in 0..g.n {
        for co in 0..g.cout {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = 0.0f64;
                    let mut zero_point = 0.0f64;
                    for t in 0..spec.tiles(k) {
                        for c in 0..spec.cycles() {
                            let mut p = 0i64;
                            for kk in t * spec.rows..((t + 1) * spec.rows).min(k) {
                                let (ci, ky, kx) =
                                    (kk / (g.kh * g.kw), (kk / g.kw) % g.kh, kk % g.kw);
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x.data()
                                    [((n * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize];
                                let q = grid.code(xv) as i64;
                                let qc = (q >> (c * bits)) & ((1 << bits) - 1);
                                let wc = codes[co * k + kk] as i64;
                                p += qc * wc;
                                if c == 0 {
                                    zero_point += wc as f64;
                                }
                            }
                            let (gain, offset) = chip.map_or((1.0, 0.0), |ch| {
                                ch.column((t % spec.arrays) * spec.columns + co % spec.columns)
                            });
                            let u = (gain as f64 * p as f64 / spec.adc.step as f64 + offset as f64)
                                .round_ties_even() as i64;
                            let mut code = u.clamp(spec.adc.kmin as i64, spec.adc.kmax as i64);
                            clipped += (code != u) as u64;
                            if let Some((model, key)) = draws {
                                let op = ((((t * spec.cycles() as usize + c as usize) * g.cout
                                    + co)
                                    * g.n
                                    + n)
                                    * g.pixels()
                                    + oy * g.ow
                                    + ox) as u64;
                                code = model.sample(code as i32, key.forward(op)) as i64;
                            }
                            acc += (1i64 << (c * bits)) as f64 * code as f64 * spec.adc.step as f64;
                        }
                    }
                    y[((n * g.cout + co) * g.oh + oy) * g.ow + ox] = scales[co] as f64
                        * (grid.step as f64 * acc + grid.lo as f64 * zero_point)
                        + b.data()[co] as f64;
                }
            }
        }
    }
    (y, clipped)
}

fn forward(
    rt: &CimRuntime,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    cfg: Conv2dCfg,
    grid: ActGrid,
) -> Tensor {
    let mut t = Tape::new(false);
    let (xv, wv, bv) = (t.constant(x.clone()), t.constant(w.clone()), t.constant(b.clone()));
    let quant = quant_of(&mut t, grid);
    let y = cim_conv2d(&mut t, xv, wv, Some(bv), cfg, quant, &CimCall { rt, layer: 3 }).unwrap();
    t.value(y).clone()
}

fn smooth_params() -> Synthetic {
    Synthetic {
        gain: 0.8,
        offset: 0.5,
        inl: 3.0,
        dnl: 0.0,
        sigma0: 1.0,
        sigma1: 0.2,
        tail: 0.05,
        tail_mean: 3.0,
        sat: 0.9,
        ..presets::AFFINE
    }
}

fn smooth_model(kmin: i32, kmax: i32) -> ErrorModel {
    smooth_params().build("smooth", (kmin, kmax)).unwrap()
}

fn presets_moderate(sp: &MacroSpec) -> ErrorModel {
    em::presets::preset("moderate", (sp.adc.kmin, sp.adc.kmax)).unwrap()
}

/// Expected-mode loss of a CIM linear layer and its gradients (statistical estimator).
fn linear_loss(
    rt: &CimRuntime,
    x: &Tensor,
    w: &Tensor,
    grid: ActGrid,
    r: &Tensor,
) -> (f64, Tensor, Tensor) {
    let mut t = Tape::new(true);
    let (xv, wv): (Var, Var) = (t.leaf(x.clone()), t.leaf(w.clone()));
    let quant = quant_of(&mut t, grid);
    let y = cim_linear(&mut t, xv, wv, None, quant, &CimCall { rt, layer: 1 }).unwrap();
    let l = project(&mut t, y, r.clone());
    let val: f64 = t.value(y).data().iter().zip(r.data()).map(|(a, b)| *a as f64 * *b as f64).sum();
    let g = t.backward(l);
    (val, g.get(xv).unwrap().clone(), g.get(wv).unwrap().clone())
}

#[test]
fn ideal_mode_is_the_macro_dataflow_exactly() {
    // Inputs wider than a byte per cycle: their partial sums come from two byte planes.
    let wide =
        |bits: u32, bpc: u32| MacroSpec { input_bits: bits, ..spec(16, 128.0, -64, 63, bpc) };
    // Small ADC ranges so that rounding and saturation both happen; one partial tile.
    // 70 output channels: the partial-sum kernels' blocks of 8 channels and a shorter
    // tail of 6.
    for (sp, cfg, cout) in [
        (spec(16, 8.0, -64, 63, 8), Conv2dCfg { stride: 1, padding: 1 }, 3),
        (spec(16, 8.0, -64, 63, 8), Conv2dCfg { stride: 1, padding: 1 }, 70),
        (spec(16, 8.0, -64, 63, 8), Conv2dCfg { stride: 2, padding: 1 }, 3),
        (spec(7, 2.0, -100, 90, 1), Conv2dCfg { stride: 1, padding: 1 }, 3), // bit-serial
        (spec(7, 2.0, -100, 90, 1), Conv2dCfg { stride: 1, padding: 1 }, 70),
        (spec(10, 4.0, -60, 60, 2), Conv2dCfg { stride: 1, padding: 0 }, 3), // 2 bits a cycle
        (wide(12, 12), Conv2dCfg { stride: 1, padding: 1 }, 70),             // 12 bits at once
        (wide(16, 16), Conv2dCfg { stride: 1, padding: 1 }, 3),              // 16 bits at once
        (wide(12, 6), Conv2dCfg { stride: 1, padding: 0 }, 3),               // 2 cycles of 6 bits
    ] {
        let grid = ActGrid::new(-0.2, 1.5, sp.input_bits);
        let x = on_grid(&[2, 5, 6, 6], grid, 1);
        let w = random(&[cout, 5, 3, 3], 2);
        let b = random(&[cout], 3);
        let rt = runtime(
            sp.clone(),
            ErrorModel::ideal(sp.adc.kmin, sp.adc.kmax),
            ReadoutMode::Ideal,
            Estimator::Ste,
        );
        let y = forward(&rt, &x, &w, &b, cfg, grid);
        let want = reference(&x, &w, &b, cfg, grid, &sp, None, None);
        let quantum = grid.step as f64 * sp.adc.step as f64 * 0.01;
        for (a, r) in y.data().iter().zip(&want) {
            // One ADC code anywhere would move y by ≥ s_x·step·s_w ≥ this tolerance × 10.
            assert!(
                (*a as f64 - r).abs() < 1e-5 * (1.0 + r.abs()) && quantum > 1e-5 * (1.0 + r.abs()),
                "{a} vs {r}"
            );
        }
    }
}

/// A chip's ADC columns (drawn with large spreads, few columns so that the modulo
/// mapping wraps) act on each tile's partial sum before the ADC, exactly as the plain
/// reference spells it out; the `ideal` mode ignores the chip.
#[test]
fn chip_columns_act_before_the_adc_exactly() {
    let grid = ActGrid::new(-0.2, 1.5, 8);
    let p =
        FixedPattern { column_gain: 0.2, column_offset: 1.5, chip_gain: 0.05, chip_offset: 0.5 };
    // 40 output channels: the modulo mapping wraps many times.
    for (bpc, cfg, cout) in [
        (8, Conv2dCfg { stride: 1, padding: 1 }, 3),
        (8, Conv2dCfg { stride: 1, padding: 1 }, 40),
        (2, Conv2dCfg { stride: 2, padding: 0 }, 3),
    ] {
        let sp = MacroSpec { arrays: 3, columns: 2, ..spec(16, 8.0, -64, 63, bpc) };
        let chip = Chip::draw(&p, sp.adcs(), 4);
        let x = on_grid(&[2, 5, 6, 6], grid, 1);
        let w = random(&[cout, 5, 3, 3], 2);
        let b = random(&[cout], 3);
        let rt = CimRuntime {
            chip: Some(Arc::new(chip.clone())),
            ..runtime(
                sp.clone(),
                ErrorModel::ideal(sp.adc.kmin, sp.adc.kmax),
                ReadoutMode::Expected,
                Estimator::Ste,
            )
        };
        let y = forward(&rt, &x, &w, &b, cfg, grid);
        let want = reference(&x, &w, &b, cfg, grid, &sp, Some(&chip), None);
        let nominal = reference(&x, &w, &b, cfg, grid, &sp, None, None);
        let mut moved = 0;
        for ((a, r), n) in y.data().iter().zip(&want).zip(&nominal) {
            assert!((*a as f64 - r).abs() < 1e-5 * (1.0 + r.abs()), "{a} vs {r}");
            moved += ((r - n).abs() > 1e-5 * (1.0 + r.abs())) as usize;
        }
        assert!(3 * moved > y.len(), "the chip must change many outputs ({moved} of {})", y.len());
        let ideal =
            forward(&CimRuntime { mode: ReadoutMode::Ideal, ..rt.clone() }, &x, &w, &b, cfg, grid);
        assert!(
            ideal
                .data()
                .iter()
                .zip(&nominal)
                .all(|(a, r)| (*a as f64 - r).abs() < 1e-5 * (1.0 + r.abs()))
        );
    }
}

/// Through an ADC fine enough to read every partial sum, the op is E-PACT's
/// fake-quantized input (inputs off the grid, some beyond either bound) convolved with
/// the quantized weights in f32.
#[test]
fn fine_adc_equals_the_digital_quantized_conv() {
    let grid = ActGrid::new(0.0, 2.0, 8);
    let sp = spec(64, 1.0, -(1 << 20), 1 << 20, 8);
    let mut x = random(&[3, 4, 5, 5], 4);
    x.data_mut().iter_mut().for_each(|v| *v = 1.0 + 1.3 * *v);
    let (w, b) = (random(&[6, 4, 3, 3], 5), random(&[6], 6));
    // An ADC of 2^21 codes has no table; an identity source without one stands in.
    struct Identity;
    impl Readout for Identity {
        fn sample(&self, k: i32, _: u64) -> i32 {
            k
        }
        fn label(&self) -> String {
            "identity".into()
        }
    }
    let rt = CimRuntime::new(sp.clone(), Arc::new(Identity), ReadoutMode::Ideal, Estimator::Ste)
        .unwrap();
    let cfg = Conv2dCfg { stride: 1, padding: 1 };
    let y = forward(&rt, &x, &w, &b, cfg, grid);
    let (codes, scales) = quant::weight_codes(&w, &sp);
    let w_hat: Vec<f32> = codes.iter().enumerate().map(|(i, c)| c * scales[i / 36]).collect();
    let g = ConvGeom::new(x.shape(), w.shape(), cfg).unwrap();
    let x_hat: Vec<f32> =
        x.data().iter().map(|&v| grid.value(grid.code(v.clamp(grid.lo, grid.hi)))).collect();
    assert!(x.data().iter().any(|&v| v < grid.lo) && x.data().iter().any(|&v| v > grid.hi));
    let plain = conv2d::forward(&g, &x_hat, &w_hat, Some(b.data()));
    for (a, r) in y.data().iter().zip(&plain) {
        assert!((a - r).abs() < 1e-4 * (1.0 + r.abs()), "{a} vs {r}");
    }
}

#[test]
fn bit_identical_at_one_and_two_threads() {
    let grid = ActGrid::new(-0.1, 1.0, 8);
    let sp = MacroSpec::default();
    // A chip of the current-domain model: fixed pattern, heavy tails, outliers.
    let model = em::presets::preset("current-domain", (sp.adc.kmin, sp.adc.kmax)).unwrap();
    let rt = runtime(sp.clone(), model, ReadoutMode::Sampled, Estimator::Statistical { draws: 2 })
        .on_chip(5);
    assert!(rt.chip.is_some());
    let x = on_grid(&[9, 16, 8, 8], grid, 16);
    let w = random(&[8, 16, 3, 3], 17);
    let run = || {
        let mut t = Tape::new(true);
        let (xv, wv) = (t.leaf(x.clone()), t.leaf(w.clone()));
        let quant = quant_of(&mut t, grid);
        let y = cim_conv2d(
            &mut t,
            xv,
            wv,
            None,
            Conv2dCfg { stride: 1, padding: 1 },
            quant,
            &CimCall { rt: &rt, layer: 4 },
        )
        .unwrap();
        let out = t.value(y).clone();
        let l = project(&mut t, y, random(out.shape(), 18));
        let g = t.backward(l);
        (out, g.get(xv).unwrap().clone(), g.get(wv).unwrap().clone())
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(run);
    assert!(one == two, "results differ between 1 and 2 threads");
}

/// Images of no pixels, padded: every window is padding, so every partial sum is 0 and
/// the output is the readout of code 0 (the bias in the ideal mode, as the reference
/// spells out); backward, with the statistical estimator, gives a zero weight gradient
/// and an empty input gradient.
#[test]
fn images_of_no_pixels_are_all_padding() {
    let grid = ActGrid::new(-0.2, 1.5, 8);
    let sp = spec(16, 8.0, -64, 63, 8);
    let cfg = Conv2dCfg { stride: 1, padding: 1 };
    let (x, w, b) = (
        Tensor::from_vec(&[2, 5, 0, 4], vec![]).unwrap(),
        random(&[3, 5, 1, 1], 2),
        random(&[3], 3),
    );
    let ideal = runtime(
        sp.clone(),
        ErrorModel::ideal(sp.adc.kmin, sp.adc.kmax),
        ReadoutMode::Ideal,
        Estimator::Ste,
    );
    let y = forward(&ideal, &x, &w, &b, cfg, grid);
    assert_eq!(y.shape(), [2, 3, 2, 6]);
    let want = reference(&x, &w, &b, cfg, grid, &sp, None, None);
    assert_eq!(y.data().iter().map(|&v| v as f64).collect::<Vec<_>>(), want);
    let rt = runtime(
        sp.clone(),
        presets_moderate(&sp),
        ReadoutMode::Sampled,
        Estimator::Statistical { draws: 0 },
    );
    let mut t = Tape::new(true);
    let (xv, wv) = (t.leaf(x.clone()), t.leaf(w.clone()));
    let quant = quant_of(&mut t, grid);
    let y = cim_conv2d(&mut t, xv, wv, None, cfg, quant, &CimCall { rt: &rt, layer: 0 }).unwrap();
    let dy = random(t.value(y).shape(), 4);
    let l = project(&mut t, y, dy);
    let g = t.backward(l);
    assert_eq!(g.get(wv).unwrap().data(), &[0.0; 15][..]);
    assert!(g.get(xv).is_none_or(|d| d.data().is_empty()));
}

/// The layers' clip counts are the reference's: every operation counted once, the
/// clipped ones those whose rounded partial sum lies beyond the ADC's range — on a
/// chip's columns, bit-serial and in one readout, and the same at 1 thread and at 2.
#[test]
fn clip_counts_are_the_reference_counts() {
    let chip = Chip::of_pattern(
        &FixedPattern { column_gain: 0.1, column_offset: 0.7, ..Default::default() },
        4 * 64,
        5,
    )
    .unwrap();
    for (sp, bits) in [(spec(16, 8.0, -64, 63, 8), 8), (spec(7, 1.0, -8, 7, 1), 1)] {
        let grid = ActGrid::new(-0.5, 1.0, 8);
        let cfg = Conv2dCfg { stride: 1, padding: 1 };
        let (x, w, b) =
            (on_grid(&[3, 5, 6, 6], grid, 1), random(&[7, 5, 3, 3], 2), random(&[7], 3));
        let (_, want) = reference_and_clips(&x, &w, &b, cfg, grid, &sp, Some(&chip), None);
        let model = ErrorModel::ideal(sp.adc.kmin, sp.adc.kmax);
        let base = runtime(sp.clone(), model, ReadoutMode::Ideal, Estimator::Ste);
        let counts: Vec<(u64, u64)> = [1, 2]
            .into_iter()
            .map(|threads| {
                let clips = Arc::new(ClipCounts::default());
                let rt = CimRuntime {
                    chip: Some(Arc::new(chip.clone())),
                    mode: ReadoutMode::Sampled,
                    clips: Some(clips.clone()),
                    ..base.clone()
                };
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| forward(&rt, &x, &w, &b, cfg, grid));
                let got = clips.per_layer(&["a".into(), "b".into(), "c".into(), "conv".into()]);
                assert_eq!(got.len(), 1, "only layer 3 read");
                (got[0].ops, got[0].clipped)
            })
            .collect();
        let ops = (sp.tiles(5 * 9) * (8 / bits) as usize * 7 * 3 * 36) as u64;
        assert_eq!(counts, vec![(ops, want); 2], "bits per cycle {bits}");
        assert!(want > 0 && want < ops, "the case clips some operations: {want} of {ops}");
    }
}
