//! Running a deployable model ([`DeployModel`]) with a macro doing its macro operations.
//!
//! Each on-macro layer's weight codes are placed on the macro by the training side's
//! placement ([`crate::cim::MacroSpec::adc_of`]): tile `t` of output channel `co` is
//! column `co mod columns` of array `t mod arrays`, so column `c`'s fixed pattern is the
//! same physical column in training and on the chip. For every tile and group of
//! `columns` output channels the runtime programs that array with the block's codes
//! (counted in [`RunStats::programmings`]: a layer larger than the macro's arrays
//! reprograms them), streams the batch's input codes through it ([`OPS_PER_CALL`]
//! operations per call, one call per input-bit cycle) and accumulates the readouts as
//! the CIM layers do:
//!
//! `z = s_w · (s_x · Σ_t Σ_c 2^(c·b) · step · j_{t,c} + lo · Σ_valid w) + bias`,
//! then the layer's batchnorm, if it has one.
//!
//! A macro that can be copied ([`MacroBackend::replicate`]: the simulated one, not a
//! board) runs a pass in parts of a few images side by side instead, each part on its
//! own copy and its own thread, read in small calls whose codes stay in that thread's
//! cache; the copies read what the macro reads, so the logits are the same.
//!
//! The digital layers and ops run on the engine's kernels, in the network's order of
//! float operations: on the ideal macro the runtime computes the network's logits to the
//! bit. Batches are the training side's evaluation batches ([`EVAL_BATCH`] images,
//! batch `b` is pass `b`), so that a simulated chip ([`SimulatedMacro::chip`]) draws
//! what `dnat eval --cim` draws for the same operation. Deterministic: the same images,
//! backend and pass give the same logits at any thread count.

mod backend;
#[cfg(unix)]
mod exec;

pub use backend::{MacroBackend, Operation, SimulatedMacro, parse as parse_backend};
#[cfg(unix)]
pub use exec::{ExecMacro, PROTOCOL_VERSION};

use crate::cim::quant::ActGrid;
use crate::data::{Batcher, Split};
use crate::engine::ops::conv2d::ConvGeom;
use crate::engine::ops::{self, Conv2dCfg};
use crate::engine::{Tape, Tensor, Var};
use crate::io::deploy::{BatchNorm, Body, DeployLayer, DeployModel, DeployOp};
use crate::nn::layers::Moments;
use crate::train::eval::{EVAL_BATCH, EvalResult, count_correct};
use crate::train::recalibrate::{RecalImages, Recalibration};
use crate::{Error, Result};
use rayon::prelude::*;
use std::sync::Arc;
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

impl RunStats {
    /// Adds what a piece of a run did (its operations, programmings and times).
    fn add(&mut self, o: RunStats) {
        self.images += o.images;
        self.macro_ops += o.macro_ops;
        self.programmings += o.programmings;
        self.backend_s += o.backend_s;
        self.total_s += o.total_s;
    }
}

impl std::ops::Sub for RunStats {
    type Output = RunStats;
    fn sub(self, o: RunStats) -> RunStats {
        RunStats {
            images: self.images - o.images,
            macro_ops: self.macro_ops - o.macro_ops,
            programmings: self.programmings - o.programmings,
            backend_s: self.backend_s - o.backend_s,
            total_s: self.total_s - o.total_s,
        }
    }
}

/// Operations the runtime hands the backend per call: enough that a call's overhead (a
/// pipe's round trip, for an external process) is small against its work, few enough
/// that its input and output codes stay in cache.
pub const OPS_PER_CALL: usize = 65536;

/// An on-macro layer's placement, worked out once: how its patch rows read an image,
/// its zero-point sums, its weight blocks and its input grid.
struct Placed {
    /// The CIM layer id (the order the graph's on-macro layers were mapped onto the macro).
    id: u32,
    /// The layer as a convolution of one image (a linear layer: 1 × 1, its features
    /// the channels): where its patch rows read the image's zero-bordered codes.
    geom: ConvGeom,
    /// Tiles along the reduction axis.
    tiles: usize,
    /// Σ of weight codes over the valid rows, `[cout][pixels]`.
    zero_point: Vec<f32>,
    /// The codes of tile `t`, channels `g·columns ..`, `[rows][columns]`: `blocks[t·groups + g]`.
    blocks: Vec<Vec<i8>>,
    /// E-PACT's grid (with its clipping bounds).
    grid: ActGrid,
}

/// The reads of one programmed array in a layer's pass: which codes each row takes and
/// how the operations are numbered.
struct ArrayReads<'a> {
    geom: ConvGeom,
    /// The pass part's input codes, each image laid out with its border.
    bordered: &'a [u16],
    /// Where each row of the array reads (`None`: a row past the layer's reduction axis).
    starts: &'a [Option<usize>],
    /// Input bits per cycle, and whether one cycle takes all of them.
    bits: u32,
    whole: bool,
    /// The operations' descriptor at cycle 0, the part's first element.
    template: Operation,
}

