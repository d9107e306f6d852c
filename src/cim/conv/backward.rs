//! Backward of the CIM convolution: the STE's plain convolution backward, or the
//! statistical estimator's, whose output gradient is `dY ∘ slope` per macro operation
//! (the slope from the operation's saved ideal code).

use super::Saved;
use super::saved::SavedCodes;
use crate::cim::profile::Timer;
use crate::cim::quant::{InputQuant, epact_backward};
use crate::cim::readout::{CimRuntime, DrawKey, DrawRun, Estimator, ReadoutMode};
use crate::engine::gemm::{Kernel, MatRef, gemm};
use crate::engine::ops::conv2d;
use crate::engine::{Tensor, Var};
use rayon::prelude::*;
use std::sync::atomic::Ordering;

/// The statistical estimator's slope per macro operation, derived in backward from the
/// operation's saved ideal code. Codes are saved as `k − kmin`, or `levels` for a
/// saturated partial sum (beyond the ADC range), whose slope is 0; in as few bits as
/// the ADC needs ([`SavedCodes`]: 1.25 bytes for a 9-bit ADC) instead of a four-byte
/// slope, and no slope work in forward.
pub(super) struct SlopeSource {
    rt: CimRuntime,
    key: DrawKey,
    /// Slope per saved code, `levels + 1` entries (the last, saturated, is 0). For
    /// `stat:S` the slope is estimated per operation instead (`draws > 0`).
    table: Vec<f32>,
    draws: u32,
}

impl SlopeSource {
    pub(super) fn new(rt: &CimRuntime, layer: u64) -> Self {
        let adc = rt.spec.adc;
        let codes: Vec<i32> = (adc.kmin..=adc.kmax).collect();
        let mut table = vec![1.0f32; codes.len() + 1];
        let draws = match (rt.mode, rt.estimator) {
            (ReadoutMode::Ideal, _) | (_, Estimator::Ste) => 0,
            (_, Estimator::Statistical { draws }) => draws,
        };
        // The exact slope comes from the source's table (`check_source` made sure there
        // is one); `stat:S` estimates it per operation and uses only the saturated entry.
        if let (ReadoutMode::Sampled | ReadoutMode::Expected, 0, Some(t)) =
            (rt.mode, draws, rt.readout.table())
        {
            t.slope_run(&codes, &mut table[..codes.len()]);
        }
        table[codes.len()] = 0.0;
        SlopeSource { rt: rt.clone(), key: DrawKey::new(rt.seed, layer, rt.step), table, draws }
    }

    /// `out += share · slope(code)` over one run of operations starting at `op0`;
    /// `scratch` holds the run's ideal codes and sampled slopes (`stat:S`).
    fn accumulate(
        &self,
        out: &mut [f32],
        codes: &[u16],
        share: f32,
        op0: u64,
        scratch: &mut (Vec<i32>, Vec<f32>),
    ) {
        if self.draws == 0 {
            for (o, &c) in out.iter_mut().zip(codes) {
                *o += share * self.table[c as usize];
            }
        } else {
            // One batched call per run; saturated operations (code `levels`) keep slope 0.
            let (levels, adc) = (self.table.len() - 1, self.rt.spec.adc);
            let (ks, slopes) = scratch;
            ks.clear();
            ks.extend(codes.iter().map(|&c| c.min(levels as u16 - 1) as i32 + adc.kmin));
            slopes.resize(codes.len(), 0.0);
            let run = DrawRun { key: self.key, op0, stride: 1 };
            self.rt.readout.slope_draws_run(ks, (adc.kmin, adc.kmax), self.draws, run, slopes);
            for ((o, &c), &g) in out.iter_mut().zip(codes).zip(slopes.iter()) {
                if (c as usize) < levels {
                    *o += share * g;
                }
            }
        }
    }
}

/// `out[i] = dy[i] · (0.0 + sh · table[codes[i]])`: one cycle's exact slopes times dY
/// (`0.0 +` keeps the bits of the accumulating path, which adds onto zero). Every code
/// must index `table` (saved codes are at most `levels`, the table's last entry).
pub(super) fn dy_times_slope(out: &mut [f32], dy: &[f32], codes: &[u16], table: &[f32], sh: f32) {
    dy_times_slope_on(crate::engine::gemm::kernel(), out, dy, codes, table, sh)
}

