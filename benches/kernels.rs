//! `cargo bench`: ResNet20's and VGG8's convolution shapes (forward, backward data +
//! weight, backward weight only) in GFLOP/s, a CIM convolution's forward on ResNet20's
//! shapes, readout sampling, and full training steps (FP32, and CIM with the step's
//! breakdown), through criterion; then a summary table a person can read and
//! one JSON line a script can read.
//!
//! Filter as usual: `cargo bench -- conv/s3`, or `cargo bench -- step`.

use criterion::{BenchmarkId, Criterion, Throughput};
use dnat::engine::gradcheck::random;
use dnat::engine::ops::conv2d::{self, Conv2dCfg, ConvGeom};
use dnat::nn::CimPlan;
use dnat::train::bench::{self as step_bench, BenchConfig};
use std::hint::black_box;
use std::time::Instant;

/// (name, Cin, Cout, input side, stride) — every distinct conv of ResNet20.
const RESNET20_CONVS: [(&str, usize, usize, usize, usize); 6] = [
    ("stem 3-16 32x32", 3, 16, 32, 1),
    ("s1 16-16 32x32", 16, 16, 32, 1),
    ("s2down 16-32 /2", 16, 32, 32, 2),
    ("s2 32-32 16x16", 32, 32, 16, 1),
    ("s3down 32-64 /2", 32, 64, 16, 2),
    ("s3 64-64 8x8", 64, 64, 8, 1),
];
const BATCH: usize = 128;
/// Every distinct conv of VGG8 (the paper's chip-validated network), at a batch of 32:
/// its 32×32 layers are 40× ResNet20's work per image.
const VGG8_CONVS: [(&str, usize, usize, usize, usize); 6] = [
    ("vgg8 3-128 32x32", 3, 128, 32, 1),
    ("vgg8 128-128 32x32", 128, 128, 32, 1),
    ("vgg8 128-256 16x16", 128, 256, 16, 1),
    ("vgg8 256-256 16x16", 256, 256, 16, 1),
    ("vgg8 256-512 8x8", 256, 512, 8, 1),
    ("vgg8 512-512 8x8", 512, 512, 8, 1),
];
const VGG8_BATCH: usize = 32;

struct Case {
    name: &'static str,
    g: ConvGeom,
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let shapes =
        RESNET20_CONVS.iter().map(|s| (s, BATCH)).chain(VGG8_CONVS.iter().map(|s| (s, VGG8_BATCH)));
    shapes
        .map(|(&(name, cin, cout, side, stride), batch)| {
            let g = ConvGeom::new(
                &[batch, cin, side, side],
                &[cout, cin, 3, 3],
                Conv2dCfg { stride, padding: 1 },
            )
            .unwrap();
            Case {
                name,
                g,
                x: random(&[batch * g.in_size()], 1).into_data(),
                w: random(&[cout * g.k()], 2).into_data(),
                dy: random(&[batch * g.out_size()], 3).into_data(),
            }
        })
        .collect()
}

/// The D-NAT default on the default macro: current-domain readouts, sampled, and the
/// exact-slope statistical estimator.
fn dnat_runtime() -> dnat::cim::CimRuntime {
    use dnat::cim::{CimRuntime, Estimator, MacroSpec, ReadoutMode, em};
    let spec = MacroSpec::default();
    let model = em::resolve("current-domain", &spec).unwrap();
    CimRuntime::new(
        spec,
        std::sync::Arc::new(model),
        ReadoutMode::Sampled,
        Estimator::Statistical { draws: 0 },
    )
    .unwrap()
}

