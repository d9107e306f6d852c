//! Fused softmax + cross-entropy with optional label smoothing, averaged over the batch.

use crate::engine::{Tape, Tensor, Var};
use crate::{Error, Result};

/// Mean over the batch of −Σ_c t_c·log softmax(z)_c, with t = (1−ε)·onehot + ε/C.
/// Backward: (softmax(z) − t)/N. Labels are data, not tape values.
pub fn softmax_cross_entropy(
    tape: &mut Tape,
    logits: Var,
    labels: &[u32],
    smoothing: f32,
) -> Result<Var> {
    let z = tape.value(logits);
    if z.shape().len() != 2 || z.shape()[0] != labels.len() {
        return Err(Error::invalid(format!(
            "cross-entropy: logits {:?} for {} labels",
            z.shape(),
            labels.len()
        )));
    }
    let (n, c) = (z.shape()[0], z.shape()[1]);
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= c) {
        return Err(Error::invalid(format!(
            "cross-entropy: label {bad} out of range for {c} classes"
        )));
    }
    if !(0.0..1.0).contains(&smoothing) {
        return Err(Error::invalid(format!(
            "cross-entropy: label smoothing {smoothing} not in [0, 1)"
        )));
    }
    let mut probs = vec![0.0f32; n * c];
    let mut total = 0.0f64;
    for (i, row) in z.data().chunks(c).enumerate() {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let se: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
        let lse = m as f64 + se.ln();
        let mut li = 0.0f64;
        for (j, &v) in row.iter().enumerate() {
            let logp = v as f64 - lse;
            probs[i * c + j] = logp.exp() as f32;
            let t = smoothing as f64 / c as f64
                + if j == labels[i] as usize { 1.0 - smoothing as f64 } else { 0.0 };
            li -= t * logp;
        }
        total += li;
    }
    let loss = Tensor::scalar((total / n as f64) as f32);
    let labels = labels.to_vec();
    Ok(tape.push(loss, &[logits], move |g, _vals, sink| {
        let scale = g.data()[0] / n as f32;
        let dz = sink.get(logits);
        for (i, row) in dz.data_mut().chunks_mut(c).enumerate() {
            for (j, d) in row.iter_mut().enumerate() {
                let t = smoothing / c as f32
                    + if j == labels[i] as usize { 1.0 - smoothing } else { 0.0 };
                *d += (probs[i * c + j] - t) * scale;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use crate::engine::gradcheck::{check, random};
    use crate::engine::{Tape, Tensor};

    #[test]
    fn gradient() {
        for eps in [0.0, 0.1] {
            check(
                &[random(&[4, 5], 1)],
                move |t, v| super::softmax_cross_entropy(t, v[0], &[0, 4, 2, 2], eps).unwrap(),
                1e-2,
                1e-3,
            );
        }
    }

    #[test]
    fn uniform_logits_give_log_c() {
        let mut t = Tape::new(false);
        let z = t.constant(Tensor::zeros(&[2, 10]));
        let l = super::softmax_cross_entropy(&mut t, z, &[3, 7], 0.0).unwrap();
        assert!((t.value(l).data()[0] - 10f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn bad_label_is_an_error() {
        let mut t = Tape::new(false);
        let z = t.constant(Tensor::zeros(&[1, 3]));
        assert!(super::softmax_cross_entropy(&mut t, z, &[3], 0.0).is_err());
    }
}
