//! Tests of `mod.rs` and the files beside it.

use super::*;
use crate::cim::quant::weight_codes;
use crate::cim::{CimRuntime, Estimator, ReadoutMode};
use crate::data::DatasetKind;
use crate::engine::{Mode, ParamStore, Tape, Var, gradcheck::random};
use crate::nn::{Arch, CimPlan, Fwd, ModelSpec, Network, build};
use std::sync::Arc;

/// A CIM network whose batchnorms and bounds are not at their initial values.
pub(crate) fn trained_like(arch: Arch) -> (Box<dyn Network>, ParamStore) {
    let spec = ModelSpec { arch, num_classes: 10, cim: Some(CimPlan::default()) };
    let (net, mut store) = build(&spec, 3).unwrap();
    for (i, p) in store.params_mut().iter_mut().enumerate() {
        let v = p.value.data_mut();
        match p.name.rsplit('.').next().unwrap() {
            "act_lo" => v[0] = -0.3,
            "act_hi" => v[0] = 2.5,
            "weight" | "bias" if v.len() <= 1024 => {
                v.iter_mut().enumerate().for_each(|(j, x)| *x += 0.01 * ((i * 7 + j) % 13) as f32)
            }
            _ => {}
        }
    }
    for (i, b) in store.buffers_mut().iter_mut().enumerate() {
        b.value
            .data_mut()
            .iter_mut()
            .enumerate()
            .for_each(|(j, x)| *x += 0.05 * ((i + j) % 5) as f32);
    }
    (net, store)
}

pub(crate) fn export(net: &dyn Network, store: &mut ParamStore) -> DeployModel {
    DeployModel::from_network(
        net,
        "test",
        store,
        &MacroSpec::default(),
        Normalize::for_dataset(DatasetKind::Cifar10),
    )
    .unwrap()
}

fn count(m: &DeployModel, f: impl Fn(&DeployOp) -> bool) -> usize {
    m.nodes.iter().filter(|n| f(&n.op)).count()
}

