//! Quantizers: E-PACT (and PACT) for activations, signed low-bit codes for weights.
//!
//! **E-PACT** clips activations to `[lo, hi]`, both learned per layer, and rounds to
//! `2^bits` levels: `x̂ = lo + s·round((clip(x, lo, hi) − lo)/s)`, `s = (hi − lo)/(2^bits − 1)`.
//! Gradients (straight-through inside, PACT-style at the bounds): `∂x̂/∂x = 1` for
//! `lo < x < hi`, else 0; `∂x̂/∂hi = 1` where `x ≥ hi`; `∂x̂/∂lo = 1` where `x ≤ lo`.
//! **PACT** is the same op with `lo` a constant 0 (no gradient), the ablation baseline.
//! With `bits = None` the op is the clip alone (the surrogate the gradient is exact for;
//! used by the gradient test). If training pushes `hi` below `lo + MIN_RANGE`, the op
//! uses `hi = lo + MIN_RANGE`. The CIM ops quantize their own input this way
//! ([`InputQuant`], sharing [`epact`]'s backward); the op [`epact`] is E-PACT on its own.
//!
//! **Weights** are quantized per output channel (each macro column's scale is applied
//! digitally after readout): `s_w[c] = max|w[c,:]| / wmax`, codes
//! `clamp(round(w/s_w), wmin, wmax)`; for 1-bit weights, `±1` with `s_w = mean|w[c,:]|`.
//! Gradient: straight-through (identity); the scale is treated as a constant.

use crate::cim::MacroSpec;
use crate::engine::tape::GradSink;
use crate::engine::{Tape, Tensor, Var};
use crate::{Error, Result};
use rayon::prelude::*;

/// The narrowest E-PACT range `hi − lo`: a smaller `hi` is raised to `lo + MIN_RANGE`.
pub const MIN_RANGE: f32 = 1e-3;
const CHUNK: usize = 1 << 14;

/// The activation grid a CIM layer reads: value of code q is `lo + step·q`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActGrid {
    /// The value of code 0 (the lower clipping bound).
    pub lo: f32,
    /// The value of the largest code (the upper clipping bound, at least `lo + MIN_RANGE`).
    pub hi: f32,
    /// The value between neighbouring codes, `(hi − lo) / max_code`.
    pub step: f32,
    /// The largest code, `2^bits − 1`.
    pub max_code: u32,
    /// 1 / step (codes are computed by multiplication: it vectorises, a division does not).
    inv_step: f32,
}

impl ActGrid {
    /// The grid of `bits`-bit codes over `[lo, hi]` (`hi` raised to `lo + MIN_RANGE` if below it).
    pub fn new(lo: f32, hi: f32, bits: u32) -> Self {
        let hi = hi.max(lo + MIN_RANGE);
        let max_code = (1u32 << bits) - 1;
        let step = (hi - lo) / max_code as f32;
        ActGrid { lo, hi, step, max_code, inv_step: 1.0 / step }
    }
    /// The code of `x`: `(x − lo) / step` rounded (ties to even) and clamped to
    /// `0..=max_code`, as an integer-valued f32.
    #[inline]
    pub fn code(&self, x: f32) -> f32 {
        ((x - self.lo) * self.inv_step).round_ties_even().clamp(0.0, self.max_code as f32)
    }
    /// The value of code `q`: `lo + step·q`.
    #[inline]
    pub fn value(&self, q: f32) -> f32 {
        self.lo + self.step * q
    }
    /// E-PACT's output for `x`: `x` clipped to `[lo, hi]`, rounded to the grid.
    #[inline]
    pub fn quantize(&self, x: f32) -> f32 {
        self.value(self.code(x.clamp(self.lo, self.hi)))
    }
}

fn scalar(tape: &Tape, v: Var, what: &str) -> Result<f32> {
    let t = tape.value(v);
    if t.len() != 1 || !t.data()[0].is_finite() {
        return Err(Error::invalid(format!(
            "E-PACT: {what} must be one finite number, got {:?}",
            t.data()
        )));
    }
    Ok(t.data()[0])
}

/// A CIM layer's input quantizer, the macro's input DAC: E-PACT's bounds `lo` and `hi`,
/// one-element tensors on the tape (learned parameters; for PACT `lo` is a constant 0).
/// The CIM ops ([`crate::cim::cim_conv2d`]) clip and round their input with it and take
/// its gradient to the input and the bounds, as [`epact`] followed by the op on `x̂`
/// would, without keeping `x̂`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputQuant {
    /// The lower bound (the value of code 0).
    pub lo: Var,
    /// The upper bound (the value of the largest code).
    pub hi: Var,
}

impl InputQuant {
    /// The bounds' values, `hi` raised to `lo + MIN_RANGE` if below it (errors naming a
    /// bound that is not one finite number).
    pub fn bounds(&self, tape: &Tape) -> Result<(f32, f32)> {
        let l = scalar(tape, self.lo, "the lower bound")?;
        let h = scalar(tape, self.hi, "the upper bound")?;
        Ok((l, h.max(l + MIN_RANGE)))
    }
    /// Whether either bound needs a gradient.
    pub(crate) fn needs_grad(&self, tape: &Tape) -> bool {
        tape.needs_grad(self.lo) || tape.needs_grad(self.hi)
    }
}

