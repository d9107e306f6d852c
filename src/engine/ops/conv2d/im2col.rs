//! The patch matrix of a convolution, `col[K = Cin·kh·kw][images·pixels]`: written
//! out whole ([`im2col`], [`group_columns`]) for the weight gradients of the
//! convolutions whose patches are not runs of padded pixels (strided, or on images
//! narrower than 8: see [`super::PaddedImages`]), whose products read it transposed
//! (fastest from a stored matrix), or read a row segment at a time
//! straight from the images ([`Patches`]) when a product packs it as it is, so no
//! forward pass (FP32 or CIM) stores it. [`ImageRows`] is the
//! same kind of view of a group of NCHW activations (`[C][images·pixels]`), and
//! [`col2im`] is the adjoint that scatters patch gradients back onto the image.

use super::ConvGeom;
use crate::engine::gemm::RowSource;
use crate::engine::scratch::Scratch;
use std::ops::Range;

/// Writes rows `rows` of one image's patches into `col` (one row of `pixels` values
/// per patch row, `ld` apart, the first at 0): row (ci, ky, kx), column (oy, ox) =
/// x[ci, oy·s − p + ky, ox·s − p + kx].
pub fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32], ld: usize, rows: Range<usize>) {
    let (ow, pix) = (g.ow, g.pixels());
    for row in rows.clone() {
        let (ci, ky, kx) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        let at = (row - rows.start) * ld;
        let dst = &mut col[at..at + pix];
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

/// The adjoint of [`im2col`]: adds each entry of patch rows `rows` (laid out as
/// `im2col` writes them) back onto its input pixel, in row order. So the rows of a
/// patch matrix added a range at a time, in order, give the bits of adding them at once.
pub fn col2im(g: &ConvGeom, col: &[f32], ld: usize, rows: Range<usize>, dx: &mut [f32]) {
    let ow = g.ow;
    for row in rows.clone() {
        let (ci, ky, kx) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        let at = (row - rows.start) * ld;
        let src = &col[at..at + g.pixels()];
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

/// Patch rows `rows` of the `gi` images in `xg`, side by side: `col[rows][gi·pixels]`
/// ([`im2col`] writes every entry, padding included, so the buffer need not be zeroed
/// first).
pub fn group_columns(g: &ConvGeom, xg: &[f32], gi: usize, rows: Range<usize>) -> Scratch {
    let (pix, cols) = (g.pixels(), gi * g.pixels());
    let mut col = Scratch::take(rows.len() * cols);
    for j in 0..gi {
        im2col(
            g,
            &xg[j * g.in_size()..(j + 1) * g.in_size()],
            &mut col[j * pix..],
            cols,
            rows.clone(),
        );
    }
    col
}

/// The patch matrix of `images` consecutive NCHW images, read on demand.
pub struct Patches<'a> {
    /// The convolution's shapes.
    pub g: &'a ConvGeom,
    /// The images, NCHW, from the group's first.
    pub x: &'a [f32],
    /// Images in the group.
    pub images: usize,
}

impl RowSource for Patches<'_> {
    fn rows(&self) -> usize {
        self.g.k()
    }
    fn cols(&self) -> usize {
        self.images * self.g.pixels()
    }
    fn read_row(&self, r: usize, c0: usize, dst: &mut [f32]) {
        let g = self.g;
        let len = dst.len();
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
            let out = &mut dst[d..d + run];
            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
            if iy < 0 || iy >= g.h as isize {
                out.fill(0.0);
            } else {
                let src = &self.x[img * g.in_size() + (ci * g.h + iy as usize) * g.w..][..g.w];
                if g.stride == 1 {
                    // Inside the image for ox in lo..hi: copy that part of the run
                    // (input column ox + kx − pad), pad the rest with zeros.
                    let (a, b) = (lo.clamp(ox0, ox0 + run), hi.clamp(ox0, ox0 + run));
                    if a < b {
                        out[..a - ox0].fill(0.0);
                        out[a - ox0..b - ox0].copy_from_slice(&src[a + kx - g.pad..b + kx - g.pad]);
                        out[b - ox0..].fill(0.0);
                    } else {
                        out.fill(0.0);
                    }
                } else {
                    for (q, o) in out.iter_mut().enumerate() {
                        let ix = ((ox0 + q) * g.stride + kx) as isize - g.pad as isize;
                        *o = if ix >= 0 && (ix as usize) < g.w { src[ix as usize] } else { 0.0 };
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
    /// The images, NCHW.
    pub data: &'a [f32],
    /// Number of images.
    pub images: usize,
    /// Channels per image (the matrix's rows).
    pub channels: usize,
    /// Pixels per channel plane.
    pub pixels: usize,
}

impl RowSource for ImageRows<'_> {
    fn rows(&self) -> usize {
        self.channels
    }
    fn cols(&self) -> usize {
        self.images * self.pixels
    }
    fn read_row(&self, r: usize, c0: usize, dst: &mut [f32]) {
        let (mut c, mut d) = (c0, 0);
        while d < dst.len() {
            let (img, px) = (c / self.pixels, c % self.pixels);
            let run = (self.pixels - px).min(dst.len() - d);
            dst[d..d + run]
                .copy_from_slice(&self.data[(img * self.channels + r) * self.pixels + px..][..run]);
            c += run;
            d += run;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::random;
    use crate::engine::ops::conv2d::Conv2dCfg;

    /// Every segment of every patch row, read on demand, equals the stored patch
    /// matrix: segments starting and ending mid-row, crossing images, lying wholly in
    /// the padding (kernel 5, padding 2), at strides 1 and 2.
    #[test]
    fn patch_segments_match_the_stored_patch_matrix() {
        for stride in [1, 2] {
            let (n, xs, ws) = (3, [3usize, 2, 5, 4], [1usize, 2, 5, 5]);
            let g = ConvGeom::new(&xs, &ws, Conv2dCfg { stride, padding: 2 }).unwrap();
            let x = random(&xs, 9);
            let col = group_columns(&g, x.data(), n, 0..g.k());
            let patches = Patches { g: &g, x: x.data(), images: n };
            let cols = n * g.pixels();
            let mut buf = [f32::NAN; 16];
            for r in 0..g.k() {
                for c0 in 0..cols {
                    for len in 1..=(cols - c0).min(16) {
                        patches.read_row(r, c0, &mut buf[..len]);
                        assert_eq!(
                            &buf[..len],
                            &col[r * cols + c0..][..len],
                            "stride {stride} row {r} columns {c0}+{len}"
                        );
                    }
                }
            }
        }
    }
}
