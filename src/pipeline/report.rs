//! What the pipeline writes for people: the paper-style table, `summary.json`, a
//! Markdown report and three pictures (accuracy per epoch, accuracy vs error-model
//! severity, the error model's heat-map).

use super::plot::{self, Chart, Series};
use super::{Comparison, Summary};
use crate::Result;
use crate::cim::{MacroSpec, em};
use crate::io::atomic;
use crate::nn::Arch;
use crate::train::McAccuracy;
use crate::train::eval::{fmt_spread, json_spread};
use crate::train::json;
use std::fmt::Write;
use std::path::Path;

/// The paper's reported recovery (points) for each network (Lin et al., IEEE JETCAS 2022).
pub fn paper_recovery(arch: Arch) -> Option<f64> {
    match arch {
        Arch::ResNet20 => Some(78.98),
        Arch::Vgg8 => Some(71.8),
        Arch::ResNet34 => Some(72.04),
        Arch::Vgg16 => Some(57.85),
        Arch::Custom(_) => None,
    }
}

fn pm(a: &McAccuracy) -> String {
    if a.all().len() > 1 {
        format!("{:.2} ± {:.2}", a.mean, a.std)
    } else {
        format!("{:.2}", a.mean)
    }
}

fn opt_pm(a: &Option<McAccuracy>) -> String {
    a.as_ref().map_or("—".into(), pm)
}

/// The paper-style table with the baselines (Markdown, also printed).
pub fn table(s: &Summary) -> String {
    let c = &s.main;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| {} / {} | FP32 | quantized, ideal macro | without NAT | naive + BN recal. | NAT-STE | D-NAT | D-NAT − BN recal. | recovery (points) |",
        s.config.arch.name(),
        s.config.dataset.name()
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(
        t,
        "| dnat, error model `{}` (C = {} chips × R = {} reads) | {:.2} | {:.2} | {} | {} | {} | {} | {:+.2} | {:+.2} |",
        s.config.error_model,
        s.config.mc_chips,
        s.config.mc_seeds,
        s.fp32,
        s.quant_ideal,
        pm(&c.naive),
        pm(&c.bnrecal),
        opt_pm(&c.natste),
        pm(&c.dnat),
        c.dnat_minus_bnrecal(),
        s.recovery()
    );
    if let Some(p) = paper_recovery(s.config.arch) {
        let _ = writeln!(t, "| paper (fabricated chip's D-MAC-EM) | | | | | | | | {p:+.2} |");
    }
    t
}

/// What D-NAT adds beyond BN recalibration on one error model, in words.
pub fn verdict(c: &Comparison, quant_ideal: f64) -> String {
    let gain = c.dnat_minus_bnrecal();
    let res = c.resolution();
    let to_ideal = quant_ideal - c.dnat.mean;
    let what = if gain.abs() <= res {
        format!(
            "D-NAT adds nothing measurable over BN recalibration on `{}`: {gain:+.2} points, within the spread (±{res:.2}, twice the larger std over chips and reads)",
            c.error_model
        )
    } else if gain > 0.0 {
        format!(
            "D-NAT adds {gain:+.2} points over BN recalibration on `{}` (more than the spread, ±{res:.2})",
            c.error_model
        )
    } else {
        format!(
            "D-NAT is {:.2} points *below* BN recalibration on `{}` (more than the spread, ±{res:.2}): the cheap fix wins here",
            -gain, c.error_model
        )
    };
    let mut v = format!(
        "{what}; D-NAT stands {to_ideal:.2} points below the ideal quantized bound ({quant_ideal:.2} %)."
    );
    if let Some(n) = &c.natste {
        let _ = write!(v, " NAT with STE reaches {} (D-NAT {:+.2}).", pm(n), c.dnat.mean - n.mean);
    }
    let _ =
        write!(v, " Recalibrating D-NAT's batchnorm on each chip gives {}.", pm(&c.dnat_bnrecal));
    v
}

