//! The backward of the CIM layers: the statistical gradient against finite differences,
//! sampled slopes against the exact one, and the STE's plain convolution backward.

use super::*;

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

/// With STE the op's gradients are those of the plain ops it stands for: E-PACT, then
/// the convolution by the straight-through quantized weights (`epact` →
/// `quantize_weights` → `conv2d`), to the input, the weights and both bounds, bit for
/// bit. Some inputs sit on and beyond the bounds, where E-PACT passes no gradient to
/// the input and gives it to a bound.
#[test]
fn ste_backward_is_epact_then_the_plain_conv_backward() {
    let sp = MacroSpec::default();
    let rt = runtime(sp.clone(), presets_moderate(&sp), ReadoutMode::Sampled, Estimator::Ste);
    let mut x = random(&[2, 3, 5, 5], 19);
    x.data_mut().iter_mut().step_by(7).for_each(|v| *v *= 3.0);
    let w = random(&[4, 3, 3, 3], 20);
    let (lo, hi) = (Tensor::full(&[1], -0.4), Tensor::full(&[1], 0.7));
    let cfg = Conv2dCfg { stride: 1, padding: 1 };
    let dy = random(&[2, 4, 5, 5], 21);
    let grads = |fused: bool| {
        let mut t = Tape::new(true);
        let (xv, wv) = (t.leaf(x.clone()), t.leaf(w.clone()));
        let quant = InputQuant { lo: t.leaf(lo.clone()), hi: t.leaf(hi.clone()) };
        let y = if fused {
            cim_conv2d(&mut t, xv, wv, None, cfg, quant, &CimCall { rt: &rt, layer: 0 }).unwrap()
        } else {
            let xq = epact(&mut t, xv, quant.lo, quant.hi, Some(sp.input_bits)).unwrap();
            let wq = quant::quantize_weights(&mut t, wv, &sp);
            conv2d::conv2d(&mut t, xq, wq, None, cfg).unwrap()
        };
        let l = project(&mut t, y, dy.clone());
        let g = t.backward(l);
        [xv, wv, quant.lo, quant.hi].map(|v| g.get(v).unwrap().data().to_vec())
    };
    let (fused, plain) = (grads(true), grads(false));
    for (name, (a, b)) in ["x", "w", "lo", "hi"].iter().zip(fused.iter().zip(&plain)) {
        assert_eq!(a, b, "gradient of {name}");
    }
    assert!(fused[0].iter().filter(|&&v| v == 0.0).count() > 5, "inputs beyond the bounds");
    assert!(fused[2][0] != 0.0 && fused[3][0] != 0.0, "both bounds get a gradient");
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
            let quant = quant_of(&mut t, grid);
            let y = cim_conv2d(&mut t, xv, wv, None, cfg, quant, &CimCall { rt: &rt, layer: 2 })
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
