//! Tests of `table.rs`.

use super::*;
use crate::rng::KeyedRng;

fn info() -> ModelInfo {
    ModelInfo { name: "t".into(), description: String::new(), synthetic: true }
}

#[test]
fn sampled_frequencies_match_the_pmf() {
    // A skewed, non-Gaussian row: chi-square against the PMF at a fixed seed.
    let entries =
        vec![(0, -2, 5.0), (0, -1, 30.0), (0, 0, 50.0), (0, 1, 10.0), (0, 3, 5.0), (1, 1, 1.0)];
    let m = ErrorModel::from_counts(info(), (0, 1), (-3, 3), FillPolicy::Reject, entries).unwrap();
    let n = 200_000;
    let mut hist = [0usize; 7];
    let mut r = KeyedRng::new(&[42]);
    for _ in 0..n {
        hist[(m.sample(0, r.next_u64()) + 3) as usize] += 1;
    }
    let mut chi2 = 0.0;
    for j in -3..=3 {
        let e = m.prob(0, j) * n as f64;
        let o = hist[(j + 3) as usize] as f64;
        if e > 0.0 {
            chi2 += (o - e).powi(2) / e;
        } else {
            assert_eq!(o, 0.0, "drew code {j} of probability 0");
        }
    }
    // 4 degrees of freedom: P(chi2 > 18.5) ≈ 0.001.
    assert!(chi2 < 18.5, "chi-square {chi2}");
    let want_mean = (-2.0 * 5.0 - 30.0 + 10.0 + 15.0) / 100.0;
    assert!((m.mean(0) as f64 - want_mean).abs() < 1e-6);
    assert_eq!(m.sample(1, 12345), 1);
}

#[test]
fn validation_names_the_problem() {
    let e = |entries: Vec<(i32, i32, f64)>, fill| {
        ErrorModel::from_counts(info(), (0, 3), (0, 3), fill, entries).unwrap_err().to_string()
    };
    assert!(e(vec![(4, 0, 1.0)], FillPolicy::Nearest).contains("unknown ideal code 4"));
    assert!(e(vec![(0, 9, 1.0)], FillPolicy::Nearest).contains("unknown measured code 9"));
    assert!(e(vec![(0, 0, -1.0)], FillPolicy::Nearest).contains("must be finite and ≥ 0"));
    assert!(e(vec![(0, 0, f64::NAN)], FillPolicy::Nearest).contains("must be finite"));
    assert!(e(vec![(0, 0, 0.0)], FillPolicy::Nearest).contains("no counts"));
    assert!(e(vec![(0, 0, 1.0)], FillPolicy::Reject).contains("never measured"));
    // Finite counts whose sum is not (hostile-input issue: a NaN PMF read as 10 %).
    assert!(
        e(vec![(2, 0, 1e308), (2, 1, 1e308)], FillPolicy::Nearest)
            .contains("ideal code 2 sum to infinity")
    );
    assert!(e(vec![(2, 0, 1e308), (2, 0, 1e308)], FillPolicy::Nearest).contains("sum to infinity"));
    // Code ranges wider than 16 bits, whose width wraps in i32 arithmetic.
    let wide = ErrorModel::from_counts(
        info(),
        (i32::MIN, i32::MAX),
        (0, 3),
        FillPolicy::Nearest,
        vec![(0, 0, 1.0)],
    )
    .unwrap_err()
    .to_string();
    assert!(
        wide.contains("ideal codes -2147483648..=2147483647") && wide.contains("4294967296 codes"),
        "{wide}"
    );
    let wide = ErrorModel::from_counts(
        info(),
        (0, 3),
        (i32::MIN, i32::MAX),
        FillPolicy::Nearest,
        vec![(0, 0, 1.0)],
    )
    .unwrap_err()
    .to_string();
    assert!(wide.contains("measured codes"), "{wide}");
}

