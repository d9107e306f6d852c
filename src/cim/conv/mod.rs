//! `CimConv2d` / `CimLinear`: a convolution (or linear layer) computed the way the macro
//! computes it (DESIGN.md §2).
//!
//! Inputs are quantized here, as the macro's input DAC does: E-PACT's learned bounds
//! ([`InputQuant`]) clip them and round them to codes `q` on the grid `lo + s_x·q`;
//! latent weights are quantized to codes `w` with per-output-channel scales `s_w`. For
//! every tile of `rows` along the reduction axis (and every input-bit cycle), the
//! integer partial sum `P = Σ q·w` — computed on integers by [`super::psum`] (8-bit
//! multiply-accumulates), the tile's patch rows packed from the group's input codes,
//! made bytes once ([`psum::CodePlane`]) — becomes an ADC code and is read out (ideal,
//! sampled, expected). The readouts are shift-added and accumulated digitally, then
//! rescaled:
//!
//! `y = s_w · (s_x · Σ_t Σ_c 2^(c·b) · step · j_{t,c} + lo · Σ_{valid k} w_k) + bias`
//!
//! where the zero-point sum runs over the non-padding positions of the window
//! (padding is a row that is not activated: code 0, no zero-point contribution).
//!
//! Backward, with `g` the estimator's slope per macro operation (cycles of one tile
//! averaged with the weight `(2^b − 1)·2^(c·b)/(2^B − 1)` of their bits):
//! `∂y/∂x̂_k = g·ŵ_k` and `∂y/∂ŵ_k = g·(x̂_k − lo) + lo` over valid positions; the
//! weight gradient passes straight through to the latent weights, and E-PACT's
//! backward takes `∂/∂x̂` on to the input and the bounds (the op keeps the input `x`,
//! not `x̂`: the codes are made again from it). With STE (`g = 1`) this is the plain
//! convolution backward on (x̂, ŵ).
//!
//! On a chip with fixed-pattern variation ([`super::chip`]), the ADC column reading
//! tile `t` of channel `co` turns the partial sum into `round(g·P/step + o)` before the
//! readout is drawn; the statistical estimator's slope carries that column's `g`.
//!
//! Draws are keyed by (seed, layer, step) and the operation's global index
//! `(((tile·cycles + cycle)·Cout + channel)·N + image)·pixels + pixel`, so they do not
//! depend on grouping or threads (and one channel's row of an image group is one run
//! of consecutive operations); the saved slopes replay nothing at random.

mod adc;
pub(crate) use adc::adc_codes;
mod backward;
mod saved;

use super::clip;
use super::profile::Timer;
use super::psum::{self, CodePlane, PackedWeights};
use super::quant::{ActGrid, InputQuant, weight_codes};
use super::readout::{CimRuntime, DrawKey, DrawRun, Estimator, ReadoutMode};
use crate::engine::gemm::{MatRef, gemm};
use crate::engine::ops::conv2d::{self, Conv2dCfg, ConvGeom};
use crate::engine::{Tape, Tensor, Var};
use crate::{Error, Result};
use backward::{SlopeSource, backward};
use rayon::prelude::*;
use saved::SavedCodes;

/// One CIM layer's call: the shared runtime and this layer's id (part of the draw key).
pub struct CimCall<'a> {
    /// The runtime every CIM layer of the pass shares.
    pub rt: &'a CimRuntime,
    /// This layer's CIM id, part of its draw key.
    pub layer: u64,
}

/// What backward needs beyond the tape values.
struct Saved {
    g: ConvGeom,
    /// The input's grid, its bounds those the forward read (E-PACT's backward's too).
    grid: ActGrid,
    w_hat: Vec<f32>,
    /// The valid-position mask `[K][pixels]` (the zero-point term needs it both ways).
    mask: Vec<f32>,
    /// Per image group (`ConvGeom::group`, as the convolution backward groups images):
    /// every macro operation's ideal code, rows `(t·cycles + c)·Cout + co` of the group's
    /// `cols` operations (statistical estimator only; see [`SlopeSource`]).
    codes: Option<Vec<SavedCodes>>,
    /// Where backward takes the slope of each saved code from.
    slopes: Option<SlopeSource>,
    /// The runtime's profile (the STE backward keeps no runtime).
    profile: Option<std::sync::Arc<super::CimProfile>>,
    /// Rows per macro tile.
    rows: usize,
}

