//! `CimConv2d` / `CimLinear`: a convolution (or linear layer) computed the way the macro
//! computes it (DESIGN.md §2).
//!
//! Inputs arrive fake-quantized by E-PACT (values on the grid `lo + s_x·q`) and are
//! turned back into their codes `q`; latent weights are quantized here to codes `w`
//! with per-output-channel scales `s_w`. For every tile of `rows` along the reduction
//! axis (and every input-bit cycle), the integer partial sum `P = Σ q·w` — computed on
//! integers by [`super::psum`] (8-bit multiply-accumulates), the tile's patch rows
//! packed from the group's input codes, made bytes once ([`psum::CodePlane`]) —
//! becomes an ADC code and is read out (ideal, sampled, expected). The readouts are
//! shift-added and accumulated digitally, then rescaled:
//!
//! `y = s_w · (s_x · Σ_t Σ_c 2^(c·b) · step · j_{t,c} + lo · Σ_{valid k} w_k) + bias`
//!
//! where the zero-point sum runs over the non-padding positions of the window
//! (padding is a row that is not activated: code 0, no zero-point contribution).
//!
//! Backward, with `g` the estimator's slope per macro operation (cycles of one tile
//! averaged with the weight `(2^b − 1)·2^(c·b)/(2^B − 1)` of their bits):
//! `∂y/∂x̂_k = g·ŵ_k` and `∂y/∂ŵ_k = g·(x̂_k − lo) + lo` over valid positions; the
//! weight gradient passes straight through to the latent weights; E-PACT takes it from
//! there to the input and the bounds. With STE (`g = 1`) this is the plain
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

use super::Adc;
use super::profile::Timer;
use super::psum::{self, CodePlane, PackedWeights};
use super::quant::{ActGrid, weight_codes};
use super::readout::{CimRuntime, DrawKey, DrawRun, Estimator, ReadoutMode};
use crate::engine::gemm::{Kernel, MatRef, gemm};
use crate::engine::ops::conv2d::{self, Conv2dCfg, ConvGeom};
use crate::engine::{Tape, Tensor, Var, par};
use crate::{Error, Result};
use rayon::prelude::*;
use std::sync::atomic::Ordering;

/// One CIM layer's call: the shared runtime and this layer's id (part of the draw key).
pub struct CimCall<'a> {
    pub rt: &'a CimRuntime,
    pub layer: u64,
}

/// What backward needs beyond the tape values.
struct Saved {
    g: ConvGeom,
    grid: ActGrid,
    w_hat: Vec<f32>,
    /// The valid-position mask `[K][pixels]` (the zero-point term needs it both ways).
    mask: Vec<f32>,
    /// Per image group (`ConvGeom::group`, as the convolution backward groups images):
    /// every macro operation's ideal code, `[tiles·cycles][Cout][cols]` (statistical
    /// estimator only; see [`SlopeSource`]).
    codes: Option<Vec<Vec<u16>>>,
    /// Where backward takes the slope of each saved code from.
    slopes: Option<SlopeSource>,
    /// The runtime's profile (the STE backward keeps no runtime).
    profile: Option<std::sync::Arc<super::CimProfile>>,
    /// Rows per macro tile.
    rows: usize,
}

/// The statistical estimator's slope per macro operation, derived in backward from the
/// operation's saved ideal code. Codes are saved as `k − kmin`, or `levels` for a
/// saturated partial sum (beyond the ADC range), whose slope is 0; two bytes per
/// operation instead of a four-byte slope, and no slope work in forward.
struct SlopeSource {
    rt: CimRuntime,
    key: DrawKey,
    /// Slope per saved code, `levels + 1` entries (the last, saturated, is 0). For
    /// `stat:S` the slope is estimated per operation instead (`draws > 0`).
    table: Vec<f32>,
    draws: u32,
}