impl ArrayReads<'_> {
    /// Row `r`'s input codes of cycle `cycle` for operations `e0..e0 + dst.len()`: runs of
    /// an output row's pixels, each read from one row of an image's bordered codes.
    fn gather(&self, r: usize, cycle: usize, e0: usize, dst: &mut [u16]) {
        let Some(start) = self.starts[r] else {
            dst.fill(0);
            return;
        };
        let g = &self.geom;
        let (image, wp, ow, oh, stride) = (g.padded_size(), g.padded().1, g.ow, g.oh, g.stride);
        let (shift, mask) = (cycle as u32 * self.bits, (1u32 << self.bits) - 1);
        let code = |v: u16| ((v as u32 >> shift) & mask) as u16;
        let (mut img, pix) = (e0 / g.pixels(), e0 % g.pixels());
        let (mut oy, mut ox) = (pix / ow, pix % ow);
        let mut dst = dst;
        while !dst.is_empty() {
            let run = (ow - ox).min(dst.len());
            let at = img * image + start + oy * stride * wp + ox * stride;
            let (now, rest) = dst.split_at_mut(run);
            if stride == 1 && self.whole {
                // One cycle takes the whole code.
                now.copy_from_slice(&self.bordered[at..at + run]);
            } else if stride == 1 {
                let src = &self.bordered[at..at + run];
                now.iter_mut().zip(src).for_each(|(d, &v)| *d = code(v));
            } else {
                let src = self.bordered[at..].iter().step_by(stride);
                now.iter_mut().zip(src).for_each(|(d, &v)| *d = code(v));
            }
            dst = rest;
            (ox, oy) = (0, oy + 1);
            if oy == oh {
                (oy, img) = (0, img + 1);
            }
        }
    }

    /// The descriptor of cycle `cycle`'s operations from the part's element `e0` on.
    fn operation(&self, cycle: usize, e0: usize) -> Operation {
        let t = &self.template;
        Operation { cycle: cycle as u32, first_element: t.first_element + e0 as u64, ..*t }
    }
}

/// Adds one column's readouts `j`, weighted by their cycle's place value, to its
/// accumulated readouts (assigns them for the layer's first readout).
fn accumulate(acc: &mut [f32], j: &[i32], weight: f32, first: bool) {
    if first {
        acc.iter_mut().zip(j).for_each(|(a, &j)| *a = weight * j as f32);
    } else {
        acc.iter_mut().zip(j).for_each(|(a, &j)| *a += weight * j as f32);
    }
}

/// What went wrong in a batch of reads: the cycle and operations, and the backend's
/// error or the ADC code it gave outside the ADC's range.
struct Fault {
    cycle: usize,
    ops: std::ops::Range<usize>,
    what: FaultKind,
}

enum FaultKind {
    Compute(Error),
    Code(i32),
}

impl Fault {
    fn compute(cycle: usize, e0: usize, m: usize, e: Error) -> Self {
        Fault { cycle, ops: e0..e0 + m, what: FaultKind::Compute(e) }
    }
}

/// Every ADC code within `kmin..=kmax`, or the fault of the first that is not (one pass
/// that vectorises; the bad code is looked for only if there is one).
fn check_codes(
    out: &[i32],
    kmin: i32,
    kmax: i32,
    cycle: usize,
    ops: std::ops::Range<usize>,
) -> std::result::Result<(), Fault> {
    let (lo, hi) = out.iter().fold((i32::MAX, i32::MIN), |(a, b), &j| (a.min(j), b.max(j)));
    if lo >= kmin && hi <= kmax {
        return Ok(());
    }
    let bad = *out.iter().find(|&&j| j < kmin || j > kmax).expect("one is");
    Err(Fault { cycle, ops, what: FaultKind::Code(bad) })
}

/// Images of a pass run together on a macro that is one device (see [`Runtime::run`]).
const IMAGES_PER_PART: usize = 100;

/// Images of a pass each copy of a replicable macro runs at a time
/// ([`MacroBackend::replicate`]), and the operations per call it is read with: a part's
/// codes and readouts stay in its thread's cache.
const IMAGES_PER_REPLICA: usize = 10;
const REPLICA_OPS_PER_CALL: usize = 4096;

/// Where a part of a pass is: the pass, its images, the part's first.
#[derive(Clone, Copy)]
struct Pass {
    pass: u64,
    images: usize,
    first_image: usize,
}

/// How batchnorms normalise in a run: with their running statistics (inference), or with
/// each batch's own while recording them (recalibration, as [`crate::train::recalibrate_bn`]).
enum Norm<'a> {
    Running,
    Batch(&'a mut [Moments]),
}

/// A deployable model ready to run: its shapes checked and each on-macro layer placed.
pub struct Runtime {
    model: Arc<DeployModel>,
    shapes: Vec<Vec<usize>>,
    placed: Vec<Option<Placed>>,
    /// The buffers of a part run on the calling thread.
    scratch: Scratch,
    /// What the runs so far did.
    pub stats: RunStats,
}