#[test]
fn round_trips_and_rejects_damage() {
    let (net, mut store) = trained_like(Arch::ResNet20);
    let spec = MacroSpec::default();
    let m = export(net.as_ref(), &mut store);
    // 19 convs (each with its batchnorm), 9 residual additions, 2 option-A shortcuts,
    // the pooling and the classifier; every ReLU.
    assert_eq!(count(&m, |o| matches!(o, DeployOp::Conv(_))), 19);
    assert_eq!(
        count(&m, |o| matches!(o, DeployOp::BatchNorm(_))),
        0,
        "every batchnorm is stated with its conv"
    );
    assert_eq!(
        count(&m, |o| matches!(
            o,
            DeployOp::Conv(DeployLayer {
                body: Body::Macro { batchnorm: Some(_), .. }
                    | Body::Digital { batchnorm: Some(_), .. },
                ..
            })
        )),
        19
    );
    assert_eq!(count(&m, |o| matches!(o, DeployOp::Add)), 9);
    assert_eq!(count(&m, |o| matches!(o, DeployOp::SubsamplePad { stride: 2, .. })), 2);
    assert_eq!(count(&m, |o| matches!(o, DeployOp::Relu)), 19);
    assert_eq!(count(&m, |o| matches!(o, DeployOp::GlobalAvgPool)), 1);
    assert_eq!(
        count(&m, |o| matches!(o, DeployOp::Conv(DeployLayer { body: Body::Macro { .. }, .. }))),
        18
    );
    assert!(matches!(&m.nodes.last().unwrap().op, DeployOp::Linear(l) if l.name == "linear"));
    let bytes = m.to_bytes();
    assert_eq!(DeployModel::from_bytes(&bytes).unwrap(), m);
    // Codes are the layer's weight codes, laid out per tile (K = 144: 3 tiles of 64, the last 16 used).
    let l = m
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            DeployOp::Conv(l) if l.name == "layer1.0.conv1" => Some(l),
            _ => None,
        })
        .unwrap();
    let Body::Macro { tiles, codes, .. } = &l.body else {
        panic!("layer1.0.conv1 is on the macro")
    };
    let w = &store.params().iter().find(|p| p.name == "layer1.0.conv1.weight").unwrap().value;
    let (want, _) = weight_codes(w, &spec);
    assert_eq!(*tiles, 3);
    for co in [0, 15] {
        for kk in [0, 63, 64, 143] {
            assert_eq!(codes[(co * 3 + kk / 64) * 64 + kk % 64] as f32, want[co * 144 + kk]);
        }
        assert!(
            codes[(co * 3 + 2) * 64 + 16..(co * 3 + 3) * 64].iter().all(|&c| c == 0),
            "unused rows hold 0"
        );
    }
    for cut in [bytes.len() - 1, 30] {
        assert!(DeployModel::from_bytes(&bytes[..cut]).is_err());
    }
    let mut bad = bytes.clone();
    bad[5] ^= 1;
    assert!(DeployModel::from_bytes(&bad).unwrap_err().contains("bad magic"));
    // A graph that reads a value before it exists, or whose shapes do not chain, is refused by node.
    let mut ahead = m.clone();
    ahead.nodes[3].inputs[0] = 9;
    assert!(
        DeployModel::from_bytes(&ahead.to_bytes())
            .unwrap_err()
            .contains("node 3 reads value 9, which is not computed before it")
    );
    let mut misfit = m.clone();
    let pad =
        misfit.nodes.iter().position(|n| matches!(n.op, DeployOp::SubsamplePad { .. })).unwrap();
    misfit.nodes[pad].op = DeployOp::SubsamplePad { stride: 2, cout: 34 };
    let e = DeployModel::from_bytes(&misfit.to_bytes()).unwrap_err();
    assert!(e.contains("(add): adds [32, 16, 16] and [34, 16, 16]"), "{e}");
    let dir = std::env::temp_dir().join(format!("dnat-deploy-{}", std::process::id()));
    let path = dir.join("m.dnatdepl");
    m.save(&path).unwrap();
    assert_eq!(DeployModel::load(&path).unwrap(), m);
    std::fs::write(&path, b"DNATCKPT").unwrap();
    let e = DeployModel::load(&path).unwrap_err().to_string();
    assert!(e.contains("m.dnatdepl") && e.contains("not a dnat deployable model"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs a deployable model from the file's contents alone, as a program on a real
/// macro would (ideal readouts: the ADC's rounding and range), with plain loops.
/// The whole network, computed from the exported file alone with the documented
/// formulas, gives the logits the network computes on the ideal macro (eval mode):
/// ResNet20 (residual additions, option-A shortcuts, average pooling) and VGG8
/// (max-pooling, flattening, a hidden layer on the macro).
#[test]
fn the_file_alone_computes_the_network() {
    for arch in [Arch::ResNet20, Arch::Vgg8] {
        let (net, mut store) = trained_like(arch);
        let m = export(net.as_ref(), &mut store);
        let spec = MacroSpec::default();
        let rt = CimRuntime::new(
            spec.clone(),
            Arc::new(crate::cim::em::ErrorModel::ideal(spec.adc.kmin, spec.adc.kmax)),
            ReadoutMode::Ideal,
            Estimator::Ste,
        )
        .unwrap();
        let x = random(&[1, 3, 32, 32], 9);
        let want = {
            let mut tape = Tape::new(false);
            let xv = tape.constant(x.clone());
            let mut cx = Fwd::new(&mut tape, &mut store, Mode::Eval);
            cx.cim = Some(&rt);
            let y = net.forward(&mut cx, xv).unwrap();
            tape.value(y).data().to_vec()
        };
        let got = m.run(x.data()).unwrap();
        assert!(
            m.run(&x.data()[1..])
                .unwrap_err()
                .to_string()
                .contains("3071 values are not whole images of [3, 32, 32] = 3072 values")
        );
        // The same integers (partial sums, ADC codes) and the same float operations in
        // the same order: the same bits.
        eprintln!("{arch:?}: {} nodes", m.nodes.len());
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{arch:?} logit {j}: file {g} vs network {w}");
        }
    }
}

/// A version-2 file (written by `dnat export` before batchnorms were stated beside their
/// fold; `tests/golden/deploy-v2-resnet20.dnatd` is `trained_like(ResNet20)`'s export)
/// still loads and runs, within float rounding of the same network's version-3 export,
/// and says that it has nothing to recalibrate.
#[test]
fn a_version_2_file_still_loads_and_runs() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/deploy-v2-resnet20.dnatd");
    let old = DeployModel::load(&path).unwrap();
    let (net, mut store) = trained_like(Arch::ResNet20);
    let new = export(net.as_ref(), &mut store);
    assert_eq!(old.nodes.len(), new.nodes.len());
    assert!(old.nodes.iter().all(|n| match &n.op {
        DeployOp::Conv(l) | DeployOp::Linear(l) => matches!(
            l.body,
            Body::Macro { batchnorm: None, .. } | Body::Digital { batchnorm: None, .. }
        ),
        op => !matches!(op, DeployOp::BatchNorm(_)),
    }));
    // The fold is what the version-3 file states beside its batchnorms.
    for (a, b) in old.nodes.iter().zip(&new.nodes) {
        if let (DeployOp::Conv(la), DeployOp::Conv(lb)) = (&a.op, &b.op)
            && let (Some((sa, ta)), Some((sb, tb))) = (la.folded(), lb.folded())
        {
            let close = |x: &[f32], y: &[f32]| {
                x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-6 * (1.0 + q.abs()))
            };
            assert!(close(&sa, &sb) && close(&ta, &tb), "{}", la.name);
        }
    }
    let x = random(&[2, 3, 32, 32], 9);
    let (got, want) = (old.run(x.data()).unwrap(), new.run(x.data()).unwrap());
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-3 * (1.0 + scale), "version 2 {g} vs version 3 {w}");
    }
}

