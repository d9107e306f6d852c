//! Where a CIM layer's time goes, for `dnat bench`'s step breakdown: per part, the wall
//! time each thread spent in it, summed over threads (a part that runs on all threads
//! at once counts its wall time once per thread). Divided by the thread count, the parts
//! are shares of the step's wall time, exact while every thread is busy. Off (no clock
//! reads) unless a runtime carries a [`CimProfile`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Thread nanoseconds the CIM layers spent in each part of their work.
#[derive(Debug, Default)]
pub struct CimProfile {
    /// Forward: im2col of the input codes and the tiles' integer partial sums (bit
    /// slicing and the GEMMs).
    pub partial_sums: AtomicU64,
    /// Forward: ADC conversion, the readout draws and their digital accumulation.
    pub readout: AtomicU64,
    /// Backward: the statistical estimator's slope per macro operation.
    pub slopes: AtomicU64,
    /// Backward: the convolution backward (the activation codes, patches, the weight-
    /// and input-gradient GEMMs, col2im, the zero-point term), its wall time on every
    /// thread (idle time included), less the slopes.
    pub backward_gemm: AtomicU64,
}

/// The parts of [`CimProfile`], in report order.
pub const PARTS: [&str; 4] = ["partial_sums", "readout", "slopes", "backward_gemm"];

impl CimProfile {
    /// Seconds per part, in the order of [`PARTS`].
    pub fn seconds(&self) -> [f64; 4] {
        [&self.partial_sums, &self.readout, &self.slopes, &self.backward_gemm]
            .map(|c| c.load(Ordering::Relaxed) as f64 * 1e-9)
    }
}

/// Adds the time from its start to its drop to a [`CimProfile`] counter (nothing, and
/// no clock read, when the counter is `None`).
pub struct Timer<'a>(Option<(&'a AtomicU64, Instant)>);

impl<'a> Timer<'a> {
    /// Starts timing into `counter` (reads the clock only when it is `Some`).
    #[inline]
    pub fn start(counter: Option<&'a AtomicU64>) -> Self {
        Timer(counter.map(|c| (c, Instant::now())))
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Some((c, t)) = self.0 {
            c.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}