/// The buffers a part of a pass is run with, reused from layer to layer and part to
/// part (a fresh allocation this large is fresh pages from the kernel, each faulted in).
#[derive(Default)]
struct Scratch {
    /// A macro layer's accumulated readouts, `[cout][elements]`.
    readouts: Vec<f32>,
    /// A macro layer's input codes, and the same laid out with their border.
    codes: Vec<u16>,
    bordered: Vec<u16>,
    /// One call's input and ADC codes.
    inputs: Vec<u16>,
    out: Vec<i32>,
}

/// How a part is read: its backend, and the operations per call.
struct Reader<'a> {
    backend: &'a mut dyn MacroBackend,
    per_call: usize,
}

impl Runtime {
    /// The runtime of `model` (its graph checked shape by shape, its layers placed).
    pub fn new(model: impl Into<Arc<DeployModel>>) -> Result<Self> {
        let model: Arc<DeployModel> = model.into();
        let spec = &model.macro_spec;
        spec.validate()?;
        let shapes = model.shapes().map_err(Error::invalid)?;
        let mut next = 0u32;
        let placed = model
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) if matches!(l.body, Body::Macro { .. }) => {
                    next += 1;
                    let (x, y) = (&shapes[n.inputs[0] as usize], &shapes[i + 1]);
                    Some(place(l, spec, next - 1, x, y))
                }
                _ => None,
            })
            .collect();
        Ok(Runtime {
            model,
            shapes,
            placed,
            scratch: Scratch::default(),
            stats: RunStats::default(),
        })
    }

    /// The logits `[n][classes]` of `n` normalised images `[n][C·H·W]`, the macro
    /// operations done by `backend` as pass `pass`.
    pub fn run(
        &mut self,
        backend: &mut dyn MacroBackend,
        images: &[f32],
        pass: u64,
    ) -> Result<Vec<f32>> {
        self.forward(backend, images, pass, Norm::Running)
    }

    fn forward(
        &mut self,
        backend: &mut dyn MacroBackend,
        images: &[f32],
        pass: u64,
        mut norm: Norm,
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
        // Inference runs the pass in parts (an image's logits do not depend on the others,
        // and the operations keep the pass's numbering), so that each value fits the
        // allocator's reused memory and the caches; batch statistics need the whole batch
        // at once.
        let replicas = matches!(norm, Norm::Running) && backend.replicate().is_some();
        let part = match norm {
            Norm::Running if replicas => IMAGES_PER_REPLICA,
            Norm::Running => IMAGES_PER_PART,
            Norm::Batch(_) => n,
        };
        let chunks: Vec<&[f32]> = images.chunks(part * per).collect();
        let mut logits = Vec::with_capacity(n * self.model.num_classes as usize);
        if replicas {
            let run =
                |k: usize, scratch: &mut Scratch, stats: &mut RunStats, reader: &mut Reader| {
                    let pass = Pass { pass, images: n, first_image: k * part };
                    self.forward_part(scratch, stats, reader, chunks[k], pass, &mut Norm::Running)
                };
            let (ys, done) = on_copies(backend, chunks.len(), run)?;
            ys.into_iter().for_each(|y| logits.extend(y));
            self.stats.add(done);
        } else {
            let mut scratch = std::mem::take(&mut self.scratch);
            let mut stats = self.stats;
            let mut reader = Reader { backend, per_call: OPS_PER_CALL };
            let mut parts = || -> Result<()> {
                for (k, x) in chunks.iter().enumerate() {
                    let pass = Pass { pass, images: n, first_image: k * part };
                    let norm = &mut norm;
                    logits.extend(self.forward_part(
                        &mut scratch,
                        &mut stats,
                        &mut reader,
                        x,
                        pass,
                        norm,
                    )?);
                }
                Ok(())
            };
            let done = parts();
            // What was done up to a fault counts too, and the buffers are kept.
            (self.scratch, self.stats) = (scratch, stats);
            done?;
        }
        self.stats.images += n as u64;
        self.stats.total_s += t0.elapsed().as_secs_f64();
        Ok(logits)
    }

    /// `images` (whole images, checked), part of the pass `pass`.
    fn forward_part(
        &self,
        scratch: &mut Scratch,
        stats: &mut RunStats,
        reader: &mut Reader,
        images: &[f32],
        pass: Pass,
        norm: &mut Norm,
    ) -> Result<Vec<f32>> {
        let n = images.len() / self.shapes[0].iter().product::<usize>();
        let mut tape = Tape::new(false);
        let mut shape = vec![n];
        shape.extend(&self.shapes[0]);
        let mut values: Vec<Var> = vec![tape.constant(Tensor::new(&shape, images.to_vec()))];
        let model = self.model.clone();
        for (i, node) in model.nodes.iter().enumerate() {
            let x = values[node.inputs[0] as usize];
            let y = match &node.op {
                DeployOp::Conv(l) | DeployOp::Linear(l) => {
                    let (z, bn) = match &l.body {
                        Body::Macro { batchnorm: bn, .. } => {
                            // With its running statistics, the layer's batchnorm is applied
                            // as the layer's values are written (the same two operations
                            // on each value).
                            let affine = match (bn, &norm) {
                                (Some(bn), Norm::Running) => Some(bn.affine()),
                                _ => None,
                            };
                            let fused = affine.as_ref().map(|(a, b)| (&a[..], &b[..]));
                            let z = self.macro_layer(
                                scratch,
                                stats,
                                reader,
                                (i, l),
                                tape.value(x),
                                pass,
                                fused,
                            )?;
                            (tape.constant(z), bn.as_ref().filter(|_| affine.is_none()))
                        }
                        Body::Digital { weight, bias, batchnorm } => (
                            digital(&mut tape, node_is_linear(&node.op), l, weight, bias, x)?,
                            batchnorm.as_ref(),
                        ),
                    };
                    match bn {
                        Some(bn) => batchnorm(&mut tape, z, bn, i, norm)?,
                        None => z,
                    }
                }
                DeployOp::BatchNorm(bn) => batchnorm(&mut tape, x, bn, i, norm)?,
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
        Ok(tape.value(*values.last().expect("the input at least")).data().to_vec())
    }

    /// Node `node`, an on-macro layer, over the batch `x` (`[N, cin, H, W]` or `[N, cin]`):
    /// `z = s_w·(s_x·Σ_t Σ_c 2^(c·b)·step·j_{t,c} + lo·Σ_valid w) + bias`, in the CIM
    /// layers' order of operations (so the ideal macro gives the network's values to the bit).
    #[allow(clippy::too_many_arguments)]
    fn macro_layer(
        &self,
        scratch: &mut Scratch,
        stats: &mut RunStats,
        reader: &mut Reader,
        (node, l): (usize, &DeployLayer),
        x: &Tensor,
        pass: Pass,
        batchnorm: Option<(&[f32], &[f32])>,
    ) -> Result<Tensor> {
        let Body::Macro { weight_scale, bias, .. } = &l.body else {
            unreachable!("called for layers on the macro")
        };
        let p = self.placed[node].as_ref().expect("placed in Runtime::new");
        let spec = &self.model.macro_spec;
        let (rows, cols, arrays) = (spec.rows, spec.columns, spec.arrays);
        let (n, cout, pixels) = (x.shape()[0], l.cout as usize, p.geom.pixels());
        let elements = n * pixels;
        let (tiles, geom) = (p.tiles, p.geom);
        let groups = cout.div_ceil(cols);
        // E-PACT's codes, as the network makes them (the clipped input rounded to the
        // grid, and that value's code), laid out with the convolution's zero border: a
        // patch row's run of output pixels is then a run (stride 1) of one image row.
        let grid = p.grid;
        let Scratch { readouts, codes, bordered, inputs, out } = scratch;
        let image = geom.padded_size();
        bordered.resize(n * image, 0);
        let (hp, wp) = geom.padded();
        // Computed on the contiguous input first (it vectorises), then laid out.
        codes.resize(x.len(), 0);
        // The grid moved into the closure: read through a reference at every value, the
        // loop stayed scalar.
        codes.par_chunks_mut(1 << 14).zip(x.data().par_chunks(1 << 14)).for_each(move |(d, s)| {
            for (d, &v) in d.iter_mut().zip(s) {
                let code = grid.code(grid.quantize(v));
                // SAFETY: clamped to 0..=65535 (NaN to 0), so it fits an i32.
                #[allow(clippy::manual_clamp)]
                let code = unsafe { code.max(0.0).min(65535.0).to_int_unchecked::<i32>() };
                *d = code as u16;
            }
        });
        bordered.par_chunks_mut(image.max(1)).zip(codes.par_chunks((x.len() / n).max(1))).for_each(
            |(dst, src)| {
                // Every value written (the buffer holds another layer's codes): the
                // border's zeros, the image's codes. An image of no pixels is all border.
                let (h, w, pad) = (geom.h, geom.w, geom.pad);
                if h * w == 0 {
                    dst.fill(0);
                    return;
                }
                for (plane, src) in dst.chunks_exact_mut(hp * wp).zip(src.chunks_exact(h * w)) {
                    plane[..pad * wp].fill(0);
                    plane[(pad + h) * wp..].fill(0);
                    for (row, s) in plane[pad * wp..].chunks_exact_mut(wp).zip(src.chunks_exact(w))
                    {
                        row[..pad].fill(0);
                        row[pad..pad + w].copy_from_slice(s);
                        row[pad + w..].fill(0);
                    }
                }
            },
        );
        let (b, cycles) = (spec.input_bits_per_cycle, spec.cycles() as usize);
        // `readouts[co][e]`: one channel's elements side by side. Every value is written
        // by the first tile's first cycle: no zeroing first.
        readouts.resize(readouts.len().max(elements * cout), 0.0);
        let (kmin, kmax) = (spec.adc.kmin, spec.adc.kmax);
        let backend = &mut *reader.backend;
        let call = reader.per_call.min(elements);
        inputs.resize(call * rows, 0);
        out.resize(call * cols.min(cout), 0);
        for t in 0..tiles {
            let array = t % arrays;
            // Where each row reads a bordered image; `None` past the reduction axis (a
            // row the layer does not activate).
            let starts: Vec<Option<usize>> = (t * rows..(t + 1) * rows)
                .map(|kk| (kk < geom.k()).then(|| geom.padded_offset(kk)))
                .collect();
            for g in 0..groups {
                let tb = Instant::now();
                backend
                    .program(array, &p.blocks[t * groups + g])
                    .map_err(|e| self.failed(backend, l, &format!("tile {t}, program"), e))?;
                stats.backend_s += tb.elapsed().as_secs_f64();
                stats.programmings += 1;
                let used = cols.min(cout - g * cols);
                let reads = ArrayReads {
                    geom,
                    bordered,
                    starts: &starts,
                    bits: b,
                    whole: cycles == 1,
                    template: Operation {
                        layer: p.id,
                        tile: t as u32,
                        cycle: 0,
                        first_channel: (g * cols) as u32,
                        columns: used as u32,
                        channels: cout as u32,
                        elements: (pass.images * pixels) as u64,
                        first_element: (pass.first_image * pixels) as u64,
                        pass: pass.pass,
                    },
                };
                // This array's channels' rows of the accumulated readouts.
                let mut channels: Vec<&mut [f32]> = readouts[..cout * elements]
                    .chunks_mut(elements)
                    .skip(g * cols)
                    .take(used)
                    .collect();
                let mut read = || -> std::result::Result<(), Fault> {
                    for e0 in (0..elements).step_by(call) {
                        let m = call.min(elements - e0);
                        for c in 0..cycles {
                            let inputs = &mut inputs[..rows * m];
                            inputs
                                .par_chunks_mut(m)
                                .enumerate()
                                .for_each(|(r, dst)| reads.gather(r, c, e0, dst));
                            let tb = Instant::now();
                            let out = &mut out[..used * m];
                            let op = reads.operation(c, e0);
                            let done = backend.compute(array, &op, inputs, out);
                            stats.backend_s += tb.elapsed().as_secs_f64();
                            done.map_err(|e| Fault::compute(c, e0, m, e))?;
                            check_codes(out, kmin, kmax, c, e0..e0 + m)?;
                            // In the CIM layers' order: tiles, then cycles, each readout
                            // weighted by its cycle's place value in partial-sum units.
                            let weight = 2f32.powi((c as u32 * b) as i32) * spec.adc.step;
                            let first = t == 0 && c == 0;
                            channels.par_iter_mut().zip(out.par_chunks(m)).for_each(|(a, o)| {
                                accumulate(&mut a[e0..e0 + m], o, weight, first)
                            });
                        }
                    }
                    Ok(())
                };
                read().map_err(|f| self.fault(backend, l, t, f))?;
                stats.macro_ops += (elements * used * cycles) as u64;
            }
        }
        // Written once, straight into fresh memory (no zero fill first), the batchnorm's
        // `z·a + b` applied in the same pass when it is given.
        let len = n * cout * pixels;
        let mut y = Vec::with_capacity(len);
        y.spare_capacity_mut().par_chunks_mut(pixels.max(1)).enumerate().for_each(|(plane, yp)| {
            let (img, co) = (plane / cout, plane % cout);
            let (s_w, b, z) = (weight_scale[co], bias[co], &p.zero_point[co * pixels..][..pixels]);
            let r = &readouts[co * elements + img * pixels..][..pixels];
            let (step, lo) = (grid.step, grid.lo);
            let (a, shift) = batchnorm.map_or((1.0, 0.0), |(a, b)| (a[co], b[co]));
            let values = yp.iter_mut().zip(r).zip(z);
            if batchnorm.is_some() {
                values.for_each(|((v, &r), &z)| {
                    _ = v.write((s_w * (step * r + lo * z) + b) * a + shift)
                });
            } else {
                values.for_each(|((v, &r), &z)| _ = v.write(s_w * (step * r + lo * z) + b));
            }
        });
        // SAFETY: the planes above wrote all `len` values.
        unsafe { y.set_len(len) };
        let mut shape = vec![n];
        shape.extend(&self.shapes[node + 1]);
        Ok(Tensor::new(&shape, y))
    }

    /// The output of macro layer `layer` (its CIM layer id, as the network's
    /// [`crate::engine::MacroSlot::id`]) for a batch `x` of its inputs (`[N, cin, H, W]`
    /// or `[N, cin]`, before E-PACT), as pass `pass`, its bias added: what the network's
    /// CIM op of the layer returns (bit for bit on the ideal macro).
    pub fn layer(
        &mut self,
        backend: &mut dyn MacroBackend,
        layer: u64,
        x: &Tensor,
        pass: u64,
    ) -> Result<Tensor> {
        let node = self
            .placed
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| u64::from(p.id) == layer))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "deployable model '{}' has no macro layer {layer}",
                    self.model.arch
                ))
            })?;
        let model = self.model.clone();
        let n = &model.nodes[node];
        let (DeployOp::Conv(l) | DeployOp::Linear(l)) = &n.op else {
            unreachable!("placed layers are conv or linear")
        };
        let want = &self.shapes[n.inputs[0] as usize];
        if x.shape().len() != want.len() + 1 || x.shape()[1..] != want[..] || x.shape()[0] == 0 {
            return Err(Error::invalid(format!(
                "layer '{}' takes inputs [N, {}], given {:?}",
                l.name,
                want.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
                x.shape()
            )));
        }
        let images = x.shape()[0];
        if backend.replicate().is_some() {
            // Parts of the batch side by side on copies of the macro, as in `run`.
            let per = x.len() / images;
            let chunks: Vec<&[f32]> = x.data().chunks(IMAGES_PER_REPLICA * per).collect();
            let run =
                |k: usize, scratch: &mut Scratch, stats: &mut RunStats, reader: &mut Reader| {
                    let mut shape = x.shape().to_vec();
                    shape[0] = chunks[k].len() / per;
                    let part = Tensor::new(&shape, chunks[k].to_vec());
                    let first_image = k * IMAGES_PER_REPLICA;
                    let pass = Pass { pass, images, first_image };
                    let y =
                        self.macro_layer(scratch, stats, reader, (node, l), &part, pass, None)?;
                    Ok(y.data().to_vec())
                };
            let (ys, done) = on_copies(backend, chunks.len(), run)?;
            self.stats.add(done);
            let y: Vec<f32> = ys.concat();
            let mut shape = vec![images];
            shape.extend(&self.shapes[node + 1]);
            return Ok(Tensor::new(&shape, y));
        }
        let (mut scratch, mut stats) = (std::mem::take(&mut self.scratch), self.stats);
        let mut reader = Reader { backend, per_call: OPS_PER_CALL };
        let pass = Pass { pass, images, first_image: 0 };
        let y = self.macro_layer(&mut scratch, &mut stats, &mut reader, (node, l), x, pass, None);
        (self.scratch, self.stats) = (scratch, stats);
        y
    }

    /// A fault in tile `tile`'s reads, naming the backend, the layer and the operations.
    fn fault(&self, backend: &dyn MacroBackend, l: &DeployLayer, tile: usize, f: Fault) -> Error {
        let what = format!("tile {tile}, cycle {}, operations {:?}", f.cycle, f.ops);
        match f.what {
            FaultKind::Compute(e) => self.failed(backend, l, &format!("{what}, compute"), e),
            FaultKind::Code(bad) => {
                let adc = self.model.macro_spec.adc;
                Error::invalid(format!(
                    "backend '{}', layer '{}', {what}: ADC code {bad} is outside the ADC's {}..={}",
                    backend.name(),
                    l.name,
                    adc.kmin,
                    adc.kmax
                ))
            }
        }
    }

    /// A backend's error, naming the backend, the layer and the operation.
    fn failed(&self, backend: &dyn MacroBackend, l: &DeployLayer, what: &str, e: Error) -> Error {
        Error::invalid(format!("backend '{}', layer '{}', {what}: {e}", backend.name(), l.name))
    }

    /// Re-estimates every batchnorm's running statistics from `images` read through
    /// `backend`, as [`crate::train::recalibrate_bn`] does on the training side (batches
    /// normalised with their own statistics on the way through; batch `b` is pass `b`):
    /// the model with the new statistics, and what was done.
    pub fn calibrate(
        &mut self,
        backend: &mut dyn MacroBackend,
        images: &RecalImages,
    ) -> Result<(DeployModel, Recalibration)> {
        let RecalImages { split, norm, augment, count, seed } = *images;
        if count < 2 || count > split.len() {
            return Err(Error::invalid(format!(
                "batchnorm recalibration needs 2..={} images, asked for {count}",
                split.len()
            )));
        }
        let mut moments = vec![Moments::default(); self.model.nodes.len()];
        let batcher = Batcher::new(split, norm, augment, seed);
        let order = batcher.epoch_order(0);
        let per_batch = count.div_ceil(count.div_ceil(EVAL_BATCH));
        for (b, chunk) in order[..count].chunks(per_batch).enumerate() {
            let (x, _) = batcher.batch(chunk, 0);
            self.forward(backend, x.data(), b as u64, Norm::Batch(&mut moments))?;
        }
        let mut model = DeployModel::clone(&self.model);
        let mut layers = 0;
        for (node, m) in model.nodes.iter_mut().zip(&moments) {
            let bn = match &mut node.op {
                DeployOp::BatchNorm(bn) => Some(bn),
                DeployOp::Conv(l) | DeployOp::Linear(l) => match &mut l.body {
                    Body::Macro { batchnorm, .. } | Body::Digital { batchnorm, .. } => {
                        batchnorm.as_mut()
                    }
                },
                _ => None,
            };
            if let Some(bn) = bn {
                (bn.mean, bn.var) = m.mean_var();
                layers += 1;
            }
        }
        if layers == 0 {
            return Err(Error::invalid(format!(
                "deployable model '{}' states no batchnorm to recalibrate (a version-2 file keeps them folded into its layers: export the checkpoint again)",
                self.model.arch
            )));
        }
        Ok((model, Recalibration { images: count, layers }))
    }

    /// Accuracy and mean loss over a split, in the training side's evaluation batches
    /// (batch `b` is pass `b`), and the run's statistics.
    pub fn evaluate(
        &mut self,
        backend: &mut dyn MacroBackend,
        split: &Split,
    ) -> Result<(EvalResult, RunStats)> {
        let before = self.stats;
        let batcher = Batcher::new(split, self.model.norm, None, 0);
        let classes = self.model.num_classes as usize;
        let idx: Vec<usize> = (0..split.len()).collect();
        let (mut correct, mut loss_sum) = (0, 0.0f64);
        for (b, chunk) in idx.chunks(EVAL_BATCH).enumerate() {
            let (x, labels) = batcher.batch(chunk, 0);
            let logits = self.run(backend, x.data(), b as u64)?;
            correct += count_correct(&logits, classes, &labels);
            let mut tape = Tape::new(false);
            let y = tape.constant(Tensor::new(&[chunk.len(), classes], logits));
            let l = ops::softmax_cross_entropy(&mut tape, y, &labels, 0.0)?;
            loss_sum += tape.value(l).data()[0] as f64 * chunk.len() as f64;
        }
        let n = split.len().max(1) as f64;
        let result = EvalResult {
            accuracy: 100.0 * correct as f64 / n,
            loss: loss_sum / n,
            images: split.len(),
        };
        Ok((result, self.stats - before))
    }
}

