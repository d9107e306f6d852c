//! Tests of `fit.rs`.

use super::*;
use crate::cim::em::presets;
use crate::rng::KeyedRng;

#[test]
fn fitting_samples_of_a_model_recovers_it() {
    let truth = presets::preset("moderate", (-32, 31)).unwrap();
    let mut r = KeyedRng::new(&[5]);
    let mut log = String::from("# ideal measured\n");
    for k in -32..=31 {
        for _ in 0..4000 {
            writeln!(log, "{k}, {}", truth.sample(k, r.next_u64())).unwrap();
        }
    }
    let log = parse_with(&log, Some(Path::new("log.txt")), None).unwrap();
    let info = ModelInfo { name: "refit".into(), description: String::new(), synthetic: true };
    let m = fit_codes(&log, (-32, 31), FillPolicy::Reject, info, 256).unwrap();
    for k in -32..=31 {
        assert!(
            (m.mean(k) - truth.mean(k)).abs() < 0.15,
            "code {k}: {} vs {}",
            m.mean(k),
            truth.mean(k)
        );
        // Total variation distance between fitted and true PMFs (the std is too
        // tail-sensitive to compare at 4,000 draws: one charge-loss draw moves it).
        let tv: f64 =
            (truth.jmin..=truth.jmax).map(|j| (m.prob(k, j) - truth.prob(k, j)).abs()).sum::<f64>()
                / 2.0;
        assert!(tv < 0.04, "code {k}: total variation {tv}");
    }
    let rep = report(&m);
    assert!(rep.contains("every ideal code was measured") && rep.contains("RMS error"));
}