/// The content of `summary.json`: every accuracy (mean, spreads, per chip) of the main
/// comparison (suffix `_nonideal`) and of the sweep, the differences, the verdict and the
/// run's provenance, as a pretty-printed JSON object.
pub fn summary_json(s: &Summary) -> String {
    let acc = |prefix: &str, a: &McAccuracy| -> Vec<(String, json::Value)> {
        vec![
            (format!("{prefix}_mean"), a.mean.into()),
            (format!("{prefix}_std"), a.std.into()),
            (format!("{prefix}_chip_std"), json_spread(a.chip_spread())),
            (format!("{prefix}_read_std"), json_spread(a.read_spread())),
            (format!("{prefix}_per_chip"), per_chip(a)),
        ]
    };
    let comparison = |c: &Comparison, suffix: &str| -> Vec<(String, json::Value)> {
        let mut v = Vec::new();
        v.extend(acc(&format!("naive{suffix}"), &c.naive));
        v.extend(acc(&format!("bnrecal{suffix}"), &c.bnrecal));
        if let Some(n) = &c.natste {
            v.extend(acc(&format!("natste{suffix}"), n));
        }
        v.extend(acc(&format!("dnat{suffix}"), &c.dnat));
        v.extend(acc(&format!("dnat_bnrecal{suffix}"), &c.dnat_bnrecal));
        v.push(("dnat_minus_bnrecal".into(), c.dnat_minus_bnrecal().into()));
        v.push(("resolution".into(), c.resolution().into()));
        v
    };
    let sweep: Vec<String> = s
        .sweep
        .iter()
        .map(|p| {
            let mut v: Vec<(String, json::Value)> =
                vec![("error_model".into(), p.error_model.clone().into())];
            v.extend(comparison(p, ""));
            v.push(("dnat_epochs".into(), p.dnat_epochs.into()));
            json::object(v)
        })
        .collect();
    let mut v: Vec<(String, json::Value)> = vec![
        ("name".into(), s.config.name.clone().into()),
        ("model".into(), s.config.arch.name().into()),
        ("fp32".into(), s.fp32.into()),
        ("quant_ideal".into(), s.quant_ideal.into()),
    ];
    v.extend(comparison(&s.main, "_nonideal"));
    v.extend([
        ("dnat_to_ideal".to_string(), (s.quant_ideal - s.main.dnat.mean).into()),
        ("dnat_on_ideal_macro".into(), s.dnat_on_ideal.into()),
        ("recovery".into(), s.recovery().into()),
        ("paper_recovery".into(), paper_recovery(s.config.arch).map_or(f64::NAN, |p| p).into()),
        ("mc_chips".into(), s.config.mc_chips.into()),
        ("mc_seeds".into(), s.config.mc_seeds.into()),
        ("dnat_chip".into(), s.config.dnat_chip.describe().into()),
        ("wall_s".into(), s.wall_s.into()),
        ("data".into(), s.data.clone().into()),
        ("data_sha256".into(), s.data_sha256.clone().into()),
        ("test_images".into(), s.test_images.into()),
        ("error_model".into(), s.config.error_model.clone().into()),
        ("error_model_label".into(), s.error_model_label.clone().into()),
        ("error_model_description".into(), s.error_model_description.clone().into()),
        ("fixed_pattern".into(), s.fixed_pattern.clone().into()),
        ("macro".into(), s.macro_description.clone().into()),
        ("verdict".into(), verdict(&s.main, s.quant_ideal).into()),
        ("sweep".into(), json::Value::Raw(format!("[{}]", sweep.join(", ")))),
    ]);
    json::object_pretty(v)
}

fn per_chip(a: &McAccuracy) -> json::Value {
    let chips: Vec<String> = a
        .per_chip
        .iter()
        .map(|r| format!("[{}]", r.iter().map(|v| format!("{v}")).collect::<Vec<_>>().join(", ")))
        .collect();
    json::Value::Raw(format!("[{}]", chips.join(", ")))
}

/// Writes `summary.json`, `report.md` and the pictures into `out`.
pub fn write(s: &Summary, out: &Path) -> Result<()> {
    atomic::write(&out.join("summary.json"), summary_json(s).as_bytes())?;
    atomic::write(&out.join("accuracy-per-epoch.svg"), epochs_chart(s).as_bytes())?;
    if !s.sweep.is_empty() {
        atomic::write(&out.join("severity.svg"), severity_chart(s).as_bytes())?;
    }
    let spec = MacroSpec::parse(&s.config.macro_name)?;
    let model = em::resolve(&s.config.error_model, &spec)?;
    // The codes a trained network's tiles mostly produce; the full range is in `dnat em show`.
    let (k0, k1) = (spec.adc.kmin.max(-96), spec.adc.kmax.min(96));
    atomic::write(&out.join("error-model.svg"), em::heatmap::svg(&model, k0, k1).as_bytes())?;
    atomic::write(&out.join("report.md"), markdown(s).as_bytes())
}

