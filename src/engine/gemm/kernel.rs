//! Micro-kernels: one `MR × NR` tile of `C` from a packed `A` panel and a packed `B`
//! panel, over `kc` steps of the reduction.
//!
//! Every kernel computes each element of the tile as the same chain of fused
//! multiply-adds in the same order, `acc = fma(a[i][p], b[p][j], acc)` for p = 0, 1, …,
//! starting from zero or from the partial sum already stored in the tile. Vector width
//! changes how many chains run side by side, never the order inside one chain, so the
//! AVX-512, AVX2 and portable kernels give bit-identical results; which one runs is a
//! matter of speed only.

/// Rows of a micro-tile (the packed `A` panel's width).
pub const MR: usize = 8;
/// Columns of a micro-tile (the packed `B` panel's width): two 16-lane vectors.
pub const NR: usize = 32;

/// `C[0..MR][0..NR] (row stride ldc) = (load ? C : 0) + Apanel · B` where the A panel
/// holds `kc` steps `a[p·MR + i]` and step p's NR values of B start at `b.step(p)`.
pub type KernelFn<B> =
    unsafe fn(kc: usize, a: *const f32, b: B, c: *mut f32, ldc: usize, load: bool);

/// Where each reduction step's NR values of `B` lie. The kernels are generic over it,
/// so one body serves a packed panel and a direct convolution's image rows.
pub trait BSteps: Copy {
    /// The first of step p's NR contiguous values.
    ///
    /// # Safety
    /// `p` is below the kernel's `kc`, and the caller guarantees NR readable values there.
    unsafe fn step(self, p: usize) -> *const f32;
}

/// A packed panel: step p at `p·NR` (module `pack`).
#[derive(Clone, Copy)]
pub struct Panel(pub *const f32);

impl BSteps for Panel {
    #[inline(always)]
    unsafe fn step(self, p: usize) -> *const f32 {
        // SAFETY: the panel holds kc·NR values (caller).
        unsafe { self.0.add(p * NR) }
    }
}

/// Rows of a matrix that is not packed: step p at `base + offsets[p]` (a direct
/// convolution reads each step's NR output positions straight from a padded image).
#[derive(Clone, Copy)]
pub struct Offsets {
    pub base: *const f32,
    pub offsets: *const usize,
}

impl BSteps for Offsets {
    #[inline(always)]
    unsafe fn step(self, p: usize) -> *const f32 {
        // SAFETY: offsets holds kc entries, each NR readable values from base (caller).
        unsafe { self.base.add(*self.offsets.add(p)) }
    }
}

/// The instruction sets a kernel exists for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// MR × NR tile in zmm accumulators (x86-64 with AVX-512F).
    Avx512,
    /// The portable kernel compiled for AVX2 + FMA.
    Avx2,
    /// Plain Rust with `f32::mul_add`; fast where FMA is native (aarch64), slow but
    /// exact where it is emulated.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];

    /// The kernel's name: `avx512`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// The kernel named `s` ([`Kernel::name`]).
    pub fn parse(s: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 => false,
            Kernel::Portable => true,
        }
    }

    /// The fastest kernel this CPU supports.
    pub fn best() -> Kernel {
        Kernel::ALL.into_iter().find(|k| k.supported()).unwrap_or(Kernel::Portable)
    }

    /// The kernel's entry point. Callers must have checked [`Kernel::supported`].
    pub(super) fn function<B: BSteps>(self) -> KernelFn<B> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::<B>,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::<B>,
            _ => portable::<B>,
        }
    }
}

/// The reference kernel, written so a compiler can vectorise it: sub-tiles of 4 × 16
/// keep the accumulators in registers on 16-register machines.
#[inline(always)]
unsafe fn generic<B: BSteps>(kc: usize, a: *const f32, b: B, c: *mut f32, ldc: usize, load: bool) {
    const SR: usize = 4;
    const SC: usize = 16;
    for r0 in (0..MR).step_by(SR) {
        for c0 in (0..NR).step_by(SC) {
            let mut acc = [[0.0f32; SC]; SR];
            if load {
                for (i, row) in acc.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        // SAFETY: the caller guarantees an MR × NR tile at c (stride ldc).
                        *v = unsafe { *c.add((r0 + i) * ldc + c0 + j) };
                    }
                }
            }
            for p in 0..kc {
                // SAFETY: the A panel holds kc steps of MR values, B NR values a step.
                let (ap, bp) = unsafe { (a.add(p * MR + r0), b.step(p).add(c0)) };
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = unsafe { *ap.add(i) };
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = av.mul_add(unsafe { *bp.add(j) }, *v);
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    unsafe { *c.add((r0 + i) * ldc + c0 + j) = *v };
                }
            }
        }
    }
}

