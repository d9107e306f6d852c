//! Batchnorm recalibration against a reference computed here with plain loops: on a
//! macro whose only error is a gain per output channel (each channel on its own ADC
//! column), recalibrating the batchnorm statistics through that macro gives back the
//! ideal model's normalised outputs, to the ADC's rounding.

use dnat::cim::{Adc, Chip, CimRuntime, ErrorModel, Estimator, MacroSpec, ReadoutMode};
use dnat::data::{Normalize, synthetic};
use dnat::engine::{Mode, ParamStore, Tape, Var};
use dnat::nn::{
    ActQuantKind, BatchNorm2d, CimPlan, Conv2d, Conv2dConfig, Fwd, Network, map_to_macro,
};
use dnat::train::{RecalImages, recalibrate_bn};
use std::sync::Arc;

/// A 1×1 CIM convolution (3 → 4 channels) followed by batchnorm.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Network for ConvBn {
    fn forward(&self, cx: &mut Fwd, x: Var) -> dnat::Result<Var> {
        let y = self.conv.forward(cx, x)?;
        self.bn.forward(cx, y)
    }
}

const GAINS: [f32; 4] = [0.6, 0.83, 1.0, 1.37];
// Weight codes (every channel reaches ±7, so the per-channel scale is exact).
const CODES: [[f32; 3]; 4] =
    [[7.0, -3.0, 2.0], [-7.0, 5.0, 1.0], [3.0, 7.0, -6.0], [1.0, -2.0, 7.0]];
// A scale that keeps every channel's variance far above batchnorm's eps (1e-5), which
// does not scale with the gain.
const W_SCALE: f32 = 1.0;

fn forward(
    net: &ConvBn,
    store: &mut ParamStore,
    split: &dnat::data::Split,
    norm: Normalize,
    rt: &CimRuntime,
) -> Vec<f32> {
    let batcher = dnat::data::Batcher::new(split, norm, None, 0);
    let idx: Vec<usize> = (0..split.len()).collect();
    let (x, _) = batcher.batch(&idx, 0);
    let mut tape = Tape::new(false);
    let xv = tape.constant(x);
    let mut cx = Fwd::new(&mut tape, store, Mode::Eval);
    cx.cim = Some(rt);
    let y = net.forward(&mut cx, xv).unwrap();
    tape.value(y).data().to_vec()
}

