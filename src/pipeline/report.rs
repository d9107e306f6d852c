//! What the pipeline writes for people: the paper-style table, `summary.json`, a
//! Markdown report and three pictures (accuracy per epoch, accuracy vs error-model
//! severity, the error model's heat-map).

use super::plot::{self, Chart, Series};
use super::Summary;
use crate::train::McAccuracy;
use crate::cim::{em, MacroSpec};
use crate::io::atomic;
use crate::nn::Arch;
use crate::train::json;
use crate::Result;
use std::fmt::Write;
use std::path::Path;

/// The paper's reported recovery (points) for each network (Lin et al., IEEE JETCAS 2022).
pub fn paper_recovery(arch: Arch) -> Option<f64> {
    match arch {
        Arch::ResNet20 => Some(78.98),
        Arch::Vgg8 => Some(71.8),
        Arch::ResNet34 => Some(72.04),
        Arch::Vgg16 => Some(57.85),
    }
}

fn pm(a: &McAccuracy) -> String {
    if a.per_seed.len() > 1 { format!("{:.2} ± {:.2}", a.mean, a.std) } else { format!("{:.2}", a.mean) }
}

/// The paper-style table (Markdown, also printed).
pub fn table(s: &Summary) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| {} / {} | FP32 | quantized, ideal macro | non-ideal, without NAT | D-NAT | recovery (points) |", s.config.arch.name(), s.config.dataset.name());
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    let _ = writeln!(
        t,
        "| dnat, error model `{}` (R = {}) | {:.2} | {:.2} | {} | {} | {:+.2} |",
        s.config.error_model,
        s.config.mc_seeds,
        s.fp32,
        s.quant_ideal,
        pm(&s.naive),
        pm(&s.dnat),
        s.recovery()
    );
    if let Some(p) = paper_recovery(s.config.arch) {
        let _ = writeln!(t, "| paper (fabricated chip's D-MAC-EM) | | | | | {p:+.2} |");
    }
    t
}

pub fn summary_json(s: &Summary) -> String {
    let sweep: Vec<String> = s
        .sweep
        .iter()
        .map(|p| {
            json::object(vec![
                ("error_model", p.error_model.clone().into()),
                ("naive_mean", p.naive.mean.into()),
                ("naive_std", p.naive.std.into()),
                ("dnat_mean", p.dnat.mean.into()),
                ("dnat_std", p.dnat.std.into()),
                ("dnat_epochs", p.dnat_epochs.into()),
            ])
        })
        .collect();
    let seeds = |a: &McAccuracy| json::Value::Raw(format!("[{}]", a.per_seed.iter().map(|v| format!("{v}")).collect::<Vec<_>>().join(", ")));
    json::object_pretty(vec![
        ("name", s.config.name.clone().into()),
        ("model", s.config.arch.name().into()),
        ("fp32", s.fp32.into()),
        ("quant_ideal", s.quant_ideal.into()),
        ("naive_nonideal_mean", s.naive.mean.into()),
        ("naive_nonideal_std", s.naive.std.into()),
        ("dnat_nonideal_mean", s.dnat.mean.into()),
        ("dnat_nonideal_std", s.dnat.std.into()),
        ("dnat_on_ideal_macro", s.dnat_on_ideal.into()),
        ("recovery", s.recovery().into()),
        ("paper_recovery", paper_recovery(s.config.arch).map_or(f64::NAN, |p| p).into()),
        ("naive_nonideal_per_seed", seeds(&s.naive)),
        ("dnat_nonideal_per_seed", seeds(&s.dnat)),
        ("mc_seeds", s.config.mc_seeds.into()),
        ("wall_s", s.wall_s.into()),
        ("data", s.data.clone().into()),
        ("data_sha256", s.data_sha256.clone().into()),
        ("test_images", s.test_images.into()),
        ("error_model", s.config.error_model.clone().into()),
        ("error_model_label", s.error_model_label.clone().into()),
        ("error_model_description", s.error_model_description.clone().into()),
        ("macro", s.macro_description.clone().into()),
        ("sweep", json::Value::Raw(format!("[{}]", sweep.join(", ")))),
    ])
}

