//! The readout modes against references: each sampled draw at its key, the expected
//! mode as the mean of sampled runs, and a source that can only be sampled.

use super::*;

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
    let quant = quant_of(&mut t, grid);
    let e = cim_linear(&mut t, xv, wv, None, quant, &CimCall { rt: &bad, layer: 1 })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("can only be sampled"), "{e}");
}