/// `parts` runs of `run` side by side, each on its own copy of `backend` (which must
/// replicate) read in calls that stay in its thread's cache: their results in part
/// order (the first error in part order) and what they did (the backend's time per
/// thread). The copies read what the macro reads, so the results are the macro's to the
/// bit.
fn on_copies<T: Send>(
    backend: &dyn MacroBackend,
    parts: usize,
    run: impl Fn(usize, &mut Scratch, &mut RunStats, &mut Reader) -> Result<T> + Sync,
) -> Result<(Vec<T>, RunStats)> {
    let copies: Vec<Box<dyn MacroBackend>> = (0..parts)
        .map(|_| backend.replicate().expect("called for a macro that replicates"))
        .collect();
    let pool = std::sync::Mutex::new(Vec::<Scratch>::new());
    let outcomes: Vec<Result<(T, RunStats)>> = copies
        .into_par_iter()
        .enumerate()
        .map(|(k, mut copy)| {
            let mut scratch = pool.lock().expect("no panics").pop().unwrap_or_default();
            let mut stats = RunStats::default();
            let mut reader = Reader { backend: copy.as_mut(), per_call: REPLICA_OPS_PER_CALL };
            let y = run(k, &mut scratch, &mut stats, &mut reader);
            pool.lock().expect("no panics").push(scratch);
            Ok((y?, stats))
        })
        .collect();
    let (mut results, mut done) = (Vec::with_capacity(parts), RunStats::default());
    for outcome in outcomes {
        let (y, stats) = outcome?;
        results.push(y);
        done.add(stats);
    }
    // The copies' time in all, per thread.
    done.backend_s /= rayon::current_num_threads() as f64;
    Ok((results, done))
}