impl SlopeSource {
    fn new(rt: &CimRuntime, layer: u64) -> Self {
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

/// The ADC conversion of a run of partial sums on one column: `codes[i]`, the ideal code
/// of `sums[i]·scale + offset` (rounded half to even, clamped to the ADC range), and,
/// when `saved` is given, the code backward keeps: `k − kmin`, or `levels` where the
/// sum saturated (its rounded value lies beyond the range). Every slot of both is
/// written. The value stays in f32 until it is in range: it is first limited to one
/// code beyond the ADC's ends (which also makes a NaN the lower one), then rounded,
/// then clamped. AVX-512 and AVX2 paths do sixteen or eight at a time with the same IEEE
/// operations, so the same codes (`adc_paths_are_the_scalar_conversion_exactly`).
pub(super) fn adc_codes(
    sums: &[i32],
    scale: f32,
    offset: f32,
    adc: Adc,
    codes: &mut [i32],
    saved: Option<&mut [std::mem::MaybeUninit<u16>]>,
) {
    adc_codes_on(crate::engine::gemm::kernel(), sums, scale, offset, adc, codes, saved)
}

/// [`adc_codes`] on the instruction set `isa` (the tests run every one the CPU has).
pub(super) fn adc_codes_on(
    isa: Kernel,
    sums: &[i32],
    scale: f32,
    offset: f32,
    adc: Adc,
    codes: &mut [i32],
    mut saved: Option<&mut [std::mem::MaybeUninit<u16>]>,
) {
    assert!(isa.supported(), "{} is not supported by this CPU", isa.name());
    assert_eq!(sums.len(), codes.len());
    assert!(saved.as_ref().is_none_or(|s| s.len() == sums.len()));
    // One code beyond each end of the range stands for every saturated sum. The codes
    // must be exact in f32 for that (and for the conversion to be sound), and the
    // saturated marker must fit the saved codes.
    assert!(
        adc.kmin.unsigned_abs() < 1 << 24 && adc.kmax.unsigned_abs() < 1 << 24,
        "ADC codes beyond ±2^24 (MacroSpec::validate refuses them)"
    );
    assert!(
        saved.is_none() || adc.levels() < u16::MAX as usize,
        "an ADC of {} levels does not fit two-byte saved codes",
        adc.levels()
    );
    let done = match isa {
        // SAFETY: the instruction set is present (asserted above); lengths asserted above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe {
            adc_codes_avx512(sums, scale, offset, adc, codes, saved.as_deref_mut())
        },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe {
            adc_codes_avx2(sums, scale, offset, adc, codes, saved.as_deref_mut())
        },
        _ => 0,
    };
    let (below, above) = (adc.kmin as f32 - 1.0, adc.kmax as f32 + 1.0);
    let saturated = adc.levels() as u16;
    for i in done..sums.len() {
        // `v as f32` is exact: partial sums are below 2^24 (`MacroSpec::validate`).
        let r = (sums[i] as f32 * scale + offset).max(below).min(above).round_ties_even();
        // SAFETY: max/min make any value (NaN and ±inf included) an integer within
        // kmin..=kmax, below 2^24 in magnitude (asserted above): exact in f32 and i32.
        let k = unsafe { r.max(below + 1.0).min(above - 1.0).to_int_unchecked::<i32>() };
        codes[i] = k;
        if let Some(s) = saved.as_deref_mut() {
            s[i].write(if r == k as f32 { (k - adc.kmin) as u16 } else { saturated });
        }
    }
}

/// Sixteen conversions at a time; returns how many were done. `max(x, below)` with the
/// NaN-propagating x86 operand order (`vmaxps` returns its second operand when either
/// is NaN) is Rust's `x.max(below)` here, since `below` is never NaN; the rest are the
/// same single IEEE operations as the scalar loop.
///
/// # Safety
/// AVX-512F must be present; the slices as [`adc_codes`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn adc_codes_avx512(
    sums: &[i32],
    scale: f32,
    offset: f32,
    adc: Adc,
    codes: &mut [i32],
    saved: Option<&mut [std::mem::MaybeUninit<u16>]>,
) -> usize {
    use std::arch::x86_64::*;
    let n = sums.len() / 16 * 16;
    let (below, above) = (adc.kmin as f32 - 1.0, adc.kmax as f32 + 1.0);
    let (scale, offset) = (_mm512_set1_ps(scale), _mm512_set1_ps(offset));
    let (lo, hi) = (_mm512_set1_ps(below), _mm512_set1_ps(above));
    let (lo_in, hi_in) = (_mm512_set1_ps(below + 1.0), _mm512_set1_ps(above - 1.0));
    let (kmin, saturated) = (_mm512_set1_epi32(adc.kmin), _mm512_set1_epi32(adc.levels() as i32));
    let saved = saved.map(|s| s.as_mut_ptr() as *mut u16);
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 <= n <= every slice's length.
        unsafe {
            let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(sums.as_ptr().add(i) as *const _));
            let x = _mm512_add_ps(_mm512_mul_ps(v, scale), offset);
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_min_ps(_mm512_max_ps(x, lo), hi),
            );
            let k = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo_in), hi_in));
            _mm512_storeu_si512(codes.as_mut_ptr().add(i) as *mut _, k);
            if let Some(s) = saved {
                let inside = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(r, _mm512_cvtepi32_ps(k));
                let code = _mm512_mask_blend_epi32(inside, saturated, _mm512_sub_epi32(k, kmin));
                _mm256_storeu_si256(s.add(i) as *mut __m256i, _mm512_cvtepi32_epi16(code));
            }
        }
    }
    n
}

