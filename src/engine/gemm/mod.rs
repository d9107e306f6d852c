//! Matrix products, `C = alpha·A·B + beta·C`, on strided views: the one door every
//! contraction of the engine and the CIM layers goes through.
//!
//! A view is (rows, cols, row stride, col stride), so `Aᵀ` is the same buffer with the
//! strides swapped, free. The product is computed the way BLIS does it: blocks of `B`
//! and `A` are packed into panels (module `pack`) and a register-blocked micro-kernel
//! (module `kernel`) computes one `MR × NR` tile of `C` at a time.
//!
//! **What the result is, exactly.** Each `C[i][j]` is one chain of fused
//! multiply-adds over the reduction in order, `acc = fma(A[i][p], B[p][j], acc)` for
//! p = 0 … k−1 from acc = 0 (partial sums between reduction blocks are stored in f32
//! and reloaded, which is exact), then `alpha·acc`, then `+ beta·C` as one more fused
//! multiply-add when `beta ≠ 0`. Block sizes and kernel choice do not enter, so the
//! bits are the same on every machine and with every kernel (AVX-512, AVX2, portable);
//! only the speed differs. The product is single-threaded by design: parallelism
//! lives one level up (over image groups), never nested.

mod kernel;
mod pack;

pub use kernel::{Kernel, MR, NR};
use kernel::{Offsets, Panel};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Reduction steps per packed block: an `MR × KC` panel of A (8 KiB) and a `KC × NR`
/// panel of B (32 KiB) fit in L1 together.
const KC: usize = 256;
/// Rows of A packed at once.
const MC: usize = 192;
/// Columns of B packed at once (a multiple of NR).
const NC: usize = 64 * NR;

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    /// The buffer the view reads; element (i, j) is `data[i·rs + j·cs]`.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row stride, in elements.
    pub rs: usize,
    /// Column stride, in elements.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major (rows × cols) matrix.
    pub fn rowmajor(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }
    /// A row-major matrix with a leading dimension `ld` ≥ cols.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        MatRef { data, rows, cols, rs: ld, cs: 1 }
    }
    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

static KERNEL: OnceLock<Kernel> = OnceLock::new();

/// The micro-kernel [`gemm`] and [`matmul`] use: [`Kernel::best`] for this CPU (the
/// bits do not depend on it; [`gemm_with`] runs any other, for comparison).
pub fn kernel() -> Kernel {
    *KERNEL.get_or_init(Kernel::best)
}

thread_local! {
    /// Packing buffers, reused across calls on the same thread.
    static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A 64-byte-aligned window of `len` floats inside `buf` (grown as needed), so the
/// kernels' vector loads never straddle cache lines.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const ALIGN: usize = 16; // floats per 64 bytes
    if buf.len() < len + ALIGN {
        buf.resize(len + ALIGN, 0.0);
    }
    let off = buf.as_ptr().align_offset(64).min(ALIGN);
    &mut buf[off..off + len]
}

/// `C = alpha * A·B + beta * C` with C row-major (m × n, leading dimension `ldc`).
/// With `beta == 0`, C's previous contents are ignored (NaNs included).
pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: &mut [f32], ldc: usize) {
    gemm_with(kernel(), alpha, a, b, beta, c, ldc)
}

/// [`gemm`] with a given micro-kernel (benchmarks compare them; the bits are the same).
/// Panics when this CPU cannot run `kern`.
pub fn gemm_with(
    kern: Kernel,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(kern.supported(), "GEMM kernel `{}` is not supported by this CPU", kern.name());
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm inner dimensions differ: {k} vs {}", b.rows);
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "gemm output out of bounds");
    if alpha == 1.0 && beta == 0.0 {
        product(kern, &a, &b, &mut OutView::rowmajor(c, m, n, ldc));
        return;
    }
    let mut p = vec![0.0f32; m * n];
    product(kern, &a, &b, &mut OutView::rowmajor(&mut p, m, n, n));
    for (r, pr) in p.chunks_exact(n).enumerate() {
        for (cv, &pv) in c[r * ldc..r * ldc + n].iter_mut().zip(pr) {
            *cv = if beta == 0.0 { alpha * pv } else { beta.mul_add(*cv, alpha * pv) };
        }
    }
}

/// `C = A·B` into `out`, for operands that pack themselves (see [`Operand`]): the
/// convolutions pack their im2col patches straight from the images and write their
/// output straight into NCHW, with no patch matrix and no reordering copies.
pub fn matmul(a: &(impl Operand + ?Sized), b: &(impl Operand + ?Sized), out: &mut OutView) {
    assert_eq!(a.cols(), b.rows(), "matmul inner dimensions differ: {} vs {}", a.cols(), b.rows());
    assert!(
        a.rows() == out.rows && b.cols() == out.cols,
        "matmul output is {}×{}, product is {}×{}",
        out.rows,
        out.cols,
        a.rows(),
        b.cols()
    );
    if out.rows > 0 && out.cols > 0 {
        product(kernel(), a, b, out);
    }
}