fn markdown(s: &Summary) -> String {
    let c = &s.config;
    let mut m = String::new();
    let _ = writeln!(m, "# {} — D-NAT on {} / {}\n", c.name, c.arch.name(), c.dataset.name());
    let _ = writeln!(
        m,
        "Written by `dnat pipeline`; every number below was measured by this run ({} test images).\n",
        s.test_images
    );
    let _ = writeln!(m, "{}", table(s));
    let _ = writeln!(m, "**What D-NAT adds.** {}\n", verdict(&s.main, s.quant_ideal));
    let _ = writeln!(m, "- Data: {} (sha256 `{}`).", s.data, s.data_sha256);
    let _ = writeln!(m, "- Macro: {}.", s.macro_description);
    let _ = writeln!(
        m,
        "- Error model `{}`: {} — {}.",
        c.error_model, s.error_model_label, s.error_model_description
    );
    let _ = writeln!(m, "- Chips: {}.", s.fixed_pattern);
    let _ = writeln!(
        m,
        "- Non-ideal accuracies are the mean ± sample std over C = {} chip instances (chip seeds 0…{}) × R = {} reads each (own noise seeds from {}), the same chips and reads for every column. BN recalibration re-estimates every batchnorm's statistics from {} training images read through each chip (no training). NAT-STE and D-NAT train {} epochs on chip `{}`.",
        c.mc_chips,
        c.mc_chips - 1,
        c.mc_seeds,
        super::EVAL_SEED0,
        c.bnrecal_images,
        c.dnat_epochs,
        c.dnat_chip.describe()
    );
    let _ = writeln!(
        m,
        "- Compute time: {:.0} s ({:.1} min), summed over the invocations that did the work.\n",
        s.wall_s,
        s.wall_s / 60.0
    );
    let _ = writeln!(m, "## Spread: chip to chip, read to read\n");
    let _ = writeln!(
        m,
        "| model | mean | std (all) | chip-to-chip σ | read-to-read σ | per chip (reads) |\n|---|---|---|---|---|---|"
    );
    let rows: Vec<(&str, Option<&McAccuracy>)> = vec![
        ("without NAT", Some(&s.main.naive)),
        ("naive + BN recalibration", Some(&s.main.bnrecal)),
        ("NAT-STE", s.main.natste.as_ref()),
        ("D-NAT", Some(&s.main.dnat)),
        ("D-NAT + BN recalibration", Some(&s.main.dnat_bnrecal)),
    ];
    for (name, a) in rows {
        if let Some(a) = a {
            let chips: Vec<Vec<f64>> = a.per_chip.iter().map(|r| round2(r)).collect();
            let (chip, read) = (fmt_spread(a.chip_spread()), fmt_spread(a.read_spread()));
            let _ = writeln!(
                m,
                "| {name} | {:.2} | {:.2} | {chip} | {read} | {:?} |",
                a.mean, a.std, chips
            );
        }
    }
    if let crate::train::ChipChoice::One(t) = c.dnat_chip
        && t < c.mc_chips
        && c.mc_chips > 1
    {
        let d = &s.main.dnat;
        let unseen = |a: &McAccuracy| {
            let v: Vec<f64> = a
                .per_chip
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u64 != t)
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let own = d.per_chip[t as usize].iter().sum::<f64>() / d.per_chip[t as usize].len() as f64;
        let _ = writeln!(
            m,
            "\n**Transfer.** D-NAT trained on chip {t} reads {own:.2} % on that chip and {:.2} % on the {} unseen chips ({:+.2} points); with its batchnorm recalibrated on each unseen chip, {:.2} %.\n",
            unseen(d),
            c.mc_chips - 1,
            unseen(d) - own,
            unseen(&s.main.dnat_bnrecal)
        );
    }
    let _ = writeln!(
        m,
        "\nA D-NAT model belongs to its chip: read on the ideal macro it scores {:.2} % (against {:.2} % for the QAT model), because its batchnorm statistics and E-PACT bounds were learned through `{}`'s errors.\n",
        s.dnat_on_ideal, s.quant_ideal, c.error_model
    );
    if !s.sweep.is_empty() {
        let _ = writeln!(m, "## Severity sweep\n");
        let _ = writeln!(
            m,
            "| error model | without NAT | naive + BN recal. | NAT-STE | D-NAT | D-NAT + BN recal. | D-NAT − BN recal. | NAT epochs |\n|---|---|---|---|---|---|---|---|"
        );
        for p in &s.sweep {
            let _ = writeln!(
                m,
                "| `{}` | {} | {} | {} | {} | {} | {:+.2} | {} |",
                p.error_model,
                pm(&p.naive),
                pm(&p.bnrecal),
                opt_pm(&p.natste),
                pm(&p.dnat),
                pm(&p.dnat_bnrecal),
                p.dnat_minus_bnrecal(),
                p.dnat_epochs
            );
        }
        let _ = writeln!(m, "\nOn the ideal macro every column is the QAT model.\n");
        for p in s.sweep.iter().filter(|p| p.dnat_epochs > 0) {
            let _ = writeln!(m, "- {}", verdict(p, s.quant_ideal));
        }
        let _ = writeln!(m, "\n![severity](severity.svg)\n");
    }
    let _ = writeln!(m, "## Training\n\n![accuracy per epoch](accuracy-per-epoch.svg)\n");
    let _ = writeln!(
        m,
        "| stage | epoch | lr | train loss | train acc. | test acc. |\n|---|---|---|---|---|---|"
    );
    for (name, h) in &s.history {
        for e in h {
            let _ = writeln!(
                m,
                "| {name} | {} | {:.5} | {:.4} | {:.2} | {:.2} |",
                e.epoch, e.lr, e.train_loss, e.train_accuracy, e.test_accuracy
            );
        }
    }
    let _ = writeln!(
        m,
        "\nD-NAT's per-epoch test accuracy is on the non-ideal macro with one fixed noise seed.\n"
    );
    let _ = writeln!(
        m,
        "## Error model\n\n![error model](error-model.svg)\n\n## Configuration\n\n```text"
    );
    for (k, v) in c.describe() {
        let _ = writeln!(m, "{k} = {v}");
    }
    let _ = writeln!(m, "```");
    m
}