/// Eight conversions at a time: [`adc_codes_avx512`]'s operations on 256-bit vectors
/// (`vmaxps` likewise returns its second operand for a NaN first one); the saved codes,
/// all below 2^16, are packed to u16 with unsigned saturation that never acts.
///
/// # Safety
/// AVX2 must be present; the slices as [`adc_codes`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adc_codes_avx2(
    sums: &[i32],
    scale: f32,
    offset: f32,
    adc: Adc,
    codes: &mut [i32],
    saved: Option<&mut [std::mem::MaybeUninit<u16>]>,
) -> usize {
    use std::arch::x86_64::*;
    let n = sums.len() / 8 * 8;
    let (below, above) = (adc.kmin as f32 - 1.0, adc.kmax as f32 + 1.0);
    let (scale, offset) = (_mm256_set1_ps(scale), _mm256_set1_ps(offset));
    let (lo, hi) = (_mm256_set1_ps(below), _mm256_set1_ps(above));
    let (lo_in, hi_in) = (_mm256_set1_ps(below + 1.0), _mm256_set1_ps(above - 1.0));
    let (kmin, saturated) = (_mm256_set1_epi32(adc.kmin), _mm256_set1_epi32(adc.levels() as i32));
    let saved = saved.map(|s| s.as_mut_ptr() as *mut u16);
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= every slice's length.
        unsafe {
            let v = _mm256_cvtepi32_ps(_mm256_loadu_si256(sums.as_ptr().add(i) as *const __m256i));
            let x = _mm256_add_ps(_mm256_mul_ps(v, scale), offset);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_min_ps(_mm256_max_ps(x, lo), hi),
            );
            let k = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo_in), hi_in));
            _mm256_storeu_si256(codes.as_mut_ptr().add(i) as *mut __m256i, k);
            if let Some(s) = saved {
                let inside =
                    _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(r, _mm256_cvtepi32_ps(k)));
                let code = _mm256_blendv_epi8(saturated, _mm256_sub_epi32(k, kmin), inside);
                // Within each 128-bit half: codes 0–3 (4–7) twice; keep one copy of each.
                let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(code, code));
                _mm_storeu_si128(s.add(i) as *mut __m128i, _mm256_castsi256_si128(packed));
            }
        }
    }
    n
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

/// 1 where the window position is inside the image, 0 on padding: `[K][pixels]`.
fn valid_mask(g: &ConvGeom) -> Vec<f32> {
    let ones = vec![1.0f32; g.in_size()];
    let one = ConvGeom { n: 1, ..*g };
    let mut m = vec![0.0f32; g.k() * g.pixels()];
    conv2d::im2col(&one, &ones, &mut m, g.pixels(), 0..g.k());
    m
}

