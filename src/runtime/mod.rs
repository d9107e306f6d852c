//! Running a deployable model ([`DeployModel`]) with a macro doing its macro operations.
//!
//! Each on-macro layer's weight codes are placed on the macro by the training side's
//! placement ([`MacroSpec::adc_of`]): tile `t` of output channel `co` is column
//! `co mod columns` of array `t mod arrays`, so column `c`'s fixed pattern is the same
//! physical column in training and on the chip. For every tile and group of `columns`
//! output channels the runtime programs that array with the block's codes (counted in
//! [`RunStats::programmings`]: a layer larger than the macro's arrays reprograms them),
//! streams the batch's input codes through it (one call per input-bit cycle) and
//! accumulates the readouts as the format states:
//!
//! `y = scale · (s_x · Σ_t Σ_c 2^(c·b) · step · j_{t,c} + lo · Σ_valid w) + shift`
//!
//! The digital layers and ops run on the engine's kernels. Batches are the training
//! side's evaluation batches ([`EVAL_BATCH`] images, batch `b` is pass `b`), so that a
//! simulated chip ([`EmMacro`]) draws what `dnat eval --cim` draws for the same
//! operation. Deterministic: the same images, backend and pass give the same logits at
//! any thread count.

mod backend;

pub use backend::{EmMacro, IdealMacro, MacroBackend, Operation, parse as parse_backend};

use crate::data::{Batcher, Split};
use crate::engine::ops::{self, Conv2dCfg};
use crate::engine::{Tape, Tensor, Var};
use crate::io::deploy::{Body, DeployLayer, DeployModel, DeployOp};
use crate::train::eval::{EVAL_BATCH, count_correct};
use crate::{Error, Result};
use rayon::prelude::*;
use std::time::Instant;

/// What a run did: images, macro operations, array programmings, and where the time went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunStats {
    /// Images run.
    pub images: u64,
    /// Macro operations read (one per column readout of a cycle).
    pub macro_ops: u64,
    /// Arrays programmed.
    pub programmings: u64,
    /// Seconds spent in the backend's `program` and `compute`.
    pub backend_s: f64,
    /// Seconds in all.
    pub total_s: f64,
}

/// A deployable model ready to run: its shapes checked and, per on-macro layer, its CIM
/// layer id (the order of the graph's on-macro layers, which is the order they were
/// mapped onto the macro).
pub struct Runtime<'m> {
    model: &'m DeployModel,
    shapes: Vec<Vec<usize>>,
    layer_ids: Vec<Option<u32>>,
    /// What the runs so far did.
    pub stats: RunStats,
}

