//! Tests of `presets.rs`.

use super::*;

#[test]
fn presets_are_graded_and_grow_with_the_code() {
    let codes = (-256, 255);
    let mut prev_err = 0.0;
    for name in ["mild", "moderate", "severe"] {
        let m = preset(name, codes).unwrap();
        assert!(m.info.synthetic && m.label().contains("synthetic"));
        assert!(m.unmeasured().is_empty());
        // Noise grows with the code.
        assert!(m.std(100) > m.std(10) && m.std(10) > m.std(0) * 0.99, "{name}");
        // Mean squared readout error at typical codes grows with severity.
        let err: f64 = (-60..=60)
            .map(|k| (m.mean(k) as f64 - k as f64).powi(2) + m.std(k).powi(2))
            .sum::<f64>()
            / 121.0;
        assert!(err > prev_err, "{name}: {err} vs {prev_err}");
        prev_err = err;
    }
    let severe = preset("severe", codes).unwrap();
    // Saturation: no readout beyond 0.6 of full scale.
    assert!(severe.jmax >= 154 && severe.prob(255, 160) == 0.0 && severe.mean(255) <= 154.0);
    // Skewed toward zero (charge loss): mean below the Gaussian centre at positive codes.
    assert!(preset("ideal", codes).unwrap().mean(7) == 7.0);
    assert!(
        preset("hot", codes).unwrap_err().to_string().contains("unknown error-model preset 'hot'")
    );
}

#[test]
fn presets_take_overrides() {
    let p = Synthetic::parse("moderate:offset=6, sigma1=0.5").unwrap().unwrap();
    assert_eq!(
        (p.offset, p.sigma1, p.gain),
        (6.0, 0.5, Synthetic::named("moderate").unwrap().gain)
    );
    assert!(Synthetic::parse("warm:offset=1").is_none());
    for (spec, msg) in [
        ("mild:offset", "not key=value"),
        ("mild:offset=x", "not a number"),
        ("mild:heat=1", "unknown parameter 'heat'"),
        ("mild:sigma0=0", "sigma0 = 0 is outside 0 < sigma0"),
        ("mild:sat=1e6", "sat = 1000000"),
    ] {
        let e = Synthetic::parse(spec).unwrap().unwrap_err().to_string();
        assert!(e.contains(msg), "{spec}: {e}");
    }
    // Noise so wide the table would take minutes to build is refused before building it.
    let started = std::time::Instant::now();
    let e = preset("mild:sigma0=60000", (-256, 255)).unwrap_err().to_string();
    assert!(e.contains("too wide to tabulate") && started.elapsed().as_secs() < 2, "{e}");
    assert!(is_preset("severe:gain=0.5") && is_preset("ideal") && !is_preset("models/chip.dmem"));
    let m = preset("mild:offset=4", (-256, 255)).unwrap();
    let shift = m.mean(0) - preset("mild", (-256, 255)).unwrap().mean(0);
    assert!((shift - 4.5).abs() < 0.3, "{shift}");
}

#[test]
fn erfc_is_accurate() {
    for (x, want) in [
        (0.0, 1.0),
        (0.5, 0.4795001221869535),
        (1.0, 0.15729920705028513),
        (2.0, 0.004677734981047266),
        (-1.0, 1.8427007929497148),
    ] {
        assert!((erfc(x) - want).abs() < 2e-7, "erfc({x})");
    }
}