/// `A` packed whole, once, into MR-row panels of the full reduction: the weights of a
/// direct convolution, shared by every tile [`offset_tile`] computes.
pub struct PackedA {
    panels: Vec<f32>,
    rows: usize,
    k: usize,
}

impl PackedA {
    /// Packs `a` whole (all rows, the full reduction) into MR-row panels.
    pub fn new(a: &MatRef) -> PackedA {
        a.check();
        let mut panels = vec![0.0f32; a.rows.div_ceil(MR) * MR * a.cols];
        pack::pack_a(a, 0, a.rows, 0, a.cols, &mut panels);
        PackedA { panels, rows: a.rows, k: a.cols }
    }
}

/// Where each row of a `B` that is read in place lies: row p's values for columns
/// `q0 + j` are `src[q0 + offsets[p] + j]`; and how the reduction over them is summed.
pub struct RowOffsets {
    offsets: Vec<usize>,
    max: usize,
    /// `Some(len)`: in chains of `len` rows, each from zero, added in order (see
    /// [`offset_tile`]); `None`: one chain.
    segment: Option<usize>,
}

impl RowOffsets {
    /// Rows summed as one chain, as [`matmul`] sums them.
    pub fn new(offsets: Vec<usize>) -> RowOffsets {
        let max = offsets.iter().copied().max().unwrap_or(0);
        RowOffsets { offsets, max, segment: None }
    }
    /// Rows summed in chains of `len` (which must divide their number).
    pub fn segmented(offsets: Vec<usize>, len: usize) -> RowOffsets {
        assert!(
            len > 0 && offsets.len().is_multiple_of(len),
            "segments of {len} rows do not divide {}",
            offsets.len()
        );
        RowOffsets { segment: Some(len), ..RowOffsets::new(offsets) }
    }
}

/// One MR × NR tile of `C = A·B`: rows `panel·MR ..` (MR-row panel `panel` of `a`),
/// columns `q0 .. q0 + NR`, where `B[p][q] = src[q + offsets[p]]` is read in place, no
/// packing. The tile goes to `c`, row-major with row stride `ldc` (panel rows beyond
/// the rows of `a` come out zero). Each value is the chain the module docs define, over the
/// whole reduction in one pass, so it has the bits [`matmul`] gives for these matrices;
/// or, for [`RowOffsets::segmented`] rows, `0 + chain₀ + chain₁ + …` over the segments
/// in order, each chain from zero: the bits of [`matmul`] for each segment's rows
/// followed by adding the products into a zeroed output one after another.
pub fn offset_tile(
    a: &PackedA,
    panel: usize,
    src: &[f32],
    q0: usize,
    b: &RowOffsets,
    c: &mut [f32],
    ldc: usize,
) {
    offset_tile_with(kernel(), a, panel, src, q0, b, c, ldc)
}

/// [`offset_tile`] with a given micro-kernel (the bits are the same). Panics when this
/// CPU cannot run `kern`.
#[allow(clippy::too_many_arguments)]
pub fn offset_tile_with(
    kern: Kernel,
    a: &PackedA,
    panel: usize,
    src: &[f32],
    q0: usize,
    b: &RowOffsets,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(kern.supported(), "GEMM kernel `{}` is not supported by this CPU", kern.name());
    assert_eq!(
        a.k,
        b.offsets.len(),
        "offset_tile: A has {} columns, B {} rows",
        a.k,
        b.offsets.len()
    );
    assert!(panel < a.rows.div_ceil(MR), "offset_tile: panel {panel} of {} rows", a.rows);
    assert!(a.k == 0 || q0 + b.max + NR <= src.len(), "offset_tile: B's rows run past the source");
    assert!(ldc >= NR && (MR - 1) * ldc + NR <= c.len(), "offset_tile: output out of bounds");
    let steps = Offsets { base: src[q0..].as_ptr(), offsets: b.offsets.as_ptr() };
    let apanel = &a.panels[panel * a.k * MR..(panel + 1) * a.k * MR];
    // SAFETY: the panel holds k steps of MR values; each of the k offsets has NR values
    // of src after it (asserted); c holds MR rows of NR values ldc apart (asserted); the
    // kernel is supported (asserted); segments divide k (checked when the offsets were
    // made).
    unsafe {
        match b.segment {
            None => {
                kern.function::<Offsets>()(a.k, apanel.as_ptr(), steps, c.as_mut_ptr(), ldc, false)
            }
            Some(len) => kern.segmented::<Offsets>()(
                a.k / len,
                len,
                apanel.as_ptr(),
                steps,
                c.as_mut_ptr(),
                ldc,
            ),
        }
    }
}

/// A matrix the product can pack into the kernels' panels (module `pack`).
pub trait Operand {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Number of columns.
    fn cols(&self) -> usize;
    /// Rows `i0..i0+mc`, columns `p0..p0+kc` as MR-row panels: panel q holds `dst[q·kc·MR + p·MR + i] = A[i0 + q·MR + i][p0 + p]`.
    fn pack_a(&self, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]);
    /// Rows `p0..p0+kc`, columns `j0..j0+nc` as NR-column panels: panel q holds `dst[q·kc·NR + p·NR + j] = B[p0 + p][j0 + q·NR + j]`.
    fn pack_b(&self, p0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]);
}

