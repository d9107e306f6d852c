//! Finite-difference gradient checks, so each op's test is a line or two.
//!
//! The op's output is projected on a fixed random direction r (L = Σ r·y, summed in
//! f64); the analytic gradient of L is compared with central differences of L, for
//! every input element (or a fixed sample of them for large inputs).

use super::{Tape, Tensor, Var};
use crate::rng::KeyedRng;

/// A scalar `Σ r·y`: the projection used to turn any output into a loss.
pub fn project(tape: &mut Tape, y: Var, r: Tensor) -> Var {
    let val: f64 =
        tape.value(y).data().iter().zip(r.data()).map(|(a, b)| *a as f64 * *b as f64).sum();
    tape.push(Tensor::scalar(val as f32), &[y], move |g, _vals, sink| {
        let gs = g.data()[0];
        let dy = sink.get(y);
        for (d, rv) in dy.data_mut().iter_mut().zip(r.data()) {
            *d += gs * rv;
        }
    })
}

/// Deterministic pseudo-random tensor in [-1, 1) (test inputs).
pub fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = KeyedRng::new(&[seed, 0xC0FFEE]);
    let n = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect())
}

/// Checks d(Σ r·f(inputs))/d(inputs) against central differences.
/// `f` must be deterministic. Panics with the worst element on failure.
pub fn check<F>(inputs: &[Tensor], f: F, eps: f32, tol: f64)
where
    F: Fn(&mut Tape, &[Var]) -> Var,
{
    // Analytic gradient.
    let mut tape = Tape::new(true);
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let y = f(&mut tape, &vars);
    let r = random(tape.value(y).shape(), 7);
    let loss = project(&mut tape, y, r.clone());
    let grads = tape.backward(loss);

    let eval = |xs: &[Tensor]| -> f64 {
        let mut t = Tape::new(false);
        let vs: Vec<Var> = xs.iter().map(|x| t.constant(x.clone())).collect();
        let y = f(&mut t, &vs);
        t.value(y).data().iter().zip(r.data()).map(|(a, b)| *a as f64 * *b as f64).sum()
    };

    for (which, input) in inputs.iter().enumerate() {
        let analytic =
            grads.get(vars[which]).cloned().unwrap_or_else(|| Tensor::zeros(input.shape()));
        let n = input.len();
        // Every element of small inputs, a fixed spread sample of large ones.
        let picks: Vec<usize> =
            if n <= 256 { (0..n).collect() } else { (0..256).map(|i| i * n / 256).collect() };
        for idx in picks {
            let mut xs = inputs.to_vec();
            xs[which].data_mut()[idx] = input.data()[idx] + eps;
            let lp = eval(&xs);
            xs[which].data_mut()[idx] = input.data()[idx] - eps;
            let lm = eval(&xs);
            let numeric = (lp - lm) / (2.0 * eps as f64);
            let a = analytic.data()[idx] as f64;
            let err = (a - numeric).abs();
            assert!(
                err <= tol * (1.0 + numeric.abs().max(a.abs())),
                "gradient mismatch: input {which}, element {idx}: analytic {a}, numeric {numeric}"
            );
        }
    }
}
