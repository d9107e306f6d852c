//! Element-wise sum of two tensors of the same shape (residual connections).

use crate::engine::{Tape, Tensor, Var, par};

const CHUNK: usize = 1 << 14;

/// `a + b`, recorded on the tape. Panics when the shapes differ.
pub fn add(tape: &mut Tape, a: Var, b: Var) -> Var {
    let (av, bv) = (tape.value(a), tape.value(b));
    assert_eq!(av.shape(), bv.shape(), "add: shapes {:?} and {:?} differ", av.shape(), bv.shape());
    let (ad, bd) = (av.data(), bv.data());
    let y = par::from_chunks(ad.len(), CHUNK, |i, len| {
        ad[i * CHUNK..][..len].iter().zip(&bd[i * CHUNK..][..len]).map(|(&p, &q)| p + q)
    });
    let y = Tensor::new(av.shape(), y);
    tape.push(y, &[a, b], move |g, _vals, sink| {
        let g = g.data();
        for v in [a, b] {
            sink.accumulate(v, CHUNK, |i, len| g[i * CHUNK..][..len].iter().copied());
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::engine::gradcheck::{check, random};

    #[test]
    fn gradient() {
        check(
            &[random(&[3, 4], 1), random(&[3, 4], 2)],
            |t, v| super::add(t, v[0], v[1]),
            1e-2,
            1e-3,
        );
    }

    #[test]
    fn same_input_twice_accumulates() {
        check(&[random(&[5], 3)], |t, v| super::add(t, v[0], v[0]), 1e-2, 1e-3);
    }
}