/// 1 where the window position is inside the image, 0 on padding: `[K][pixels]`.
pub(crate) fn valid_mask(g: &ConvGeom) -> Vec<f32> {
    let ones = vec![1.0f32; g.in_size()];
    let one = ConvGeom { n: 1, ..*g };
    let mut m = vec![0.0f32; g.k() * g.pixels()];
    conv2d::im2col(&one, &ones, &mut m, g.pixels(), 0..g.k());
    m
}

/// Forward of one group of `gi` images `x` (not yet quantized: `grid` gives their
/// codes): returns the readout accumulator `[Cout][cols]` (in partial-sum
/// units) and, for the statistical estimator, the saved codes (rows `[tiles·cycles][Cout]`
/// of `cols`).
///
/// Per tile and cycle: the integer partial sums ([`psum`]), then per output channel's
/// row of the group: ideal codes (vectorised), readouts (one `sample_run` call), and the
/// shift-add into the accumulator.
#[allow(clippy::too_many_arguments)]
fn group_forward(
    g: &ConvGeom,
    call: &CimCall,
    x: &[f32],
    grid: ActGrid,
    w_packed: &PackedWeights,
    first_image: usize,
    gi: usize,
    want_codes: bool,
) -> (Vec<f32>, Option<SavedCodes>) {
    let rt = call.rt;
    let spec = &rt.spec;
    let adc = spec.adc;
    let (k, pix, cols, cout) = (g.k(), g.pixels(), gi * g.pixels(), g.cout);
    let tiles = spec.tiles(k);
    let cycles = spec.cycles() as usize;
    let b = spec.input_bits_per_cycle;
    let key = DrawKey::new(rt.seed, call.layer, rt.step);
    let mut acc = vec![0.0f32; cout * cols];
    // Rows appended in the loops' order, which is their layout's; a row's codes are
    // written into `row` first.
    let mut saved = want_codes.then(|| SavedCodes::new(adc.levels(), tiles * cycles * cout, cols));
    let mut row = Vec::<u16>::with_capacity(cols);
    let mut psum = vec![0i32; cout * cols];
    // Byte planes of a cycle's input codes (see `psum`), `[cycle][plane]`, made once for
    // every tile; and a tile's packed words.
    let planes = b.div_ceil(8) as usize;
    let profile = rt.profile.as_deref();
    let code_planes: Vec<CodePlane> = {
        let _t = Timer::start(profile.map(|p| &p.partial_sums));
        let bits = |c: usize| (cycles > 1).then_some((c as u32 * b, b));
        (0..cycles * planes)
            .map(|i| {
                // E-PACT's codes (`code` clamps: the clip to the bounds is in it). The
                // grid moved into the closure: read through a reference, the loop stays
                // scalar.
                let code = move |v| grid.code(v);
                CodePlane::new(g, x, code, gi, bits(i / planes), (i % planes) as u32)
            })
            .collect()
    };
    let (mut words, path) = (Vec::new(), psum::Path::best_for(w_packed));
    let (mut codes, mut read) = (vec![0i32; cols], vec![0.0f32; cols]);
    let inv_step = 1.0 / adc.step;
    let mut clipped = 0u64;
    for t in 0..tiles {
        let (r0, r1) = (t * spec.rows, ((t + 1) * spec.rows).min(k));
        for c in 0..cycles {
            {
                let _t = Timer::start(profile.map(|p| &p.partial_sums));
                // P = 256·P_high + P_low: the high plane first, shifted, then the low added.
                for plane in (0..planes).rev() {
                    if plane + 1 < planes {
                        psum.iter_mut().for_each(|v| *v <<= 8);
                    }
                    // Only the tile's own rows: a short last tile skips the zero words.
                    let quads = (r1 - r0).div_ceil(4);
                    code_planes[c * planes + plane].pack_tile(r0, r1, quads, &mut words);
                    psum::plane_product(
                        path,
                        w_packed,
                        t,
                        &words,
                        quads,
                        cols,
                        &mut psum,
                        plane + 1 < planes,
                    );
                }
            }
            let weight = 2f32.powi((c as u32 * b) as i32) * adc.step;
            let _readout = Timer::start(profile.map(|p| &p.readout));
            for co in 0..cout {
                let e0 = co * cols;
                // The ADC column's fixed pattern acts on the analog sum, before rounding.
                let (gain, offset) = rt.column(t, co);
                let scale = inv_step * gain;
                let sums = &psum[e0..e0 + cols];
                match saved.as_mut() {
                    // The saved codes in the same pass. This operation row,
                    // `(t·cycles + c)·cout + co`, is the next one.
                    Some(s) => {
                        debug_assert_eq!(s.rows(), (t * cycles + c) * cout + co);
                        row.clear();
                        adc_codes(
                            sums,
                            scale,
                            offset,
                            adc,
                            &mut codes,
                            Some(&mut row.spare_capacity_mut()[..cols]),
                        );
                        // SAFETY: `adc_codes` wrote all `cols` values (the capacity is
                        // `cols`).
                        unsafe { row.set_len(cols) };
                        s.push_row(&row);
                    }
                    None => adc_codes(sums, scale, offset, adc, &mut codes, None),
                }
                if rt.clips.is_some() {
                    clipped += clip::count_clipped(sums, scale, offset, adc.kmin, adc.kmax);
                }
                // This group's images are consecutive in the numbering, so one channel's
                // row of the group is one run of consecutive operations.
                let op0 = (((t * cycles + c) * cout + co) * g.n + first_image) as u64 * pix as u64;
                let run = DrawRun { key, op0, stride: 1 };
                let acc = &mut acc[e0..e0 + cols];
                match rt.mode {
                    // The code is the readout: accumulated as it is converted, in one pass.
                    ReadoutMode::Ideal => {
                        acc.iter_mut().zip(&codes).for_each(|(a, &kc)| *a += weight * kc as f32);
                        continue;
                    }
                    ReadoutMode::Sampled => rt.readout.sample_run(&codes, run, &mut read),
                    ReadoutMode::Expected => rt
                        .readout
                        .table()
                        .expect("CimRuntime::check_source: the expected mode has a table")
                        .mean_run(&codes, &mut read),
                }
                acc.iter_mut().zip(&read).for_each(|(a, &r)| *a += weight * r);
            }
        }
    }
    if let Some(c) = &rt.clips {
        c.add(call.layer, (tiles * cycles * cout * cols) as u64, clipped);
    }
    (acc, saved)
}

