//! Building the graph: a traced forward pass of a network becomes [`DeployModel`]'s
//! nodes, each conv / linear layer with its weight codes (or f32 weights) and the
//! batchnorm that follows it.

use super::{BatchNorm, Body, DeployLayer, DeployModel, DeployNode, DeployOp, INPUT};
use crate::cim::{MacroSpec, quant::weight_codes};
use crate::data::{DatasetKind, Normalize};
use crate::engine::MacroSlot;
use crate::engine::{Mode, ParamId, ParamStore, Tape, Tensor};
use crate::io::checkpoint::Checkpoint;
use crate::nn::{BatchNorm2d, Fwd, Network, Node, Trace};
use crate::{Error, Result};

/// A batchnorm's parameters and running statistics, as the store holds them.
fn batchnorm(bn: &BatchNorm2d, store: &ParamStore) -> BatchNorm {
    let value = |id| store.param(id).value.data().to_vec();
    let buffer = |id| store.buffer(id).value.data().to_vec();
    BatchNorm {
        gamma: value(bn.weight),
        beta: value(bn.bias),
        mean: buffer(bn.running_mean),
        var: buffer(bn.running_var),
        eps: bn.eps,
    }
}

/// A conv or linear layer with the batchnorm that follows it (`bn`, when there is one).
fn layer(
    store: &ParamStore,
    spec: &MacroSpec,
    weight: ParamId,
    bias: Option<ParamId>,
    cim: Option<&MacroSlot>,
    bn: Option<&BatchNorm2d>,
) -> (String, usize, usize, usize, Body) {
    let w = &store.param(weight).value;
    let name = store.param(weight).name.trim_end_matches(".weight").to_string();
    let shape = w.shape();
    let (cout, cin) = (shape[0], shape[1]);
    let kernel = if shape.len() == 4 { shape[2] } else { 1 };
    let k = w.len() / cout;
    let bias: Vec<f32> = bias.map_or(vec![0.0; cout], |b| store.param(b).value.data().to_vec());
    let batchnorm = bn.map(|bn| batchnorm(bn, store));
    let body = match cim {
        Some(q) => {
            let (codes_f, s_w) = weight_codes(w, spec);
            let tiles = spec.tiles(k);
            let mut codes = vec![0i8; cout * tiles * spec.rows];
            for co in 0..cout {
                for kk in 0..k {
                    codes[(co * tiles + kk / spec.rows) * spec.rows + kk % spec.rows] =
                        codes_f[co * k + kk] as i8;
                }
            }
            Body::Macro {
                lo: store.param(q.lo).value.data()[0],
                hi: store.param(q.hi).value.data()[0],
                tiles: tiles as u32,
                codes,
                weight_scale: s_w,
                bias,
                batchnorm,
            }
        }
        None => Body::Digital { weight: w.data().to_vec(), bias, batchnorm },
    };
    (name, cout, cin, kernel, body)
}

