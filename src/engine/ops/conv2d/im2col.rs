//! The patch matrix of a convolution, `col[K = Cin·kh·kw][images·pixels]`: written
//! out whole ([`im2col`], [`group_columns`]) for the CIM layers, which quantize it, or
//! read a row segment at a time straight from the images ([`Patches`]) when the
//! product packs it, so the FP32 convolution never stores it. [`ImageRows`] is the
//! same kind of view of a group of NCHW activations (`[C][images·pixels]`), and
//! [`col2im`] is the adjoint that scatters patch gradients back onto the image.

use super::ConvGeom;
use crate::engine::gemm::RowSource;

/// Writes the patches of one image into `col` (K rows of `pixels` values at row
/// stride `ld`): row (ci, ky, kx), column (oy, ox) = x[ci, oy·s − p + ky, ox·s − p + kx].
pub fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32], ld: usize) {
    let (ow, pix) = (g.ow, g.pixels());
    for ci in 0..g.cin {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (ci * g.kh + ky) * g.kw + kx;
                let dst = &mut col[row * ld..row * ld + pix];
                let (lo, hi) = g.valid_cols(kx);
                for oy in 0..g.oh {
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.stride == 1 {
                        d[..lo].fill(0.0);
                        d[lo..hi].copy_from_slice(&src[lo + kx - g.pad..hi + kx - g.pad]);
                        d[hi..].fill(0.0);
                    } else {
                        for (ox, o) in d.iter_mut().enumerate() {
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            *o = if ix >= 0 && (ix as usize) < g.w { src[ix as usize] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each patch entry back onto its input pixel.
pub fn col2im(g: &ConvGeom, col: &[f32], ld: usize, dx: &mut [f32]) {
    let ow = g.ow;
    for ci in 0..g.cin {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (ci * g.kh + ky) * g.kw + kx;
                let src = &col[row * ld..row * ld + g.pixels()];
                let (lo, hi) = g.valid_cols(kx);
                for oy in 0..g.oh {
                    let s = &src[oy * ow..(oy + 1) * ow];
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let d = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.stride == 1 {
                        for (dv, sv) in d[lo + kx - g.pad..hi + kx - g.pad].iter_mut().zip(&s[lo..hi]) {
                            *dv += *sv;
                        }
                    } else {
                        for (ox, sv) in s.iter().enumerate() {
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            if ix >= 0 && (ix as usize) < g.w {
                                d[ix as usize] += *sv;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Patches of the `gi` images in `xg`, side by side: `col[K][gi·pixels]`.
pub fn group_columns(g: &ConvGeom, xg: &[f32], gi: usize) -> Vec<f32> {
    let (pix, cols) = (g.pixels(), gi * g.pixels());
    let mut col = vec![0.0f32; g.k() * cols];
    for j in 0..gi {
        im2col(g, &xg[j * g.in_size()..(j + 1) * g.in_size()], &mut col[j * pix..], cols);
    }
    col
}


/// The patch matrix of `images` consecutive NCHW images, read on demand.
pub struct Patches<'a> {
    pub g: &'a ConvGeom,
    pub x: &'a [f32],
    pub images: usize,
}

impl RowSource for Patches<'_> {
    fn rows(&self) -> usize {
        self.g.k()
    }
    fn cols(&self) -> usize {
        self.images * self.g.pixels()
    }
    fn read_row(&self, r: usize, c0: usize, len: usize, dst: &mut [f32], stride: usize) {
        let g = self.g;
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let pix = g.pixels();
        let (lo, hi) = g.valid_cols(kx); // inside the image for ox in lo..hi (stride 1)
        // Where column c0 is: image, output row, output column; then walk forward one
        // output row (or the part of one the segment covers) at a time.
        let (mut img, pixel) = (c0 / pix, c0 % pix);
        let (mut oy, mut ox0) = (pixel / g.ow, pixel % g.ow);
        let mut d = 0;
        while d < len {
            let run = (g.ow - ox0).min(len - d);
            let out = &mut dst[d * stride..];
            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
            if iy < 0 || iy >= g.h as isize {
                put_zeros(out, 0, run, stride);
            } else {
                let src = &self.x[img * g.in_size() + (ci * g.h + iy as usize) * g.w..][..g.w];
                if g.stride == 1 {
                    let a = lo.clamp(ox0, ox0 + run);
                    let b = hi.clamp(a, ox0 + run);
                    put_zeros(out, 0, a - ox0, stride);
                    put_slice(out, a - ox0, &src[a + kx - g.pad..b + kx - g.pad], stride);
                    put_zeros(out, b - ox0, ox0 + run - b, stride);
                } else {
                    for q in 0..run {
                        let ix = ((ox0 + q) * g.stride + kx) as isize - g.pad as isize;
                        out[q * stride] = if ix >= 0 && (ix as usize) < g.w { src[ix as usize] } else { 0.0 };
                    }
                }
            }
            d += run;
            ox0 = 0;
            oy += 1;
            if oy == g.oh {
                oy = 0;
                img += 1;
            }
        }
    }
}

/// `images` consecutive NCHW images of `channels × pixels`, as the matrix
/// `[channels][images·pixels]` (the layout of a convolution's product).
pub struct ImageRows<'a> {
    pub data: &'a [f32],
    pub images: usize,
    pub channels: usize,
    pub pixels: usize,
}

impl RowSource for ImageRows<'_> {
    fn rows(&self) -> usize {
        self.channels
    }
    fn cols(&self) -> usize {
        self.images * self.pixels
    }
    fn read_row(&self, r: usize, c0: usize, len: usize, dst: &mut [f32], stride: usize) {
        let (mut c, end, mut d) = (c0, c0 + len, 0);
        while c < end {
            let (img, px) = (c / self.pixels, c % self.pixels);
            let run = (self.pixels - px).min(end - c);
            put_slice(&mut dst[d * stride..], 0, &self.data[(img * self.channels + r) * self.pixels + px..][..run], stride);
            c += run;
            d += run;
        }
    }
}

#[inline]
fn put_zeros(dst: &mut [f32], at: usize, n: usize, stride: usize) {
    if stride == 1 {
        dst[at..at + n].fill(0.0);
    } else {
        (at..at + n).for_each(|t| dst[t * stride] = 0.0);
    }
}

#[inline]
fn put_slice(dst: &mut [f32], at: usize, src: &[f32], stride: usize) {
    if stride == 1 {
        dst[at..at + src.len()].copy_from_slice(src);
    } else {
        for (t, &v) in src.iter().enumerate() {
            dst[(at + t) * stride] = v;
        }
    }
}