/// CIM convolution of `x` (NCHW, not yet quantized: `quant` clips and rounds it to the
/// macro's input codes) by the latent weights `w`.
pub fn cim_conv2d(
    tape: &mut Tape,
    x: Var,
    w: Var,
    bias: Option<Var>,
    cfg: Conv2dCfg,
    quant: InputQuant,
    call: &CimCall,
) -> Result<Var> {
    let spec = &call.rt.spec;
    spec.validate()?;
    call.rt.check_source()?;
    let (lo, hi) = quant.bounds(tape)?;
    let grid = ActGrid::new(lo, hi, spec.input_bits);
    let g = ConvGeom::new(tape.value(x).shape(), tape.value(w).shape(), cfg)?;
    if let Some(b) = bias
        && tape.value(b).shape() != [g.cout]
    {
        return Err(Error::invalid(format!(
            "CIM conv: bias shape {:?}, expected [{}]",
            tape.value(b).shape(),
            g.cout
        )));
    }
    let (w_codes, w_scale) = weight_codes(tape.value(w), spec);
    let k = g.k();
    let w_hat: Vec<f32> = w_codes.iter().enumerate().map(|(i, &c)| c * w_scale[i / k]).collect();
    // Zero-point term per (channel, pixel): Σ of weight codes over valid window positions.
    let mask = valid_mask(&g);
    let mut zw = vec![0.0f32; g.cout * g.pixels()];
    gemm(
        1.0,
        MatRef::rowmajor(&w_codes, g.cout, k),
        MatRef::rowmajor(&mask, k, g.pixels()),
        0.0,
        &mut zw,
        g.pixels(),
    );
    let xv = tape.value(x).data();
    let w_packed = PackedWeights::new(&w_codes, g.cout, k, spec.rows);
    let want_codes = matches!(call.rt.estimator, Estimator::Statistical { .. })
        && tape.recording()
        && (tape.needs_grad(x) || tape.needs_grad(w) || quant.needs_grad(tape));
    if want_codes && spec.adc.levels() >= u16::MAX as usize {
        return Err(Error::invalid(format!(
            "the statistical estimator saves codes in at most 16 bits: an ADC of {} levels is too fine (at most 65,534)",
            spec.adc.levels()
        )));
    }
    let bias_v: Option<Vec<f32>> = bias.map(|b| tape.value(b).data().to_vec());
    // The convolution backward's groups (`statistical_backward` reads the codes by them).
    let gs = g.group();
    let pix = g.pixels();
    // Every output is written once below: no zero fill first.
    let n_out = g.n * g.out_size();
    let mut y: Vec<f32> = Vec::with_capacity(n_out);
    let codes: Vec<Option<SavedCodes>> = y.spare_capacity_mut()[..n_out]
        .par_chunks_mut(gs * g.out_size())
        .enumerate()
        .map(|(gidx, yg)| {
            // Cut from the output, as the plain convolution does (an image may be all padding).
            let gi = yg.len() / g.out_size();
            let xg = &xv[gidx * gs * g.in_size()..][..gi * g.in_size()];
            let (acc, codes) =
                group_forward(&g, call, xg, grid, &w_packed, gidx * gs, gi, want_codes);
            let cols = gi * pix;
            for j in 0..gi {
                for co in 0..g.cout {
                    let (s_w, b) = (w_scale[co], bias_v.as_ref().map_or(0.0, |b| b[co]));
                    let out = &mut yg[(j * g.cout + co) * pix..][..pix];
                    let (a, z) = (&acc[co * cols + j * pix..][..pix], &zw[co * pix..][..pix]);
                    for ((o, &a), &z) in out.iter_mut().zip(a).zip(z) {
                        o.write(s_w * (grid.step * a + grid.lo * z) + b);
                    }
                }
            }
            codes
        })
        .collect();
    // SAFETY: the groups cover the output, and each wrote every value of its images
    // (all `gi · Cout · pixels`; a panic above leaves the length at 0).
    unsafe { y.set_len(n_out) };
    let ops = (g.n * g.cout * g.pixels() * spec.tiles(k)) as u64 * spec.cycles() as u64;
    call.rt.readouts.fetch_add(ops, std::sync::atomic::Ordering::Relaxed);
    let y = Tensor::new(&[g.n, g.cout, g.oh, g.ow], y);
    let saved = Saved {
        g,
        grid,
        w_hat,
        mask,
        codes: if want_codes {
            Some(codes.into_iter().map(|s| s.unwrap()).collect())
        } else {
            None
        },
        slopes: want_codes.then(|| SlopeSource::new(call.rt, call.layer)),
        profile: call.rt.profile.clone(),
        rows: spec.rows,
    };
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    inputs.extend([quant.lo, quant.hi]);
    Ok(tape.push(y, &inputs, move |gout, vals, sink| {
        backward(saved, (x, w, bias), quant, gout, vals, sink)
    }))
}