/// Writes `summary.json`, `report.md` and the pictures into `out`.
pub fn write(s: &Summary, out: &Path) -> Result<()> {
    atomic::write(&out.join("summary.json"), summary_json(s).as_bytes())?;
    atomic::write(&out.join("accuracy-per-epoch.svg"), epochs_chart(s).as_bytes())?;
    if !s.sweep.is_empty() {
        atomic::write(&out.join("severity.svg"), severity_chart(s).as_bytes())?;
    }
    let spec = MacroSpec::preset(&s.config.macro_name)?;
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
    let _ = writeln!(m, "Written by `dnat pipeline`; every number below was measured by this run ({} test images).\n", s.test_images);
    let _ = writeln!(m, "{}", table(s));
    let _ = writeln!(m, "- Data: {} (sha256 `{}`).", s.data, s.data_sha256);
    let _ = writeln!(m, "- Macro: {}.", s.macro_description);
    let _ = writeln!(m, "- Error model `{}`: {} — {}.", c.error_model, s.error_model_label, s.error_model_description);
    let _ = writeln!(m, "- Non-ideal accuracies are the mean ± sample std over R = {} error seeds ({}…{}), the same seeds for every model.", c.mc_seeds, super::EVAL_SEED0, super::EVAL_SEED0 + c.mc_seeds - 1);
    let _ = writeln!(m, "- Compute time: {:.0} s ({:.1} min), summed over the invocations that did the work.\n", s.wall_s, s.wall_s / 60.0);
    let _ = writeln!(m, "Per seed: without NAT {:?}; D-NAT {:?}.\n", round2(&s.naive.per_seed), round2(&s.dnat.per_seed));
    let _ = writeln!(
        m,
        "A D-NAT model belongs to its chip: read on the ideal macro it scores {:.2} % (against {:.2} % for the QAT model), because its batchnorm statistics and E-PACT bounds were learned through `{}`'s errors.\n",
        s.dnat_on_ideal, s.quant_ideal, c.error_model
    );
    if !s.sweep.is_empty() {
        let _ = writeln!(m, "## Severity sweep\n");
        let _ = writeln!(m, "| error model | without NAT | D-NAT | D-NAT epochs |\n|---|---|---|---|");
        for p in &s.sweep {
            let _ = writeln!(m, "| `{}` | {} | {} | {} |", p.error_model, pm(&p.naive), pm(&p.dnat), p.dnat_epochs);
        }
        let _ = writeln!(m, "\nOn the ideal macro D-NAT is QAT: both columns are the QAT model. ![severity](severity.svg)\n");
    }
    let _ = writeln!(m, "## Training\n\n![accuracy per epoch](accuracy-per-epoch.svg)\n");
    let _ = writeln!(m, "| stage | epoch | lr | train loss | train acc. | test acc. |\n|---|---|---|---|---|---|");
    for (name, h) in &s.history {
        for e in h {
            let _ = writeln!(m, "| {name} | {} | {:.5} | {:.4} | {:.2} | {:.2} |", e.epoch, e.lr, e.train_loss, e.train_accuracy, e.test_accuracy);
        }
    }
    let _ = writeln!(m, "\nD-NAT's per-epoch test accuracy is on the non-ideal macro with one fixed error seed.\n");
    let _ = writeln!(m, "## Error model\n\n![error model](error-model.svg)\n\n## Configuration\n\n```text");
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
        let start = if qat { s.fp32 } else { s.naive.mean };
        let mut points = vec![(x, start, 0.0)];
        points.extend(h.iter().enumerate().map(|(i, e)| (x + 1.0 + i as f64, e.test_accuracy as f64, 0.0)));
        x += h.len() as f64;
        series.push(Series { name: (*name).to_string(), points, color: if qat { "#2a9d4b" } else { "#2f6fd0" }, dashed: false });
    }
    let flat = |name: &str, y: f64, color| Series { name: name.into(), points: vec![(0.0, y, 0.0), (x.max(1.0), y, 0.0)], color, dashed: true };
    series.push(flat("FP32", s.fp32, "#555555"));
    series.push(flat("quantized, ideal", s.quant_ideal, "#8fcf9f"));
    series.push(flat("without NAT (mean)", s.naive.mean, "#d04030"));
    plot::svg(&Chart {
        title: format!("{} / {}: test accuracy through QAT and D-NAT", s.config.arch.name(), s.config.dataset.name()),
        x_label: "epoch (QAT on the ideal macro, then D-NAT on the non-ideal one)".into(),
        y_label: "test accuracy (%)".into(),
        x_ticks: vec![],
        x_marks: marks,
        y_range: (0.0, 100.0),
        series,
    })
}

fn severity_chart(s: &Summary) -> String {
    let xs = |f: fn(&super::SweepPoint) -> &McAccuracy| s.sweep.iter().enumerate().map(|(i, p)| (i as f64, f(p).mean, f(p).std)).collect();
    plot::svg(&Chart {
        title: format!("{}: accuracy vs error-model severity", s.config.arch.name()),
        x_label: "error model".into(),
        y_label: "test accuracy (%), mean ± std over error seeds".into(),
        x_ticks: s.sweep.iter().enumerate().map(|(i, p)| (i as f64, p.error_model.split(':').next().unwrap_or("").to_string())).collect(),
        x_marks: vec![],
        y_range: (0.0, 100.0),
        series: vec![
            Series { name: "without NAT".into(), points: xs(|p| &p.naive), color: "#d04030", dashed: true },
            Series { name: "D-NAT".into(), points: xs(|p| &p.dnat), color: "#2f6fd0", dashed: false },
            Series { name: "quantized, ideal".into(), points: vec![(0.0, s.quant_ideal, 0.0), ((s.sweep.len() as f64 - 1.0).max(1.0), s.quant_ideal, 0.0)], color: "#2a9d4b", dashed: true },
        ],
    })
}