/// [`dy_times_slope`] on the instruction set `isa` (the tests run every one the CPU has).
pub(super) fn dy_times_slope_on(
    isa: Kernel,
    out: &mut [f32],
    dy: &[f32],
    codes: &[u16],
    table: &[f32],
    sh: f32,
) {
    assert!(isa.supported(), "{} is not supported by this CPU", isa.name());
    assert!(out.len() == dy.len() && out.len() == codes.len());
    let max_code = codes.iter().copied().max().unwrap_or(0) as usize;
    assert!(
        codes.is_empty() || max_code < table.len(),
        "saved code {max_code} beyond the slope table ({} entries)",
        table.len()
    );
    let done = match isa {
        // SAFETY: the instruction set is present; lengths and every code's bound asserted
        // above (the gathers' i32 indices reach every entry of a table this short).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if table.len() <= i32::MAX as usize => unsafe {
            dy_times_slope_avx512(out, dy, codes, table, sh)
        },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if table.len() <= i32::MAX as usize => unsafe {
            dy_times_slope_avx2(out, dy, codes, table, sh)
        },
        _ => 0,
    };
    for ((o, &d), &c) in out[done..].iter_mut().zip(&dy[done..]).zip(&codes[done..]) {
        *o = d * (0.0 + sh * table[c as usize]);
    }
}

/// Sixteen operations at a time (the lookups as one gather); returns how many were done.
/// The same three IEEE operations per element as the scalar loop, so the same bits.
///
/// # Safety
/// AVX-512F must be present, the slices of equal length and every code below
/// `table.len()` ≤ `i32::MAX`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dy_times_slope_avx512(
    out: &mut [f32],
    dy: &[f32],
    codes: &[u16],
    table: &[f32],
    sh: f32,
) -> usize {
    use std::arch::x86_64::*;
    let n = out.len() / 16 * 16;
    let (shv, zero) = (_mm512_set1_ps(sh), _mm512_setzero_ps());
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 <= n <= every slice's length; codes < table.len() (the caller
        // asserted it).
        unsafe {
            let c =
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(codes.as_ptr().add(i) as *const __m256i));
            let slope = _mm512_i32gather_ps::<4>(c, table.as_ptr());
            let s = _mm512_add_ps(zero, _mm512_mul_ps(shv, slope));
            _mm512_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm512_mul_ps(_mm512_loadu_ps(dy.as_ptr().add(i)), s),
            );
        }
    }
    n
}

/// Eight operations at a time: [`dy_times_slope_avx512`] on 256-bit vectors.
///
/// # Safety
/// As [`dy_times_slope_avx512`], with AVX2 for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dy_times_slope_avx2(
    out: &mut [f32],
    dy: &[f32],
    codes: &[u16],
    table: &[f32],
    sh: f32,
) -> usize {
    use std::arch::x86_64::*;
    let n = out.len() / 8 * 8;
    let (shv, zero) = (_mm256_set1_ps(sh), _mm256_setzero_ps());
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= every slice's length; codes < table.len() (the caller
        // asserted it).
        unsafe {
            let c = _mm256_cvtepu16_epi32(_mm_loadu_si128(codes.as_ptr().add(i) as *const __m128i));
            let slope = _mm256_i32gather_ps::<4>(table.as_ptr(), c);
            let s = _mm256_add_ps(zero, _mm256_mul_ps(shv, slope));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(_mm256_loadu_ps(dy.as_ptr().add(i)), s),
            );
        }
    }
    n
}

pub(super) fn backward(
    s: Saved,
    (x, w, bias): (Var, Var, Option<Var>),
    quant: InputQuant,
    gout: &Tensor,
    vals: &crate::engine::tape::Values,
    sink: &mut crate::engine::tape::GradSink,
) {
    let g = s.g;
    let xv = vals.get(x).data();
    let dy = gout.data();
    // The gradient of x̂, which E-PACT's backward takes to the input and the bounds.
    let want_dx = sink.wants(x) || sink.wants(quant.lo) || sink.wants(quant.hi);
    // Either way the plain convolution backward runs on all threads, so its wall time
    // counts once per thread, as the per-thread parts do (less the slopes, timed apart).
    let t = std::time::Instant::now();
    let slopes_before = s.profile.as_ref().map_or(0, |p| p.slopes.load(Ordering::Relaxed));
    let grads = match (&s.codes, &s.slopes) {
        (Some(codes), Some(slopes)) => statistical_backward(&s, codes, slopes, xv, dy, want_dx),
        // STE: the plain convolution backward on (x̂, ŵ), x̂ made again from x as E-PACT
        // makes it.
        _ => {
            let grid = s.grid;
            let x_hat: Vec<f32> = xv.par_iter().map(move |&v| grid.quantize(v)).collect();
            conv2d::backward(&g, &x_hat, &s.w_hat, dy, want_dx)
        }
    };
    if let Some(p) = &s.profile {
        let slopes = p.slopes.load(Ordering::Relaxed).wrapping_sub(slopes_before);
        let ns = t.elapsed().as_nanos() as u64 * rayon::current_num_threads() as u64;
        p.backward_gemm.fetch_add(ns.saturating_sub(slopes), Ordering::Relaxed);
    }
    let (dx_hat, dw, db) = grads;
    conv2d::add_grads(sink, vals, (x, w, bias), (None, dw, db));
    if let Some(dx_hat) = dx_hat {
        let bounds = (s.grid.lo, s.grid.hi);
        epact_backward(&dx_hat, xv, bounds, sink, (x, quant.lo, quant.hi));
    }
}

