//! Stride-1 convolution products read straight from the images: no patch matrix and
//! no packing of it, for the forward and for the data gradient.
//!
//! On an image copied with its zero border (`Hp × Wp`, `Hp = H + 2·pad`,
//! `Wp = W + 2·pad`), output (oy, ox) sits at grid position `q = oy·Wp + ox`, and its
//! patch entry (ci, ky, kx) is the padded pixel `q + ci·Hp·Wp + ky·Wp + kx`. So for a
//! run of NR consecutive grid positions, every patch row is a run of NR consecutive
//! padded pixels at an offset that depends on the row alone, and the micro-kernel reads
//! it in place ([`offset_tile`]). Where output rows are narrower than NR, a tile spans
//! several grid rows, and the positions with `ox ≥ OW` between them (the `Wp − OW`
//! border columns) are computed and dropped.
//!
//! The data gradient is the same kind of product over the output gradient, padded by
//! `k − 1 − pad` and read through the flipped kernel; its reduction runs tap by tap, one
//! chain over the output channels per tap, the taps added in order
//! ([`RowOffsets::segmented`]) — exactly what the im2col product followed by col2im's
//! scatter-adds computes.
//!
//! The weight gradient `dY · colᵀ` reads the patches from the same padded copy
//! ([`PaddedImages::columns_t`]): output (oy, ox) of patch row (ci, ky, kx) is padded pixel
//! `ci·Hp·Wp + (oy + ky)·Wp + ox + kx`, so along an output row every patch row is a run of
//! consecutive padded pixels, and packing `colᵀ` transposes those runs in registers
//! straight into the panels — the values the stored patch matrix would give, with no
//! patch matrix written and read back.
//!
//! Bits: each value is the same chain (or sum of chains) in the same order as the
//! im2col path computes, with the padding entering as the same zeros, so the two agree
//! exactly (`tests::direct_paths_are_the_defined_chains_exactly`).

use super::ConvGeom;
use crate::engine::gemm::{
    MR, MatRef, NR, Operand, PackedA, RowOffsets, interleave_rows, offset_tile,
};
use crate::engine::scratch::Scratch;

/// Whether [`forward_group`] computes this convolution: stride 1, a kernel larger than
/// 1 × 1, and the whole weight matrix small enough to stay in L2 while every tile
/// reads all of it (`Cout·K ≤ 2^18` floats, 1 MiB). Wider layers keep the blocked
/// im2col product, whose packing is a smaller share of their work.
pub fn applies(g: &ConvGeom) -> bool {
    g.stride == 1 && g.kh * g.kw > 1 && g.cout * g.k() <= 1 << 18
}

/// Whether [`data_gradient_group`] computes this convolution's data gradient: as
/// [`applies`], with the padding below the kernel on each side (so the gradient's own
/// zero border, `kh − 1 − pad` rows and `kw − 1 − pad` columns, exists).
pub fn applies_to_data_gradient(g: &ConvGeom) -> bool {
    applies(g) && g.pad < g.kh && g.pad < g.kw
}

/// One direct product: `in_c` planes of `in_h × in_w` padded by `pad_y` rows and
/// `pad_x` columns, read for `out_c` planes of `out_h × out_w`.
struct Plan {
    in_c: usize,
    in_h: usize,
    in_w: usize,
    pad_y: usize,
    pad_x: usize,
    out_c: usize,
    out_h: usize,
    out_w: usize,
}

impl Plan {
    fn padded(&self) -> (usize, usize) {
        (self.in_h + 2 * self.pad_y, self.in_w + 2 * self.pad_x)
    }
    /// The forward: x (Cin planes) padded by `pad`, to Cout planes.
    fn forward(g: &ConvGeom) -> Plan {
        Plan {
            in_c: g.cin,
            in_h: g.h,
            in_w: g.w,
            pad_y: g.pad,
            pad_x: g.pad,
            out_c: g.cout,
            out_h: g.oh,
            out_w: g.ow,
        }
    }
    /// The data gradient: dY (Cout planes) padded by `k − 1 − pad`, to Cin planes. Input
    /// pixel (iy, ix) sits at (iy, ix) of that grid, and the output it fed through kernel
    /// tap (ky, kx), (iy + pad − ky, ix + pad − kx), at (iy + kh − 1 − ky, ix + kw − 1 − kx).
    fn data_gradient(g: &ConvGeom) -> Plan {
        let (pad_y, pad_x) = (g.kh - 1 - g.pad, g.kw - 1 - g.pad);
        Plan {
            in_c: g.cout,
            in_h: g.oh,
            in_w: g.ow,
            pad_y,
            pad_x,
            out_c: g.cin,
            out_h: g.h,
            out_w: g.w,
        }
    }
}

