//! The reference interpreter: [`DeployModel::run`] computes an image's logits from the
//! file alone, and [`DeployModel::shapes`] checks the graph value by value.

use super::format::kind_name;
use super::{Body, DeployModel, DeployOp, MAX_VALUE_LEN};
use crate::{Error, Result};

impl DeployModel {
    /// The logits of one image (C, H, W, normalised as `norm` says) computed from the
    /// file alone with the formulas documented above, on an ideal ADC (no read noise):
    /// a reference for a deployment toolchain, and the check that an export states the
    /// whole network (`tests`: within float-summation order of the network itself).
    pub fn run(&self, image: &[f32]) -> Result<Vec<f32>> {
        let m = self;
        let spec = &m.macro_spec;
        let shapes = m.shapes().map_err(Error::invalid)?;
        let want: usize = shapes[0].iter().product();
        if image.len() != want {
            return Err(Error::invalid(format!(
                "deployable model: an image of {} values, the model takes {:?} = {want}",
                image.len(),
                shapes[0]
            )));
        }
        let mut values: Vec<Vec<f32>> = vec![image.to_vec()];
        for (i, n) in m.nodes.iter().enumerate() {
            let x = &values[n.inputs[0] as usize];
            let xs = &shapes[n.inputs[0] as usize];
            let y: Vec<f32> = match &n.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) => {
                    let (h, w) = if xs.len() == 3 { (xs[1], xs[2]) } else { (1, 1) };
                    let (oh, ow) = (
                        shapes[i + 1].get(1).copied().unwrap_or(1),
                        shapes[i + 1].get(2).copied().unwrap_or(1),
                    );
                    let (k, kern, s, p) =
                        (l.k(), l.kernel as usize, l.stride as usize, l.padding as isize);
                    // Input index of reduction row kk at output (oy, ox), None on padding.
                    let at = |kk: usize, oy: usize, ox: usize| {
                        let (ci, ky, kx) = (kk / (kern * kern), kk / kern % kern, kk % kern);
                        let (iy, ix) = (
                            (oy * s) as isize + ky as isize - p,
                            (ox * s) as isize + kx as isize - p,
                        );
                        (iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize)
                            .then(|| (ci * h + iy as usize) * w + ix as usize)
                    };
                    let mut y = vec![0.0f32; l.cout as usize * oh * ow];
                    for co in 0..l.cout as usize {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                y[(co * oh + oy) * ow + ox] = match &l.body {
                                    Body::Macro { lo, hi, tiles, codes, scale, shift, .. } => {
                                        let s_x = (hi - lo) / spec.input_max() as f32;
                                        let (mut readouts, mut zero_point) = (0.0f32, 0.0f32);
                                        for t in 0..*tiles as usize {
                                            let mut psum = 0.0f32;
                                            for r in 0..spec.rows {
                                                let kk = t * spec.rows + r;
                                                let Some(idx) = at(kk, oy, ox).filter(|_| kk < k)
                                                else {
                                                    continue;
                                                };
                                                let q = ((x[idx].clamp(*lo, *hi) - lo) / s_x)
                                                    .round_ties_even();
                                                let wc = codes
                                                    [(co * *tiles as usize + t) * spec.rows + r]
                                                    as f32;
                                                psum += q * wc;
                                                zero_point += wc;
                                            }
                                            readouts += spec.adc.code(psum) as f32 * spec.adc.step;
                                        }
                                        scale[co] * (s_x * readouts + lo * zero_point) + shift[co]
                                    }
                                    Body::Digital { weight, bias } => {
                                        let dot: f64 = (0..k)
                                            .filter_map(|kk| {
                                                at(kk, oy, ox).map(|idx| {
                                                    weight[co * k + kk] as f64 * x[idx] as f64
                                                })
                                            })
                                            .sum();
                                        (dot + bias[co] as f64) as f32
                                    }
                                };
                            }
                        }
                    }
                    y
                }
                DeployOp::BatchNorm { scale, shift } => {
                    let per = x.len() / scale.len();
                    x.iter().enumerate().map(|(j, v)| scale[j / per] * v + shift[j / per]).collect()
                }
                DeployOp::Relu => x.iter().map(|v| v.max(0.0)).collect(),
                DeployOp::Add => {
                    x.iter().zip(&values[n.inputs[1] as usize]).map(|(a, b)| a + b).collect()
                }
                DeployOp::MaxPool { kernel, stride } => {
                    let (c, h, w) = (xs[0], xs[1], xs[2]);
                    let (k, s, oh, ow) =
                        (*kernel as usize, *stride as usize, shapes[i + 1][1], shapes[i + 1][2]);
                    let mut y = vec![f32::NEG_INFINITY; c * oh * ow];
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let v = x[(ch * h + oy * s + ky) * w + ox * s + kx];
                                        y[(ch * oh + oy) * ow + ox] =
                                            y[(ch * oh + oy) * ow + ox].max(v);
                                    }
                                }
                            }
                        }
                    }
                    y
                }
                DeployOp::GlobalAvgPool => x
                    .chunks(xs[1] * xs[2])
                    .map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / c.len() as f64) as f32)
                    .collect(),
                DeployOp::Flatten => x.clone(),
                DeployOp::SubsamplePad { stride, cout } => {
                    let (c, h, w, s) = (xs[0], xs[1], xs[2], *stride as usize);
                    let (oh, ow, pad) = (h.div_ceil(s), w.div_ceil(s), (*cout as usize - c) / 2);
                    let mut y = vec![0.0f32; *cout as usize * oh * ow];
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                y[((ch + pad) * oh + oy) * ow + ox] =
                                    x[(ch * h + oy * s) * w + ox * s];
                            }
                        }
                    }
                    y
                }
            };
            values.push(y);
        }
        Ok(values.pop().expect("the input value at least"))
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
                DeployOp::BatchNorm { scale, .. } => {
                    if x.first() != Some(&scale.len()) {
                        return Err(bad(format!(
                            "{} channels do not fit input {x:?}",
                            scale.len()
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
