//! ReLU. Backward reads the op's own output (y > 0 ⇔ x > 0), so nothing is saved.

use crate::engine::{Tape, Tensor, Var, par};

const CHUNK: usize = 1 << 14;

/// `max(x, 0)` element-wise, recorded on the tape.
pub fn relu(tape: &mut Tape, x: Var) -> Var {
    let xv = tape.value(x);
    let xd = xv.data();
    let y = par::from_chunks(xd.len(), CHUNK, |i, len| {
        xd[i * CHUNK..][..len].iter().map(|&v| v.max(0.0))
    });
    let y = Tensor::new(xv.shape(), y);
    tape.push(y, &[x], move |g, vals, sink| {
        let (g, y) = (g.data(), vals.output().data());
        // Where the output is 0 nothing passes: −0.0, the one value whose addition
        // changes no bit of any sum.
        sink.accumulate(x, CHUNK, |i, len| {
            g[i * CHUNK..][..len]
                .iter()
                .zip(&y[i * CHUNK..][..len])
                .map(|(&gv, &yv)| if yv > 0.0 { gv } else { -0.0 })
        });
    })
}

#[cfg(test)]
mod tests {
    use crate::engine::gradcheck::{check, random};

    #[test]
    fn gradient() {
        // Keep inputs away from the kink at 0, where the derivative is undefined.
        let mut x = random(&[2, 3, 4, 5], 1);
        x.data_mut().iter_mut().for_each(|v| *v += if *v >= 0.0 { 0.05 } else { -0.05 });
        check(&[x], |t, v| super::relu(t, v[0]), 1e-2, 1e-3);
    }
}