#[test]
fn fill_policies() {
    let entries = vec![(1, 0, 1.0), (1, 1, 3.0)]; // code 1 reads 1 (75%) or 0 (25%)
    let near =
        ErrorModel::from_counts(info(), (0, 3), (0, 3), FillPolicy::Nearest, entries.clone())
            .unwrap();
    // Code 3 copies code 1's offsets (0 or −1): reads 3 or 2.
    assert!((near.prob(3, 3) - 0.75).abs() < 1e-12 && (near.prob(3, 2) - 0.25).abs() < 1e-12);
    // Code 0: shifted left, the −1 offset piles up on the range edge (code 0).
    assert!((near.prob(0, 0) - 1.0).abs() < 1e-12);
    assert_eq!(near.unmeasured(), vec![0, 2, 3]);
    let id =
        ErrorModel::from_counts(info(), (0, 3), (0, 3), FillPolicy::Identity, entries).unwrap();
    assert_eq!(id.prob(2, 2), 1.0);
}

/// Where every row is well measured (a preset's per-million counts) the slope is the
/// plain central difference, to the bit; where rows are sparse, the fitted slope is
/// much closer to the truth than the raw difference, and never negative.
#[test]
fn slopes_are_central_differences_or_smoothed_where_sparse() {
    let m = crate::cim::em::presets::preset("current-domain", (-256, 255)).unwrap();
    for k in -255..=254 {
        let central = ((m.rows[(k + 1 - m.kmin) as usize].mean
            - m.rows[(k - 1 - m.kmin) as usize].mean)
            / 2.0) as f32;
        assert_eq!(m.slope(k).to_bits(), central.to_bits(), "code {k}");
    }
    // A sparse measurement of j = round(0.8·k + noise), σ = 1.5 codes, 6 reads a code.
    let mut r = crate::rng::KeyedRng::new(&[17]);
    let normal = |r: &mut crate::rng::KeyedRng| {
        let (u, v) = (
            (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64,
            (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64,
        );
        (-2.0 * (u.max(1e-300)).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let mut entries = Vec::new();
    for k in -40..=40 {
        for _ in 0..6 {
            entries.push((k, (0.8 * k as f64 + 1.5 * normal(&mut r)).round() as i32, 1.0));
        }
    }
    let sparse =
        ErrorModel::from_counts(info(), (-40, 40), (-60, 60), FillPolicy::Nearest, entries)
            .unwrap();
    let (mut raw_err, mut fit_err) = (0.0, 0.0);
    for k in -35..=35 {
        let raw = (sparse.rows[(k + 1 + 40) as usize].mean
            - sparse.rows[(k - 1 + 40) as usize].mean)
            / 2.0;
        raw_err += (raw - 0.8).powi(2);
        fit_err += (sparse.slope(k) as f64 - 0.8).powi(2);
        assert!(sparse.slope(k) >= 0.0, "negative slope at {k}");
    }
    assert!(fit_err * 4.0 <= raw_err, "smoothed squared error {fit_err:.3} vs raw {raw_err:.3}");
}

/// The inverse CDF picks the first entry whose cumulative probability exceeds the
/// draw, and its draws follow the PMF.
#[test]
fn quantiles_are_the_inverse_cdf() {
    let m = crate::cim::em::presets::preset("current-domain", (-256, 255)).unwrap();
    let mut r = crate::rng::KeyedRng::new(&[23]);
    for _ in 0..200_000 {
        let (k, x) = (r.below(512) as i32 - 256, r.next_u64() as u32);
        let row = m.span[(k - m.kmin) as usize];
        let cdf = &m.cdf[row.start as usize..(row.start + row.width) as usize];
        let c = cdf.partition_point(|&t| t <= x).min(cdf.len() - 1);
        assert_eq!(
            m.quantile(k, x),
            m.jmin + m.flat[row.start as usize + c].own as i32,
            "code {k}, x {x}"
        );
    }
    // Frequencies at one code against its probabilities (5 standard errors).
    let n = 200_000;
    let mut hist = std::collections::HashMap::new();
    for i in 0..n {
        *hist.entry(m.quantile(20, crate::rng::mix64(i) as u32)).or_insert(0u32) += 1;
    }
    for (&j, &c) in &hist {
        let p = m.prob(20, j);
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (c as f64 / n as f64 - p).abs() <= 5.0 * se + 1e-5,
            "j {j}: {} vs {p}",
            c as f64 / n as f64
        );
    }
}

#[test]
fn ideal_model_is_the_identity() {
    let m = ErrorModel::ideal(-4, 4);
    for k in -4..=4 {
        assert_eq!(m.sample(k, 0xDEAD_BEEF_1234_5678), k);
        assert_eq!(m.mean(k), k as f32);
        assert_eq!(m.slope(k), 1.0);
    }
}