impl Operand for MatRef<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn pack_a(&self, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
        pack::pack_a(self, i0, mc, p0, kc, dst)
    }
    fn pack_b(&self, p0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        pack::pack_b(self, p0, kc, j0, nc, dst)
    }
}

pub use pack::{RowSource, Rows, interleave_rows};

impl RowSource for MatRef<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn read_row(&self, r: usize, c0: usize, dst: &mut [f32]) {
        for (t, d) in dst.iter_mut().enumerate() {
            *d = self.data[r * self.rs + (c0 + t) * self.cs];
        }
    }
}

/// Where a product's `rows × cols` result goes: element (i, j) at
/// `(j / block)·block_stride + i·ld + j % block`. A row-major matrix is one block; a
/// group of NCHW images seen as `[C][images·pixels]` has one block per image.
pub struct OutView<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    ld: usize,
    block: usize,
    block_stride: usize,
}

impl<'a> OutView<'a> {
    /// A row-major `rows × cols` matrix with leading dimension `ld`.
    pub fn rowmajor(data: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Self::new(data, rows, cols, ld, cols.max(1), 0)
    }
    /// `images` NCHW images of `channels × pixels`, as the `[channels][images·pixels]`
    /// matrix a convolution's product makes.
    pub fn images(data: &'a mut [f32], images: usize, channels: usize, pixels: usize) -> Self {
        Self::new(data, channels, images * pixels, pixels, pixels.max(1), channels * pixels)
    }
    fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        ld: usize,
        block: usize,
        block_stride: usize,
    ) -> Self {
        let v = OutView { data, rows, cols, ld, block, block_stride };
        if rows > 0 && cols > 0 {
            assert!(ld >= block.min(cols), "output view: rows overlap");
            let last = v.offset(rows - 1, cols - 1).max(v.offset(rows - 1, block.min(cols) - 1));
            assert!(last < v.data.len(), "output view out of bounds");
        }
        v
    }
    #[inline]
    fn offset(&self, i: usize, j: usize) -> usize {
        (j / self.block) * self.block_stride + i * self.ld + j % self.block
    }
}

/// `C = A·B` (shapes already checked, non-empty), with the given micro-kernel.
fn product(
    kern: Kernel,
    a: &(impl Operand + ?Sized),
    b: &(impl Operand + ?Sized),
    c: &mut OutView,
) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let o = c.offset(i, j);
                c.data[o] = 0.0;
            }
        }
        return;
    }
    let run = kern.function::<Panel>();
    PACKED.with_borrow_mut(|(abuf, bbuf)| {
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let load = p0 > 0; // continue the chains stored by the previous block
                let bp = aligned(bbuf, nc.div_ceil(NR) * kc * NR);
                b.pack_b(p0, kc, j0, nc, bp);
                for i0 in (0..m).step_by(MC) {
                    let mc = MC.min(m - i0);
                    let ap = aligned(abuf, mc.div_ceil(MR) * kc * MR);
                    a.pack_a(i0, mc, p0, kc, ap);
                    for (jq, bpanel) in bp.chunks_exact(kc * NR).enumerate() {
                        let (cj, cols) = (j0 + jq * NR, NR.min(nc - jq * NR));
                        let in_one_block = cj % c.block + NR <= c.block;
                        for (iq, apanel) in ap.chunks_exact(kc * MR).enumerate() {
                            let (ci, rows) = (i0 + iq * MR, MR.min(mc - iq * MR));
                            if rows == MR && cols == NR && in_one_block {
                                let at = c.offset(ci, cj);
                                // SAFETY: the tile's MR rows of NR values, `ld` apart,
                                // lie in one block of the view, inside `data` (checked
                                // when the view was made); panels hold kc steps; `kern`
                                // is supported (checked when it was chosen).
                                unsafe {
                                    run(
                                        kc,
                                        apanel.as_ptr(),
                                        Panel(bpanel.as_ptr()),
                                        c.data[at..].as_mut_ptr(),
                                        c.ld,
                                        load,
                                    )
                                };
                            } else {
                                // Edge tile, or one that crosses a block: through a
                                // full-size scratch tile, element by element.
                                let mut tile = [0.0f32; MR * NR];
                                if load {
                                    for r in 0..rows {
                                        for q in 0..cols {
                                            tile[r * NR + q] = c.data[c.offset(ci + r, cj + q)];
                                        }
                                    }
                                }
                                // SAFETY: as above, with the tile as C (stride NR).
                                unsafe {
                                    run(
                                        kc,
                                        apanel.as_ptr(),
                                        Panel(bpanel.as_ptr()),
                                        tile.as_mut_ptr(),
                                        NR,
                                        load,
                                    )
                                };
                                for r in 0..rows {
                                    for q in 0..cols {
                                        let o = c.offset(ci + r, cj + q);
                                        c.data[o] = tile[r * NR + q];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests;