/// Fine-tuning with a macro in the loop: one training step's device
/// ([`crate::nn::MacroForward`]) that runs each layer on the macro through `backend`,
/// its weight codes those of the network at this step (a [`DeployModel`] made from it),
/// the operations numbered as pass `pass`.
pub struct InTheLoop<'b> {
    runtime: Runtime,
    backend: &'b mut dyn MacroBackend,
    pass: u64,
}

impl<'b> InTheLoop<'b> {
    /// The device of one step: `model` (the network as it is now) on `backend`.
    pub fn new(model: DeployModel, backend: &'b mut dyn MacroBackend, pass: u64) -> Result<Self> {
        Ok(InTheLoop { runtime: Runtime::new(model)?, backend, pass })
    }
}

impl crate::nn::MacroForward for InTheLoop<'_> {
    fn layer(&mut self, layer: u64, x: &Tensor) -> Result<Tensor> {
        self.runtime.layer(self.backend, layer, x, self.pass)
    }
}

fn node_is_linear(op: &DeployOp) -> bool {
    matches!(op, DeployOp::Linear(_))
}

/// A digital layer on the engine's kernels: `weight·x + bias`.
fn digital(
    tape: &mut Tape,
    linear: bool,
    l: &DeployLayer,
    weight: &[f32],
    bias: &[f32],
    x: Var,
) -> Result<Var> {
    let (co, ci, k) = (l.cout as usize, l.cin as usize, l.kernel as usize);
    let b = tape.constant(Tensor::new(&[co], bias.to_vec()));
    if linear {
        let w = tape.constant(Tensor::new(&[co, ci], weight.to_vec()));
        ops::linear(tape, x, w, Some(b))
    } else {
        let w = tape.constant(Tensor::new(&[co, ci, k, k], weight.to_vec()));
        let cfg = Conv2dCfg { stride: l.stride as usize, padding: l.padding as usize };
        ops::conv2d(tape, x, w, Some(b), cfg)
    }
}

