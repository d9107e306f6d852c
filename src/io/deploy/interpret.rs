//! Running the graph: [`DeployModel::run`] computes an image's logits on the ideal
//! macro (through [`crate::runtime`]), and [`DeployModel::shapes`] checks the graph value
//! by value.

use super::format::kind_name;
use super::{DeployModel, DeployOp, MAX_VALUE_LEN};
use crate::Result;
use crate::runtime::{Runtime, SimulatedMacro};

impl DeployModel {
    /// The logits of one image (C, H, W, normalised as `norm` says) on the ideal macro
    /// (no read noise): the runtime with [`SimulatedMacro::ideal`] doing the macro
    /// operations, which gives the network's own logits to the bit (`tests`); for a
    /// chip, see [`crate::runtime`].
    pub fn run(&self, image: &[f32]) -> Result<Vec<f32>> {
        Runtime::new(self.clone())?.run(&mut SimulatedMacro::ideal(&self.macro_spec), image, 0)
    }

    /// The shape of every value (without the batch axis), checking each node against
    /// its inputs, and the last value against `num_classes` logits.
    pub fn shapes(&self) -> std::result::Result<Vec<Vec<usize>>, String> {
        let mut shapes: Vec<Vec<usize>> = vec![self.input.iter().map(|&v| v as usize).collect()];
        if shapes[0].iter().product::<usize>() > MAX_VALUE_LEN {
            return Err(format!("implausible input shape {:?}", self.input));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let at = |v: u32| shapes[v as usize].clone();
            let x = at(n.inputs[0]);
            let bad = |what: String| format!("node {i} ({}): {what}", kind_name(n.op.kind()));
            let y = match &n.op {
                DeployOp::Conv(l) => {
                    let (k, s, p) = (l.kernel as usize, l.stride as usize, l.padding as usize);
                    match x.as_slice() {
                        &[c, h, w]
                            if c == l.cin as usize && h + 2 * p >= k && w + 2 * p >= k && s > 0 =>
                        {
                            vec![l.cout as usize, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1]
                        }
                        _ => {
                            return Err(bad(format!(
                                "{} ({}→{}, kernel {k}, stride {s}, padding {p}) does not take input {x:?}",
                                l.name, l.cin, l.cout
                            )));
                        }
                    }
                }
                DeployOp::Linear(l) => match x.as_slice() {
                    &[c] if c == l.cin as usize => vec![l.cout as usize],
                    _ => {
                        return Err(bad(format!(
                            "{} ({}→{}) does not take input {x:?}",
                            l.name, l.cin, l.cout
                        )));
                    }
                },
                DeployOp::BatchNorm(bn) => {
                    if x.first() != Some(&bn.channels()) {
                        return Err(bad(format!(
                            "{} channels do not fit input {x:?}",
                            bn.channels()
                        )));
                    }
                    x
                }
                DeployOp::Relu => x,
                DeployOp::Add => {
                    if at(n.inputs[1]) != x {
                        return Err(bad(format!("adds {x:?} and {:?}", at(n.inputs[1]))));
                    }
                    x
                }
                DeployOp::MaxPool { kernel, stride } => {
                    let (k, s) = (*kernel as usize, *stride as usize);
                    match x.as_slice() {
                        &[c, h, w] if k > 0 && s > 0 && h >= k && w >= k => {
                            vec![c, (h - k) / s + 1, (w - k) / s + 1]
                        }
                        _ => {
                            return Err(bad(format!(
                                "window {k} stride {s} does not fit input {x:?}"
                            )));
                        }
                    }
                }
                DeployOp::GlobalAvgPool => match x.as_slice() {
                    &[c, _, _] => vec![c],
                    _ => return Err(bad(format!("needs a (C, H, W) input, got {x:?}"))),
                },
                DeployOp::Flatten => vec![x.iter().product()],
                DeployOp::SubsamplePad { stride, cout } => {
                    let (s, co) = (*stride as usize, *cout as usize);
                    match x.as_slice() {
                        &[c, h, w] if s > 0 && co >= c && (co - c) % 2 == 0 => {
                            vec![co, h.div_ceil(s), w.div_ceil(s)]
                        }
                        _ => {
                            return Err(bad(format!(
                                "cannot map {x:?} to {co} channels at stride {s}"
                            )));
                        }
                    }
                }
            };
            // Every value fits in memory (a corrupt padding or channel count must not
            // describe a tensor no program could hold).
            if !y
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_some_and(|n| n > 0 && n <= MAX_VALUE_LEN)
            {
                return Err(bad(format!("implausible output shape {y:?}")));
            }
            shapes.push(y);
        }
        let last = shapes.last().unwrap();
        if last != &vec![self.num_classes as usize] {
            return Err(format!(
                "the last value has shape {last:?}, not {} logits",
                self.num_classes
            ));
        }
        Ok(shapes)
    }
}