/// A version-3 file whose folded epilogue is not the fold of the fields beside it is
/// refused by layer: a host reading the fold and one reading the batchnorm would
/// compute different networks.
#[test]
fn a_fold_that_disagrees_with_its_batchnorm_is_refused() {
    let (net, mut store) = trained_like(Arch::ResNet20);
    let m = export(net.as_ref(), &mut store);
    let (_, mut payload) =
        crate::io::framed::decode(&m.to_bytes(), MAGIC, "deployable model", VERSION).unwrap();
    let first = m
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            DeployOp::Conv(l) => l.folded().map(|f| (l.name.clone(), f)),
            _ => None,
        })
        .unwrap();
    let (name, (scale, _)) = first;
    let pattern: Vec<u8> = scale[..4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let at = payload.windows(16).position(|w| w == pattern).unwrap();
    payload[at..at + 4].copy_from_slice(&(2.0 * scale[0]).to_le_bytes());
    let bytes = crate::io::framed::encode(MAGIC, VERSION, &payload);
    let e = DeployModel::from_bytes(&bytes).unwrap_err();
    assert!(
        e.contains(&format!("layer {name}: the folded scale and shift are not the fold")),
        "{e}"
    );
}

/// A network that calls a tape op directly (outside the layer API) is refused by
/// name, not exported without that op.
#[test]
fn an_op_the_format_cannot_state_is_refused() {
    struct Sneaky(Box<dyn Network>);
    impl Network for Sneaky {
        fn forward(&self, cx: &mut Fwd, x: Var) -> Result<Var> {
            let x = crate::engine::ops::relu(cx.tape, x);
            self.0.forward(cx, x)
        }
    }
    let (net, mut store) = trained_like(Arch::ResNet20);
    let e = DeployModel::from_network(
        &Sneaky(net),
        "sneaky",
        &mut store,
        &MacroSpec::default(),
        Normalize::for_dataset(DatasetKind::Cifar10),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot export this network")
            && e.contains("op 0 (conv)")
            && e.contains("outside the layer API"),
        "{e}"
    );
}