/// E-PACT (or PACT, with `lo` a constant 0) fake quantization.
pub fn epact(tape: &mut Tape, x: Var, lo: Var, hi: Var, bits: Option<u32>) -> Result<Var> {
    let (l, h) = InputQuant { lo, hi }.bounds(tape)?;
    let xv = tape.value(x);
    let grid = bits.map(|b| ActGrid::new(l, h, b));
    let xd = xv.data();
    let y = crate::engine::par::from_chunks(xd.len(), CHUNK, |i, len| {
        xd[i * CHUNK..][..len].iter().map(move |&v| match grid {
            Some(g) => g.quantize(v),
            None => v.clamp(l, h),
        })
    });
    let y = Tensor::new(xv.shape(), y);
    Ok(tape.push(y, &[x, lo, hi], move |g, vals, sink| {
        epact_backward(g.data(), vals.get(x).data(), (l, h), sink, (x, lo, hi))
    }))
}

/// E-PACT's backward: `gd` the gradient of `x̂`, `xv` the input `x`, `(l, h)` the bounds'
/// values ([`InputQuant::bounds`]); adds the gradients of `x`, `lo` and `hi`.
pub(crate) fn epact_backward(
    gd: &[f32],
    xv: &[f32],
    (l, h): (f32, f32),
    sink: &mut GradSink,
    (x, lo, hi): (Var, Var, Var),
) {
    assert_eq!(gd.len(), xv.len(), "E-PACT backward: gradient and input lengths differ");
    // Per-chunk partial sums for the bounds, added in chunk order (deterministic).
    let parts: Vec<(f64, f64)> = gd
        .par_chunks(CHUNK)
        .zip(xv.par_chunks(CHUNK))
        .map(|(g, x)| {
            // Eight independent f32 lanes per bound (a fixed order, so deterministic),
            // added in f64 at the end of the chunk: element `8j + i` goes to lane `i`.
            // The bounds in locals, whole groups of eight apart from the tail, and
            // selects (`&`, not `&&`): read through the closure's references, in
            // groups of any length, with a branch, the loop stayed scalar.
            let (l, h) = (l, h);
            let (mut dl, mut dh) = ([0.0f32; 8], [0.0f32; 8]);
            let mut add = |gs: &[f32], xs: &[f32]| {
                for ((d, &gv), &v) in dl.iter_mut().zip(gs).zip(xs) {
                    *d += if v <= l { gv } else { 0.0 };
                }
                for ((d, &gv), &v) in dh.iter_mut().zip(gs).zip(xs) {
                    *d += if (v >= h) & (v > l) { gv } else { 0.0 };
                }
            };
            let (gs, xs) = (g.chunks_exact(8), x.chunks_exact(8));
            let (g_tail, x_tail) = (gs.remainder(), xs.remainder());
            for (gs, xs) in gs.zip(xs) {
                add(gs, xs);
            }
            add(g_tail, x_tail);
            (dl.iter().map(|&v| v as f64).sum::<f64>(), dh.iter().map(|&v| v as f64).sum::<f64>())
        })
        .collect();
    sink.accumulate(x, CHUNK, |i, len| {
        gd[i * CHUNK..][..len]
            .iter()
            .zip(&xv[i * CHUNK..][..len])
            .map(move |(&gv, &v)| if v > l && v < h { gv } else { 0.0 })
    });
    let (dl, dh) = parts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    if sink.wants(lo) {
        sink.get(lo).data_mut()[0] += dl as f32;
    }
    if sink.wants(hi) {
        sink.get(hi).data_mut()[0] += dh as f32;
    }
}

/// Initial E-PACT bounds from activation statistics: the 0.1 % and 99.9 % quantiles of
/// a calibration batch (robust to outliers; `lo = 0` exactly for ReLU outputs).
pub fn init_bounds(acts: &[f32]) -> (f32, f32) {
    let mut v: Vec<f32> = acts.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (q(0.001), q(0.999));
    (lo, hi.max(lo + MIN_RANGE))
}