/// Forward of one group: returns the readout accumulator `[Cout][cols]` (in partial-sum
/// units) and, for the statistical estimator, the saved codes `[tiles·cycles][Cout][cols]`.
///
/// Per tile and cycle: the integer partial sums ([`psum`]), then per output channel's
/// row of the group: ideal codes (vectorised), readouts (one `sample_run` call), and the
/// shift-add into the accumulator.
#[allow(clippy::too_many_arguments)]
fn group_forward(
    g: &ConvGeom,
    call: &CimCall,
    qx: &[f32],
    w_packed: &PackedWeights,
    first_image: usize,
    gi: usize,
    want_codes: bool,
) -> (Vec<f32>, Option<Vec<u16>>) {
    let rt = call.rt;
    let spec = &rt.spec;
    let adc = spec.adc;
    let (k, pix, cols, cout) = (g.k(), g.pixels(), gi * g.pixels(), g.cout);
    let tiles = spec.tiles(k);
    let cycles = spec.cycles() as usize;
    let b = spec.input_bits_per_cycle;
    let key = DrawKey::new(rt.seed, call.layer, rt.step);
    let mut acc = vec![0.0f32; cout * cols];
    // Appended in the loops' order, which is its layout's: no zero fill first.
    let mut saved = want_codes.then(|| Vec::<u16>::with_capacity(tiles * cycles * cout * cols));
    let mut psum = vec![0i32; cout * cols];
    // Byte planes of a cycle's input codes (see `psum`), `[cycle][plane]`, made once for
    // every tile; and a tile's packed words.
    let planes = b.div_ceil(8) as usize;
    let profile = rt.profile.as_deref();
    let code_planes: Vec<CodePlane> = {
        let _t = Timer::start(profile.map(|p| &p.partial_sums));
        let bits = |c: usize| (cycles > 1).then_some((c as u32 * b, b));
        (0..cycles * planes)
            .map(|i| CodePlane::new(g, qx, gi, bits(i / planes), (i % planes) as u32))
            .collect()
    };
    let (mut words, path) = (Vec::new(), psum::Path::best_for(w_packed));
    let (mut codes, mut read) = (vec![0i32; cols], vec![0.0f32; cols]);
    let inv_step = 1.0 / adc.step;
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
                    // `((t·cycles + c)·cout + co)·cols`, is the next one.
                    Some(s) => {
                        debug_assert_eq!(s.len(), ((t * cycles + c) * cout + co) * cols);
                        let at = s.len();
                        adc_codes(
                            sums,
                            scale,
                            offset,
                            adc,
                            &mut codes,
                            Some(&mut s.spare_capacity_mut()[..cols]),
                        );
                        // SAFETY: `adc_codes` wrote all `cols` values after `at` (the
                        // capacity was reserved for every operation of the group).
                        unsafe { s.set_len(at + cols) };
                    }
                    None => adc_codes(sums, scale, offset, adc, &mut codes, None),
                }
                // This group's images are consecutive in the numbering, so one channel's
                // row of the group is one run of consecutive operations.
                let op0 = (((t * cycles + c) * cout + co) * g.n + first_image) as u64 * pix as u64;
                let run = DrawRun { key, op0, stride: 1 };
                match rt.mode {
                    ReadoutMode::Ideal => {
                        read.iter_mut().zip(&codes).for_each(|(r, &kc)| *r = kc as f32)
                    }
                    ReadoutMode::Sampled => rt.readout.sample_run(&codes, run, &mut read),
                    ReadoutMode::Expected => rt
                        .readout
                        .table()
                        .expect("CimRuntime::check_source: the expected mode has a table")
                        .mean_run(&codes, &mut read),
                }
                for (a, &r) in acc[e0..e0 + cols].iter_mut().zip(&read) {
                    *a += weight * r;
                }
            }
        }
    }
    (acc, saved)
}

/// CIM convolution. `x` must be E-PACT output on `grid`; `w` are latent weights.
pub fn cim_conv2d(
    tape: &mut Tape,
    x: Var,
    w: Var,
    bias: Option<Var>,
    cfg: Conv2dCfg,
    grid: ActGrid,
    call: &CimCall,
) -> Result<Var> {
    let spec = &call.rt.spec;
    spec.validate()?;
    call.rt.check_source()?;
    if grid.max_code != spec.input_max() {
        return Err(Error::invalid(format!(
            "CIM layer: activations have {} levels, the macro takes {}-bit inputs",
            grid.max_code + 1,
            spec.input_bits
        )));
    }
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
    let qx: Vec<f32> = tape.value(x).data().par_iter().map(|&v| grid.code(v)).collect();
    let w_packed = PackedWeights::new(&w_codes, g.cout, k, spec.rows);
    let want_codes = matches!(call.rt.estimator, Estimator::Statistical { .. })
        && tape.recording()
        && (tape.needs_grad(x) || tape.needs_grad(w));
    if want_codes && spec.adc.levels() >= u16::MAX as usize {
        return Err(Error::invalid(format!(
            "the statistical estimator saves codes in two bytes: an ADC of {} levels is too fine (at most 65,534)",
            spec.adc.levels()
        )));
    }
    let bias_v: Option<Vec<f32>> = bias.map(|b| tape.value(b).data().to_vec());
    // The convolution backward's groups (`statistical_backward` reads the codes by them).
    let gs = g.group();
    let pix = g.pixels();
    let mut y = par::zeros(g.n * g.out_size());
    let codes: Vec<Option<Vec<u16>>> = y
        .par_chunks_mut(gs * g.out_size())
        .enumerate()
        .map(|(gidx, yg)| {
            // Cut from the output, as the plain convolution does (an image may be all padding).
            let gi = yg.len() / g.out_size();
            let qg = &qx[gidx * gs * g.in_size()..][..gi * g.in_size()];
            let (acc, codes) = group_forward(&g, call, qg, &w_packed, gidx * gs, gi, want_codes);
            let cols = gi * pix;
            for j in 0..gi {
                for co in 0..g.cout {
                    let (s_w, b) = (w_scale[co], bias_v.as_ref().map_or(0.0, |b| b[co]));
                    let out = &mut yg[(j * g.cout + co) * pix..][..pix];
                    let (a, z) = (&acc[co * cols + j * pix..][..pix], &zw[co * pix..][..pix]);
                    for ((o, &a), &z) in out.iter_mut().zip(a).zip(z) {
                        *o = s_w * (grid.step * a + grid.lo * z) + b;
                    }
                }
            }
            codes
        })
        .collect();
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
    Ok(tape.push(y, &inputs, move |gout, vals, sink| backward(saved, x, w, bias, gout, vals, sink)))
}