fn median_secs(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args();
    let cases = cases();
    {
        let mut grp = c.benchmark_group("conv");
        for k in &cases {
            grp.throughput(Throughput::Elements(k.g.flops() as u64));
            grp.bench_function(BenchmarkId::new("forward", k.name), |b| {
                b.iter(|| black_box(conv2d::forward(&k.g, &k.x, &k.w, None)))
            });
            grp.bench_function(BenchmarkId::new("backward_data_weight", k.name), |b| {
                b.iter(|| black_box(conv2d::backward(&k.g, &k.x, &k.w, &k.dy, true)))
            });
            grp.bench_function(BenchmarkId::new("backward_weight", k.name), |b| {
                b.iter(|| black_box(conv2d::backward(&k.g, &k.x, &k.w, &k.dy, false)))
            });
        }
        grp.finish();
    }
    {
        // A CIM convolution's forward as a layer runs it in evaluation (integer partial
        // sums, ADC codes, sampled readouts from the current-domain model), on ResNet20's
        // stride-1 shapes past the stem; throughput in macro operations (readouts).
        use dnat::cim::conv::{CimCall, cim_conv2d};
        use dnat::cim::quant::{ActGrid, InputQuant};
        use dnat::engine::{Tape, Tensor};
        let rt = dnat_runtime();
        let spec = &rt.spec;
        let grid = ActGrid::new(0.0, 4.0, spec.input_bits);
        let mut grp = c.benchmark_group("cim");
        for k in
            cases.iter().filter(|k| !k.name.starts_with("vgg8") && k.g.cin > 3 && k.g.stride == 1)
        {
            // Inputs on the activation grid (the op's E-PACT keeps them as they are).
            let x = Tensor::from_vec(
                &[k.g.n, k.g.cin, k.g.h, k.g.w],
                k.x.iter().map(|&v| grid.value(grid.code(2.0 * v.abs()))).collect(),
            )
            .unwrap();
            let w = Tensor::from_vec(&[k.g.cout, k.g.cin, k.g.kh, k.g.kw], k.w.clone()).unwrap();
            let ops = (k.g.n * k.g.cout * k.g.pixels() * spec.tiles(k.g.k())) as u64
                * spec.cycles() as u64;
            grp.throughput(Throughput::Elements(ops));
            grp.bench_function(BenchmarkId::new("forward", k.name), |b| {
                b.iter(|| {
                    let mut tape = Tape::new(false);
                    let (xv, wv) = (tape.constant(x.clone()), tape.constant(w.clone()));
                    let quant = InputQuant {
                        lo: tape.constant(Tensor::full(&[1], grid.lo)),
                        hi: tape.constant(Tensor::full(&[1], grid.hi)),
                    };
                    let cfg = Conv2dCfg { stride: 1, padding: 1 };
                    black_box(
                        cim_conv2d(
                            &mut tape,
                            xv,
                            wv,
                            None,
                            cfg,
                            quant,
                            &CimCall { rt: &rt, layer: 0 },
                        )
                        .unwrap(),
                    );
                })
            });
        }
        grp.finish();
    }
    {
        // Readout sampling from a D-MAC-EM: hashes + alias tables, per macro operation.
        // One thread, then both threads drawing their own runs (as the layers' image
        // groups do), for the default repro's model and an affine preset.
        use dnat::cim::em::presets;
        use dnat::cim::{DrawKey, DrawRun, Readout};
        let codes: Vec<i32> = (0..1024).map(|i| (i * 37) % 121 - 60).collect();
        let key = DrawKey::new(1, 2, 3);
        let threads = rayon::current_num_threads();
        for name in ["current-domain", "moderate"] {
            let m = presets::preset(name, (-256, 255)).unwrap();
            let mut grp = c.benchmark_group("readout");
            grp.throughput(Throughput::Elements(codes.len() as u64));
            let mut out = vec![0.0f32; codes.len()];
            let mut op0 = 0u64;
            grp.bench_function(format!("sample_run {name} 1024 codes"), |b| {
                b.iter(|| {
                    op0 += 1024;
                    m.sample_run(&codes, DrawRun { key, op0, stride: 1 }, &mut out);
                    black_box(&out);
                })
            });
            // Each thread draws 64 runs of 1024 per iteration.
            grp.throughput(Throughput::Elements((64 * threads * codes.len()) as u64));
            let mut outs = vec![vec![0.0f32; codes.len()]; threads];
            grp.bench_function(format!("sample_run {name} 1024 codes, {threads} threads"), |b| {
                b.iter(|| {
                    use rayon::prelude::*;
                    op0 += (64 * threads * 1024) as u64;
                    outs.par_iter_mut().enumerate().for_each(|(t, out)| {
                        for r in 0..64 {
                            let first = op0 + ((t * 64 + r) * 1024) as u64;
                            m.sample_run(&codes, DrawRun { key, op0: first, stride: 1 }, out);
                        }
                    });
                    black_box(&outs);
                })
            });
            grp.finish();
        }
    }
    c.bench_function("step/resnet20 train+eval b128", |b| {
        b.iter(|| {
            black_box(
                step_bench::run(&BenchConfig {
                    batch: BATCH,
                    steps: 1,
                    warmup: 0,
                    ..Default::default()
                })
                .unwrap(),
            )
        })
    });
    c.final_summary();

    // Summary tables, each when the bench filter (if any) names it: `cargo bench --
    // gemm` prints only the GEMM table, `-- conv` the conv table, `-- step` the step.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wants = |name: &str| filter.as_deref().is_none_or(|f| f.starts_with(name));
    let mut parts = vec![format!("\"threads\": {}", rayon::current_num_threads())];
    if wants("gemm") {
        parts.push(format!("\"gemm\": [{}]", gemm_table(&cases).join(", ")));
    }
    if wants("conv") {
        // GFLOP/s per shape (medians of 5).
        println!(
            "\n{:<20} {:>9} {:>9} {:>9}   (GFLOP/s; bwd = data + weight, counted as 2x the forward FLOPs; batch {BATCH}, VGG8 {VGG8_BATCH})",
            "conv", "fwd", "bwd", "bwd-w"
        );
        let mut json = Vec::new();
        for k in &cases {
            let f = k.g.flops() / 1e9;
            let fwd =
                f / median_secs(|| drop(black_box(conv2d::forward(&k.g, &k.x, &k.w, None))), 5);
            let bwd = 2.0 * f
                / median_secs(
                    || drop(black_box(conv2d::backward(&k.g, &k.x, &k.w, &k.dy, true))),
                    5,
                );
            let bww = f / median_secs(
                || drop(black_box(conv2d::backward(&k.g, &k.x, &k.w, &k.dy, false))),
                5,
            );
            println!("{:<20} {fwd:>9.1} {bwd:>9.1} {bww:>9.1}", k.name);
            json.push(format!("{{\"shape\": \"{}\", \"forward_gflops\": {fwd:.2}, \"backward_gflops\": {bwd:.2}, \"backward_weight_gflops\": {bww:.2}}}", k.name));
        }
        parts.push(format!("\"convs\": [{}]", json.join(", ")));
    }
    if wants("step") {
        let step = step_bench::run(&BenchConfig {
            batch: BATCH,
            steps: 5,
            warmup: 1,
            ..Default::default()
        })
        .unwrap();
        println!("{}", step.table());
        parts.push(format!("\"step\": {}", step.json()));
        // The D-NAT step: current-domain readouts, the exact-slope estimator, and where its time goes.
        let rt = dnat_runtime();
        let cim_step = step_bench::run(&BenchConfig {
            batch: BATCH,
            steps: 5,
            warmup: 1,
            cim: Some((&rt, &CimPlan::default())),
            ..Default::default()
        })
        .unwrap();
        println!(
            "{}\nCIM step / FP32 step: {:.2}x",
            cim_step.table(),
            cim_step.train_step_ms / step.train_step_ms
        );
        parts.push(format!("\"cim_step\": {}", cim_step.json()));
    }
    println!(
        "{{\"bench\": \"kernels\", \"gemm_kernel\": \"{}\", {}}}",
        dnat::engine::gemm::kernel().name(),
        parts.join(", ")
    );
}

