//! Tests of `readout.rs`.

use super::*;
use crate::cim::em::presets;

/// Per code: (mean, variance) of the one-draw sampled slope, over n draws.
fn slope_moments(src: &dyn Readout, k: i32, n: u64) -> (f64, f64) {
    let key = DrawKey::new(3, 1, 4);
    let codes = vec![k; n as usize];
    let mut out = vec![0.0f32; codes.len()];
    src.slope_draws_run(&codes, (-256, 255), 1, DrawRun { key, op0: 0, stride: 1 }, &mut out);
    let m = out.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let v = out.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    (m, v)
}

/// The estimator before coupling: independent draws at the two codes.
fn independent_moments(m: &ErrorModel, k: i32, n: u64) -> (f64, f64) {
    let key = DrawKey::new(3, 1, 4);
    let v: Vec<f64> = (0..n)
        .map(|op| {
            (m.sample(k + 1, key.backward(op, 0)) - m.sample(k - 1, key.backward(op, 1))) as f64
                / 2.0
        })
        .collect();
    let mean = v.iter().sum::<f64>() / n as f64;
    (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64)
}

/// The coupled (inverse-CDF) sampled slope is unbiased for the exact central
/// difference, and its variance is far below that of independent draws (the
/// estimator before coupling); a sample-only source (same draw bits at both codes)
/// is unbiased too and no worse than independent draws. Measured per code where
/// ResNet20's partial sums live, on `current-domain`.
#[test]
fn coupled_slope_draws_are_unbiased_and_low_variance() {
    let m = presets::preset("current-domain", (-256, 255)).unwrap();
    let plain = SampleOnly(Arc::new(m.clone()));
    let n = 40_000;
    let (mut v_coupled, mut v_same_bits, mut v_indep) = (0.0, 0.0, 0.0);
    for k in (-30..=30).step_by(5) {
        let exact = (m.mean(k + 1) as f64 - m.mean(k - 1) as f64) / 2.0;
        let (mc, vc) = slope_moments(&m, k, n);
        let (ms, vs) = slope_moments(&plain, k, n);
        let (mi, vi) = independent_moments(&m, k, n);
        // Unbiased: within 5 standard errors of the exact central difference.
        for (mean, var, what) in
            [(mc, vc, "coupled"), (ms, vs, "sample-only"), (mi, vi, "independent")]
        {
            let se = (var / n as f64).sqrt();
            assert!(
                (mean - exact).abs() <= 5.0 * se + 1e-6,
                "{what} at {k}: {mean} vs exact {exact} ± {se}"
            );
        }
        eprintln!(
            "k {k}: exact {exact:.4} variance: coupled {vc:.4}, same bits {vs:.4}, independent {vi:.4}"
        );
        (v_coupled, v_same_bits, v_indep) = (v_coupled + vc, v_same_bits + vs, v_indep + vi);
    }
    eprintln!(
        "variance vs independent draws: coupled 1/{:.1}, same bits 1/{:.1}",
        v_indep / v_coupled,
        v_indep / v_same_bits
    );
    assert!(
        v_indep / v_coupled >= 8.0,
        "coupling reduced the variance only {:.1}×",
        v_indep / v_coupled
    );
    assert!(v_same_bits <= v_indep, "same-bit pairs vary more than independent ones");
}

/// The `draws` draws of one operation (a lattice from one hash,
/// [`DrawKey::backward_draw`]) average to the exact central difference, and their
/// average varies less than that of `draws` independent draws (the one-draw
/// variance over `draws`): at most half as much on the table, no more through a
/// sample-only source.
#[test]
fn lattice_draws_are_unbiased_and_vary_less_than_independent_ones() {
    let m = presets::preset("current-domain", (-256, 255)).unwrap();
    let plain = SampleOnly(Arc::new(m.clone()));
    let (n, draws) = (20_000u64, 4u32);
    let moments = |src: &dyn Readout, k: i32, draws: u32| {
        let codes = vec![k; n as usize];
        let mut out = vec![0.0f32; codes.len()];
        src.slope_draws_run(
            &codes,
            (-256, 255),
            draws,
            DrawRun { key: DrawKey::new(5, 2, 9), op0: 0, stride: 1 },
            &mut out,
        );
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        (mean, out.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64)
    };
    // Measured: 0.33 on the table (its pair-difference alias table is spread over
    // both halves of the word), 0.98 through sample-only (two rows' draws).
    for (src, what, at_most) in [(&m as &dyn Readout, "table", 0.5), (&plain, "sample-only", 1.0)] {
        let (mut v_lattice, mut v_independent) = (0.0, 0.0);
        for k in (-30..=30).step_by(5) {
            let exact = (m.mean(k + 1) as f64 - m.mean(k - 1) as f64) / 2.0;
            let (mean, var) = moments(src, k, draws);
            let se = (var / n as f64).sqrt();
            assert!(
                (mean - exact).abs() <= 5.0 * se + 1e-6,
                "{what} at {k}: {mean} vs exact {exact} ± {se}"
            );
            v_lattice += var;
            v_independent += moments(src, k, 1).1 / draws as f64;
        }
        eprintln!(
            "{what}: S = {draws} lattice variance / independent = {:.3}",
            v_lattice / v_independent
        );
        assert!(
            v_lattice <= at_most * v_independent,
            "{what}: lattice draws vary {:.3}× as much as independent ones",
            v_lattice / v_independent
        );
    }
}

/// The runtime refuses an error model that does not fit its macro's ADC, by name.
#[test]
fn runtime_checks_the_model_against_the_adc() {
    let seven_bit = MacroSpec::parse("adc_bits=7,step=128").unwrap();
    let wide = presets::preset("current-domain", (-256, 255)).unwrap();
    let e =
        CimRuntime::new(seven_bit.clone(), Arc::new(wide), ReadoutMode::Sampled, Estimator::Ste)
            .err()
            .unwrap()
            .to_string();
    assert!(
        e.contains("reads codes") && e.contains("-64..=63") && e.contains("another ADC"),
        "{e}"
    );
    let narrow = presets::preset("current-domain", (-32, 31)).unwrap();
    let e =
        CimRuntime::new(seven_bit.clone(), Arc::new(narrow), ReadoutMode::Sampled, Estimator::Ste)
            .err()
            .unwrap()
            .to_string();
    assert!(e.contains("covers ideal codes -32..=31"), "{e}");
    let fits = presets::preset("current-domain", (-64, 63)).unwrap();
    assert!(
        CimRuntime::new(seven_bit, Arc::new(fits), ReadoutMode::Sampled, Estimator::Ste).is_ok()
    );
}
