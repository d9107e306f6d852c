//! Fully connected layer: y = x·Wᵀ + b with W of shape (out, in), as in PyTorch.
//!
//! Rows of x (forward, dx) and rows of W (dW) are split into fixed blocks; every
//! output element is reduced by one task in a fixed order.

use crate::engine::gemm::{MatRef, gemm};
use crate::engine::{Tape, Tensor, Var};
use crate::{Error, Result};
use rayon::prelude::*;

const ROWS_PER_TASK: usize = 16;

/// Raw forward: x (n × i), w (o × i) → y (n × o).
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    i: usize,
    o: usize,
) -> Vec<f32> {
    let mut y = vec![0.0f32; n * o];
    y.par_chunks_mut(ROWS_PER_TASK * o).zip(x.par_chunks(ROWS_PER_TASK * i)).for_each(
        |(yb, xb)| {
            let rows = xb.len() / i.max(1);
            gemm(1.0, MatRef::rowmajor(xb, rows, i), MatRef::rowmajor(w, o, i).t(), 0.0, yb, o);
            if let Some(b) = bias {
                for row in yb.chunks_mut(o) {
                    row.iter_mut().zip(b).for_each(|(v, bv)| *v += *bv);
                }
            }
        },
    );
    y
}

/// `x·wᵀ + bias` on the tape: x (N, in), w (out, in), bias (out) → (N, out); errors on
/// other shapes.
pub fn linear(tape: &mut Tape, x: Var, w: Var, bias: Option<Var>) -> Result<Var> {
    let (xs, ws) = (tape.value(x).shape(), tape.value(w).shape());
    if xs.len() != 2 || ws.len() != 2 || xs[1] != ws[1] {
        return Err(Error::invalid(format!(
            "linear: input {xs:?} does not fit weight {ws:?} (need [N, in] and [out, in])"
        )));
    }
    let (n, i, o) = (xs[0], xs[1], ws[0]);
    if let Some(b) = bias
        && tape.value(b).shape() != [o]
    {
        return Err(Error::invalid(format!(
            "linear: bias shape {:?}, expected [{o}]",
            tape.value(b).shape()
        )));
    }
    let y = forward(
        tape.value(x).data(),
        tape.value(w).data(),
        bias.map(|b| tape.value(b).data()),
        n,
        i,
        o,
    );
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Ok(tape.push(Tensor::new(&[n, o], y), &inputs, move |g, vals, sink| {
        let (xv, wv, dy) = (vals.get(x).data(), vals.get(w).data(), g.data());
        if sink.wants(x) {
            let dx = sink.get(x);
            dx.data_mut()
                .par_chunks_mut(ROWS_PER_TASK * i)
                .zip(dy.par_chunks(ROWS_PER_TASK * o))
                .for_each(|(dxb, dyb)| {
                    let rows = dyb.len() / o;
                    gemm(
                        1.0,
                        MatRef::rowmajor(dyb, rows, o),
                        MatRef::rowmajor(wv, o, i),
                        1.0,
                        dxb,
                        i,
                    );
                });
        }
        if sink.wants(w) {
            let dw = sink.get(w);
            dw.data_mut().par_chunks_mut(ROWS_PER_TASK * i).enumerate().for_each(|(blk, dwb)| {
                let r0 = blk * ROWS_PER_TASK;
                let rows = dwb.len() / i;
                // dW[r0..r0+rows] += dY[:, r0..r0+rows]ᵀ · X
                let dy_cols = MatRef { data: &dy[r0..], rows: n, cols: rows, rs: o, cs: 1 };
                gemm(1.0, dy_cols.t(), MatRef::rowmajor(xv, n, i), 1.0, dwb, i);
            });
        }
        if let Some(b) = bias
            && sink.wants(b)
        {
            let db = sink.get(b);
            for row in dy.chunks(o) {
                db.data_mut().iter_mut().zip(row).for_each(|(d, v)| *d += *v);
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use crate::engine::gradcheck::{check, random};

    #[test]
    fn gradient() {
        check(
            &[random(&[37, 5], 1), random(&[4, 5], 2), random(&[4], 3)],
            |t, v| super::linear(t, v[0], v[1], Some(v[2])).unwrap(),
            1e-2,
            2e-3,
        );
        check(
            &[random(&[3, 40], 4), random(&[20, 40], 5)],
            |t, v| super::linear(t, v[0], v[1], None).unwrap(),
            1e-2,
            2e-3,
        );
    }

    #[test]
    fn values() {
        let mut t = crate::engine::Tape::new(false);
        let x = t.constant(crate::engine::Tensor::from_vec(&[1, 2], vec![1.0, 2.0]).unwrap());
        let w = t
            .constant(crate::engine::Tensor::from_vec(&[2, 2], vec![1.0, 0.0, 3.0, -1.0]).unwrap());
        let b = t.constant(crate::engine::Tensor::from_vec(&[2], vec![0.5, 0.0]).unwrap());
        let y = super::linear(&mut t, x, w, Some(b)).unwrap();
        assert_eq!(t.value(y).data(), &[1.5, 1.0]);
    }
}