/// A batchnorm (node `node`) on `x`: `x·a + b` per channel with the running statistics'
/// `a`, `b` (the engine's eval-mode numbers), or with the batch's own while recording them.
fn batchnorm(tape: &mut Tape, x: Var, bn: &BatchNorm, node: usize, norm: &mut Norm) -> Result<Var> {
    let xv = tape.value(x);
    let (n, c) = (xv.shape()[0], bn.channels());
    let (a, b) = match norm {
        Norm::Running => bn.affine(),
        Norm::Batch(moments) => {
            let hw = xv.len() / (n * c);
            let as4 = Tensor::new(&[n, c, hw, 1], xv.data().to_vec());
            let stats = moments[node].add(&as4)?;
            let (mean, inv): (Vec<f32>, Vec<f32>) = stats
                .iter()
                .map(|&(mu, var)| (mu as f32, (1.0 / (var + bn.eps as f64).sqrt()) as f32))
                .unzip();
            ops::batchnorm::fold(&mean, &inv, &bn.gamma, &bn.beta)
        }
    };
    let (per, len) = (xv.len() / (n * c), xv.len());
    // Written once, straight into fresh memory (no zero fill first).
    let mut y = Vec::with_capacity(len);
    let planes =
        y.spare_capacity_mut().par_chunks_mut(per.max(1)).zip(xv.data().par_chunks(per.max(1)));
    planes.enumerate().for_each(|(plane, (y, x))| {
        let (a, b) = (a[plane % c], b[plane % c]);
        y.iter_mut().zip(x).for_each(|(y, &v)| _ = y.write(v * a + b));
    });
    // SAFETY: the planes above wrote all `len` values.
    unsafe { y.set_len(len) };
    let t = Tensor::new(xv.shape(), y);
    Ok(tape.constant(t))
}

