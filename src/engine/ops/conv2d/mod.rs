//! 2-D convolution by im2col + GEMM, batched over fixed groups of images.
//!
//! Layout: x is NCHW, the weight is (Cout, Cin, kh, kw) as in PyTorch. For a group of
//! `G` images the patches are laid side by side in a column matrix
//! `col[K = Cin·kh·kw][G·OH·OW]`, and one GEMM gives `Y[Cout][G·OH·OW]`:
//!
//! * forward:          Y  = W · col
//! * backward, data:   dcol = Wᵀ · dY, then col2im (scatter-add) into dx
//! * backward, weight: dW += dY · colᵀ (one partial per group, summed in group order)
//!
//! `G` grows as the feature map shrinks (see [`par::image_group`]), so the GEMM's
//! column count stays near [`TARGET_COLUMNS`] for every stage of the network. Groups
//! run in parallel on rayon; each is computed by one thread start to finish, and the
//! weight-gradient partials are added in order, so results do not depend on the
//! thread count. Patches are recomputed in backward rather than saved: an im2col is
//! memory-bound and cheap beside the GEMMs, and saving it would multiply the memory
//! of a training step several times.

mod direct;
mod im2col;

pub use direct::PaddedImages;
pub use im2col::{ImageRows, Patches, col2im, group_columns, im2col};

use crate::engine::gemm::{MatRef, Operand, OutView, Rows, matmul};
use crate::engine::par;
use crate::engine::scratch::Scratch;
use crate::engine::tape::{GradSink, Values};
use crate::engine::{Tape, Tensor, Var};
use crate::{Error, Result};
use rayon::prelude::*;
use std::ops::Range;

/// GEMM column count aimed for per image group.
pub const TARGET_COLUMNS: usize = 1024;

/// Stride and zero padding of a convolution (the same along H and W).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dCfg {
    /// Step between output pixels, in input pixels (≥ 1).
    pub stride: usize,
    /// Zero padding on each side, in pixels.
    pub padding: usize,
}

impl Default for Conv2dCfg {
    fn default() -> Self {
        Conv2dCfg { stride: 1, padding: 0 }
    }
}

/// The shapes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Images in the batch (N).
    pub n: usize,
    /// Input channels (Cin).
    pub cin: usize,
    /// Input height, in pixels.
    pub h: usize,
    /// Input width, in pixels.
    pub w: usize,
    /// Output channels (Cout).
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride, along H and W.
    pub stride: usize,
    /// Zero padding on each side, in pixels.
    pub pad: usize,
    /// Output height, `(h + 2·pad − kh) / stride + 1`.
    pub oh: usize,
    /// Output width, `(w + 2·pad − kw) / stride + 1`.
    pub ow: usize,
}

