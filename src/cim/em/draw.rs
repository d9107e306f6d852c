//! Drawing a run of readouts from an error model: the sampling hot loop.
//!
//! Draw `i` of a run is `sample(codes[i], mix64(key + op_i·φ))` with `op_i = first +
//! i·stride` (a SplitMix64 stream, [`crate::cim::DrawKey::forward`]). Three
//! implementations compute exactly that, bit for bit, and are chosen at run time by the
//! instruction set the GEMM uses ([`crate::engine::gemm::kernel`]):
//!
//! * **AVX-512** (F + DQ): eight draws at once — the hashes in 64-bit lanes
//!   (`vpmullq`), the row's span and its alias entry each fetched as one 64-bit word
//!   per lane (two gathers), the keep/alias choice as a mask blend. Integer arithmetic only, so it cannot differ
//!   from the scalar path; `tests` hold it to that on every preset.
//! * **AVX2**: the same steps four draws at a time, the 64-bit multiplies of the hash
//!   built from 32 × 32-bit ones (AVX2 has no `vpmullq`); for CPUs without AVX-512.
//! * **portable**: the same steps per draw, in blocks that stay in L1 (hashes first,
//!   which the compiler vectorises, then the two table lookups).
//!
//! The sampled slopes (`stat:S`, [`ErrorModel::slope_stream`]) have the same three
//! paths, one hash per operation and a gather per draw.

use super::table::ErrorModel;
use crate::cim::readout::LATTICE_STEP;
use crate::engine::gemm::Kernel;
use crate::rng::mix64;

/// The SplitMix64 increment (`DrawKey::forward` steps the stream by it).
const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

/// What the vector paths finalise for draw `i` of a run: `z_i = key + op_i·φ + φ`, with
/// `op_i = first + i·stride` (`mix64` adds φ before finalising), as an i64 lane.
#[cfg(target_arch = "x86_64")]
fn hash_input(key: u64, first: u64, stride: u64, i: u64) -> i64 {
    key.wrapping_add(first.wrapping_add(i.wrapping_mul(stride)).wrapping_mul(PHI)).wrapping_add(PHI)
        as i64
}

impl ErrorModel {
    /// `out[i] = sample(codes[i], mix64(key + (first + i·stride)·φ))` as f32.
    pub(crate) fn sample_stream(
        &self,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        out: &mut [f32],
    ) {
        self.sample_stream_on(crate::engine::gemm::kernel(), codes, key, first, stride, out)
    }