/// Places an on-macro layer with input shape `x` and output shape `y` (one image's).
fn place(
    l: &DeployLayer,
    spec: &crate::cim::MacroSpec,
    id: u32,
    x: &[usize],
    y: &[usize],
) -> Placed {
    let Body::Macro { lo, hi, tiles, codes, .. } = &l.body else {
        unreachable!("called for layers on the macro")
    };
    let (rows, cols) = (spec.rows, spec.columns);
    let (cout, tiles, k) = (l.cout as usize, *tiles as usize, l.k());
    // A linear layer reads its input as one pixel of `cin` channels.
    let (cin, h, w) = if x.len() == 3 { (x[0], x[1], x[2]) } else { (x.iter().product(), 1, 1) };
    let (oh, ow) = (y.get(1).copied().unwrap_or(1), y.get(2).copied().unwrap_or(1));
    let kern = l.kernel as usize;
    let (stride, pad) = if x.len() == 3 { (l.stride as usize, l.padding as usize) } else { (1, 0) };
    let geom = ConvGeom { n: 1, cin, h, w, cout, kh: kern, kw: kern, stride, pad, oh, ow };
    let pixels = geom.pixels();
    // The zero-point sums over the rows inside the image (the CIM layers' own mask;
    // integers, exact in f32 in any order).
    let mask = crate::cim::conv::valid_mask(&geom);
    let mut zero_point = vec![0.0f32; cout * pixels];
    zero_point.par_chunks_mut(pixels.max(1)).enumerate().for_each(|(co, z)| {
        for (kk, valid) in mask.chunks_exact(pixels.max(1)).enumerate() {
            let code = codes[(co * tiles + kk / rows) * rows + kk % rows] as f32;
            z.iter_mut().zip(valid).for_each(|(z, &v)| *z += v * code);
        }
    });
    let groups = cout.div_ceil(cols);
    let blocks = (0..tiles * groups)
        .map(|tg| {
            let (t, g) = (tg / groups, tg % groups);
            (0..rows * cols)
                .map(|i| {
                    let (r, co) = (i / cols, g * cols + i % cols);
                    if co < cout { codes[(co * tiles + t) * rows + r] } else { 0 }
                })
                .collect()
        })
        .collect();
    // (`ActGrid::new` raises `hi` to `lo + MIN_RANGE`, as E-PACT does.)
    let grid = ActGrid::new(*lo, *hi, spec.input_bits);
    debug_assert_eq!(geom.k(), k);
    Placed { id, geom, tiles, zero_point, blocks, grid }
}

#[cfg(test)]
mod tests;
