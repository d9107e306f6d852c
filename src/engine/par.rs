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

/// Adds `parts` in order into `out` (which it first zeroes when `overwrite`).
pub fn sum_in_order(out: &mut [f32], parts: &[Vec<f32>]) {
    for p in parts {
        debug_assert_eq!(p.len(), out.len());
        for (o, v) in out.iter_mut().zip(p) {
            *o += *v;
        }
    }
}

/// Output slots for `groups` parallel pieces: disjoint `chunk`-sized pieces of `buf`
/// when the output is wanted, `None`s otherwise (so one parallel loop serves both).
pub fn optional_chunks(buf: &mut [f32], chunk: usize, groups: usize, wanted: bool) -> Vec<Option<&mut [f32]>> {
    if wanted { buf.chunks_mut(chunk).map(Some).collect() } else { (0..groups).map(|_| None).collect() }
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