    /// [`ErrorModel::sample_stream`] on the instruction set `isa` (the tests run every one
    /// the CPU has).
    pub(crate) fn sample_stream_on(
        &self,
        isa: Kernel,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        out: &mut [f32],
    ) {
        assert_eq!(codes.len(), out.len());
        assert!(isa.supported(), "{} is not supported by this CPU", isa.name());
        let done = match isa {
            // SAFETY: the CPU has AVX-512 F (supported) and DQ (checked here); every gather
            // index is a clamped row or an entry of that row (see `avx512::stream`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if self.gather_indexable() && avx512_available() => unsafe {
                avx512::stream(self, codes, key, first, stride, out)
            },
            // SAFETY: the CPU has AVX2 (supported); the indices as above (see `avx2::stream`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if self.gather_indexable() => unsafe {
                avx2::stream(self, codes, key, first, stride, out)
            },
            _ => 0,
        };
        self.stream_portable(
            &codes[done..],
            key,
            first.wrapping_add((done as u64).wrapping_mul(stride)),
            stride,
            &mut out[done..],
        )
    }

    /// The portable path (also the vector paths' tails).
    pub(crate) fn stream_portable(
        &self,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        out: &mut [f32],
    ) {
        const BLOCK: usize = 256;
        let mut bits = [0u64; BLOCK];
        let mut slot = [0u32; BLOCK];
        for (b, (cs, os)) in codes.chunks(BLOCK).zip(out.chunks_mut(BLOCK)).enumerate() {
            let op0 = first.wrapping_add(((b * BLOCK) as u64).wrapping_mul(stride));
            let n = cs.len();
            for (i, v) in bits[..n].iter_mut().enumerate() {
                *v = mix64(key.wrapping_add(
                    op0.wrapping_add((i as u64).wrapping_mul(stride)).wrapping_mul(PHI),
                ));
            }
            // Phase 1: which table entry each draw lands on; phase 2: keep or alias.
            // Two simple loops overlap their loads better than one long chain.
            for ((s, &k), &r) in slot[..n].iter_mut().zip(cs).zip(&bits) {
                *s = self.alias_slot(k, r);
            }
            for ((o, &s), &r) in os.iter_mut().zip(&slot[..n]).zip(&bits) {
                *o = self.alias_pick(s, r) as f32;
            }
        }
    }

    /// The sampled slope of every operation of a run (`stat:S`): the mean of `draws`
    /// pair differences ([`ErrorModel::pair_difference`]) over the pair's spacing, the
    /// draws keyed as [`crate::cim::DrawKey::backward`] (one hash per operation, then a
    /// lattice step per draw); 1 on a one-code model.
    pub(crate) fn slope_stream(
        &self,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        draws: u32,
        out: &mut [f32],
    ) {
        self.slope_stream_on(crate::engine::gemm::kernel(), codes, key, first, stride, draws, out)
    }

    /// [`ErrorModel::slope_stream`] on the instruction set `isa` (the tests run every one
    /// the CPU has).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn slope_stream_on(
        &self,
        isa: Kernel,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        draws: u32,
        out: &mut [f32],
    ) {
        assert_eq!(codes.len(), out.len());
        assert!(isa.supported(), "{} is not supported by this CPU", isa.name());
        if draws == 0 {
            // No draws, no estimate: the straight-through slope (as the portable path).
            out.fill(1.0);
            return;
        }
        // The vector paths sum S ≤ 2^16 draws of |d| ≤ 2^15 in i32 lanes (the extreme,
        // −2^31, fits), and AVX-512 gathers the entries with i32 indices.
        let vector = draws <= 1 << 16 && self.pair_diff.entries.len() <= i32::MAX as usize;
        let done = match isa {
            // SAFETY: AVX-512 F (supported) and DQ (checked here) are present; indices are
            // clamped rows and entries of their rows; the sums cannot overflow (above).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if vector && avx512_available() => unsafe {
                avx512::slopes(self, codes, key, first, stride, draws, out)
            },
            // SAFETY: AVX2 is present (supported); the rest as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if vector => unsafe {
                avx2::slopes(self, codes, key, first, stride, draws, out)
            },
            _ => 0,
        };
        self.slopes_portable(
            &codes[done..],
            key,
            first.wrapping_add((done as u64).wrapping_mul(stride)),
            stride,
            draws,
            &mut out[done..],
        )
    }

    /// The portable path of [`ErrorModel::slope_stream`] (also its tail).
    pub(crate) fn slopes_portable(
        &self,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        draws: u32,
        out: &mut [f32],
    ) {
        for (i, (o, &kc)) in out.iter_mut().zip(codes).enumerate() {
            let op = first.wrapping_add((i as u64).wrapping_mul(stride));
            let mut bits = mix64(key.wrapping_add(op.wrapping_mul(PHI)));
            let (mut diff, mut spacing) = (0i64, 0);
            for _ in 0..draws {
                let (d, sp) = self.pair_difference(kc, bits);
                diff += d as i64;
                spacing = sp;
                bits = bits.wrapping_add(LATTICE_STEP);
            }
            *o = if spacing == 0 { 1.0 } else { diff as f32 / (draws as f32 * spacing as f32) };
        }
    }

    /// Whether every gather index (an i32) can reach every entry.
    fn gather_indexable(&self) -> bool {
        self.flat.len() <= i32::MAX as usize
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ErrorModel, LATTICE_STEP, PHI};
    use std::arch::x86_64::*;

    /// SplitMix64's finaliser on eight lanes (the increment is already in `z`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn finalise(z: __m512i) -> __m512i {
        let c1 = _mm512_set1_epi64(0xBF58_476D_1CE4_E5B9u64 as i64);
        let c2 = _mm512_set1_epi64(0x94D0_49BB_1331_11EBu64 as i64);
        let z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<30>(z)), c1);
        let z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<27>(z)), c2);
        _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z))
    }

    /// Draws the first `codes.len() / 8 · 8` readouts; returns how many.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and DQ, and `m.gather_indexable()` must hold.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn stream(
        m: &ErrorModel,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        out: &mut [f32],
    ) -> usize {
        let n = codes.len() / 8 * 8;
        let (kmin, kmax) = (_mm256_set1_epi32(m.kmin), _mm256_set1_epi32(m.kmax));
        let low32 = _mm512_set1_epi64(0xFFFF_FFFF);
        let low16 = _mm512_set1_epi64(0xFFFF);
        let jmin = _mm256_set1_epi32(m.jmin);
        let span = m.span.as_ptr() as *const i64;
        let flat = m.flat.as_ptr() as *const i64;
        let lane = |i| super::hash_input(key, first, stride, i);
        let mut z = _mm512_set_epi64(
            lane(7),
            lane(6),
            lane(5),
            lane(4),
            lane(3),
            lane(2),
            lane(1),
            lane(0),
        );
        let advance = _mm512_set1_epi64(stride.wrapping_mul(8).wrapping_mul(PHI) as i64);
        let mut i = 0;
        while i < n {
            let bits = finalise(z);
            z = _mm512_add_epi64(z, advance);
            // The row of each draw: its ideal code clamped to the table.
            // SAFETY: i + 8 <= n <= codes.len().
            let k = unsafe { _mm256_loadu_si256(codes.as_ptr().add(i) as *const __m256i) };
            let row = _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(k, kmin), kmax), kmin);
            // RowSpan { start, width }: one 64-bit word per row.
            // SAFETY: row < span.len() (clamped above).
            let sw = unsafe { _mm512_i32gather_epi64::<8>(row, span) };
            // Column = (high 32 bits × width) >> 32 (vpmuludq: 32 × 32 → 64 bits).
            let col = _mm512_srli_epi64::<32>(_mm512_mul_epu32(
                _mm512_srli_epi64::<32>(bits),
                _mm512_srli_epi64::<32>(sw),
            ));
            let slot = _mm512_cvtepi64_epi32(_mm512_add_epi64(_mm512_and_si512(sw, low32), col));
            // AliasEntry { keep, own, alias }: one 64-bit word per entry.
            // SAFETY: slot = start + column < start + width <= flat.len().
            let e = unsafe { _mm512_i32gather_epi64::<8>(slot, flat) };
            let take_alias =
                _mm512_cmpge_epu64_mask(_mm512_and_si512(bits, low32), _mm512_and_si512(e, low32));
            let own = _mm512_and_si512(_mm512_srli_epi64::<32>(e), low16);
            let alias = _mm512_srli_epi64::<48>(e);
            let j = _mm256_add_epi32(
                _mm512_cvtepi64_epi32(_mm512_mask_blend_epi64(take_alias, own, alias)),
                jmin,
            );
            // SAFETY: i + 8 <= n <= out.len().
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtepi32_ps(j)) };
            i += 8;
        }
        n
    }

    /// Sampled slopes of the first `codes.len() / 8 · 8` operations; returns how many.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and DQ; `draws ≤ 2^16`, and every entry index fits
    /// an i32 (the slots are narrowed to i32 for the gather).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn slopes(
        m: &ErrorModel,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        draws: u32,
        out: &mut [f32],
    ) -> usize {
        let n = codes.len() / 8 * 8;
        let (kmin, kmax) = (_mm256_set1_epi32(m.kmin), _mm256_set1_epi32(m.kmax));
        let low32 = _mm512_set1_epi64(0xFFFF_FFFF);
        let p = &m.pair_diff;
        let (span, entries, spacing) =
            (p.span.as_ptr() as *const i64, p.entries.as_ptr() as *const i64, p.spacing.as_ptr());
        let lane = |i| super::hash_input(key, first, stride, i);
        let mut z = _mm512_set_epi64(
            lane(7),
            lane(6),
            lane(5),
            lane(4),
            lane(3),
            lane(2),
            lane(1),
            lane(0),
        );
        let advance = _mm512_set1_epi64(stride.wrapping_mul(8).wrapping_mul(PHI) as i64);
        let lattice = _mm512_set1_epi64(LATTICE_STEP as i64);
        let scale = _mm256_set1_ps(draws as f32);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= codes.len().
            let k = unsafe { _mm256_loadu_si256(codes.as_ptr().add(i) as *const __m256i) };
            let row = _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(k, kmin), kmax), kmin);
            // SAFETY: row < span.len() = spacing.len() (clamped above).
            let (sw, sp) = unsafe {
                (_mm512_i32gather_epi64::<8>(row, span), _mm256_i32gather_epi32::<4>(spacing, row))
            };
            let (start, width) = (_mm512_and_si512(sw, low32), _mm512_srli_epi64::<32>(sw));
            let mut bits = finalise(z);
            z = _mm512_add_epi64(z, advance);
            let mut diff = _mm256_setzero_si256();
            for _ in 0..draws {
                let col =
                    _mm512_srli_epi64::<32>(_mm512_mul_epu32(_mm512_srli_epi64::<32>(bits), width));
                let slot = _mm512_cvtepi64_epi32(_mm512_add_epi64(start, col));
                // SAFETY: slot = start + column < start + width <= entries.len().
                let e = unsafe { _mm512_i32gather_epi64::<8>(slot, entries) };
                let take_alias = _mm512_cmpge_epu64_mask(
                    _mm512_and_si512(bits, low32),
                    _mm512_and_si512(e, low32),
                );
                // own: bits 32..48, alias: bits 48..64, both signed 16-bit.
                let own = _mm512_srai_epi64::<48>(_mm512_slli_epi64::<16>(e));
                let alias = _mm512_srai_epi64::<48>(e);
                diff = _mm256_add_epi32(
                    diff,
                    _mm512_cvtepi64_epi32(_mm512_mask_blend_epi64(take_alias, own, alias)),
                );
                bits = _mm512_add_epi64(bits, lattice);
            }
            // diff / (draws · spacing), as the portable path rounds it; 1 where spacing is 0.
            let denom = _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sp));
            let slope = _mm256_div_ps(_mm256_cvtepi32_ps(diff), denom);
            let one_code = _mm256_castsi256_ps(_mm256_cmpeq_epi32(sp, _mm256_setzero_si256()));
            let slope = _mm256_blendv_ps(slope, _mm256_set1_ps(1.0), one_code);
            // SAFETY: i + 8 <= n <= out.len().
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), slope) };
            i += 8;
        }
        n
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ErrorModel, LATTICE_STEP, PHI};
    use std::arch::x86_64::*;

    /// The low 64 bits of `a · c` in each lane: `al·cl + (ah·cl + al·ch) << 32`, from
    /// three 32 × 32 → 64-bit multiplies (`vpmuludq`), as wrapping u64 arithmetic does.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_lo(a: __m256i, c: u64) -> __m256i {
        let (cl, ch) = (_mm256_set1_epi64x(c as i64), _mm256_set1_epi64x((c >> 32) as i64));
        let cross = _mm256_add_epi64(
            _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), cl),
            _mm256_mul_epu32(a, ch),
        );
        _mm256_add_epi64(_mm256_mul_epu32(a, cl), _mm256_slli_epi64::<32>(cross))
    }

    /// SplitMix64's finaliser on four lanes (the increment is already in `z`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn finalise(z: __m256i) -> __m256i {
        let z = mul_lo(_mm256_xor_si256(z, _mm256_srli_epi64::<30>(z)), 0xBF58_476D_1CE4_E5B9);
        let z = mul_lo(_mm256_xor_si256(z, _mm256_srli_epi64::<27>(z)), 0x94D0_49BB_1331_11EB);
        _mm256_xor_si256(z, _mm256_srli_epi64::<31>(z))
    }

    /// Draws the first `codes.len() / 4 · 4` readouts; returns how many. The steps of
    /// `avx512::stream` on four 64-bit lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2, and `m.gather_indexable()` must hold.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn stream(
        m: &ErrorModel,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        out: &mut [f32],
    ) -> usize {
        let n = codes.len() / 4 * 4;
        let (kmin, kmax) = (_mm_set1_epi32(m.kmin), _mm_set1_epi32(m.kmax));
        let low32 = _mm256_set1_epi64x(0xFFFF_FFFF);
        let low16 = _mm256_set1_epi64x(0xFFFF);
        let jmin = _mm_set1_epi32(m.jmin);
        // The low 32 bits of each 64-bit lane, in order.
        let evens = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        let span = m.span.as_ptr() as *const i64;
        let flat = m.flat.as_ptr() as *const i64;
        let lane = |i| super::hash_input(key, first, stride, i);
        let mut z = _mm256_setr_epi64x(lane(0), lane(1), lane(2), lane(3));
        let advance = _mm256_set1_epi64x(stride.wrapping_mul(4).wrapping_mul(PHI) as i64);
        let mut i = 0;
        while i < n {
            let bits = finalise(z);
            z = _mm256_add_epi64(z, advance);
            // SAFETY: i + 4 <= n <= codes.len().
            let k = unsafe { _mm_loadu_si128(codes.as_ptr().add(i) as *const __m128i) };
            let row = _mm_sub_epi32(_mm_min_epi32(_mm_max_epi32(k, kmin), kmax), kmin);
            // SAFETY: row < span.len() (clamped above).
            let sw = unsafe { _mm256_i32gather_epi64::<8>(span, row) };
            let col = _mm256_srli_epi64::<32>(_mm256_mul_epu32(
                _mm256_srli_epi64::<32>(bits),
                _mm256_srli_epi64::<32>(sw),
            ));
            let slot = _mm256_add_epi64(_mm256_and_si256(sw, low32), col);
            // SAFETY: slot = start + column < start + width <= flat.len().
            let e = unsafe { _mm256_i64gather_epi64::<8>(flat, slot) };
            // Both sides below 2^32, so the signed 64-bit compare is the unsigned one.
            let keep_own =
                _mm256_cmpgt_epi64(_mm256_and_si256(e, low32), _mm256_and_si256(bits, low32));
            let own = _mm256_and_si256(_mm256_srli_epi64::<32>(e), low16);
            let alias = _mm256_srli_epi64::<48>(e);
            let j = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
                _mm256_blendv_epi8(alias, own, keep_own),
                evens,
            ));
            // SAFETY: i + 4 <= n <= out.len().
            unsafe {
                _mm_storeu_ps(out.as_mut_ptr().add(i), _mm_cvtepi32_ps(_mm_add_epi32(j, jmin)))
            };
            i += 4;
        }
        n
    }
    /// Sampled slopes of the first `codes.len() / 4 · 4` operations; returns how many.
    /// The steps of `avx512::slopes` on four 64-bit lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2; `draws ≤ 2^16`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn slopes(
        m: &ErrorModel,
        codes: &[i32],
        key: u64,
        first: u64,
        stride: u64,
        draws: u32,
        out: &mut [f32],
    ) -> usize {
        let n = codes.len() / 4 * 4;
        let (kmin, kmax) = (_mm_set1_epi32(m.kmin), _mm_set1_epi32(m.kmax));
        let low32 = _mm256_set1_epi64x(0xFFFF_FFFF);
        let evens = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        let p = &m.pair_diff;
        let (span, entries, spacing) =
            (p.span.as_ptr() as *const i64, p.entries.as_ptr() as *const i64, p.spacing.as_ptr());
        let lane = |i| super::hash_input(key, first, stride, i);
        let mut z = _mm256_setr_epi64x(lane(0), lane(1), lane(2), lane(3));
        let advance = _mm256_set1_epi64x(stride.wrapping_mul(4).wrapping_mul(PHI) as i64);
        let lattice = _mm256_set1_epi64x(LATTICE_STEP as i64);
        let scale = _mm_set1_ps(draws as f32);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 4 <= n <= codes.len().
            let k = unsafe { _mm_loadu_si128(codes.as_ptr().add(i) as *const __m128i) };
            let row = _mm_sub_epi32(_mm_min_epi32(_mm_max_epi32(k, kmin), kmax), kmin);
            // SAFETY: row < span.len() = spacing.len() (clamped above).
            let (sw, sp) = unsafe {
                (_mm256_i32gather_epi64::<8>(span, row), _mm_i32gather_epi32::<4>(spacing, row))
            };
            let (start, width) = (_mm256_and_si256(sw, low32), _mm256_srli_epi64::<32>(sw));
            let mut bits = finalise(z);
            z = _mm256_add_epi64(z, advance);
            let mut diff = _mm_setzero_si128();
            for _ in 0..draws {
                let col =
                    _mm256_srli_epi64::<32>(_mm256_mul_epu32(_mm256_srli_epi64::<32>(bits), width));
                let slot = _mm256_add_epi64(start, col);
                // SAFETY: slot = start + column < start + width <= entries.len().
                let e = unsafe { _mm256_i64gather_epi64::<8>(entries, slot) };
                // Both sides below 2^32, so the signed 64-bit compare is the unsigned one.
                let keep_own =
                    _mm256_cmpgt_epi64(_mm256_and_si256(e, low32), _mm256_and_si256(bits, low32));
                // own: bits 32..48, alias: bits 48..64, both signed 16-bit; as the low 32
                // bits of each lane, sign-extended (only those are kept below).
                let own = _mm256_srai_epi32::<16>(_mm256_srli_epi64::<16>(e));
                let alias = _mm256_srai_epi32::<16>(_mm256_srli_epi64::<32>(e));
                let d = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
                    _mm256_blendv_epi8(alias, own, keep_own),
                    evens,
                ));
                diff = _mm_add_epi32(diff, d);
                bits = _mm256_add_epi64(bits, lattice);
            }
            // diff / (draws · spacing), as the portable path rounds it; 1 where spacing is 0.
            let denom = _mm_mul_ps(scale, _mm_cvtepi32_ps(sp));
            let slope = _mm_div_ps(_mm_cvtepi32_ps(diff), denom);
            let one_code = _mm_castsi128_ps(_mm_cmpeq_epi32(sp, _mm_setzero_si128()));
            let slope = _mm_blendv_ps(slope, _mm_set1_ps(1.0), one_code);
            // SAFETY: i + 4 <= n <= out.len().
            unsafe { _mm_storeu_ps(out.as_mut_ptr().add(i), slope) };
            i += 4;
        }
        n
    }
}

#[cfg(test)]
mod tests;