/// CIM linear layer: a 1×1 convolution over a 1×1 image (`x` is (N, in), not yet
/// quantized; `w` (out, in)).
pub fn cim_linear(
    tape: &mut Tape,
    x: Var,
    w: Var,
    bias: Option<Var>,
    quant: InputQuant,
    call: &CimCall,
) -> Result<Var> {
    let (xs, ws) = (tape.value(x).shape().to_vec(), tape.value(w).shape().to_vec());
    if xs.len() != 2 || ws.len() != 2 || xs[1] != ws[1] {
        return Err(Error::invalid(format!("CIM linear: input {xs:?} does not fit weight {ws:?}")));
    }
    let x4 = reshape(tape, x, &[xs[0], xs[1], 1, 1]);
    let w4 = reshape(tape, w, &[ws[0], ws[1], 1, 1]);
    let y = cim_conv2d(tape, x4, w4, bias, Conv2dCfg::default(), quant, call)?;
    Ok(reshape(tape, y, &[xs[0], ws[0]]))
}

/// A differentiable reshape (same data, new shape).
fn reshape(tape: &mut Tape, x: Var, shape: &[usize]) -> Var {
    let y = tape.value(x).clone().reshape(shape).expect("reshape keeps the element count");
    tape.push(y, &[x], move |g, vals, sink| {
        let t = g.clone().reshape(vals.get(x).shape()).expect("same element count");
        sink.add(x, t);
    })
}

#[cfg(test)]
mod tests;
