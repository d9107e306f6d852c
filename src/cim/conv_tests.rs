//! Tests of the CIM layers against plain references.

use super::em::presets::{self, Synthetic};
use super::*;
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
    y
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
    let y = cim_conv2d(&mut t, xv, wv, Some(bv), cfg, grid, &CimCall { rt, layer: 3 }).unwrap();
    t.value(y).clone()
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

/// The sampled mode reads every operation out as the error model's draw at the
/// operation's own key, on a chip, over several blocks of output channels, bit-serial
/// cycles and several images: the plain reference spells each draw out.
#[test]
fn sampled_mode_draws_each_operation_at_its_key() {
    let grid = ActGrid::new(-0.2, 1.5, 8);
    for (bpc, cout) in [(8, 40), (4, 9)] {
        let sp = MacroSpec { arrays: 3, columns: 7, ..spec(16, 8.0, -64, 63, bpc) };
        let model = em::presets::preset("current-domain", (sp.adc.kmin, sp.adc.kmax)).unwrap();
        let rt =
            runtime(sp.clone(), model.clone(), ReadoutMode::Sampled, Estimator::Ste).on_chip(2);
        let chip = rt.chip.clone().unwrap();
        let (x, w, b) =
            (on_grid(&[3, 5, 6, 6], grid, 31), random(&[cout, 5, 3, 3], 32), random(&[cout], 33));
        let cfg = Conv2dCfg { stride: 1, padding: 1 };
        let y = forward(&rt, &x, &w, &b, cfg, grid);
        // `forward` calls the layer as layer 3.
        let want = reference(
            &x,
            &w,
            &b,
            cfg,
            grid,
            &sp,
            Some(&chip),
            Some((&model, DrawKey::new(rt.seed, 3, rt.step))),
        );
        let ideal = reference(&x, &w, &b, cfg, grid, &sp, Some(&chip), None);
        let mut moved = 0;
        for ((a, r), i) in y.data().iter().zip(&want).zip(&ideal) {
            assert!(
                (*a as f64 - r).abs() < 1e-5 * (1.0 + r.abs()),
                "{a} vs {r} (cout {cout}, {bpc} bits a cycle)"
            );
            moved += ((r - i).abs() > 1e-5 * (1.0 + r.abs())) as usize;
        }
        assert!(3 * moved > y.len(), "the draws must move many outputs ({moved} of {})", y.len());
    }
}