unsafe fn portable<B: BSteps>(kc: usize, a: *const f32, b: B, c: *mut f32, ldc: usize, load: bool) {
    unsafe { generic(kc, a, b, c, ldc, load) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<B: BSteps>(kc: usize, a: *const f32, b: B, c: *mut f32, ldc: usize, load: bool) {
    unsafe { generic(kc, a, b, c, ldc, load) }
}

/// MR rows × NR/16 zmm accumulators, the steps in [`avx512_steps`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<B: BSteps>(kc: usize, a: *const f32, b: B, c: *mut f32, ldc: usize, load: bool) {
    use std::arch::x86_64::*;
    const V: usize = NR / 16;
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    // SAFETY (whole body): the caller guarantees an MR × NR tile at c with row stride
    // ldc, an A panel of kc steps at a, and NR values for each of kc steps of b.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, r) in row.iter_mut().enumerate() {
                    *r = _mm512_loadu_ps(c.add(i * ldc + v * 16));
                }
            }
        }
        avx512_steps(&mut acc, 0..kc, a, b);
        for (i, row) in acc.iter().enumerate() {
            for (v, r) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc + v * 16), *r);
            }
        }
    }
}

/// Steps `ps` of the chains in `acc` (both AVX-512 kernels): per step, NR/16 loads of
/// `B`, MR broadcasts of `A`, MR·NR/16 FMAs.
///
/// # Safety
/// The A panel at `a` and the steps of `b` hold every step in `ps` (caller).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_steps<B: BSteps>(
    acc: &mut [[std::arch::x86_64::__m512; NR / 16]; MR],
    ps: std::ops::Range<usize>,
    a: *const f32,
    b: B,
) {
    use std::arch::x86_64::*;
    for p in ps {
        // SAFETY: step p of A and of B is readable (caller).
        unsafe {
            let bp = b.step(p);
            let bv: [__m512; NR / 16] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                for (r, bvv) in row.iter_mut().zip(bv) {
                    *r = _mm512_fmadd_ps(av, bvv, *r);
                }
            }
        }
    }
}

/// Like [`KernelFn`] with `load = false`, but the reduction is `segments` chains of
/// `len` steps each: every chain starts from zero, and the tile is `0 + chain₀ +
/// chain₁ + …`, added in order — the sum a product followed by a scatter-add (col2im)
/// computes, in one pass.
pub type SegmentedFn<B> =
    unsafe fn(segments: usize, len: usize, a: *const f32, b: B, c: *mut f32, ldc: usize);

impl Kernel {
    /// The segmented kernel's entry point. Callers must have checked [`Kernel::supported`].
    pub(super) fn segmented<B: BSteps>(self) -> SegmentedFn<B> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512_segmented::<B>,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2_segmented::<B>,
            _ => portable_segmented::<B>,
        }
    }
}

/// The reference segmented kernel: each segment through [`generic`] into a scratch
/// tile, then added into `c` element by element.
#[inline(always)]
unsafe fn generic_segmented<B: BSteps>(
    segments: usize,
    len: usize,
    a: *const f32,
    b: B,
    c: *mut f32,
    ldc: usize,
) {
    let mut chain = [0.0f32; MR * NR];
    for s in 0..segments {
        let first = s * len;
        // SAFETY: the caller guarantees segments·len steps of A and B, and the tile at c.
        unsafe {
            generic(len, a.add(first * MR), Shifted(b, first), chain.as_mut_ptr(), NR, false);
            for i in 0..MR {
                for j in 0..NR {
                    let o = c.add(i * ldc + j);
                    *o = if s == 0 { 0.0 } else { *o } + chain[i * NR + j];
                }
            }
        }
    }
}

/// B's steps from `first` on.
#[derive(Clone, Copy)]
struct Shifted<B>(B, usize);

impl<B: BSteps> BSteps for Shifted<B> {
    #[inline(always)]
    unsafe fn step(self, p: usize) -> *const f32 {
        // SAFETY: as for the underlying steps (caller).
        unsafe { self.0.step(self.1 + p) }
    }
}

unsafe fn portable_segmented<B: BSteps>(
    segments: usize,
    len: usize,
    a: *const f32,
    b: B,
    c: *mut f32,
    ldc: usize,
) {
    unsafe { generic_segmented(segments, len, a, b, c, ldc) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_segmented<B: BSteps>(
    segments: usize,
    len: usize,
    a: *const f32,
    b: B,
    c: *mut f32,
    ldc: usize,
) {
    unsafe { generic_segmented(segments, len, a, b, c, ldc) }
}

/// As [`avx512`], a segment at a time: the chains in zmm registers, the running sum of
/// the segments in the tile itself (registers for both would spill).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_segmented<B: BSteps>(
    segments: usize,
    len: usize,
    a: *const f32,
    b: B,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    const V: usize = NR / 16;
    // SAFETY (whole body): the caller guarantees an MR × NR tile at c with row stride
    // ldc, an A panel of segments·len steps at a, and NR values for each step of b.
    unsafe {
        for s in 0..segments {
            let mut acc = [[_mm512_setzero_ps(); V]; MR];
            avx512_steps(&mut acc, s * len..(s + 1) * len, a, b);
            for (i, row) in acc.iter().enumerate() {
                for (v, r) in row.iter().enumerate() {
                    let o = c.add(i * ldc + v * 16);
                    let sum = if s == 0 { _mm512_setzero_ps() } else { _mm512_loadu_ps(o) };
                    _mm512_storeu_ps(o, _mm512_add_ps(sum, *r));
                }
            }
        }
    }
}