/// What one direct product needs, made once per call: the weights packed, where each
/// row of the reduction lies in a padded image, and the tiles that cover an image's
/// outputs.
pub struct DirectWeights {
    packed: PackedA,
    rows: RowOffsets,
    tiles: Vec<Tile>,
}

impl DirectWeights {
    /// For [`forward_group`]: `W[co][(ci, ky, kx)]` as it is, reduction row (ci, ky, kx)
    /// at `ci·Hp·Wp + ky·Wp + kx`.
    pub fn forward(g: &ConvGeom, w: &[f32]) -> DirectWeights {
        let plan = Plan::forward(g);
        let packed = PackedA::new(&MatRef::rowmajor(w, g.cout, g.k()));
        DirectWeights {
            packed,
            rows: RowOffsets::new(patch_row_offsets(g)),
            tiles: tiles(plan.out_h, plan.out_w, plan.padded().1),
        }
    }

    /// For [`data_gradient_group`]: `Wᵀ` with the reduction ordered tap-major,
    /// `A[ci][(ky, kx, co)] = W[co][ci][ky][kx]`, one segment per tap. Each segment is
    /// then the chain over co of the im2col data-gradient product (`Wᵀ·dY`), and the
    /// segments are added in the order col2im adds the taps: the same bits.
    pub fn data_gradient(g: &ConvGeom, w: &[f32]) -> DirectWeights {
        let plan = Plan::data_gradient(g);
        let (hp, wp) = plan.padded();
        let taps = g.kh * g.kw;
        let mut a = vec![0.0f32; g.cin * taps * g.cout];
        let mut offsets = Vec::with_capacity(taps * g.cout);
        for tap in 0..taps {
            let (ky, kx) = (tap / g.kw, tap % g.kw);
            for co in 0..g.cout {
                offsets.push(co * hp * wp + (g.kh - 1 - ky) * wp + (g.kw - 1 - kx));
                for ci in 0..g.cin {
                    a[(ci * taps + tap) * g.cout + co] = w[co * g.k() + ci * taps + tap];
                }
            }
        }
        let packed = PackedA::new(&MatRef::rowmajor(&a, g.cin, taps * g.cout));
        DirectWeights {
            packed,
            rows: RowOffsets::segmented(offsets, g.cout),
            tiles: tiles(plan.out_h, plan.out_w, wp),
        }
    }
}

/// `y = conv(x) (+ bias)` for the `gi` consecutive NCHW images of `xg`, into `yg`
/// (every element written).
pub fn forward_group(
    g: &ConvGeom,
    wd: &DirectWeights,
    xg: &[f32],
    gi: usize,
    bias: Option<&[f32]>,
    yg: &mut [f32],
) {
    debug_assert!(applies(g));
    run(&Plan::forward(g), wd, xg, gi, bias, yg);
}

/// The data gradient `dx` of the `gi` consecutive images whose output gradient is
/// `dyg`, into `dxg` (every element written): the bits of `col2im(Wᵀ·dY)` into zeros.
pub fn data_gradient_group(
    g: &ConvGeom,
    wd: &DirectWeights,
    dyg: &[f32],
    gi: usize,
    dxg: &mut [f32],
) {
    debug_assert!(applies_to_data_gradient(g));
    run(&Plan::data_gradient(g), wd, dyg, gi, None, dxg);
}

/// Tiles: an output row at least NR wide is cut into NR-wide tiles along the row
/// (all of a 32-wide row is one tile, and no border column is computed); narrower rows
/// are covered by NR consecutive grid positions at a time, several rows per tile. A
/// tile whose NR outputs lie in one row, for MR channels that exist, is written by the
/// kernel in place; any other goes through a scratch tile and is copied out run by run.
fn run(
    plan: &Plan,
    wd: &DirectWeights,
    src: &[f32],
    gi: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (hp, wp) = plan.padded();
    let plane = hp * wp;
    let image = plan.in_c * plane;
    // The last tile of an image may run up to NR − 1 positions past it: those read the
    // next image or the tail, and only feed dropped positions.
    let mut padded = Scratch::take(gi * image + NR);
    pad_planes(src, plan.in_h, plan.in_w, plan.pad_y, plan.pad_x, &mut padded[..gi * image]);
    padded[gi * image..].fill(0.0);
    let (pix, panels) = (plan.out_h * plan.out_w, plan.out_c.div_ceil(MR));
    let mut scratch = [0.0f32; MR * NR];
    for j in 0..gi {
        let src = &padded[j * image..];
        let oj = &mut out[j * plan.out_c * pix..(j + 1) * plan.out_c * pix];
        for tile in &wd.tiles {
            for panel in 0..panels {
                let (c0, rows) = (panel * MR, MR.min(plan.out_c - panel * MR));
                let runs = &tile.runs[..tile.nruns];
                if tile.whole && rows == MR {
                    let at = c0 * pix + runs[0].2;
                    offset_tile(&wd.packed, panel, src, tile.q0, &wd.rows, &mut oj[at..], pix);
                    if let Some(b) = bias {
                        // The same rounding as adding the bias after the product.
                        for r in 0..MR {
                            oj[at + r * pix..][..NR].iter_mut().for_each(|v| *v += b[c0 + r]);
                        }
                    }
                    continue;
                }
                offset_tile(&wd.packed, panel, src, tile.q0, &wd.rows, &mut scratch, NR);
                for r in 0..rows {
                    let o = &mut oj[(c0 + r) * pix..(c0 + r + 1) * pix];
                    let vals = &scratch[r * NR..(r + 1) * NR];
                    for &(lane, len, at) in runs {
                        let (o, v) = (&mut o[at..at + len], &vals[lane..lane + len]);
                        match bias {
                            Some(b) => o.iter_mut().zip(v).for_each(|(o, &v)| *o = v + b[c0 + r]),
                            None => o.copy_from_slice(v),
                        }
                    }
                }
            }
        }
    }
}