impl ConvGeom {
    /// The geometry of input shape `x` (N, Cin, H, W) and weight shape `w` (Cout, Cin, kh, kw);
    /// errors when they do not fit together.
    pub fn new(x: &[usize], w: &[usize], cfg: Conv2dCfg) -> Result<Self> {
        if x.len() != 4 || w.len() != 4 {
            return Err(Error::invalid(format!(
                "conv2d needs NCHW input and 4-d weight, got {x:?} and {w:?}"
            )));
        }
        if x[1] != w[1] {
            return Err(Error::invalid(format!(
                "conv2d: input has {} channels, weight expects {}",
                x[1], w[1]
            )));
        }
        if cfg.stride == 0 {
            return Err(Error::invalid("conv2d: stride must be ≥ 1"));
        }
        // An empty batch is a batch, and an empty image with padding is all padding;
        // no channels or an empty kernel is a mistake.
        if x[1] == 0 || w[0] == 0 || w[2] == 0 || w[3] == 0 {
            return Err(Error::invalid(format!(
                "conv2d: empty channels or kernel: input {x:?}, weight {w:?}"
            )));
        }
        let (h, wd, kh, kw, p) = (x[2], x[3], w[2], w[3], cfg.padding);
        if h + 2 * p < kh || wd + 2 * p < kw {
            return Err(Error::invalid(format!(
                "conv2d: kernel {kh}×{kw} larger than padded input {h}×{wd}"
            )));
        }
        Ok(ConvGeom {
            n: x[0],
            cin: x[1],
            h,
            w: wd,
            cout: w[0],
            kh,
            kw,
            stride: cfg.stride,
            pad: p,
            oh: (h + 2 * p - kh) / cfg.stride + 1,
            ow: (wd + 2 * p - kw) / cfg.stride + 1,
        })
    }
    /// Reduction length K = Cin·kh·kw.
    pub fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Output pixels per image and channel, OH·OW.
    pub fn pixels(&self) -> usize {
        self.oh * self.ow
    }
    /// Input values per image, Cin·H·W.
    pub fn in_size(&self) -> usize {
        self.cin * self.h * self.w
    }
    /// Output values per image, Cout·OH·OW.
    pub fn out_size(&self) -> usize {
        self.cout * self.pixels()
    }
    /// Height and width of an input plane with its zero border, `(h + 2·pad, w + 2·pad)`.
    pub fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }
    /// Values per image laid out with its zero border, `[cin][h + 2·pad][w + 2·pad]`.
    pub fn padded_size(&self) -> usize {
        let (hp, wp) = self.padded();
        self.cin * hp * wp
    }
    /// Where patch row `r` (`ci, ky, kx`) reads an image laid out with its zero border,
    /// at output pixel (0, 0): `ci·Hp·Wp + ky·Wp + kx`.
    pub fn padded_offset(&self, r: usize) -> usize {
        let (hp, wp) = self.padded();
        (r / (self.kh * self.kw)) * hp * wp + ((r / self.kw) % self.kh) * wp + r % self.kw
    }
    /// Images per group, so a group's GEMM has about [`TARGET_COLUMNS`] columns.
    pub fn group(&self) -> usize {
        par::image_group(self.n, self.pixels(), TARGET_COLUMNS)
    }
    /// Floating-point operations of the forward GEMMs over the batch, 2·N·Cout·OH·OW·K.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.out_size() * self.k()) as f64
    }
    /// For row `kx` of the kernel at stride 1: the output columns whose input column
    /// lies inside the image, as `lo..hi`, and the input offset `ix = ox + kx - pad`.
    #[inline]
    pub(crate) fn valid_cols(&self, kx: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kx).min(self.ow);
        let hi = (self.w + self.pad).saturating_sub(kx).min(self.ow).max(lo);
        (lo, hi)
    }
}

