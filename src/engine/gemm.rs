//! The one door to `matrixmultiply::sgemm`: strided matrix views with checked bounds.
//!
//! Transposes are free: a view is (rows, cols, row stride, col stride), so `A^T` is
//! the same buffer with strides swapped. matrixmultiply is single-threaded here, by
//! design: parallelism lives one level up (over image groups), never nested.

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major (rows × cols) matrix.
    pub fn rowmajor(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }
    /// A row-major matrix with a leading dimension `ld` ≥ cols.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        MatRef { data, rows, cols, rs: ld, cs: 1 }
    }
    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `C = alpha * A·B + beta * C` with C row-major (m × n, leading dimension `ldc`).
/// With `beta == 0`, C's previous contents are ignored (NaNs included).
pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: &mut [f32], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm inner dimensions differ: {k} vs {}", b.rows);
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "gemm output out of bounds");
    if k == 0 {
        for r in 0..m {
            for v in &mut c[r * ldc..r * ldc + n] {
                *v = if beta == 0.0 { 0.0 } else { *v * beta };
            }
        }
        return;
    }
    // SAFETY: every index sgemm touches lies inside the slices, checked above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_with_transposes() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        // B stored as n × k, used transposed.
        let mut c = vec![1.0f32; m * n];
        gemm(2.0, MatRef::rowmajor(&a, m, k), MatRef::rowmajor(&b, n, k).t(), 0.5, &mut c, n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += a[i * k + p] as f64 * b[j * k + p] as f64;
                }
                let want = 2.0 * s + 0.5;
                assert!((c[i * n + j] as f64 - want).abs() < 1e-5);
            }
        }
    }
}
