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

/// `C[0..MR][0..NR] (row stride ldc) = (load ? C : 0) + Apanel · Bpanel` where the
/// panels hold `kc` steps: `a[p·MR + i]`, `b[p·NR + j]`.
pub type KernelFn = unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool);

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
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

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
    pub(super) fn function(self) -> KernelFn {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2,
            _ => portable,
        }
    }
}

/// The reference kernel, written so a compiler can vectorise it: sub-tiles of 4 × 16
/// keep the accumulators in registers on 16-register machines.
#[inline(always)]
unsafe fn generic(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
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
                // SAFETY: the panels hold kc steps of MR and NR values.
                let (ap, bp) = unsafe { (a.add(p * MR + r0), b.add(p * NR + c0)) };
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

unsafe fn portable(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
    unsafe { generic(kc, a, b, c, ldc, load) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
    unsafe { generic(kc, a, b, c, ldc, load) }
}

/// MR rows × NR/16 zmm: per step, NR/16 loads of `B`, MR broadcasts of `A`, MR·NR/16 FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
    use std::arch::x86_64::*;
    const V: usize = NR / 16;
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    // SAFETY (whole body): the caller guarantees an MR × NR tile at c with row stride
    // ldc, and panels of kc steps at a and b.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, r) in row.iter_mut().enumerate() {
                    *r = _mm512_loadu_ps(c.add(i * ldc + v * 16));
                }
            }
        }
        for p in 0..kc {
            let bp = b.add(p * NR);
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                for (r, bvv) in row.iter_mut().zip(bv) {
                    *r = _mm512_fmadd_ps(av, bvv, *r);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, r) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc + v * 16), *r);
            }
        }
    }
}