/// y = conv(x, w) + bias, NCHW.
pub fn forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let gs = g.group();
    let (k, pix) = (g.k(), g.pixels());
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    let direct = direct::applies(g).then(|| direct::DirectWeights::forward(g, w));
    let mut y = par::zeros(g.n * g.out_size());
    // Groups are cut from the output: an image may have no pixels (all padding).
    y.par_chunks_mut(gs * g.out_size()).enumerate().for_each(|(gidx, yg)| {
        let gi = yg.len() / g.out_size();
        let xg = &x[gidx * gs * g.in_size()..][..gi * g.in_size()];
        if let Some(wd) = &direct {
            direct::forward_group(g, wd, xg, gi, bias, yg);
            return;
        }
        let wm = MatRef::rowmajor(w, g.cout, k);
        let mut out = OutView::images(yg, gi, g.cout, pix);
        if pointwise {
            matmul(
                &wm,
                &Rows(ImageRows { data: xg, images: gi, channels: g.cin, pixels: pix }),
                &mut out,
            );
        } else {
            matmul(&wm, &Rows(Patches { g, x: xg, images: gi }), &mut out);
        }
        if let Some(b) = bias {
            for (co_block, &bv) in yg.chunks_mut(pix).zip(b.iter().cycle()) {
                co_block.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
    y
}

/// Gradients of a convolution: `(dx if wanted, dW, dbias)`.
pub fn backward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    backward_in_bands(g, x, w, dy, want_dx, None)
}

/// `write(i0, gi, band, e)` of [`Bands`].
pub type BandWriter<'a> = dyn Fn(usize, usize, usize, &mut [f32]) + Sync + 'a;
/// `input(x, out)` of [`Bands`].
pub type BandInput<'a> = dyn Fn(&[f32], &mut [f32]) + Sync + 'a;

/// The output gradient as the reduction rows see it when it differs between bands of
/// rows: a CIM layer's tiles, each of whose readouts' slopes modulate dY
/// (`cim::conv`). [`backward_in_bands`] takes it.
pub struct Bands<'a> {
    /// Rows per band (the last band may be shorter).
    pub rows: usize,
    /// `write(i0, gi, band, e)`: band `band`'s output gradient for the group of `gi`
    /// images from image `i0`, `e[Cout][gi·OH·OW]` (every value written).
    pub write: &'a BandWriter<'a>,
    /// `input(x, out)`: what the weight gradient's patches are read from, made per
    /// image group from its images (a CIM layer's activation codes); `None`: `x`.
    pub input: Option<&'a BandInput<'a>>,
    /// Each group's weight-gradient partial is multiplied by this before the partials
    /// are added (a CIM layer's gradient comes out in steps of its activation grid).
    pub dw_scale: f32,
}

/// [`backward`], with the output gradient whole (`None`) or in [`Bands`]. Per image
/// group, on one thread: dbias, `dW += dY · colᵀ` and `dx = col2im(Wᵀ · dY)`; in bands,
/// both products run band by band on that band's gradient (`dW`'s columns of the band,
/// and the band's patch rows of `dx` added onto it before the next band's — col2im adds
/// rows in order either way, so one band gives the bits of the whole product).
pub fn backward_in_bands(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want_dx: bool,
    bands: Option<&Bands>,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let gs = g.group();
    let (k, pix) = (g.k(), g.pixels());
    let ngroups = g.n.div_ceil(gs);
    let direct_dx = (want_dx && bands.is_none() && direct::applies_to_data_gradient(g))
        .then(|| direct::DirectWeights::data_gradient(g, w));
    let mut dx = if want_dx { par::zeros(g.n * g.in_size()) } else { Vec::new() };
    let dx_chunks = par::optional_chunks(&mut dx, gs * g.in_size(), ngroups, want_dx);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(gidx, mut dxg)| {
            let i0 = gidx * gs;
            let gi = gs.min(g.n - i0);
            let cols = gi * pix;
            let images = &x[i0 * g.in_size()..(i0 + gi) * g.in_size()];
            let mapped = bands.and_then(|b| b.input).map(|input| {
                let mut m = Scratch::take(images.len()); // written whole by `input`
                input(images, &mut m);
                m
            });
            let xg: &[f32] = mapped.as_deref().unwrap_or(images);
            let dyg = &dy[i0 * g.out_size()..(i0 + gi) * g.out_size()];
            let dym = Rows(ImageRows { data: dyg, images: gi, channels: g.cout, pixels: pix });
            // dbias: sums of dY per output channel, image by image.
            let db: Vec<f32> = (0..g.cout)
                .map(|co| {
                    (0..gi).fold(0.0f32, |s, j| {
                        dyg[(j * g.cout + co) * pix..][..pix].iter().fold(s, |s, &v| s + v)
                    })
                })
                .collect();
            // dW partial = dY · colᵀ. Packing colᵀ is a transpose (16 × 16 in registers),
            // of runs of padded pixels where they are long enough (no patch matrix), else of the patch
            // matrix written out whole. The same values either way, so the same bits.
            let mut dw = vec![0.0f32; g.cout * k];
            let padded = PaddedImages::applies(g).then(|| PaddedImages::new(g, xg, gi));
            let weight_gradient = |grad: &dyn Operand, rows: Range<usize>, dw: &mut [f32]| {
                let mut out = OutView::rowmajor(&mut dw[rows.start..], g.cout, rows.len(), k);
                match &padded {
                    Some(p) => matmul(grad, &p.columns_t(rows), &mut out),
                    None => matmul(
                        grad,
                        &MatRef::rowmajor(
                            &group_columns(g, xg, gi, rows.clone()),
                            rows.len(),
                            cols,
                        )
                        .t(),
                        &mut out,
                    ),
                }
            };
            // dx += col2im(W[:, rows]ᵀ · grad) for patch rows `rows`.
            let data_gradient = |grad: &dyn Operand, rows: Range<usize>, dxg: &mut [f32]| {
                let mut dcol = Scratch::take(rows.len() * cols); // written whole by the product
                let wt =
                    MatRef { data: &w[rows.start..], rows: g.cout, cols: rows.len(), rs: k, cs: 1 };
                matmul(&wt.t(), grad, &mut OutView::rowmajor(&mut dcol, rows.len(), cols, cols));
                for j in 0..gi {
                    col2im(
                        g,
                        &dcol[j * pix..],
                        cols,
                        rows.clone(),
                        &mut dxg[j * g.in_size()..(j + 1) * g.in_size()],
                    );
                }
            };
            match bands {
                None => {
                    weight_gradient(&dym, 0..k, &mut dw);
                    // dx directly where the direct path applies (the same bits).
                    match (dxg, &direct_dx) {
                        (Some(dxg), Some(wd)) => direct::data_gradient_group(g, wd, dyg, gi, dxg),
                        (Some(dxg), None) => data_gradient(&dym, 0..k, dxg),
                        (None, _) => {}
                    }
                }
                Some(b) => {
                    assert!(b.rows > 0, "bands of no rows");
                    // Each band's gradient is written whole before its products.
                    let mut e = Scratch::take(g.cout * cols);
                    for band in 0..k.div_ceil(b.rows) {
                        let rows = band * b.rows..((band + 1) * b.rows).min(k);
                        (b.write)(i0, gi, band, &mut e);
                        let em = MatRef::rowmajor(&e, g.cout, cols);
                        weight_gradient(&em, rows.clone(), &mut dw);
                        if let Some(dxg) = dxg.as_deref_mut() {
                            data_gradient(&em, rows, dxg);
                        }
                    }
                    // `gemm`'s alpha, applied as it would: one product per element.
                    dw.iter_mut().for_each(|v| *v *= b.dw_scale);
                }
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![0.0f32; g.cout * k];
    let mut db = vec![0.0f32; g.cout];
    for (pw, pb) in &partials {
        par::sum_in_order(&mut dw, std::slice::from_ref(pw));
        par::sum_in_order(&mut db, std::slice::from_ref(pb));
    }
    (want_dx.then_some(dx), dw, db)
}

/// Convolution op on the tape. `bias`, when given, has shape (Cout).
pub fn conv2d(tape: &mut Tape, x: Var, w: Var, bias: Option<Var>, cfg: Conv2dCfg) -> Result<Var> {
    let g = ConvGeom::new(tape.value(x).shape(), tape.value(w).shape(), cfg)?;
    if let Some(b) = bias
        && tape.value(b).shape() != [g.cout]
    {
        return Err(Error::invalid(format!(
            "conv2d: bias shape {:?}, expected [{}]",
            tape.value(b).shape(),
            g.cout
        )));
    }
    let y =
        forward(&g, tape.value(x).data(), tape.value(w).data(), bias.map(|b| tape.value(b).data()));
    let y = Tensor::new(&[g.n, g.cout, g.oh, g.ow], y);
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Ok(tape.push(y, &inputs, move |gout, vals, sink| {
        let grads =
            backward(&g, vals.get(x).data(), vals.get(w).data(), gout.data(), sink.wants(x));
        add_grads(sink, vals, (x, w, bias), grads);
    }))
}

/// Hands a convolution's `(dx, dW, dbias)` to the sink, for the inputs that want them.
pub fn add_grads(
    sink: &mut GradSink,
    vals: &Values,
    (x, w, bias): (Var, Var, Option<Var>),
    (dx, dw, db): (Option<Vec<f32>>, Vec<f32>, Vec<f32>),
) {
    if let Some(dx) = dx {
        sink.add(x, Tensor::new(vals.get(x).shape(), dx));
    }
    if sink.wants(w) {
        sink.add(w, Tensor::new(vals.get(w).shape(), dw));
    }
    if let Some(b) = bias
        && sink.wants(b)
    {
        let n = db.len();
        sink.add(b, Tensor::new(&[n], db));
    }
}

#[cfg(test)]
mod tests;