/// The statistical estimator's backward: the convolution backward on the activation
/// codes and ŵ ([`conv2d::backward_in_bands`]), each tile's rows seeing its own output
/// gradient `E = dY ∘ slope` (the slope of each of its macro operations, from the saved
/// codes), then the zero-point part of the weight gradient.
fn statistical_backward(
    s: &Saved,
    codes: &[SavedCodes],
    slopes: &SlopeSource,
    x: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let g = &s.g;
    let spec = &slopes.rt.spec;
    let (cycles, b) = (spec.cycles() as usize, spec.input_bits_per_cycle);
    let full = ((1u64 << spec.input_bits) - 1) as f32;
    // Cycle c's share of a tile's slope: the weight of its bits in the input code.
    let share: Vec<f32> = (0..cycles)
        .map(|c| ((1u64 << b) - 1) as f32 * 2f32.powi((c as u32 * b) as i32) / full)
        .collect();
    let (k, pix, cout, gs) = (g.k(), g.pixels(), g.cout, g.group());
    let profile = slopes.rt.profile.as_deref();
    // Channel co of image i's dY, read in place (NCHW).
    let dy_row = |i: usize, co: usize| &dy[(i * cout + co) * pix..][..pix];
    // E for tile t of the group of gi images from image i0: each operation's slope from
    // its saved code (the tile's cycles summed with their shares), times dY.
    let tile_gradient = |i0: usize, gi: usize, t: usize, e: &mut [f32]| {
        let _t = Timer::start(profile.map(|p| &p.slopes));
        debug_assert_eq!(i0 % gs, 0);
        let (sc, cols) = (&codes[i0 / gs], gi * pix);
        let (mut srow, mut scratch) = (Vec::new(), (Vec::new(), Vec::new()));
        let mut row = Vec::with_capacity(cols);
        for co in 0..cout {
            // d code / d P carries the ADC column's gain.
            let gain = slopes.rt.column(t, co).0;
            if cycles == 1 && slopes.draws == 0 {
                // One cycle, exact slopes: a table lookup per operation, in the same pass
                // as the product with dY (`0.0 +` keeps the bits of the accumulating path
                // below).
                let (sh, table) = (share[0] * gain, &slopes.table[..]);
                sc.row_into(t * cout + co, &mut row);
                for j in 0..gi {
                    let at = j * pix..(j + 1) * pix;
                    dy_times_slope(
                        &mut e[co * cols..][at.clone()],
                        dy_row(i0 + j, co),
                        &row[at],
                        table,
                        sh,
                    );
                }
                continue;
            }
            srow.clear();
            srow.resize(cols, 0.0f32);
            for (c, &sh) in share.iter().enumerate() {
                let r = (t * cycles + c) * cout + co;
                sc.row_into(r, &mut row);
                slopes.accumulate(
                    &mut srow,
                    &row,
                    sh * gain,
                    (r * g.n + i0) as u64 * pix as u64,
                    &mut scratch,
                );
            }
            for j in 0..gi {
                let at = j * pix..(j + 1) * pix;
                for ((ev, &dv), &sv) in
                    e[co * cols..][at.clone()].iter_mut().zip(dy_row(i0 + j, co)).zip(&srow[at])
                {
                    *ev = dv * sv;
                }
            }
        }
    };
    // The patches are the activation codes (E-PACT's, made again from the input x);
    // dW comes out in steps of the grid.
    let grid = s.grid;
    // The grid in a local: read through `s` at every value, the loop stays scalar.
    let codes_of =
        move |x: &[f32], q: &mut [f32]| q.iter_mut().zip(x).for_each(|(q, &v)| *q = grid.code(v));
    let bands = conv2d::Bands {
        rows: s.rows,
        write: &tile_gradient,
        input: Some(&codes_of),
        dw_scale: s.grid.step,
    };
    let (dx, mut dw, db) = conv2d::backward_in_bands(g, x, &s.w_hat, dy, want_dx, Some(&bands));
    // Zero-point part: dW += lo · (Σ_images dY) · maskᵀ, the sum over images taken per
    // group and the groups' sums added in order.
    if s.grid.lo != 0.0 {
        let mut dsum = vec![0.0f32; cout * pix];
        dsum.par_chunks_mut(pix).enumerate().for_each(|(co, total)| {
            let mut part = vec![0.0f32; pix];
            for i0 in (0..g.n).step_by(gs) {
                part.fill(0.0);
                for i in i0..(i0 + gs).min(g.n) {
                    part.iter_mut().zip(dy_row(i, co)).for_each(|(a, &v)| *a += v);
                }
                total.iter_mut().zip(&part).for_each(|(t, &p)| *t += p);
            }
        });
        gemm(
            s.grid.lo,
            MatRef::rowmajor(&dsum, cout, pix),
            MatRef::rowmajor(&s.mask, k, pix).t(),
            1.0,
            &mut dw,
            k,
        );
    }
    (dx, dw, db)
}