#[test]
fn bn_recalibration_undoes_a_per_channel_gain() {
    let data = synthetic::dataset(96, 8, 3);
    // Pixels p/255 in [0, 1]: with PACT bounds [0, 1] the input codes are the pixel bytes.
    let norm = Normalize { mean: [0.0; 3], std: [1.0; 3] };
    let mut store = ParamStore::seeded(5);
    let conv = Conv2dConfig::new(3, 4, 1).init(&mut store, "conv");
    let bn = BatchNorm2d::new(&mut store, "bn", 4);
    map_to_macro(&mut store, &CimPlan::named(["conv"])).unwrap();
    let w: Vec<f32> = CODES.iter().flatten().map(|c| c * W_SCALE).collect();
    store.param_mut(conv.weight).value.data_mut().copy_from_slice(&w);
    let q = store.layer(conv.layer).on_macro.unwrap();
    store.param_mut(q.hi).value.data_mut()[0] = 1.0;
    let net = ConvBn { conv, bn };
    // Every training image, un-augmented (the reference reads the raw pixels).
    let all =
        RecalImages { split: &data.train, norm, augment: None, count: data.train.len(), seed: 0 };

    // An ADC of step 1 reads the ideal partial sums exactly; each channel has its own column.
    let spec = MacroSpec {
        name: "gain-only".into(),
        adc: Adc { kmin: -8192, kmax: 8191, step: 1.0 },
        arrays: 1,
        columns: 4,
        ..MacroSpec::default()
    };
    let mut rt = CimRuntime::new(
        spec,
        Arc::new(ErrorModel::ideal(-8192, 8191)),
        ReadoutMode::Sampled,
        Estimator::Ste,
    )
    .unwrap();
    rt.act_quant = ActQuantKind::Pact;
    rt.chip = Some(Arc::new(Chip::from_columns(1, GAINS.to_vec(), vec![0.0; 4])));

    // The reference, with plain loops: ideal outputs y = s_w·s_x·Σ q·c over every pixel
    // of every image, normalised with their own mean and (unbiased) variance.
    let s_x = 1.0f64 / 255.0;
    let (n, pix) = (data.train.len(), 1024);
    let mut ideal = vec![vec![0.0f64; n * pix]; 4];
    for i in 0..n {
        let img = data.train.image(i);
        for (co, out) in ideal.iter_mut().enumerate() {
            for p in 0..pix {
                let psum: f64 =
                    (0..3).map(|ci| img[ci * pix + p] as f64 * CODES[co][ci] as f64).sum();
                out[i * pix + p] = W_SCALE as f64 * s_x * psum;
            }
        }
    }
    let stats: Vec<(f64, f64)> = ideal
        .iter()
        .map(|v| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (m, v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64)
        })
        .collect();
    let reference = |co: usize, i: usize, p: usize| {
        (ideal[co][i * pix + p] - stats[co].0) / (stats[co].1 + 1e-5).sqrt()
    };
    // Largest difference from the reference: ADC rounding of g·P is at most half a code.
    let worst = |y: &[f32]| -> (f64, f64) {
        let (mut d, mut bound) = (0.0f64, 0.0f64);
        for co in 0..4 {
            let b = 0.5 * W_SCALE as f64 * s_x / (GAINS[co] as f64 * stats[co].1.sqrt());
            bound = bound.max(b);
            for i in 0..n {
                for p in 0..pix {
                    d = d.max((y[(i * 4 + co) * pix + p] as f64 - reference(co, i, p)).abs());
                }
            }
        }
        (d, bound)
    };

    // Statistics estimated on the ideal macro, read on the gain macro: far off.
    let mut ideal_rt = rt.clone();
    ideal_rt.mode = ReadoutMode::Ideal;
    recalibrate_bn(&net, &mut store, &all, Some(&ideal_rt)).unwrap();
    let (d_ideal, bound) = worst(&forward(&net, &mut store, &data.train, norm, &ideal_rt));
    assert!(
        d_ideal < 1e-4,
        "on the ideal macro the recalibrated model is the reference: {d_ideal}"
    );
    let (d_stale, _) = worst(&forward(&net, &mut store, &data.train, norm, &rt));
    assert!(
        d_stale > 20.0 * bound,
        "the gain must matter before recalibration: {d_stale} vs {bound}"
    );

    // Recalibrated through the gain macro: the reference again, to rounding.
    let weights_before = store.param_mut(net.conv.weight).value.data().to_vec();
    let r = recalibrate_bn(&net, &mut store, &all, Some(&rt)).unwrap();
    assert_eq!((r.images, r.layers), (n, 1));
    let (d, bound) = worst(&forward(&net, &mut store, &data.train, norm, &rt));
    assert!(
        d <= 1.05 * bound,
        "recalibrated outputs differ from the ideal reference by {d}, rounding allows {bound}"
    );
    assert_eq!(
        store.param_mut(net.conv.weight).value.data(),
        &weights_before[..],
        "weights are not touched"
    );
    assert_eq!(store.param_mut(q.hi).value.data()[0], 1.0, "quantizer bounds are not touched");

    // Deterministic, and the batch split does not change the statistics beyond f32 rounding.
    let snapshot =
        |s: &ParamStore| s.buffers().iter().map(|b| b.value.data().to_vec()).collect::<Vec<_>>();
    let a = snapshot(&store);
    recalibrate_bn(&net, &mut store, &all, Some(&rt)).unwrap();
    assert_eq!(snapshot(&store), a);
    assert!(
        recalibrate_bn(&net, &mut store, &RecalImages { count: n + 1, ..all }, Some(&rt))
            .unwrap_err()
            .to_string()
            .contains("2..=96")
    );
}