/// Per-output-channel weight codes and scales for a macro: `(codes, scales)`, codes as
/// f32 integers in `[wmin, wmax]`, weight shape `(Cout, ...)`.
pub fn weight_codes(w: &Tensor, spec: &MacroSpec) -> (Vec<f32>, Vec<f32>) {
    let cout = w.shape()[0];
    let per = w.len() / cout.max(1);
    let (wmin, wmax) = (spec.weight_min() as f32, spec.weight_max() as f32);
    let mut codes = vec![0.0f32; w.len()];
    let mut scales = vec![0.0f32; cout];
    for (c, (row, out)) in w.data().chunks(per).zip(codes.chunks_mut(per)).enumerate() {
        if spec.weight_bits == 1 {
            let s = (row.iter().map(|v| v.abs() as f64).sum::<f64>() / per as f64) as f32;
            scales[c] = if s > 0.0 { s } else { 1.0 };
            for (o, &v) in out.iter_mut().zip(row) {
                *o = if v >= 0.0 { 1.0 } else { -1.0 };
            }
        } else {
            let m = row.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            let s = if m > 0.0 { m / wmax } else { 1.0 };
            scales[c] = s;
            for (o, &v) in out.iter_mut().zip(row) {
                *o = (v / s).round().clamp(wmin, wmax);
            }
        }
    }
    (codes, scales)
}

/// Fake-quantized weights ŵ = s_w·code, straight-through gradient.
pub fn quantize_weights(tape: &mut Tape, w: Var, spec: &MacroSpec) -> Var {
    let wv = tape.value(w);
    let (codes, scales) = weight_codes(wv, spec);
    let per = wv.len() / scales.len().max(1);
    let data: Vec<f32> = codes.iter().enumerate().map(|(i, &c)| c * scales[i / per]).collect();
    let y = Tensor::new(wv.shape(), data);
    tape.push(y, &[w], move |g, _vals, sink| sink.get(w).add_assign(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gradcheck::{check, random};

    #[test]
    fn epact_gradient_is_exact_for_the_clip_surrogate() {
        // Inputs away from the bounds (finite differences straddle no kink).
        let mut x = random(&[4, 30], 1);
        x.data_mut().iter_mut().for_each(|v| *v *= 2.0);
        x.data_mut()
            .iter_mut()
            .filter(|v| (v.abs() - 0.5).abs() < 0.03 || (**v - 1.2).abs() < 0.03)
            .for_each(|v| *v += 0.1);
        let (lo, hi) = (Tensor::full(&[1], -0.5), Tensor::full(&[1], 1.2));
        check(&[x, lo, hi], |t, v| epact(t, v[0], v[1], v[2], None).unwrap(), 1e-2, 1e-3);
    }

    #[test]
    fn epact_rounds_to_the_grid_and_shares_the_surrogate_gradient() {
        let x = random(&[1000], 2);
        let run = |bits| {
            let mut t = Tape::new(true);
            let (xv, lo, hi) = (
                t.leaf(x.clone()),
                t.leaf(Tensor::full(&[1], -0.3)),
                t.leaf(Tensor::full(&[1], 0.8)),
            );
            let y = epact(&mut t, xv, lo, hi, bits).unwrap();
            let out = t.value(y).clone();
            let l = crate::engine::gradcheck::project(&mut t, y, random(&[1000], 3));
            let g = t.backward(l);
            (
                out,
                [
                    g.get(xv).unwrap().clone(),
                    g.get(lo).unwrap().clone(),
                    g.get(hi).unwrap().clone(),
                ],
            )
        };
        let (q, gq) = run(Some(8));
        let (_, gs) = run(None);
        assert_eq!(gq, gs);
        let grid = ActGrid::new(-0.3, 0.8, 8);
        for (&v, &orig) in q.data().iter().zip(x.data()) {
            let code = (v - grid.lo) / grid.step;
            assert!((code - code.round()).abs() < 1e-3 && (-1e-3..=255.001).contains(&code));
            assert!((v - orig.clamp(-0.3, 0.8)).abs() <= grid.step / 2.0 + 1e-6);
        }
    }

    #[test]
    fn weight_codes_per_channel() {
        let spec = MacroSpec::default();
        let w = Tensor::from_vec(&[2, 3], vec![0.7, -0.35, 0.1, -2.0, 1.1, 0.0]).unwrap();
        let (codes, scales) = weight_codes(&w, &spec);
        assert_eq!(codes, vec![7.0, -4.0, 1.0, -7.0, 4.0, 0.0]);
        assert!((scales[0] - 0.1).abs() < 1e-7 && (scales[1] - 2.0 / 7.0).abs() < 1e-7);
        let (b, s) = weight_codes(&w, &MacroSpec::paper_chip());
        assert_eq!(b, vec![1.0, -1.0, 1.0, -1.0, 1.0, 1.0]);
        assert!((s[1] - 3.1 / 3.0).abs() < 1e-6);
        // Straight-through: the gradient passes unchanged.
        let mut t = Tape::new(true);
        let wv = t.leaf(random(&[3, 4], 4));
        let q = quantize_weights(&mut t, wv, &spec);
        let r = random(&[3, 4], 5);
        let l = crate::engine::gradcheck::project(&mut t, q, r.clone());
        assert_eq!(t.backward(l).get(wv).unwrap(), &r);
    }

    #[test]
    fn init_bounds_uses_robust_quantiles() {
        let mut a: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 100.0).collect();
        a[0] = 1e6;
        let (lo, hi) = init_bounds(&a);
        assert_eq!(lo, 0.0);
        assert!((0.98..=0.99).contains(&hi));
    }
}