#[test]
fn fine_adc_equals_the_digital_quantized_conv() {
    let grid = ActGrid::new(0.0, 2.0, 8);
    let sp = spec(64, 1.0, -(1 << 20), 1 << 20, 8);
    let (x, w, b) = (on_grid(&[3, 4, 5, 5], grid, 4), random(&[6, 4, 3, 3], 5), random(&[6], 6));
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
    let plain = conv2d::forward(&g, x.data(), &w_hat, Some(b.data()));
    for (a, r) in y.data().iter().zip(&plain) {
        assert!((a - r).abs() < 1e-4 * (1.0 + r.abs()), "{a} vs {r}");
    }
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

#[test]
fn expected_mode_is_the_mean_of_sampled_runs() {
    let grid = ActGrid::new(0.0, 1.0, 8);
    let sp = spec(16, 16.0, -128, 127, 8);
    let model = presets_moderate(&sp);
    let (x, w, b) =
        (on_grid(&[2, 4, 4, 4], grid, 7), random(&[3, 4, 3, 3], 8), Tensor::zeros(&[3]));
    let cfg = Conv2dCfg { stride: 1, padding: 1 };
    let mut rt = runtime(sp.clone(), model, ReadoutMode::Expected, Estimator::Ste);
    let expected = forward(&rt, &x, &w, &b, cfg, grid);
    rt.mode = ReadoutMode::Sampled;
    let runs = 400;
    let mut mean = vec![0.0f64; expected.len()];
    let mut sq = vec![0.0f64; expected.len()];
    let first = forward(&rt, &x, &w, &b, cfg, grid);
    for s in 0..runs {
        rt.step = s;
        let y = forward(&rt, &x, &w, &b, cfg, grid);
        for ((m, q), v) in mean.iter_mut().zip(&mut sq).zip(y.data()) {
            *m += *v as f64 / runs as f64;
            *q += (*v as f64).powi(2) / runs as f64;
        }
    }
    rt.step = 0;
    assert_eq!(forward(&rt, &x, &w, &b, cfg, grid), first, "sampling must replay for the same key");
    let mut differs = 0;
    for ((m, q), e) in mean.iter().zip(&sq).zip(expected.data()) {
        let sd = (q - m * m).max(0.0).sqrt();
        assert!(
            (m - *e as f64).abs() <= 5.0 * sd / (runs as f64).sqrt() + 1e-4,
            "mean {m} vs expected {e} (sd {sd})"
        );
        differs += (sd > 0.0) as usize;
    }
    assert!(differs > expected.len() / 2, "the model should make most outputs random");
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
    let y = cim_linear(&mut t, xv, wv, None, grid, &CimCall { rt, layer: 1 }).unwrap();
    let l = project(&mut t, y, r.clone());
    let val: f64 = t.value(y).data().iter().zip(r.data()).map(|(a, b)| *a as f64 * *b as f64).sum();
    let g = t.backward(l);
    (val, g.get(xv).unwrap().clone(), g.get(wv).unwrap().clone())
}

#[test]
fn statistical_gradient_matches_finite_differences_of_the_expected_loss() {
    let grid = ActGrid::new(-0.5, 2.0, 8);
    // ADC range wide enough that no partial sum saturates (|P| ≤ 8·255·7 < 8·2047).
    let sp = spec(8, 8.0, -2048, 2047, 8);
    // On the nominal chip, and on one whose column gains differ between the tiles and
    // channels (the slope carries them). Gains of 1 and 2 keep the finite differences
    // exact: a move of whole input codes moves g·P/step by the same whole or half codes.
    let gains: Vec<f32> = (0..sp.adcs()).map(|c| 1.0 + ((c / sp.columns + c) % 2) as f32).collect();
    let uneven = Chip::from_columns(0, gains, vec![0.0; sp.adcs()]);
    for chip in [None, Some(Arc::new(uneven))] {
        let rt = CimRuntime {
            chip,
            ..runtime(
                sp.clone(),
                smooth_model(-2048, 2047),
                ReadoutMode::Expected,
                Estimator::Statistical { draws: 0 },
            )
        };
        let x = on_grid(&[3, 20], grid, 11);
        // Latent weights on the code grid, the per-channel maximum (code 7) first and kept.
        let scale = 0.1f32;
        let mut w = Tensor::zeros(&[2, 20]);
        for (i, v) in w.data_mut().iter_mut().enumerate() {
            *v = scale * if i % 20 == 0 { 7.0 } else { ((i * 5) % 13) as f32 - 6.0 };
        }
        let r = random(&[3, 2], 12);
        let (_, gx, gw) = linear_loss(&rt, &x, &w, grid, &r);
        let value = |x: &Tensor, w: &Tensor| linear_loss(&rt, x, w, grid, &r).0;
        // Inputs: move by whole codes (m steps of the grid) so x̂ stays on the grid.
        let m = 12.0;
        for idx in [1, 7, 22, 45, 58] {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            let base = x.data()[idx];
            if base - m * grid.step < grid.lo || base + m * grid.step > grid.value(255.0) {
                continue;
            }
            xp.data_mut()[idx] = base + m * grid.step;
            xm.data_mut()[idx] = base - m * grid.step;
            let fd = (value(&xp, &w) - value(&xm, &w)) / (2.0 * (m * grid.step) as f64);
            let a = gx.data()[idx] as f64;
            assert!(
                (a - fd).abs() < 0.06 * fd.abs().max(a.abs()) + 1e-3,
                "dx[{idx}]: analytic {a}, finite difference {fd}"
            );
        }
        // Weights: move a non-maximal weight by ±2 codes (the scale stays put).
        for idx in [3, 9, 24, 33] {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp.data_mut()[idx] += 2.0 * scale;
            wm.data_mut()[idx] -= 2.0 * scale;
            let fd = (value(&x, &wp) - value(&x, &wm)) / (4.0 * scale as f64);
            let a = gw.data()[idx] as f64;
            assert!(
                (a - fd).abs() < 0.06 * fd.abs().max(a.abs()) + 1e-3,
                "dw[{idx}]: analytic {a}, finite difference {fd}"
            );
        }
    }
}

#[test]
fn sampled_slopes_are_unbiased_estimates_of_the_exact_slope() {
    let grid = ActGrid::new(0.0, 1.0, 8);
    let sp = spec(8, 8.0, -2048, 2047, 8);
    let x = on_grid(&[4, 24], grid, 13);
    let w = random(&[3, 24], 14);
    let r = random(&[4, 3], 15);
    let exact = runtime(
        sp.clone(),
        smooth_model(-2048, 2047),
        ReadoutMode::Sampled,
        Estimator::Statistical { draws: 0 },
    );
    let (_, gx0, gw0) = linear_loss(&exact, &x, &w, grid, &r);
    // Each S-draw estimate is noisy; over independent steps its mean must converge to
    // the exact slope's gradient: |mean − exact| within 5 standard errors, per element.
    let steps = 500;
    let n = gx0.len() + gw0.len();
    let (mut sum, mut sq) = (vec![0.0f64; n], vec![0.0f64; n]);
    for step in 0..steps {
        let drawn =
            CimRuntime { estimator: Estimator::Statistical { draws: 8 }, step, ..exact.clone() };
        let (_, gx, gw) = linear_loss(&drawn, &x, &w, grid, &r);
        for ((s, q), v) in sum.iter_mut().zip(&mut sq).zip(gx.data().iter().chain(gw.data())) {
            *s += *v as f64;
            *q += (*v as f64).powi(2);
        }
    }
    for (i, a) in gx0.data().iter().chain(gw0.data()).enumerate() {
        let mean = sum[i] / steps as f64;
        let se = ((sq[i] / steps as f64 - mean * mean).max(0.0) / steps as f64).sqrt();
        assert!(
            (*a as f64 - mean).abs() <= 5.0 * se + 1e-4,
            "element {i}: exact {a}, mean of estimates {mean} ± {se}"
        );
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
        let y = cim_conv2d(
            &mut t,
            xv,
            wv,
            None,
            Conv2dCfg { stride: 1, padding: 1 },
            grid,
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

#[test]
fn ste_backward_is_the_plain_conv_backward() {
    let grid = ActGrid::new(0.0, 1.0, 8);
    let sp = MacroSpec::default();
    let rt = runtime(sp.clone(), presets_moderate(&sp), ReadoutMode::Sampled, Estimator::Ste);
    let (x, w) = (on_grid(&[2, 3, 5, 5], grid, 19), random(&[4, 3, 3, 3], 20));
    let cfg = Conv2dCfg { stride: 1, padding: 1 };
    let mut t = Tape::new(true);
    let (xv, wv) = (t.leaf(x.clone()), t.leaf(w.clone()));
    let y = cim_conv2d(&mut t, xv, wv, None, cfg, grid, &CimCall { rt: &rt, layer: 0 }).unwrap();
    let dy = random(t.value(y).shape(), 21);
    let l = project(&mut t, y, dy.clone());
    let g = t.backward(l);
    let (codes, scales) = quant::weight_codes(&w, &sp);
    let w_hat: Vec<f32> = codes.iter().enumerate().map(|(i, c)| c * scales[i / 27]).collect();
    let geom = ConvGeom::new(x.shape(), w.shape(), cfg).unwrap();
    let (dx, dw, _) = conv2d::backward(&geom, x.data(), &w_hat, dy.data(), true);
    assert_eq!(g.get(xv).unwrap().data(), &dx.unwrap()[..]);
    assert_eq!(g.get(wv).unwrap().data(), &dw[..]);
}

/// The statistical gradient against finite differences of the expected loss through a
/// bit-serial macro (2 input bits per cycle: four cycles whose slopes are averaged with
/// the weight of their bits) and a padded 3×3 convolution (padding rows are not
/// activated and carry no zero-point term).
#[test]
fn statistical_gradient_through_a_bit_serial_padded_conv() {
    let grid = ActGrid::new(-0.5, 2.0, 8);
    // Per cycle |P| ≤ 8 rows · 3 · 7 = 168 codes at step 1: no saturation in ±512.
    // Per cycle |P| ≤ 8 rows · 3 · 7 = 168 at ADC step 1: the codes are the partial sums
    // themselves (no rounding to blur the differences) and never saturate. The readout
    // bends smoothly (gain, INL bow, noise) without the charge-loss tail, whose kink at
    // code 0 — where 2-bit partial sums live — a 12-code difference would straddle.
    let sp = spec(8, 1.0, -512, 511, 2);
    let p = Synthetic { tail: 0.0, ..smooth_params() };
    let rt = runtime(
        sp,
        p.build("smooth-no-tail", (-512, 511)).unwrap(),
        ReadoutMode::Expected,
        Estimator::Statistical { draws: 0 },
    );
    let cfg = Conv2dCfg { stride: 1, padding: 1 };
    // Rows of 5 (the weight gradient packs a written-out patch matrix) and of 9 over two
    // image groups (it packs the patches from the padded codes).
    for (n, width) in [(2, 5), (30, 9)] {
        let x = on_grid(&[n, 3, 5, width], grid, 21);
        let scale = 0.1f32;
        let mut w = Tensor::zeros(&[2, 3, 3, 3]);
        for (i, v) in w.data_mut().iter_mut().enumerate() {
            *v = scale * if i % 27 == 0 { 7.0 } else { ((i * 5) % 13) as f32 - 6.0 };
        }
        let r = random(&[n, 2, 5, width], 22);
        let loss = |x: &Tensor, w: &Tensor| -> (f64, Tensor, Tensor) {
            let mut t = Tape::new(true);
            let (xv, wv): (Var, Var) = (t.leaf(x.clone()), t.leaf(w.clone()));
            let y = cim_conv2d(&mut t, xv, wv, None, cfg, grid, &CimCall { rt: &rt, layer: 2 })
                .unwrap();
            let l = project(&mut t, y, r.clone());
            let val: f64 =
                t.value(y).data().iter().zip(r.data()).map(|(a, b)| *a as f64 * *b as f64).sum();
            let g = t.backward(l);
            (val, g.get(xv).unwrap().clone(), g.get(wv).unwrap().clone())
        };
        let (_, gx, gw) = loss(&x, &w);
        // Inputs (corner pixels sit next to the padding): whole-code moves stay on the grid.
        let m = 12.0;
        let mut checked = 0;
        for idx in [0, 4, 12, 20, 24, 30, 49, 62, 74] {
            let base = x.data()[idx];
            if base - m * grid.step < grid.lo || base + m * grid.step > grid.value(255.0) {
                continue;
            }
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp.data_mut()[idx] = base + m * grid.step;
            xm.data_mut()[idx] = base - m * grid.step;
            let fd = (loss(&xp, &w).0 - loss(&xm, &w).0) / (2.0 * (m * grid.step) as f64);
            let a = gx.data()[idx] as f64;
            assert!(
                (a - fd).abs() < 0.06 * fd.abs().max(a.abs()) + 2e-3,
                "dx[{idx}]: analytic {a}, finite difference {fd}"
            );
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} inputs away from the grid's ends");
        // Codes within ±5, so ±2 stays inside ±7 and the per-channel scale stays put.
        for idx in [3, 10, 29, 40, 46] {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp.data_mut()[idx] += 2.0 * scale;
            wm.data_mut()[idx] -= 2.0 * scale;
            let fd = (loss(&x, &wp).0 - loss(&x, &wm).0) / (4.0 * scale as f64);
            let a = gw.data()[idx] as f64;
            assert!(
                (a - fd).abs() < 0.06 * fd.abs().max(a.abs()) + 2e-3,
                "dw[{idx}]: analytic {a}, finite difference {fd}"
            );
        }
    }
}

/// A source that can only be sampled (the error model behind `SampleOnly`, as a chip
/// behind a link) reads exactly what the model reads; `stat:S` trains through it with
/// gradients whose mean is the exact slope's; what needs the table is refused by name,
/// also when a runtime is changed after `CimRuntime::new`.
#[test]
fn sample_only_source_reads_the_same_and_refuses_what_needs_a_table() {
    let grid = ActGrid::new(0.0, 1.0, 8);
    let sp = spec(8, 8.0, -2048, 2047, 8);
    let model = smooth_model(-2048, 2047);
    let plain: Arc<dyn Readout> = Arc::new(SampleOnly(Arc::new(model.clone())));
    for (mode, est, needs) in [
        (ReadoutMode::Expected, Estimator::Ste, "`expected`"),
        (ReadoutMode::Sampled, Estimator::Statistical { draws: 0 }, "`stat`"),
    ] {
        let e = CimRuntime::new(sp.clone(), plain.clone(), mode, est).err().unwrap().to_string();
        assert!(
            e.contains("can only be sampled") && e.contains(needs) && e.contains("(sample only)"),
            "{e}"
        );
    }
    let x = on_grid(&[4, 24], grid, 21);
    let w = random(&[3, 24], 22);
    let r = random(&[4, 3], 23);
    let table =
        runtime(sp.clone(), model, ReadoutMode::Sampled, Estimator::Statistical { draws: 4 })
            .on_chip(3);
    let sampled = CimRuntime { readout: plain.clone(), ..table.clone() };
    let exact = CimRuntime { estimator: Estimator::Statistical { draws: 0 }, ..table.clone() };
    let (v_table, _, _) = linear_loss(&table, &x, &w, grid, &r);
    let (v_plain, _, _) = linear_loss(&sampled, &x, &w, grid, &r);
    assert_eq!(
        v_table.to_bits(),
        v_plain.to_bits(),
        "the forward readouts differ through the wrapper"
    );
    // Same-bit pairs at k ± 1: unbiased for the exact slope (5 standard errors per element).
    let (_, gx0, gw0) = linear_loss(&exact, &x, &w, grid, &r);
    let steps = 300;
    let n = gx0.len() + gw0.len();
    let (mut sum, mut sq) = (vec![0.0f64; n], vec![0.0f64; n]);
    for step in 0..steps {
        let (_, gx, gw) = linear_loss(&CimRuntime { step, ..sampled.clone() }, &x, &w, grid, &r);
        for ((s, q), v) in sum.iter_mut().zip(&mut sq).zip(gx.data().iter().chain(gw.data())) {
            *s += *v as f64;
            *q += (*v as f64).powi(2);
        }
    }
    for (i, a) in gx0.data().iter().chain(gw0.data()).enumerate() {
        let mean = sum[i] / steps as f64;
        let se = ((sq[i] / steps as f64 - mean * mean).max(0.0) / steps as f64).sqrt();
        assert!(
            (*a as f64 - mean).abs() <= 5.0 * se + 1e-4,
            "element {i}: exact {a}, mean through the sample-only source {mean} ± {se}"
        );
    }
    // A runtime switched to the exact slope after `new` is refused by the layer.
    let mut t = Tape::new(true);
    let (xv, wv) = (t.leaf(x.clone()), t.leaf(w.clone()));
    let bad = CimRuntime { estimator: Estimator::Statistical { draws: 0 }, ..sampled };
    let e = cim_linear(&mut t, xv, wv, None, grid, &CimCall { rt: &bad, layer: 1 })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("can only be sampled"), "{e}");
}

/// The ADC conversion (vectorised where the CPU allows) is the definition, written out
/// here: the code of `P·scale + offset` rounded half to even and clamped to the range,
/// saved as `k − kmin`, or as `levels` where the rounded value lies beyond the range or is
/// NaN (read as below it). Runs not a multiple of 16; ties; sums at ±(2^24 − 1); column
/// gains that are 0, negative, infinite or NaN; ranges that touch or exclude zero.
#[test]
fn adc_paths_are_the_scalar_conversion_exactly() {
    use std::mem::MaybeUninit;
    let definition = |p: i32, scale: f32, offset: f32, adc: Adc| -> (i32, u16) {
        let saturated = adc.levels() as u16;
        let x = p as f32 * scale + offset;
        if x.is_nan() {
            return (adc.kmin, saturated);
        }
        let r = x.round_ties_even();
        if r < adc.kmin as f32 {
            (adc.kmin, saturated)
        } else if r > adc.kmax as f32 {
            (adc.kmax, saturated)
        } else {
            (r as i32, (r as i32 - adc.kmin) as u16)
        }
    };
    for (kmin, kmax, step) in [(-256, 255, 32.0f32), (0, 15, 1.0), (1, 7, 2.0), (-8, -1, 4.0)] {
        let adc = Adc { kmin, kmax, step };
        for (gain, offset) in [
            (1.0f32, 0.0f32),
            (0.97, 0.5),
            (1.03, -0.37),
            (0.0, 0.25),
            (-1.0, 0.0),
            (f32::INFINITY, 0.0),
            (f32::NAN, 0.0),
        ] {
            let scale = gain / step;
            for n in [0usize, 1, 15, 16, 17, 100, 1027] {
                let sums: Vec<i32> = (0..n)
                    .map(|i| match i % 9 {
                        0 => (1 << 24) - 1,
                        1 => -(1 << 24) + 1,
                        2 => (i as i32 % 40 - 20) * step as i32 / 2, // ties and near-ties
                        _ => ((i * 104_729) % 20_011) as i32 - 10_005,
                    })
                    .collect();
                for isa in Kernel::ALL.into_iter().filter(|k| k.supported()) {
                    let mut codes = vec![i32::MIN; n];
                    let mut saved = vec![MaybeUninit::new(u16::MAX); n];
                    super::conv::adc_codes_on(
                        isa,
                        &sums,
                        scale,
                        offset,
                        adc,
                        &mut codes,
                        Some(&mut saved),
                    );
                    let mut codes_only = vec![i32::MIN; n];
                    super::conv::adc_codes_on(
                        isa,
                        &sums,
                        scale,
                        offset,
                        adc,
                        &mut codes_only,
                        None,
                    );
                    for i in 0..n {
                        let (k, sv) = definition(sums[i], scale, offset, adc);
                        // SAFETY: the buffer was initialised above (and adc_codes writes every slot).
                        let got = unsafe { saved[i].assume_init() };
                        assert_eq!(
                            (codes[i], got, codes_only[i]),
                            (k, sv, k),
                            "{}: sum {} of {n} ({}), gain {gain}, offset {offset}, ADC {kmin}..={kmax}",
                            isa.name(),
                            i,
                            sums[i]
                        );
                    }
                }
            }
        }
    }
}

/// Every vectorised `E = dY ∘ slope` pass equals the scalar formula bit for bit, on runs
/// that are not a multiple of 16, with every code of the table (the saturated one too).
#[test]
fn slope_times_dy_is_the_scalar_formula_exactly() {
    let table: Vec<f32> = (0..513)
        .map(|i| if i == 512 { 0.0 } else { 0.7 + (i as f32 * 0.37).sin() * 0.3 })
        .collect();
    for n in [0, 1, 15, 16, 17, 100, 1027] {
        let codes: Vec<u16> = (0..n).map(|i| ((i * 7919) % 513) as u16).collect();
        let dy: Vec<f32> =
            (0..n).map(|i| ((i * 104729 % 997) as f32 / 300.0 - 1.6) * 1e-3).collect();
        let sh = 0.93f32;
        for isa in Kernel::ALL.into_iter().filter(|k| k.supported()) {
            let mut got = vec![f32::NAN; n];
            super::conv::dy_times_slope_on(isa, &mut got, &dy, &codes, &table, sh);
            for i in 0..n {
                let want = dy[i] * (0.0 + sh * table[codes[i] as usize]);
                assert_eq!(got[i].to_bits(), want.to_bits(), "{}: element {i} of {n}", isa.name());
            }
        }
    }
}

/// A code beyond the table is refused, not read out of bounds.
#[test]
#[should_panic(expected = "beyond the slope table")]
fn slope_times_dy_refuses_a_code_beyond_the_table() {
    let (table, dy) = (vec![1.0f32; 10], vec![1.0f32; 32]);
    let mut codes = vec![3u16; 32];
    codes[5] = 10;
    super::conv::dy_times_slope(&mut [0.0; 32], &dy, &codes, &table, 1.0);
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
    let y = cim_conv2d(&mut t, xv, wv, None, cfg, grid, &CimCall { rt: &rt, layer: 0 }).unwrap();
    let dy = random(t.value(y).shape(), 4);
    let l = project(&mut t, y, dy);
    let g = t.backward(l);
    assert_eq!(g.get(wv).unwrap().data(), &[0.0; 15][..]);
    assert!(g.get(xv).is_none_or(|d| d.data().is_empty()));
}
