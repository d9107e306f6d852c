//! The file's payload: [`DeployModel::to_bytes`] writes the layout of the module docs,
//! [`DeployModel::from_bytes`] reads it back and checks every field.

use super::{BatchNorm, Body, DeployLayer, DeployModel, DeployNode, DeployOp, MAGIC, VERSION};
use crate::cim::MacroSpec;
use crate::cim::macro_spec::Adc;
use crate::data::Normalize;
use crate::io::checkpoint::{count, get_str, put_str};
use crate::io::framed;
use byteorder::{LittleEndian as LE, ReadBytesExt, WriteBytesExt};
use std::io::Cursor;

impl DeployModel {
    /// The file's bytes: the payload of the module docs in the shared frame (magic
    /// `DNATDEPL`, version 3, length, CRC-32, zlib).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut p = Vec::new();
        put_str(&mut p, &self.arch);
        p.write_u32::<LE>(self.num_classes).unwrap();
        self.input.iter().for_each(|&v| p.write_u32::<LE>(v).unwrap());
        for v in self.norm.mean.iter().chain(&self.norm.std) {
            p.write_f32::<LE>(*v).unwrap();
        }
        let m = &self.macro_spec;
        put_str(&mut p, &m.name);
        for v in [m.rows as u32, m.input_bits, m.weight_bits, m.input_bits_per_cycle] {
            p.write_u32::<LE>(v).unwrap();
        }
        p.write_i32::<LE>(m.adc.kmin).unwrap();
        p.write_i32::<LE>(m.adc.kmax).unwrap();
        p.write_f32::<LE>(m.adc.step).unwrap();
        p.write_u32::<LE>(m.arrays as u32).unwrap();
        p.write_u32::<LE>(m.columns as u32).unwrap();
        p.write_u32::<LE>(self.nodes.len() as u32).unwrap();
        let f32s =
            |p: &mut Vec<u8>, v: &[f32]| v.iter().for_each(|x| p.write_f32::<LE>(*x).unwrap());
        let batchnorm = |p: &mut Vec<u8>, bn: &BatchNorm| {
            p.write_f32::<LE>(bn.eps).unwrap();
            [&bn.gamma, &bn.beta, &bn.mean, &bn.var].iter().for_each(|v| f32s(p, v));
        };
        let optional = |p: &mut Vec<u8>, bn: &Option<BatchNorm>| {
            p.write_u8(bn.is_some() as u8).unwrap();
            bn.iter().for_each(|bn| batchnorm(p, bn));
        };
        for n in &self.nodes {
            p.write_u8(n.op.kind()).unwrap();
            p.write_u8(n.inputs.len() as u8).unwrap();
            n.inputs.iter().for_each(|&v| p.write_u32::<LE>(v).unwrap());
            let u32s =
                |p: &mut Vec<u8>, v: &[u32]| v.iter().for_each(|x| p.write_u32::<LE>(*x).unwrap());
            match &n.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) => {
                    put_str(&mut p, &l.name);
                    if matches!(n.op, DeployOp::Conv(_)) {
                        u32s(&mut p, &[l.cout, l.cin, l.kernel, l.stride, l.padding]);
                    } else {
                        u32s(&mut p, &[l.cout, l.cin]);
                    }
                    match &l.body {
                        Body::Macro { lo, hi, tiles, codes, weight_scale, bias, batchnorm: bn } => {
                            p.write_u8(1).unwrap();
                            f32s(&mut p, &[*lo, *hi]);
                            p.write_u32::<LE>(*tiles).unwrap();
                            p.extend(codes.iter().map(|&c| c as u8));
                            f32s(&mut p, weight_scale);
                            f32s(&mut p, bias);
                            optional(&mut p, bn);
                            let (scale, shift) = l.folded().expect("on the macro");
                            f32s(&mut p, &scale);
                            f32s(&mut p, &shift);
                        }
                        Body::Digital { weight, bias, batchnorm: bn } => {
                            p.write_u8(0).unwrap();
                            f32s(&mut p, weight);
                            f32s(&mut p, bias);
                            optional(&mut p, bn);
                        }
                    }
                }
                DeployOp::BatchNorm(bn) => {
                    p.write_u32::<LE>(bn.channels() as u32).unwrap();
                    batchnorm(&mut p, bn);
                }
                DeployOp::MaxPool { kernel, stride } => u32s(&mut p, &[*kernel, *stride]),
                DeployOp::SubsamplePad { stride, cout } => u32s(&mut p, &[*stride, *cout]),
                DeployOp::Relu | DeployOp::Add | DeployOp::GlobalAvgPool | DeployOp::Flatten => {}
            }
        }
        framed::encode(MAGIC, VERSION, &p)
    }

    /// Reads a model from a file's bytes, checking the frame, every field and every shape;
    /// the error message says what is wrong (magic, version, corruption, a node that does not fit).
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (version, payload) = framed::decode(bytes, MAGIC, "deployable model", VERSION)?;
        parse(&payload, version).map_err(|e| format!("corrupt deployable model: {e}"))
    }
}