/// NR grid positions from `q0`, and the runs of outputs among them: (first lane,
/// length, output pixel). `whole`: all NR lanes are outputs of one row.
struct Tile {
    q0: usize,
    runs: [(usize, usize, usize); NR],
    nruns: usize,
    whole: bool,
}

/// The tiles that cover every one of `oh × ow` outputs once, on a grid `wp` wide (see
/// [`run`]).
fn tiles(oh: usize, ow: usize, wp: usize) -> Vec<Tile> {
    let starts: Vec<usize> = if ow >= NR {
        (0..oh).flat_map(|oy| (0..ow).step_by(NR).map(move |ox| oy * wp + ox)).collect()
    } else {
        // Up to the last output of the last row.
        (0..(oh - 1) * wp + ow).step_by(NR).collect()
    };
    starts
        .into_iter()
        .map(|q0| {
            let mut t = Tile { q0, runs: [(0, 0, 0); NR], nruns: 0, whole: false };
            let (mut q, end) = (q0, q0 + NR);
            while q < end && q / wp < oh {
                let (oy, ox) = (q / wp, q % wp);
                let row_end = (oy * wp + wp).min(end);
                if ox < ow {
                    let len = (ow - ox).min(row_end - q);
                    t.runs[t.nruns] = (q - q0, len, oy * ow + ox);
                    t.nruns += 1;
                }
                q = row_end;
            }
            t.whole = t.nruns == 1 && t.runs[0].1 == NR;
            t
        })
        .collect()
}

/// Where patch row (ci, ky, kx) of convolution `g` starts in an image padded for it
/// ([`Plan::forward`]): `ci·Hp·Wp + ky·Wp + kx`, in the patch rows' order.
fn patch_row_offsets(g: &ConvGeom) -> Vec<usize> {
    (0..g.k()).map(|r| g.padded_offset(r)).collect()
}

/// Every `h × w` plane of `src` into `dst` with `pad_y` zero rows above and below and
/// `pad_x` zero columns on either side; every value of `dst` is written (empty planes
/// are all border).
fn pad_planes(src: &[f32], h: usize, w: usize, pad_y: usize, pad_x: usize, dst: &mut [f32]) {
    if h * w == 0 {
        dst.fill(0.0);
        return;
    }
    let plane = (h + 2 * pad_y) * (w + 2 * pad_x);
    assert_eq!(
        src.len() / (h * w) * plane,
        dst.len(),
        "pad_planes: {} values into {}",
        src.len(),
        dst.len()
    );
    for (s, d) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(plane)) {
        pad_plane(s, w, pad_y, pad_x, d);
    }
}

/// One plane, `w` wide, with `pad_y` zero rows above and below and `pad_x` zero
/// columns on either side.
fn pad_plane(src: &[f32], w: usize, pad_y: usize, pad_x: usize, dst: &mut [f32]) {
    let wp = w + 2 * pad_x;
    dst[..pad_y * wp].fill(0.0);
    for (y, row) in src.chunks_exact(w).enumerate() {
        let d = &mut dst[(pad_y + y) * wp..(pad_y + y + 1) * wp];
        d[..pad_x].fill(0.0);
        d[pad_x..pad_x + w].copy_from_slice(row);
        d[pad_x + w..].fill(0.0);
    }
    let h = src.len() / w;
    dst[(pad_y + h) * wp..].fill(0.0);
}

