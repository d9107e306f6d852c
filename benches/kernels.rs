//! `cargo bench`: ResNet20's convolution shapes (forward, backward data + weight,
//! backward weight only) in GFLOP/s, and full training steps, through criterion; then
//! a summary table a person can read and one JSON line a script can read.
//!
//! Filter as usual: `cargo bench -- conv/s3`, or `cargo bench -- step`.

use criterion::{BenchmarkId, Criterion, Throughput};
use dnat::engine::gradcheck::random;
use dnat::engine::ops::conv2d::{self, Conv2dCfg, ConvGeom};
use dnat::train::bench as step_bench;
use dnat::nn::Arch;
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

struct Case {
    name: &'static str,
    g: ConvGeom,
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
}

fn cases() -> Vec<Case> {
    RESNET20_CONVS
        .iter()
        .map(|&(name, cin, cout, side, stride)| {
            let g = ConvGeom::new(&[BATCH, cin, side, side], &[cout, cin, 3, 3], Conv2dCfg { stride, padding: 1 }).unwrap();
            Case {
                name,
                g,
                x: random(&[BATCH * g.in_size()], 1).into_data(),
                w: random(&[cout * g.k()], 2).into_data(),
                dy: random(&[BATCH * g.out_size()], 3).into_data(),
            }
        })
        .collect()
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
    let mut c = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(2)).configure_from_args();
    let cases = cases();
    {
        let mut grp = c.benchmark_group("conv");
        for k in &cases {
            grp.throughput(Throughput::Elements(k.g.flops() as u64));
            grp.bench_function(BenchmarkId::new("forward", k.name), |b| b.iter(|| black_box(conv2d::forward(&k.g, &k.x, &k.w, None))));
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
        // Readout sampling from a D-MAC-EM: hashes + alias tables, per macro operation.
        use dnat::cim::em::presets;
        use dnat::cim::{DrawKey, DrawRun, Readout};
        let m = presets::preset("moderate", (-256, 255)).unwrap();
        let codes: Vec<i32> = (0..1024).map(|i| (i * 37) % 121 - 60).collect();
        let mut out = vec![0.0f32; codes.len()];
        let key = DrawKey::new(1, 2, 3);
        let mut grp = c.benchmark_group("readout");
        grp.throughput(Throughput::Elements(codes.len() as u64));
        let mut op0 = 0u64;
        grp.bench_function("sample_run moderate 1024 codes", |b| {
            b.iter(|| {
                op0 += 1024;
                m.sample_run(&codes, DrawRun { key, op0, stride: 1 }, &mut out);
                black_box(&out);
            })
        });
        grp.finish();
    }
    c.bench_function("step/resnet20 train+eval b128", |b| {
        b.iter(|| black_box(step_bench::run(Arch::ResNet20, 10, BATCH, 1, 0, None).unwrap()))
    });
    c.final_summary();

    // Summary: GFLOP/s per shape (medians of 5), then one JSON line.
    println!("\n{:<18} {:>9} {:>9} {:>9}   (GFLOP/s; bwd = data + weight, counted as 2x the forward FLOPs)", "conv (batch 128)", "fwd", "bwd", "bwd-w");
    let mut json = Vec::new();
    for k in &cases {
        let f = k.g.flops() / 1e9;
        let fwd = f / median_secs(|| drop(black_box(conv2d::forward(&k.g, &k.x, &k.w, None))), 5);
        let bwd = 2.0 * f / median_secs(|| drop(black_box(conv2d::backward(&k.g, &k.x, &k.w, &k.dy, true))), 5);
        let bww = f / median_secs(|| drop(black_box(conv2d::backward(&k.g, &k.x, &k.w, &k.dy, false))), 5);
        println!("{:<18} {fwd:>9.1} {bwd:>9.1} {bww:>9.1}", k.name);
        json.push(format!("{{\"shape\": \"{}\", \"forward_gflops\": {fwd:.2}, \"backward_gflops\": {bwd:.2}, \"backward_weight_gflops\": {bww:.2}}}", k.name));
    }
    let step = step_bench::run(Arch::ResNet20, 10, BATCH, 5, 1, None).unwrap();
    println!("{}", step.table());
    println!("{{\"bench\": \"kernels\", \"threads\": {}, \"convs\": [{}], \"step\": {}}}", rayon::current_num_threads(), json.join(", "), step.json());
}
