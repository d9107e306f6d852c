//! Work splits that do not depend on the number of threads.
//!
//! rayon may run the pieces of a split on any thread in any order; results stay
//! bit-identical because (1) every output element is produced by exactly one piece,
//! and (2) reductions across pieces (weight gradients, batch statistics) produce one
//! partial per piece and add the partials in piece order on one thread. The piece
//! boundaries come from the problem's shape only.

/// Size of the image groups a batched op works on: enough columns (`group * pixels`)
/// to keep the GEMM efficient, a function of the shape only.
pub fn image_group(batch: usize, pixels_per_image: usize, target_columns: usize) -> usize {
    let g = target_columns.div_ceil(pixels_per_image.max(1));
    g.clamp(1, batch.max(1))
}

/// Adds `parts` in order into `out`.
pub fn sum_in_order(out: &mut [f32], parts: &[Vec<f32>]) {
    for p in parts {
        debug_assert_eq!(p.len(), out.len());
        for (o, v) in out.iter_mut().zip(p) {
            *o += *v;
        }
    }
}

/// Output slots for `groups` parallel pieces: disjoint `chunk`-sized pieces of `buf`
/// when the output is wanted (empty pieces when `chunk` is 0: images of no pixels),
/// `None`s otherwise (so one parallel loop serves both).
pub fn optional_chunks(
    buf: &mut [f32],
    chunk: usize,
    groups: usize,
    wanted: bool,
) -> Vec<Option<&mut [f32]>> {
    match (wanted, chunk) {
        (false, _) => (0..groups).map(|_| None).collect(),
        (true, 0) => (0..groups).map(|_| Some(Default::default())).collect(),
        (true, _) => buf.chunks_mut(chunk).map(Some).collect(),
    }
}

/// `n` zeros; a large buffer is written by all threads. A plain `vec![0.0; n]` zeroes
/// reused memory on the calling thread while the workers wait: measured at 60 % of the
/// serial (one-thread) time of a ResNet20 CIM training step, activation-sized buffers
/// zeroed between parallel loops.
pub fn zeros(n: usize) -> Vec<f32> {
    const SERIAL: usize = 1 << 16;
    if n < SERIAL {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    rayon::iter::ParallelExtend::par_extend(&mut v, rayon::iter::repeat_n(0.0f32, n));
    v
}

/// `n` values made in parallel, `chunk` at a time, written once with no zeroing first:
/// `fill(i, len)` yields the values of elements `i·chunk .. i·chunk + len`, exactly
/// `len` of them (a chunk that yields fewer panics; nothing unwritten is ever read).
/// For element-wise ops whose output is wholly written: zeroing it first (`zeros`) is a
/// second pass over memory. The chunks depend on `n` and `chunk` only.
pub fn from_chunks<I: Iterator<Item = f32>>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, usize) -> I + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, out)| {
        let (mut written, len) = (0, out.len());
        for (o, x) in out.iter_mut().zip(fill(i, len)) {
            o.write(x);
            written += 1;
        }
        assert_eq!(
            written,
            out.len(),
            "par::from_chunks: chunk {i} yielded {written} of {} values",
            out.len()
        );
    });
    // SAFETY: each of the first n elements lies in one chunk, and every chunk was
    // written whole (asserted; a panic above leaves the length at 0).
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn from_chunks_writes_every_element_in_place() {
        let v = super::from_chunks(1000, 64, |i, len| (0..len).map(move |j| (i * 64 + j) as f32));
        assert_eq!(v, (0..1000).map(|i| i as f32).collect::<Vec<_>>());
        assert!(super::from_chunks(0, 64, |_, len| (0..len).map(|_| 1.0)).is_empty());
    }

    #[test]
    #[should_panic(expected = "yielded 10 of 64")]
    fn a_short_chunk_is_refused() {
        super::from_chunks(1000, 64, |_, _| (0..10).map(|j| j as f32));
    }
}