fn backward(
    s: Saved,
    x: Var,
    w: Var,
    bias: Option<Var>,
    gout: &Tensor,
    vals: &crate::engine::tape::Values,
    sink: &mut crate::engine::tape::GradSink,
) {
    let g = s.g;
    let xv = vals.get(x).data();
    let dy = gout.data();
    // Either way the plain convolution backward runs on all threads, so its wall time
    // counts once per thread, as the per-thread parts do (less the slopes, timed apart).
    let t = std::time::Instant::now();
    let slopes_before = s.profile.as_ref().map_or(0, |p| p.slopes.load(Ordering::Relaxed));
    let grads = match (&s.codes, &s.slopes) {
        (Some(codes), Some(slopes)) => {
            statistical_backward(&s, codes, slopes, xv, dy, sink.wants(x))
        }
        // STE: the plain convolution backward on (x̂, ŵ).
        _ => conv2d::backward(&g, xv, &s.w_hat, dy, sink.wants(x)),
    };
    if let Some(p) = &s.profile {
        let slopes = p.slopes.load(Ordering::Relaxed).wrapping_sub(slopes_before);
        let ns = t.elapsed().as_nanos() as u64 * rayon::current_num_threads() as u64;
        p.backward_gemm.fetch_add(ns.saturating_sub(slopes), Ordering::Relaxed);
    }
    conv2d::add_grads(sink, vals, (x, w, bias), grads);
}

/// The statistical estimator's backward: the convolution backward on the activation
/// codes and ŵ ([`conv2d::backward_in_bands`]), each tile's rows seeing its own output
/// gradient `E = dY ∘ slope` (the slope of each of its macro operations, from the saved
/// codes), then the zero-point part of the weight gradient.
fn statistical_backward(
    s: &Saved,
    codes: &[Vec<u16>],
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
        for co in 0..cout {
            // d code / d P carries the ADC column's gain.
            let gain = slopes.rt.column(t, co).0;
            if cycles == 1 && slopes.draws == 0 {
                // One cycle, exact slopes: a table lookup per operation, in the same pass
                // as the product with dY (`0.0 +` keeps the bits of the accumulating path
                // below).
                let (sh, table) = (share[0] * gain, &slopes.table[..]);
                let codes = &sc[(t * cout + co) * cols..][..cols];
                for j in 0..gi {
                    let at = j * pix..(j + 1) * pix;
                    dy_times_slope(
                        &mut e[co * cols..][at.clone()],
                        dy_row(i0 + j, co),
                        &codes[at],
                        table,
                        sh,
                    );
                }
                continue;
            }
            srow.clear();
            srow.resize(cols, 0.0f32);
            for (c, &sh) in share.iter().enumerate() {
                let row = (t * cycles + c) * cout + co;
                slopes.accumulate(
                    &mut srow,
                    &sc[row * cols..][..cols],
                    sh * gain,
                    (row * g.n + i0) as u64 * pix as u64,
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
    // The patches are the activation codes; dW comes out in steps of the grid.
    let codes_of =
        |x: &[f32], q: &mut [f32]| q.iter_mut().zip(x).for_each(|(q, &v)| *q = s.grid.code(v));
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

/// CIM linear layer: a 1×1 convolution over a 1×1 image (`x` is (N, in), `w` (out, in)).
pub fn cim_linear(
    tape: &mut Tape,
    x: Var,
    w: Var,
    bias: Option<Var>,
    grid: ActGrid,
    call: &CimCall,
) -> Result<Var> {
    let (xs, ws) = (tape.value(x).shape().to_vec(), tape.value(w).shape().to_vec());
    if xs.len() != 2 || ws.len() != 2 || xs[1] != ws[1] {
        return Err(Error::invalid(format!("CIM linear: input {xs:?} does not fit weight {ws:?}")));
    }
    let x4 = reshape(tape, x, &[xs[0], xs[1], 1, 1]);
    let w4 = reshape(tape, w, &[ws[0], ws[1], 1, 1]);
    let y = cim_conv2d(tape, x4, w4, bias, Conv2dCfg::default(), grid, call)?;
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
