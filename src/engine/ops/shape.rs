//! Shape ops: flatten, the parameter-free "option A" ResNet shortcut, and the
//! straight-through substitution of a value measured elsewhere.

use crate::engine::{Tape, Tensor, Var, par};
use crate::{Error, Result};
use rayon::prelude::*;

/// (N, ...) → (N, prod(...)).
pub fn flatten(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = tape.value(x);
    let n = *xv.shape().first().ok_or_else(|| Error::invalid("flatten: scalar input"))?;
    let rest = xv.len().checked_div(n).unwrap_or(0);
    let y = xv.clone().reshape(&[n, rest])?;
    Ok(tape.push(y, &[x], move |g, vals, sink| {
        let shape = vals.get(x).shape().to_vec();
        let dx = sink.get(x);
        for (d, v) in dx.data_mut().iter_mut().zip(g.data()) {
            *d += *v;
        }
        debug_assert_eq!(dx.shape(), &shape[..]);
    }))
}

/// The CIFAR ResNet "option A" shortcut (He et al. 2016, §4.2): keep every `stride`-th
/// pixel and zero-pad the channels evenly on both sides up to `cout`.
pub fn subsample_pad_channels(tape: &mut Tape, x: Var, stride: usize, cout: usize) -> Result<Var> {
    let xv = tape.value(x);
    if xv.shape().len() != 4
        || stride == 0
        || cout < xv.shape()[1]
        || !(cout - xv.shape()[1]).is_multiple_of(2)
    {
        return Err(Error::invalid(format!(
            "shortcut: cannot map {:?} to {cout} channels at stride {stride}",
            xv.shape()
        )));
    }
    let (n, c, h, w) = xv.nchw();
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let lo = (cout - c) / 2;
    let mut y = par::zeros(n * cout * oh * ow);
    // One image per piece, both ways (every element is written by one piece).
    y.par_chunks_mut((cout * oh * ow).max(1))
        .zip(xv.data().par_chunks((c * h * w).max(1)))
        .for_each(|(yi, xi)| {
            for ch in 0..c {
                let src = &xi[ch * h * w..][..h * w];
                let dst = &mut yi[(ch + lo) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    for ox in 0..ow {
                        dst[oy * ow + ox] = src[oy * stride * w + ox * stride];
                    }
                }
            }
        });
    Ok(tape.push(Tensor::new(&[n, cout, oh, ow], y), &[x], move |g, _vals, sink| {
        let dx = sink.get(x);
        dx.data_mut()
            .par_chunks_mut((c * h * w).max(1))
            .zip(g.data().par_chunks((cout * oh * ow).max(1)))
            .for_each(|(di, gi)| {
                for ch in 0..c {
                    let dst = &mut di[ch * h * w..][..h * w];
                    let src = &gi[(ch + lo) * oh * ow..][..oh * ow];
                    for oy in 0..oh {
                        for ox in 0..ow {
                            dst[oy * stride * w + ox * stride] += src[oy * ow + ox];
                        }
                    }
                }
            });
    }))
}

/// `value` in place of `y`'s value, `y`'s gradient passed through unchanged: the
/// forward reads what another device computed (a macro doing a layer's operations),
/// the backward is `y`'s own (an estimator of that device). The value is taken as it
/// is, bit for bit (`y + (value − y)` in floats would not be).
pub fn straight_through(tape: &mut Tape, y: Var, value: Tensor) -> Result<Var> {
    let shape = tape.value(y).shape();
    if value.shape() != shape {
        return Err(Error::invalid(format!(
            "straight-through: a value of shape {:?} cannot stand in for one of shape {shape:?}",
            value.shape()
        )));
    }
    Ok(tape.push(value, &[y], move |g, _vals, sink| sink.add(y, g.clone())))
}

#[cfg(test)]
mod tests {
    use crate::engine::gradcheck::{check, random};

    #[test]
    fn gradients() {
        check(&[random(&[2, 3, 2, 2], 1)], |t, v| super::flatten(t, v[0]).unwrap(), 1e-2, 1e-3);
        check(
            &[random(&[2, 2, 5, 4], 2)],
            |t, v| super::subsample_pad_channels(t, v[0], 2, 6).unwrap(),
            1e-2,
            1e-3,
        );
    }

    /// The forward value is the one given, bit for bit; the gradient is `y`'s, so the
    /// finite differences of `y`'s op check the composition (the value given is `y`'s
    /// own, computed apart: a measurement of the same function).
    #[test]
    fn straight_through_takes_the_value_and_passes_the_gradient() {
        use crate::engine::{Tape, Tensor};
        check(
            &[random(&[2, 3, 2, 2], 3)],
            |t, v| {
                let y = super::flatten(t, v[0]).unwrap();
                let measured = t.value(y).clone();
                super::straight_through(t, y, measured).unwrap()
            },
            1e-2,
            1e-3,
        );
        let mut t = Tape::new(true);
        let x = t.leaf(random(&[2, 3], 4));
        let y = crate::engine::ops::relu(&mut t, x);
        let other = Tensor::new(&[2, 3], vec![0.5, -1.0, f32::MIN_POSITIVE, 3.0, 0.0, -0.0]);
        let z = super::straight_through(&mut t, y, other.clone()).unwrap();
        assert_eq!(t.value(z).data(), other.data());
        let err = super::straight_through(&mut t, y, Tensor::zeros(&[3, 2])).unwrap_err();
        assert!(err.to_string().contains("shape [3, 2] cannot stand in for one of shape [2, 3]"));
    }
}
