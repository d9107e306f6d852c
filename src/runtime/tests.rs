//! The runtime against the network it was exported from, on the ideal macro and
//! through a simulated chip; batching and threads; a backend that lies.

use super::*;
use crate::cim::em::presets;
use crate::cim::{CimRuntime, Estimator, MacroSpec, Readout, ReadoutMode};
use crate::engine::{Mode, gradcheck::random};
use crate::io::deploy::tests::{export, trained_like};
use crate::nn::{Arch, Fwd};
use std::sync::Arc;

/// The network's own logits for `x`, its CIM layers reading through `rt`.
fn network_logits(arch: Arch, rt: &CimRuntime, x: &Tensor) -> (DeployModel, Vec<f32>) {
    let (net, mut store) = trained_like(arch);
    let m = export(net.as_ref(), &mut store);
    let mut tape = Tape::new(false);
    let xv = tape.constant(x.clone());
    let mut cx = Fwd::new(&mut tape, &mut store, Mode::Eval);
    cx.cim = Some(rt);
    let y = net.forward(&mut cx, xv).unwrap();
    (m, tape.value(y).data().to_vec())
}

/// Same integers (partial sums, ADC codes, draws) and the same float operations in the
/// same order: the same bits.
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what} logit {j}: runtime {g} vs network {w}");
    }
}

fn runtime_of(spec: &MacroSpec, model: Arc<dyn Readout>, mode: ReadoutMode) -> CimRuntime {
    CimRuntime::new(spec.clone(), model, mode, Estimator::Ste).unwrap()
}

#[test]
fn ideal_backend_is_the_network_on_the_ideal_macro() {
    let spec = MacroSpec::default();
    let ideal = Arc::new(crate::cim::ErrorModel::ideal(spec.adc.kmin, spec.adc.kmax));
    let x = random(&[3, 3, 32, 32], 9);
    let (m, want) =
        network_logits(Arch::ResNet20, &runtime_of(&spec, ideal, ReadoutMode::Ideal), &x);
    let mut rt = Runtime::new(m.clone()).unwrap();
    let got = rt.run(&mut SimulatedMacro::ideal(&m.macro_spec), x.data(), 0).unwrap();
    assert_same(&got, &want, "ResNet20, ideal");
    // ResNet20's 18 CIM layers: 3 × 3 tiles of 16 channels, 3 × (5 + 5) of 32 (the first
    // layer of a stage reads 16 channels), 3 × (5 + 9) of 64 … one programming per tile,
    // the same for every batch.
    let s = rt.stats;
    assert_eq!(s.images, 3);
    // An image's logits do not depend on the batch it runs in, nor on the thread count.
    let one = rt.run(&mut SimulatedMacro::ideal(&m.macro_spec), &x.data()[3072..6144], 0).unwrap();
    assert_eq!(one, got[10..20]);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let serial =
        pool.install(|| rt.run(&mut SimulatedMacro::ideal(&m.macro_spec), x.data(), 0).unwrap());
    assert_eq!(serial, got);
    assert_eq!(rt.stats.programmings, 3 * s.programmings);
    assert_eq!(rt.stats.macro_ops, s.macro_ops * 7 / 3);
}

/// A simulated chip draws what the CIM layers draw for the same operation: the same
/// chip's columns, the same keys (noise seed, layer, pass, operation).
#[test]
fn em_backend_draws_what_the_cim_layers_draw() {
    let spec = MacroSpec::default();
    let model: Arc<dyn Readout> =
        Arc::new(presets::preset("current-domain", (spec.adc.kmin, spec.adc.kmax)).unwrap());
    let (chip, noise, pass) = (2, 1000, 5);
    let cim = CimRuntime {
        seed: noise,
        step: pass,
        ..runtime_of(&spec, model.clone(), ReadoutMode::Sampled).on_chip(chip)
    };
    let x = random(&[2, 3, 32, 32], 4);
    let (m, want) = network_logits(Arch::ResNet20, &cim, &x);
    let mut rt = Runtime::new(m.clone()).unwrap();
    let got = rt
        .run(&mut SimulatedMacro::chip(&m.macro_spec, model.clone(), chip, noise), x.data(), pass)
        .unwrap();
    assert_same(&got, &want, "ResNet20, current-domain chip 2");
    // Another pass, noise seed or chip draws otherwise: the comparison can fail.
    for (c, s, p) in [(chip, noise, pass + 1), (chip, noise + 1, pass), (chip + 1, noise, pass)] {
        let other = rt
            .run(&mut SimulatedMacro::chip(&m.macro_spec, model.clone(), c, s), x.data(), p)
            .unwrap();
        assert_ne!(other, got, "chip {c}, noise {s}, pass {p}");
    }
}

/// The simulated macro as a macro that is one device: no copies.
struct OneDevice(SimulatedMacro);

impl MacroBackend for OneDevice {
    fn name(&self) -> String {
        self.0.name()
    }
    fn program(&mut self, array: usize, weights: &[i8]) -> Result<()> {
        self.0.program(array, weights)
    }
    fn compute(&mut self, a: usize, op: &Operation, x: &[u16], out: &mut [i32]) -> Result<()> {
        self.0.compute(a, op, x, out)
    }
}