/// The three products of each conv (one image group of 1024 columns) through each
/// micro-kernel this CPU runs, beside `matrixmultiply::sgemm` as a yardstick; GFLOP/s,
/// one thread. Returns the JSON objects of the rows.
fn gemm_table(cases: &[Case]) -> Vec<String> {
    use dnat::engine::gemm::{Kernel, MatRef, gemm_with};
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.supported()).collect();
    print!("\n{:<30}", "gemm (m×k×n, one thread)");
    kernels.iter().for_each(|k| print!(" {:>9}", k.name()));
    println!(" {:>9}   (GFLOP/s)", "mm-crate");
    let mut json = Vec::new();
    for case in cases {
        let (kk, cols, cout) = (case.g.k(), 1024, case.g.cout);
        let w = &case.w;
        let col = random(&[kk * cols], 4).into_data();
        let dy = random(&[cout * cols], 5).into_data();
        // (label, A, B, m, n): forward W·col, data Wᵀ·dY, weight dY·colᵀ.
        let products: [(&str, MatRef, MatRef); 3] = [
            ("fwd", MatRef::rowmajor(w, cout, kk), MatRef::rowmajor(&col, kk, cols)),
            ("data", MatRef::rowmajor(w, cout, kk).t(), MatRef::rowmajor(&dy, cout, cols)),
            ("weight", MatRef::rowmajor(&dy, cout, cols), MatRef::rowmajor(&col, kk, cols).t()),
        ];
        for (label, a, b) in products {
            let (m, k, n) = (a.rows, a.cols, b.cols);
            let gflop = 2.0 * (m * k * n) as f64 / 1e9;
            let mut c = vec![0.0f32; m * n];
            let name = format!(
                "{} {label} {m}×{k}×{n}",
                &case.name[..case.name.find(' ').unwrap_or(case.name.len())]
            );
            print!("{name:<30}");
            let mut fields = vec![format!("\"product\": \"{name}\"")];
            for &kern in &kernels {
                let r = gflop / median_secs(|| gemm_with(kern, 1.0, a, b, 0.0, &mut c, n), 21);
                print!(" {r:>9.1}");
                fields.push(format!("\"{}_gflops\": {r:.2}", kern.name()));
            }
            let r = gflop
                / median_secs(
                    || unsafe {
                        matrixmultiply::sgemm(
                            m,
                            k,
                            n,
                            1.0,
                            a.data.as_ptr(),
                            a.rs as isize,
                            a.cs as isize,
                            b.data.as_ptr(),
                            b.rs as isize,
                            b.cs as isize,
                            0.0,
                            c.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    },
                    21,
                );
            println!(" {r:>9.1}");
            fields.push(format!("\"matrixmultiply_gflops\": {r:.2}"));
            json.push(format!("{{{}}}", fields.join(", ")));
        }
    }
    json
}
