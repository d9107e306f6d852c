//! The ADC conversion of a column's partial sums to codes (and to the codes backward
//! saves), scalar and on AVX-512 / AVX2.

use crate::cim::Adc;
use crate::engine::gemm::Kernel;

/// The ADC conversion of a run of partial sums on one column: `codes[i]`, the ideal code
/// of `sums[i]·scale + offset` (rounded half to even, clamped to the ADC range), and,
/// when `saved` is given, the code backward keeps: `k − kmin`, or `levels` where the
/// sum saturated (its rounded value lies beyond the range). Every slot of both is
/// written. The value stays in f32 until it is in range: it is first limited to one
/// code beyond the ADC's ends (which also makes a NaN the lower one), then rounded,
/// then clamped. AVX-512 and AVX2 paths do sixteen or eight at a time with the same IEEE
/// operations, so the same codes (`adc_paths_are_the_scalar_conversion_exactly`).
pub(crate) fn adc_codes(
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
