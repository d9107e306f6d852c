//! A dense row-major f32 tensor. Deliberately plain: shape + contiguous data.

use crate::{Error, Result};

/// A dense f32 tensor: a shape and its elements in row-major order (last axis fastest).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` filled with 0.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: crate::engine::par::zeros(shape.iter().product()) }
    }
    /// A tensor of `shape` filled with `v`.
    pub fn full(shape: &[usize], v: f32) -> Self {
        Tensor { shape: shape.to_vec(), data: vec![v; shape.iter().product()] }
    }
    /// Builds a tensor; the data length must match the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::invalid(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape: shape.to_vec(), data })
    }
    /// `from_vec` for internal callers that construct the data from the shape.
    pub(crate) fn new(shape: &[usize], data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape: shape.to_vec(), data }
    }
    /// A rank-0 tensor (shape `[]`) holding `v`.
    pub fn scalar(v: f32) -> Self {
        Tensor { shape: vec![], data: vec![v] }
    }
    /// The size of each axis.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements (the product of the shape).
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// The elements, row-major, mutably.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    /// The elements, row-major, taken out of the tensor.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    /// The same data under a new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.data.len() {
            return Err(Error::invalid(format!(
                "cannot reshape {:?} ({} values) to {shape:?}",
                self.shape,
                self.data.len()
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }
    /// `self += other`, element-wise; shapes must match.
    pub fn add_assign(&mut self, other: &Tensor) {
        assert_eq!(self.shape, other.shape, "add_assign shape mismatch");
        // Element-wise, so splitting it across threads changes no bit; activation-sized
        // sums (residual gradients) ran on one thread while the others waited.
        const CHUNK: usize = 1 << 14;
        let add = |(a, b): (&mut [f32], &[f32])| a.iter_mut().zip(b).for_each(|(a, b)| *a += *b);
        if self.data.len() < 4 * CHUNK {
            add((&mut self.data, &other.data));
        } else {
            use rayon::prelude::*;
            self.data.par_chunks_mut(CHUNK).zip(other.data.par_chunks(CHUNK)).for_each(add);
        }
    }
    /// Sets every element to `v`.
    pub fn fill(&mut self, v: f32) {
        self.data.iter_mut().for_each(|x| *x = v);
    }
    /// Dims as (N, C, H, W); panics on other ranks (op-internal use after validation).
    pub(crate) fn nchw(&self) -> (usize, usize, usize, usize) {
        assert_eq!(self.shape.len(), 4, "expected an NCHW tensor, got shape {:?}", self.shape);
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
}