/// A chip whose 8 columns have known gains and offsets (mean 1 and 0), read through
/// a shared noisy table at each column's corrected code: the per-column fit gives
/// the gains and offsets back, and the shared table the chip's readout.
#[test]
fn per_column_fit_recovers_column_gains_and_offsets() {
    let gains = [0.95f32, 1.05, 0.98, 1.02, 0.97, 1.03, 1.0, 1.0];
    let offsets = [0.6f32, -0.6, 0.3, -0.3, 0.0, 0.9, -0.9, 0.0];
    let shared = presets::preset(
        "charge-domain:col_gain=0,col_offset=0,chip_gain=0,chip_offset=0",
        (-64, 63),
    )
    .unwrap();
    let mut r = KeyedRng::new(&[9]);
    let mut log = String::new();
    for (c, (&g, &o)) in gains.iter().zip(&offsets).enumerate() {
        for k in -40..=40 {
            for _ in 0..150 {
                // The analog sum lies anywhere in the ideal code's bin; the column's
                // ADC sees it through its gain and offset.
                let x = k as f32 + r.unit() - 0.5;
                let seen = (g * x + o).round_ties_even() as i32;
                writeln!(log, "{k} {} {c}", shared.sample(seen, r.next_u64())).unwrap();
            }
        }
    }
    let log = parse_with(&log, Some(Path::new("chip.log")), None).unwrap();
    let info = ModelInfo { name: "cols".into(), description: String::new(), synthetic: true };
    let m = fit_codes(&log, (-64, 63), FillPolicy::Nearest, info, 8).unwrap();
    for (c, &(g, o)) in m.columns.iter().enumerate() {
        assert!((g - gains[c]).abs() < 0.005, "column {c}: gain {g} vs {}", gains[c]);
        assert!((o - offsets[c]).abs() < 0.08, "column {c}: offset {o} vs {}", offsets[c]);
    }
    // The correction maps the integer ideal code, not the analog sum behind it, so the
    // shared rows are smeared by up to half a code: their means agree to ~0.25.
    for k in -30..=30 {
        assert!(
            (m.mean(k) - shared.mean(k)).abs() < 0.25,
            "code {k}: {} vs {}",
            m.mean(k),
            shared.mean(k)
        );
    }
    assert!(
        (m.fixed_pattern.column_gain - 0.03).abs() < 0.01 && m.fixed_pattern.column_offset > 0.3,
        "{:?}",
        m.fixed_pattern
    );
    // The measured chip is chip 0, column for column; other chips are drawn.
    use crate::cim::Readout;
    let chip = m.chip(8, 0).unwrap();
    assert!((0..8).all(|c| chip.column(c) == m.columns[c]));
    assert_ne!(m.chip(8, 1).unwrap(), chip);
    // It survives both file forms.
    let dir = std::env::temp_dir().join(format!("dnat-fitcols-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["m.txt", "m.dmem"] {
        let p = dir.join(f);
        crate::cim::em::format::save(&m, &p).unwrap();
        let back = crate::cim::em::format::load(&p).unwrap();
        assert_eq!(
            (back.columns.clone(), back.fixed_pattern),
            (m.columns.clone(), m.fixed_pattern),
            "{f}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logs_with_gaps_and_errors() {
    let p = Path::new("chip.log");
    let log = parse_with("0 0\n0 1 # noisy\n2,2\n", Some(p), None).unwrap();
    let info = ModelInfo { name: "g".into(), description: String::new(), synthetic: false };
    let m = fit_codes(&log, (0, 5), FillPolicy::Nearest, info, 256).unwrap();
    assert!(
        report(&m)
            .contains("4 of 6 ideal codes never measured (1, 3..5), filled by policy 'nearest'")
    );
    assert!(
        parse_with("1 2 3 4\n", Some(p), None)
            .unwrap_err()
            .to_string()
            .contains("chip.log: line 1")
    );
    assert!(
        parse_with("1.5 2\n", Some(p), None).unwrap_err().to_string().contains("not an integer")
    );
    assert_eq!(parse_with("64.0 -31.9\n", Some(p), Some(32.0)).unwrap().pairs, vec![(2, -1)]);
    assert_eq!(parse_with("1 2 7\n3 3 0\n", Some(p), None).unwrap().columns, Some(vec![7, 0]));
    assert!(
        parse_with("1 2 7\n3 3\n", Some(p), None)
            .unwrap_err()
            .to_string()
            .contains("line 2: 2 fields")
    );
    assert!(parse_with("1 2 x\n", Some(p), None).unwrap_err().to_string().contains("column 'x'"));
    let cols = parse_with("1 1 300\n2 2 300\n", Some(p), None).unwrap();
    assert!(
        fit_codes(
            &cols,
            (0, 5),
            FillPolicy::Nearest,
            ModelInfo { name: "c".into(), description: String::new(), synthetic: false },
            256
        )
        .unwrap_err()
        .to_string()
        .contains("column 300")
    );
    assert!(
        parse_with("# nothing\n", Some(p), None)
            .unwrap_err()
            .to_string()
            .contains("no measurements")
    );
    // A CSV header names the fields, in any order, and may carry fields dnat ignores.
    let named =
        parse_with("temp_C,readout,adc,ideal\n25.1,3,7,2\n25.3,4,0,4\n", Some(p), None).unwrap();
    assert_eq!((named.pairs, named.columns), (vec![(2, 3), (4, 4)], Some(vec![7, 0])));
    assert_eq!(parse_with("k j\n1 1\n", Some(p), None).unwrap().pairs, vec![(1, 1)]);
    for (text, msg) in [
        ("ideal,temperature\n1,2\n", "must name an ideal field"),
        ("ideal,measured,k\n1,2,3\n", "names the ideal field twice"),
        ("ideal,measured\n1,2,3\n", "line 2: 3 fields, but the log's header has 2"),
    ] {
        let e = parse_with(text, Some(p), None).unwrap_err().to_string();
        assert!(e.contains(msg), "{text:?}: {e}");
    }
}

/// A log in memory parses without a file name; its errors say `log line N`, and a file
/// read from disk is named in its own.
#[test]
fn a_log_in_memory_or_on_disk() {
    let log = Log::parse("ideal,measured\n3,4\n", None).unwrap();
    assert_eq!((log.pairs, log.columns), (vec![(3, 4)], None));
    let e = Log::parse("1 2\n1.5 2\n", None).unwrap_err().to_string();
    assert!(e.starts_with("log line 2: "), "{e}");
    let dir = std::env::temp_dir().join(format!("dnat-fit-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chip.log");
    std::fs::write(&path, "1 2\nx 2\n").unwrap();
    let e = Log::read(&path, None).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: line 2: ", path.display())), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