impl DeployModel {
    /// Traces one eval-mode forward pass of `net` (architecture `arch`) on an
    /// [`INPUT`]-shaped image (nothing in `store` changes) and writes its graph; refuses
    /// a network whose pass uses an op the format cannot state.
    pub fn from_network(
        net: &dyn Network,
        arch: &str,
        store: &mut ParamStore,
        spec: &MacroSpec,
        norm: Normalize,
    ) -> Result<Self> {
        spec.validate()?;
        let mut tape = Tape::new(false);
        let [c, h, w] = INPUT.map(|v| v as usize);
        let x = tape.constant(Tensor::zeros(&[1, c, h, w]));
        let mut trace = Trace::new(x);
        let y = {
            let mut cx = Fwd::new(&mut tape, store, Mode::Eval);
            cx.trace = Some(&mut trace);
            net.forward(&mut cx, x)?
        };
        let cannot = |why: String| {
            Error::invalid(format!(
                "cannot export this network: {why}; the deployable format states the layers (Conv2d, Linear, BatchNorm2d) and the ops of Fwd (relu, add, max_pool2d, global_avg_pool, flatten, subsample_pad_channels)"
            ))
        };
        if let Some(u) = trace.untraced.take() {
            return Err(cannot(u));
        }
        if trace.id_of(y) != Some(trace.ops.len()) || trace.ops.is_empty() {
            return Err(cannot("its output is not the result of the pass's last traced op".into()));
        }
        let ops = &trace.ops;
        // Readers of each value, to state a batchnorm with the layer it alone follows.
        let mut readers = vec![Vec::new(); ops.len() + 1];
        for (i, op) in ops.iter().enumerate() {
            op.inputs.iter().for_each(|&v| readers[v].push(i));
        }
        let folded_into = |i: usize| -> Option<&BatchNorm2d> {
            match readers[i + 1].as_slice() {
                [j] => match &ops[*j].node {
                    Node::BatchNorm(bn) => Some(bn),
                    _ => None,
                },
                _ => None,
            }
        };
        // old value id → new value id; a folded batchnorm's value is its layer's.
        let mut new_id = vec![u32::MAX; ops.len() + 1];
        new_id[0] = 0;
        let mut nodes: Vec<DeployNode> = Vec::new();
        let mut skip = vec![false; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            if skip[i] {
                continue;
            }
            let inputs = op.inputs.iter().map(|&v| new_id[v]).collect();
            let (dop, fold) = match &op.node {
                Node::Conv { weight, bias, cfg, cim } => {
                    let bn = folded_into(i);
                    let (name, cout, cin, kernel, body) =
                        layer(store, spec, *weight, *bias, cim.as_ref(), bn);
                    let l = DeployLayer {
                        name,
                        cout: cout as u32,
                        cin: cin as u32,
                        kernel: kernel as u32,
                        stride: cfg.stride as u32,
                        padding: cfg.padding as u32,
                        body,
                    };
                    (DeployOp::Conv(l), bn.is_some())
                }
                Node::Linear { weight, bias, cim } => {
                    let bn = folded_into(i);
                    let (name, cout, cin, _, body) =
                        layer(store, spec, *weight, *bias, cim.as_ref(), bn);
                    (
                        DeployOp::Linear(DeployLayer {
                            name,
                            cout: cout as u32,
                            cin: cin as u32,
                            kernel: 1,
                            stride: 1,
                            padding: 0,
                            body,
                        }),
                        bn.is_some(),
                    )
                }
                Node::BatchNorm(bn) => (DeployOp::BatchNorm(batchnorm(bn, store)), false),
                Node::Relu => (DeployOp::Relu, false),
                Node::Add => (DeployOp::Add, false),
                Node::MaxPool { kernel, stride } => {
                    (DeployOp::MaxPool { kernel: *kernel as u32, stride: *stride as u32 }, false)
                }
                Node::GlobalAvgPool => (DeployOp::GlobalAvgPool, false),
                Node::Flatten => (DeployOp::Flatten, false),
                Node::SubsamplePad { stride, cout } => {
                    (DeployOp::SubsamplePad { stride: *stride as u32, cout: *cout as u32 }, false)
                }
            };
            nodes.push(DeployNode { inputs, op: dop });
            new_id[i + 1] = nodes.len() as u32;
            if fold {
                let j = readers[i + 1][0];
                skip[j] = true;
                new_id[j + 1] = nodes.len() as u32;
            }
        }
        let num_classes = match tape.value(y).shape() {
            &[1, classes] => classes as u32,
            other => {
                return Err(cannot(format!("its output has shape {other:?}, not (1, classes)")));
            }
        };
        let m = DeployModel {
            arch: arch.into(),
            num_classes,
            input: INPUT,
            norm,
            macro_spec: spec.clone(),
            nodes,
        };
        m.shapes().map_err(|e| cannot(format!("its graph does not check out ({e})")))?;
        Ok(m)
    }
}

impl DeployModel {
    /// The deployable model of a CIM checkpoint (one loaded from a file, or a training
    /// outcome's `checkpoint`): its network rebuilt and traced ([`Self::from_network`])
    /// for the macro it was trained for, or for `on` — another macro of the same weight
    /// and input bits (other bit widths would silently re-quantize what was trained, and
    /// are refused).
    pub fn from_checkpoint(ck: &Checkpoint, on: Option<&MacroSpec>) -> Result<Self> {
        let arch = ck.spec.arch.name();
        if ck.spec.cim.is_none() {
            return Err(Error::invalid(format!(
                "checkpoint of '{arch}' has no CIM layers (an FP32 model): train it with --cim first"
            )));
        }
        let trained = ck.trained_macro()?;
        let spec = match on {
            None => trained,
            Some(spec) => {
                if (trained.weight_bits, trained.input_bits) != (spec.weight_bits, spec.input_bits)
                {
                    return Err(Error::invalid(format!(
                        "checkpoint of '{arch}' was trained for macro '{}' ({}-bit weights, {}-bit inputs); '{}' takes {}-bit weights and {}-bit inputs, so exporting would re-quantize it: train for '{}' first",
                        trained.name,
                        trained.weight_bits,
                        trained.input_bits,
                        spec.name,
                        spec.weight_bits,
                        spec.input_bits,
                        spec.name
                    )));
                }
                spec.clone()
            }
        };
        let kind = DatasetKind::for_classes(ck.spec.num_classes).ok_or_else(|| {
            Error::invalid(format!(
                "checkpoint of '{arch}' has {} output classes; dnat's data sets have 10 (CIFAR-10) or 100 (CIFAR-100)",
                ck.spec.num_classes
            ))
        })?;
        let (net, mut store) = ck.network()?;
        Self::from_network(net.as_ref(), arch, &mut store, &spec, Normalize::for_dataset(kind))
    }
}