/// A group of images copied once with their zero border, whose stride-1 patches the
/// weight-gradient products read in place (see the module docs).
pub struct PaddedImages {
    data: Scratch,
    /// Floats per padded image, `Cin·Hp·Wp`.
    image: usize,
    wp: usize,
    oh: usize,
    ow: usize,
    positions: usize,
    /// Where patch row (ci, ky, kx) starts in a padded image: `ci·Hp·Wp + ky·Wp + kx`.
    offsets: Vec<usize>,
}

impl PaddedImages {
    /// Whether the weight gradient reads convolution `g`'s patches this way: stride 1
    /// (where patch rows are runs of padded pixels), and output rows of at least 8
    /// positions (shorter runs would leave most of each 16-step register transpose
    /// masked off; a linear layer's runs are one position long).
    pub fn applies(g: &ConvGeom) -> bool {
        g.stride == 1 && g.ow >= 8
    }

    /// The `gi` consecutive NCHW images of `xg`, padded for convolution `g` (stride 1).
    pub fn new(g: &ConvGeom, xg: &[f32], gi: usize) -> PaddedImages {
        assert_eq!(g.stride, 1, "patches are runs of padded pixels only at stride 1");
        assert_eq!(
            xg.len(),
            gi * g.in_size(),
            "PaddedImages: {} values for {gi} images of {}",
            xg.len(),
            g.in_size()
        );
        let (hp, wp) = Plan::forward(g).padded();
        // A scratch buffer holds what its last user left: `pad_planes` writes every value.
        let mut data = Scratch::take(gi * g.cin * hp * wp);
        pad_planes(xg, g.h, g.w, g.pad, g.pad, &mut data);
        PaddedImages {
            data,
            image: g.cin * hp * wp,
            wp,
            oh: g.oh,
            ow: g.ow,
            positions: gi * g.oh * g.ow,
            offsets: patch_row_offsets(g),
        }
    }

    /// `colᵀ` for patch rows `rows`, `[images·pixels][rows]`: the `B` of the weight
    /// gradient `dY · colᵀ`, packed from the padded images.
    pub fn columns_t(&self, rows: std::ops::Range<usize>) -> PatchColumnsT<'_> {
        assert!(rows.end <= self.offsets.len(), "patch rows {rows:?} of {}", self.offsets.len());
        PatchColumnsT { src: self, offsets: &self.offsets[rows] }
    }

    /// Where output position `p` (image, oy, ox) lies in the padded images, for the patch
    /// row at offset 0, and how many positions from it on lie at consecutive pixels
    /// (itself included): the rest of its output row, or of its image when there is no
    /// border to skip between rows.
    fn at(&self, p: usize) -> (usize, usize) {
        let pix = self.oh * self.ow;
        let (img, px) = (p / pix, p % pix);
        let (oy, ox) = (px / self.ow, px % self.ow);
        let left = if self.wp == self.ow { pix - px } else { self.ow - ox };
        (img * self.image + oy * self.wp + ox, left)
    }
}

/// See [`PaddedImages::columns_t`].
pub struct PatchColumnsT<'a> {
    src: &'a PaddedImages,
    offsets: &'a [usize],
}

impl Operand for PatchColumnsT<'_> {
    fn rows(&self) -> usize {
        self.src.positions
    }
    fn cols(&self) -> usize {
        self.offsets.len()
    }
    /// As `A` (positions × patch rows): never the hot path, element by element.
    fn pack_a(&self, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
        let data = &self.src.data;
        for (q, panel) in dst[..mc.div_ceil(MR) * kc * MR].chunks_exact_mut(kc * MR).enumerate() {
            for i in 0..MR {
                let row = q * MR + i;
                let at = (row < mc).then(|| self.src.at(i0 + row).0);
                for (p, &o) in self.offsets[p0..p0 + kc].iter().enumerate() {
                    panel[p * MR + i] = at.map_or(0.0, |a| data[a + o]);
                }
            }
        }
    }
    /// As `B`: each NR-row panel one output row's run of positions at a time, a register
    /// transpose of NR runs of padded pixels.
    fn pack_b(&self, p0: usize, kc: usize, j0: usize, nc: usize, dst: &mut [f32]) {
        let mut starts = [0usize; NR];
        for (q, panel) in dst[..nc.div_ceil(NR) * kc * NR].chunks_exact_mut(kc * NR).enumerate() {
            let offs = &self.offsets[j0 + q * NR..][..NR.min(nc - q * NR)];
            let mut p = p0;
            while p < p0 + kc {
                let (base, left) = self.src.at(p);
                let run = left.min(p0 + kc - p);
                starts.iter_mut().zip(offs).for_each(|(s, &o)| *s = base + o);
                interleave_rows(
                    &self.src.data,
                    &starts[..offs.len()],
                    run,
                    &mut panel[(p - p0) * NR..],
                    NR,
                );
                p += run;
            }
        }
    }
}

#[cfg(test)]
mod tests;