fn round2(v: &[f64]) -> Vec<f64> {
    v.iter().map(|a| (a * 100.0).round() / 100.0).collect()
}

fn epochs_chart(s: &Summary) -> String {
    // Each stage's line starts from where the model stood before it: QAT from the FP32
    // accuracy, D-NAT from the naive model's non-ideal accuracy.
    let mut series = Vec::new();
    let mut marks = Vec::new();
    let mut x = 0.0;
    for (name, h) in &s.history {
        let qat = name.starts_with("QAT");
        marks.push((x, name.split(' ').next().unwrap_or(name).to_string()));
        let start = if qat { s.fp32 } else { s.main.naive.mean };
        let mut points = vec![(x, start, 0.0)];
        points.extend(
            h.iter().enumerate().map(|(i, e)| (x + 1.0 + i as f64, e.test_accuracy as f64, 0.0)),
        );
        x += h.len() as f64;
        series.push(Series {
            name: (*name).to_string(),
            points,
            color: if qat { "#2a9d4b" } else { "#2f6fd0" },
            dashed: false,
        });
    }
    let flat = |name: &str, y: f64, color| Series {
        name: name.into(),
        points: vec![(0.0, y, 0.0), (x.max(1.0), y, 0.0)],
        color,
        dashed: true,
    };
    series.push(flat("FP32", s.fp32, "#555555"));
    series.push(flat("quantized, ideal", s.quant_ideal, "#8fcf9f"));
    series.push(flat("without NAT (mean)", s.main.naive.mean, "#d04030"));
    series.push(flat("naive + BN recal. (mean)", s.main.bnrecal.mean, "#e09020"));
    plot::svg(&Chart {
        title: format!(
            "{} / {}: test accuracy through QAT and D-NAT",
            s.config.arch.name(),
            s.config.dataset.name()
        ),
        x_label: "epoch (QAT on the ideal macro, then D-NAT on the non-ideal one)".into(),
        y_label: "test accuracy (%)".into(),
        x_ticks: vec![],
        x_marks: marks,
        y_range: (0.0, 100.0),
        series,
    })
}

fn severity_chart(s: &Summary) -> String {
    let xs = |f: &dyn Fn(&Comparison) -> Option<&McAccuracy>| {
        s.sweep
            .iter()
            .enumerate()
            .filter_map(|(i, p)| f(p).map(|a| (i as f64, a.mean, a.std)))
            .collect()
    };
    let mut series = vec![
        Series {
            name: "without NAT".into(),
            points: xs(&|p| Some(&p.naive)),
            color: "#d04030",
            dashed: true,
        },
        Series {
            name: "naive + BN recal.".into(),
            points: xs(&|p| Some(&p.bnrecal)),
            color: "#e09020",
            dashed: true,
        },
        Series {
            name: "D-NAT".into(),
            points: xs(&|p| Some(&p.dnat)),
            color: "#2f6fd0",
            dashed: false,
        },
        Series {
            name: "D-NAT + BN recal.".into(),
            points: xs(&|p| Some(&p.dnat_bnrecal)),
            color: "#7f4fc0",
            dashed: false,
        },
    ];
    if s.config.natste {
        series.push(Series {
            name: "NAT-STE".into(),
            points: xs(&|p| p.natste.as_ref()),
            color: "#30a0a0",
            dashed: false,
        });
    }
    series.push(Series {
        name: "quantized, ideal".into(),
        points: vec![
            (0.0, s.quant_ideal, 0.0),
            ((s.sweep.len() as f64 - 1.0).max(1.0), s.quant_ideal, 0.0),
        ],
        color: "#2a9d4b",
        dashed: true,
    });
    plot::svg(&Chart {
        title: format!("{}: accuracy vs error model, every baseline", s.config.arch.name()),
        x_label: "error model".into(),
        y_label: "test accuracy (%), mean ± std over chips and reads".into(),
        x_ticks: s
            .sweep
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, p.error_model.split(':').next().unwrap_or("").to_string()))
            .collect(),
        x_marks: vec![],
        y_range: (0.0, 100.0),
        series,
    })
}