pub(super) fn kind_name(kind: u8) -> &'static str {
    [
        "conv",
        "linear",
        "batchnorm",
        "relu",
        "add",
        "max-pool",
        "global average pool",
        "flatten",
        "subsample + channel padding",
    ]
    .get(kind as usize)
    .copied()
    .unwrap_or("unknown")
}

/// The payload of a file of format `version` (1 and 2 share a layout: the fold alone).
fn parse(p: &[u8], version: u32) -> std::result::Result<DeployModel, String> {
    let folds_only = version < 3;
    const END: &str = "unexpected end of payload";
    let mut c = Cursor::new(p);
    let arch = get_str(&mut c)?;
    let num_classes = c.read_u32::<LE>().map_err(|_| END)?;
    let mut input = [0u32; 3];
    c.read_u32_into::<LE>(&mut input).map_err(|_| END)?;
    if input.iter().any(|&v| v == 0 || v > 1 << 16) {
        return Err(format!("implausible input shape {input:?}"));
    }
    let mut nv = [0f32; 6];
    c.read_f32_into::<LE>(&mut nv).map_err(|_| END)?;
    let norm = Normalize { mean: [nv[0], nv[1], nv[2]], std: [nv[3], nv[4], nv[5]] };
    let name = get_str(&mut c)?;
    let mut u = [0u32; 4];
    c.read_u32_into::<LE>(&mut u).map_err(|_| END)?;
    let adc = Adc {
        kmin: c.read_i32::<LE>().map_err(|_| END)?,
        kmax: c.read_i32::<LE>().map_err(|_| END)?,
        step: c.read_f32::<LE>().map_err(|_| END)?,
    };
    // Version 2 did not state the array organisation (which ADC reads which tile): the
    // default's stands in.
    let d = MacroSpec::default();
    let (arrays, columns) = if folds_only {
        (d.arrays, d.columns)
    } else {
        let a = c.read_u32::<LE>().map_err(|_| END)? as usize;
        (a, c.read_u32::<LE>().map_err(|_| END)? as usize)
    };
    let macro_spec = MacroSpec {
        name,
        rows: u[0] as usize,
        input_bits: u[1],
        weight_bits: u[2],
        input_bits_per_cycle: u[3],
        adc,
        arrays,
        columns,
    };
    macro_spec.validate().map_err(|e| e.to_string())?;
    let n = count(&mut c)?;
    let mut nodes = Vec::with_capacity(n.min(1 << 16));
    // Reads `n` f32 after checking they are there (a corrupt count must not allocate wildly).
    let f32s = |c: &mut Cursor<&[u8]>, n: usize| -> std::result::Result<Vec<f32>, String> {
        if n.checked_mul(4).is_none_or(|b| b as u64 > c.get_ref().len() as u64 - c.position()) {
            return Err(format!("{n} values run past the end of the payload"));
        }
        let mut v = vec![0f32; n];
        c.read_f32_into::<LE>(&mut v).map_err(|_| END)?;
        Ok(v)
    };
    let u32 = |c: &mut Cursor<&[u8]>| c.read_u32::<LE>().map_err(|_| END.to_string());
    let batchnorm = |c: &mut Cursor<&[u8]>, ch: usize| -> std::result::Result<BatchNorm, String> {
        let eps = c.read_f32::<LE>().map_err(|_| END)?;
        let (gamma, beta) = (f32s(c, ch)?, f32s(c, ch)?);
        let (mean, var) = (f32s(c, ch)?, f32s(c, ch)?);
        // Written so that a NaN fails too.
        let sound = eps >= 0.0 && var.iter().all(|&v| v + eps > 0.0);
        if !sound {
            return Err(format!("batchnorm with eps {eps} and a variance ≤ −eps (or NaN)"));
        }
        Ok(BatchNorm { gamma, beta, mean, var, eps })
    };
    let optional =
        |c: &mut Cursor<&[u8]>, ch: usize, layer: &str| match c.read_u8().map_err(|_| END)? {
            0 => Ok(None),
            1 => batchnorm(c, ch).map(Some).map_err(|e| format!("layer {layer}: {e}")),
            other => Err(format!("layer {layer}: has_batchnorm flag {other}")),
        };
    for i in 0..n {
        let kind = c.read_u8().map_err(|_| END)?;
        let arity = c.read_u8().map_err(|_| END)? as usize;
        let mut inputs = Vec::with_capacity(arity);
        for _ in 0..arity {
            let v = u32(&mut c)?;
            if v as usize > i {
                return Err(format!("node {i} reads value {v}, which is not computed before it"));
            }
            inputs.push(v);
        }
        let op = match kind {
            0 | 1 => {
                let name = get_str(&mut c)?;
                let [cout, cin, kernel, stride, padding] = if kind == 0 {
                    [u32(&mut c)?, u32(&mut c)?, u32(&mut c)?, u32(&mut c)?, u32(&mut c)?]
                } else {
                    [u32(&mut c)?, u32(&mut c)?, 1, 1, 0]
                };
                let k = (cin as u64) * (kernel as u64) * (kernel as u64);
                let (cout_u, k_u) = (cout as usize, k as usize);
                if cout == 0 || k == 0 || k > 1 << 28 || cout > 1 << 20 {
                    return Err(format!("layer {name}: implausible shape {cout}×{k}"));
                }
                let body = match c.read_u8().map_err(|_| END)? {
                    1 => {
                        let b = f32s(&mut c, 2)?;
                        let tiles = u32(&mut c)?;
                        if tiles as usize != macro_spec.tiles(k_u) {
                            return Err(format!(
                                "layer {name}: {tiles} tiles, but K = {k} needs {}",
                                macro_spec.tiles(k_u)
                            ));
                        }
                        let n_codes = cout_u * tiles as usize * macro_spec.rows;
                        if n_codes as u64 > c.get_ref().len() as u64 - c.position() {
                            return Err(format!(
                                "layer {name}: weight codes run past the end of the payload"
                            ));
                        }
                        let start = c.position() as usize;
                        let codes: Vec<i8> =
                            c.get_ref()[start..start + n_codes].iter().map(|&b| b as i8).collect();
                        c.set_position((start + n_codes) as u64);
                        let (wmin, wmax) =
                            (macro_spec.weight_min() as i8, macro_spec.weight_max() as i8);
                        if let Some(bad) = codes.iter().find(|&&w| w < wmin || w > wmax) {
                            return Err(format!(
                                "layer {name}: weight code {bad} outside {wmin}..={wmax}"
                            ));
                        }
                        let s_w = f32s(&mut c, cout_u)?;
                        let (lo, hi) = (b[0], b[1]);
                        if folds_only {
                            // The fold alone (scale = a·s_w, shift = a·bias + b) stands in
                            // for the weight scale and the bias.
                            let (weight_scale, bias) =
                                (f32s(&mut c, cout_u)?, f32s(&mut c, cout_u)?);
                            Body::Macro {
                                lo,
                                hi,
                                tiles,
                                codes,
                                weight_scale,
                                bias,
                                batchnorm: None,
                            }
                        } else {
                            let weight_scale = s_w;
                            let bias = f32s(&mut c, cout_u)?;
                            let batchnorm = optional(&mut c, cout_u, &name)?;
                            let body =
                                Body::Macro { lo, hi, tiles, codes, weight_scale, bias, batchnorm };
                            let (scale, shift) = (f32s(&mut c, cout_u)?, f32s(&mut c, cout_u)?);
                            let l = DeployLayer {
                                name: name.clone(),
                                cout,
                                cin,
                                kernel,
                                stride,
                                padding,
                                body,
                            };
                            if l.folded() != Some((scale, shift)) {
                                return Err(format!(
                                    "layer {name}: the folded scale and shift are not the fold of its weight scale, bias and batchnorm"
                                ));
                            }
                            l.body
                        }
                    }
                    0 => {
                        let (weight, bias) = (f32s(&mut c, cout_u * k_u)?, f32s(&mut c, cout_u)?);
                        let batchnorm =
                            if folds_only { None } else { optional(&mut c, cout_u, &name)? };
                        Body::Digital { weight, bias, batchnorm }
                    }
                    other => return Err(format!("layer {name}: on_macro flag {other}")),
                };
                let l = DeployLayer { name, cout, cin, kernel, stride, padding, body };
                if kind == 0 { DeployOp::Conv(l) } else { DeployOp::Linear(l) }
            }
            2 => {
                let ch = u32(&mut c)? as usize;
                DeployOp::BatchNorm(if folds_only {
                    // `y = scale·x + shift`: γ = scale, β = shift over mean 0, variance 1
                    // and ε 0 (inv = 1 exactly) computes the same numbers.
                    let (gamma, beta) = (f32s(&mut c, ch)?, f32s(&mut c, ch)?);
                    BatchNorm { gamma, beta, mean: vec![0.0; ch], var: vec![1.0; ch], eps: 0.0 }
                } else {
                    batchnorm(&mut c, ch).map_err(|e| format!("node {i}: {e}"))?
                })
            }
            3 => DeployOp::Relu,
            4 => DeployOp::Add,
            5 => DeployOp::MaxPool { kernel: u32(&mut c)?, stride: u32(&mut c)? },
            6 => DeployOp::GlobalAvgPool,
            7 => DeployOp::Flatten,
            8 => DeployOp::SubsamplePad { stride: u32(&mut c)?, cout: u32(&mut c)? },
            other => return Err(format!("node {i}: unknown kind {other}")),
        };
        if inputs.len() != op.arity() {
            return Err(format!(
                "node {i} ({}) reads {} values, not {}",
                kind_name(kind),
                inputs.len(),
                op.arity()
            ));
        }
        nodes.push(DeployNode { inputs, op });
    }
    if c.position() as usize != p.len() {
        return Err(format!("{} bytes after the last node", p.len() - c.position() as usize));
    }
    if nodes.is_empty() {
        return Err("no nodes".into());
    }
    let m = DeployModel { arch, num_classes, input, norm, macro_spec, nodes };
    m.shapes()?;
    Ok(m)
}