/// Copies of a macro, each running its parts of the pass, read what the macro read as
/// one device does (large batches, one at a time): the same logits to the bit, the same
/// operations; each copy programs the arrays for its own part.
#[test]
fn copies_of_a_macro_read_what_the_one_device_reads() {
    let spec = MacroSpec::default();
    let model: Arc<dyn Readout> =
        Arc::new(presets::preset("current-domain", (spec.adc.kmin, spec.adc.kmax)).unwrap());
    let (net, mut store) = trained_like(Arch::ResNet20);
    let m = export(net.as_ref(), &mut store);
    let chip = || SimulatedMacro::chip(&m.macro_spec, model.clone(), 1, 3);
    // Three parts of a replicable macro's pass (10, 10 and 3 images); one for the device.
    let x = random(&[23, 3, 32, 32], 5);
    let (mut copied, mut one) =
        (Runtime::new(m.clone()).unwrap(), Runtime::new(m.clone()).unwrap());
    let got = copied.run(&mut chip(), x.data(), 2).unwrap();
    let want = one.run(&mut OneDevice(chip()), x.data(), 2).unwrap();
    assert_same(&got, &want, "ResNet20, current-domain chip 1, copies");
    assert_eq!(copied.stats.macro_ops, one.stats.macro_ops);
    assert_eq!(copied.stats.programmings, 3 * one.stats.programmings);
    // One layer, as fine-tuning runs it: the same bits.
    let x = random(&[23, 16, 32, 32], 6);
    let got = copied.layer(&mut chip(), 0, &x, 4).unwrap();
    let want = one.layer(&mut OneDevice(chip()), 0, &x, 4).unwrap();
    assert_eq!(got.shape(), want.shape());
    assert_same(got.data(), want.data(), "layer 0 on copies");
}

/// A backend that answers with a code outside the ADC's range is named, with the layer
/// and the operation.
#[test]
fn a_backend_that_lies_is_named() {
    struct Liar(SimulatedMacro);
    impl MacroBackend for Liar {
        fn name(&self) -> String {
            "liar".into()
        }
        fn program(&mut self, array: usize, weights: &[i8]) -> Result<()> {
            self.0.program(array, weights)
        }
        fn compute(&mut self, a: usize, op: &Operation, x: &[u16], out: &mut [i32]) -> Result<()> {
            self.0.compute(a, op, x, out)?;
            out[0] = 100_000;
            Ok(())
        }
    }
    let (net, mut store) = trained_like(Arch::ResNet20);
    let m = export(net.as_ref(), &mut store);
    let mut rt = Runtime::new(m.clone()).unwrap();
    let e =
        rt.run(&mut Liar(SimulatedMacro::ideal(&m.macro_spec)), &vec![0.0; 3072], 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "backend 'liar', layer 'layer1.0.conv1', tile 0, cycle 0, operations 0..1024: ADC code 100000 is outside the ADC's -256..=255"
    );
}

/// Recalibration through a backend is the training side's recalibration: the same
/// images, batches, draws and statistics give the same running means and variances,
/// to the bit, through the ideal macro and through a simulated chip.
#[test]
fn calibrate_is_the_training_sides_recalibration() {
    use crate::data::{Augment, Normalize, Split};
    use crate::train::recalibrate::{RecalImages, recalibrate_bn};
    let spec = MacroSpec::default();
    let n = 24;
    let split = Split {
        images: (0..n * crate::data::cifar::IMAGE_BYTES).map(|i| (i * 37 % 251) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    };
    let set = RecalImages {
        split: &split,
        norm: Normalize::for_dataset(crate::data::DatasetKind::Cifar10),
        augment: Some(Augment::standard()),
        count: 20,
        seed: 3,
    };
    let model: Arc<dyn Readout> =
        Arc::new(presets::preset("current-domain", (spec.adc.kmin, spec.adc.kmax)).unwrap());
    let (chip, noise) = (1, 7);
    let ideal = Arc::new(crate::cim::ErrorModel::ideal(spec.adc.kmin, spec.adc.kmax));
    for sampled in [false, true] {
        let cim = if sampled {
            CimRuntime {
                seed: noise,
                ..runtime_of(&spec, model.clone(), ReadoutMode::Sampled).on_chip(chip)
            }
        } else {
            runtime_of(&spec, ideal.clone(), ReadoutMode::Ideal)
        };
        let (net, mut store) = trained_like(Arch::ResNet20);
        let m = export(net.as_ref(), &mut store);
        recalibrate_bn(net.as_ref(), &mut store, &set, Some(&cim)).unwrap();
        let want = export(net.as_ref(), &mut store);
        let mut backend = if sampled {
            SimulatedMacro::chip(&m.macro_spec, model.clone(), chip, noise)
        } else {
            SimulatedMacro::ideal(&m.macro_spec)
        };
        let (got, r) = Runtime::new(m.clone()).unwrap().calibrate(&mut backend, &set).unwrap();
        assert_eq!((r.images, r.layers), (20, 19));
        assert_eq!(got, want, "sampled: {sampled}");
        assert_ne!(got, m, "the statistics moved");
    }
}