impl<'m> Runtime<'m> {
    /// The runtime of `model` (its graph checked shape by shape).
    pub fn new(model: &'m DeployModel) -> Result<Self> {
        model.macro_spec.validate()?;
        let shapes = model.shapes().map_err(Error::invalid)?;
        let mut next = 0u32;
        let layer_ids = model
            .nodes
            .iter()
            .map(|n| match &n.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) if matches!(l.body, Body::Macro { .. }) => {
                    next += 1;
                    Some(next - 1)
                }
                _ => None,
            })
            .collect();
        Ok(Runtime { model, shapes, layer_ids, stats: RunStats::default() })
    }

    /// The logits `[n][classes]` of `n` normalised images `[n][C·H·W]`, the macro
    /// operations done by `backend` as pass `pass`.
    pub fn run(
        &mut self,
        backend: &mut dyn MacroBackend,
        images: &[f32],
        pass: u64,
    ) -> Result<Vec<f32>> {
        let t0 = Instant::now();
        let per: usize = self.shapes[0].iter().product();
        if per == 0 || !images.len().is_multiple_of(per) || images.is_empty() {
            return Err(Error::invalid(format!(
                "deployable model '{}': {} values are not whole images of {:?} = {per} values",
                self.model.arch,
                images.len(),
                self.shapes[0]
            )));
        }
        let n = images.len() / per;
        let mut tape = Tape::new(false);
        let mut shape = vec![n];
        shape.extend(&self.shapes[0]);
        let mut values: Vec<Var> = vec![tape.constant(Tensor::new(&shape, images.to_vec()))];
        for (i, node) in self.model.nodes.iter().enumerate() {
            let x = values[node.inputs[0] as usize];
            let y = match &node.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) => match &l.body {
                    Body::Macro { .. } => {
                        let out_shape = self.shapes[i + 1].clone();
                        let id = self.layer_ids[i].expect("numbered above");
                        let y =
                            self.macro_layer(backend, l, id, tape.value(x), &out_shape, pass)?;
                        tape.constant(y)
                    }
                    Body::Digital { weight, bias } => {
                        let (co, ci, k) = (l.cout as usize, l.cin as usize, l.kernel as usize);
                        let b = tape.constant(Tensor::new(&[co], bias.clone()));
                        if matches!(node.op, DeployOp::Linear(_)) {
                            let w = tape.constant(Tensor::new(&[co, ci], weight.clone()));
                            ops::linear(&mut tape, x, w, Some(b))?
                        } else {
                            let w = tape.constant(Tensor::new(&[co, ci, k, k], weight.clone()));
                            let cfg = Conv2dCfg {
                                stride: l.stride as usize,
                                padding: l.padding as usize,
                            };
                            ops::conv2d(&mut tape, x, w, Some(b), cfg)?
                        }
                    }
                },
                DeployOp::BatchNorm { scale, shift } => {
                    let xv = tape.value(x);
                    let per = xv.data().len() / (n * scale.len());
                    let data = xv
                        .data()
                        .iter()
                        .enumerate()
                        .map(|(j, v)| {
                            let c = j / per % scale.len();
                            scale[c] * v + shift[c]
                        })
                        .collect();
                    let t = Tensor::new(xv.shape(), data);
                    tape.constant(t)
                }
                DeployOp::Relu => ops::relu(&mut tape, x),
                DeployOp::Add => ops::add(&mut tape, x, values[node.inputs[1] as usize]),
                DeployOp::MaxPool { kernel, stride } => {
                    ops::max_pool2d(&mut tape, x, *kernel as usize, *stride as usize)?
                }
                DeployOp::GlobalAvgPool => ops::global_avg_pool(&mut tape, x)?,
                DeployOp::Flatten => ops::flatten(&mut tape, x)?,
                DeployOp::SubsamplePad { stride, cout } => {
                    ops::subsample_pad_channels(&mut tape, x, *stride as usize, *cout as usize)?
                }
            };
            values.push(y);
        }
        let logits = tape.value(*values.last().expect("the input at least")).data().to_vec();
        self.stats.images += n as u64;
        self.stats.total_s += t0.elapsed().as_secs_f64();
        Ok(logits)
    }

    /// One on-macro layer over the batch `x` (`[N, cin, H, W]` or `[N, cin]`).
    fn macro_layer(
        &mut self,
        backend: &mut dyn MacroBackend,
        l: &DeployLayer,
        layer: u32,
        x: &Tensor,
        out_shape: &[usize],
        pass: u64,
    ) -> Result<Tensor> {
        let Body::Macro { lo, hi, tiles, codes, scale, shift, .. } = &l.body else {
            unreachable!("called for layers on the macro")
        };
        let spec = &self.model.macro_spec;
        let (rows, cols, arrays) = (spec.rows, spec.columns, spec.arrays);
        let (n, cin, cout) = (x.shape()[0], l.cin as usize, l.cout as usize);
        let (h, w) = if x.shape().len() == 4 { (x.shape()[2], x.shape()[3]) } else { (1, 1) };
        let (oh, ow) =
            (out_shape.get(1).copied().unwrap_or(1), out_shape.get(2).copied().unwrap_or(1));
        let (kern, s, p) = (l.kernel as usize, l.stride as usize, l.padding as isize);
        let (k, pixels, tiles) = (l.k(), oh * ow, *tiles as usize);
        let elements = n * pixels;
        // Input index (within one image) of reduction row kk at output pixel `pix`.
        let at = |kk: usize, pix: usize| {
            let (ci, ky, kx) = (kk / (kern * kern), kk / kern % kern, kk % kern);
            let (oy, ox) = (pix / ow, pix % ow);
            let (iy, ix) =
                ((oy * s) as isize + ky as isize - p, (ox * s) as isize + kx as isize - p);
            (kk < k && iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize)
                .then(|| (ci * h + iy as usize) * w + ix as usize)
        };
        // E-PACT: the input codes of every image.
        let s_x = (hi - lo) / spec.input_max() as f32;
        let image_len = cin * h * w;
        let q: Vec<u16> = x
            .data()
            .par_iter()
            .map(|&v| ((v.clamp(*lo, *hi) - lo) / s_x).round_ties_even() as u16)
            .collect();
        let (b, cycles) = (spec.input_bits_per_cycle, spec.cycles() as usize);
        let mask = (1u32 << b) - 1;
        // Where each tile's patch rows read an image: `index[(t·pixels + pix)·rows + r]`,
        // the input's position in the image, or NONE (padding, or a row past K).
        const NONE: u32 = u32::MAX;
        let index: Vec<u32> = (0..tiles * pixels * rows)
            .into_par_iter()
            .map(|i| {
                let (t, pix, r) = (i / (pixels * rows), i / rows % pixels, i % rows);
                at(t * rows + r, pix).map_or(NONE, |j| j as u32)
            })
            .collect();
        let mut readouts = vec![0.0f32; cout * elements];
        let (mut inputs, mut out) = (vec![0u16; elements * rows], vec![0i32; elements * cols]);
        let mut block = vec![0i8; rows * cols];
        for t in 0..tiles {
            let array = t % arrays;
            for g in 0..cout.div_ceil(cols) {
                for (r, row) in block.chunks_exact_mut(cols).enumerate() {
                    for (c, wc) in row.iter_mut().enumerate() {
                        let co = g * cols + c;
                        *wc = if co < cout { codes[(co * tiles + t) * rows + r] } else { 0 };
                    }
                }
                let tb = Instant::now();
                backend
                    .program(array, &block)
                    .map_err(|e| self.failed(backend, l, "program", e))?;
                self.stats.backend_s += tb.elapsed().as_secs_f64();
                self.stats.programmings += 1;
                for c in 0..cycles {
                    let shift_bits = c as u32 * b;
                    let index = &index[t * pixels * rows..(t + 1) * pixels * rows];
                    inputs.par_chunks_mut(pixels * rows).enumerate().for_each(|(img, chunk)| {
                        let qi = &q[img * image_len..(img + 1) * image_len];
                        for (slot, &i) in chunk.iter_mut().zip(index) {
                            *slot = if i == NONE {
                                0
                            } else {
                                ((qi[i as usize] as u32 >> shift_bits) & mask) as u16
                            };
                        }
                    });
                    let op = Operation {
                        layer,
                        tile: t as u32,
                        cycle: c as u32,
                        first_channel: (g * cols) as u32,
                        channels: cout as u32,
                        elements: elements as u64,
                        first_element: 0,
                        pass,
                    };
                    let tb = Instant::now();
                    backend
                        .compute(array, &op, &inputs, &mut out)
                        .map_err(|e| self.failed(backend, l, "compute", e))?;
                    self.stats.backend_s += tb.elapsed().as_secs_f64();
                    let used = cols.min(cout - g * cols);
                    self.stats.macro_ops += (elements * used) as u64;
                    if let Some(bad) = out.iter().find(|&&j| j < spec.adc.kmin || j > spec.adc.kmax)
                    {
                        return Err(Error::invalid(format!(
                            "backend '{}', layer '{}', tile {t}, cycle {c}: ADC code {bad} is outside the ADC's {}..={}",
                            backend.name(),
                            l.name,
                            spec.adc.kmin,
                            spec.adc.kmax
                        )));
                    }
                    // In the CIM layers' order: tiles, then cycles, each readout weighted by
                    // its cycle's place value in partial-sum units.
                    let weight = 2f32.powi(shift_bits as i32) * spec.adc.step;
                    // `readouts[e][co]`: one element's channels side by side, as `out` holds them.
                    readouts.par_chunks_mut(cout).zip(out.par_chunks(cols)).for_each(|(acc, o)| {
                        for (a, &j) in acc[g * cols..g * cols + used].iter_mut().zip(o) {
                            *a += weight * j as f32;
                        }
                    });
                }
            }
        }
        // The zero-point sums Σ_valid w of each output channel and pixel, in the format's
        // order (tiles, then rows).
        let zero_point: Vec<f32> = (0..cout * pixels)
            .into_par_iter()
            .map(|i| {
                let (co, pix) = (i / pixels, i % pixels);
                let mut z = 0.0f32;
                for t in 0..tiles {
                    for r in 0..rows {
                        if index[(t * pixels + pix) * rows + r] != NONE {
                            z += codes[(co * tiles + t) * rows + r] as f32;
                        }
                    }
                }
                z
            })
            .collect();
        let mut y = vec![0.0f32; n * cout * pixels];
        y.par_chunks_mut(cout * pixels).enumerate().for_each(|(img, yi)| {
            for (i, v) in yi.iter_mut().enumerate() {
                let (co, pix) = (i / pixels, i % pixels);
                let r = readouts[(img * pixels + pix) * cout + co];
                *v = scale[co] * (s_x * r + lo * zero_point[i]) + shift[co];
            }
        });
        let mut shape = vec![n];
        shape.extend(out_shape);
        Ok(Tensor::new(&shape, y))
    }

    /// A backend's error, naming the backend, the layer and the operation.
    fn failed(&self, backend: &dyn MacroBackend, l: &DeployLayer, what: &str, e: Error) -> Error {
        Error::invalid(format!("backend '{}', layer '{}', {what}: {e}", backend.name(), l.name))
    }

    /// Accuracy over a split, in the training side's evaluation batches (batch `b` is
    /// pass `b`): percent correct and the run's statistics.
    pub fn evaluate(
        &mut self,
        backend: &mut dyn MacroBackend,
        split: &Split,
    ) -> Result<(f64, RunStats)> {
        let before = self.stats;
        let batcher = Batcher::new(split, self.model.norm, None, 0);
        let classes = self.model.num_classes as usize;
        let idx: Vec<usize> = (0..split.len()).collect();
        let mut correct = 0;
        for (b, chunk) in idx.chunks(EVAL_BATCH).enumerate() {
            let (x, labels) = batcher.batch(chunk, 0);
            let logits = self.run(backend, x.data(), b as u64)?;
            correct += count_correct(&logits, classes, &labels);
        }
        let s = self.stats;
        let run = RunStats {
            images: s.images - before.images,
            macro_ops: s.macro_ops - before.macro_ops,
            programmings: s.programmings - before.programmings,
            backend_s: s.backend_s - before.backend_s,
            total_s: s.total_s - before.total_s,
        };
        Ok((100.0 * correct as f64 / split.len().max(1) as f64, run))
    }
}

#[cfg(test)]
mod tests;
