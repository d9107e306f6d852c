//! Batches as NCHW f32 tensors, with per-image augmentation.
//!
//! Every random choice is keyed: the epoch's order by (seed, epoch), the crop offset
//! and flip of an image by (seed, epoch, image index). Batches are therefore the same
//! whatever the thread count, and a run resumed at an epoch boundary sees exactly the
//! data an uninterrupted run would have seen.

use super::cifar::{DatasetKind, IMAGE_BYTES, Split};
use crate::engine::Tensor;
use crate::rng::{self, KeyedRng};
use rayon::prelude::*;

const ORDER_TAG: u64 = 0x0DE5;
const AUGMENT_TAG: u64 = 0xA116;

/// Per-channel normalisation: (pixel/255 − mean) / std.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Per-channel mean (R, G, B) of pixel/255.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) of pixel/255.
    pub std: [f32; 3],
}

impl Normalize {
    /// The usual training-set statistics of each data set.
    pub fn for_dataset(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::Cifar10 => {
                Normalize { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] }
            }
            DatasetKind::Cifar100 => {
                Normalize { mean: [0.5071, 0.4865, 0.4409], std: [0.2673, 0.2564, 0.2762] }
            }
        }
    }
    fn table(&self) -> [[f32; 256]; 3] {
        let mut t = [[0.0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        t
    }
}

/// Random crop after zero-padding by `pad` pixels, and random horizontal flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on each side before the 32×32 crop, in pixels (0: no crop).
    pub pad: usize,
    /// Flip each image horizontally with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// The standard CIFAR augmentation: 4-pixel padding, random crop, flip.
    pub fn standard() -> Self {
        Augment { pad: 4, flip: true }
    }
}

/// Makes normalised (and optionally augmented) batches of one split, keyed by a seed.
pub struct Batcher<'a> {
    /// The split the images come from.
    pub split: &'a Split,
    norm: [[f32; 256]; 3],
    augment: Option<Augment>,
    seed: u64,
}

impl<'a> Batcher<'a> {
    /// A batcher over `split` (`augment`: `None` for evaluation); `seed` keys the epoch
    /// orders and the augmentation.
    pub fn new(split: &'a Split, norm: Normalize, augment: Option<Augment>, seed: u64) -> Self {
        Batcher { split, norm: norm.table(), augment, seed }
    }

    /// The order images are visited in during `epoch` (a seeded permutation).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut s = rng::stream(rng::key(&[self.seed, ORDER_TAG, epoch]));
        rng::permutation(self.split.len(), &mut s)
    }

    /// Images `indices` as a (B, 3, 32, 32) tensor and their labels.
    pub fn batch(&self, indices: &[usize], epoch: u64) -> (Tensor, Vec<u32>) {
        let mut x = vec![0.0f32; indices.len() * IMAGE_BYTES];
        x.par_chunks_mut(IMAGE_BYTES).zip(indices.par_iter()).for_each(|(out, &idx)| {
            let img = self.split.image(idx);
            match self.augment {
                None => {
                    for (c, (o, p)) in out.chunks_mut(1024).zip(img.chunks(1024)).enumerate() {
                        for (ov, &pv) in o.iter_mut().zip(p) {
                            *ov = self.norm[c][pv as usize];
                        }
                    }
                }
                Some(a) => {
                    let mut r = KeyedRng::new(&[self.seed, AUGMENT_TAG, epoch, idx as u64]);
                    let span = 2 * a.pad as u64 + 1;
                    let dy = r.below(span) as isize - a.pad as isize;
                    let dx = r.below(span) as isize - a.pad as isize;
                    let flip = a.flip && r.below(2) == 1;
                    for c in 0..3 {
                        let zero = self.norm[c][0];
                        let plane = &img[c * 1024..(c + 1) * 1024];
                        for y in 0..32isize {
                            let sy = y + dy;
                            for x in 0..32isize {
                                let xf = if flip { 31 - x } else { x };
                                let sx = xf + dx;
                                out[c * 1024 + (y * 32 + x) as usize] =
                                    if (0..32).contains(&sy) && (0..32).contains(&sx) {
                                        self.norm[c][plane[(sy * 32 + sx) as usize] as usize]
                                    } else {
                                        zero
                                    };
                            }
                        }
                    }
                }
            }
        });
        let labels = indices.iter().map(|&i| self.split.labels[i] as u32).collect();
        (Tensor::new(&[indices.len(), 3, 32, 32], x), labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> Split {
        Split {
            images: (0..n * IMAGE_BYTES).map(|i| (i % 256) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        }
    }

    #[test]
    fn unaugmented_batch_is_normalised_pixels() {
        let s = split(3);
        let b = Batcher::new(&s, Normalize { mean: [0.0; 3], std: [1.0; 3] }, None, 1);
        let (x, y) = b.batch(&[2, 0], 0);
        assert_eq!(x.shape(), &[2, 3, 32, 32]);
        assert_eq!(y, vec![2, 0]);
        assert_eq!(x.data()[5], s.image(2)[5] as f32 / 255.0);
    }

    #[test]
    fn augmentation_is_keyed_and_epoch_dependent() {
        let s = split(4);
        let b = Batcher::new(
            &s,
            Normalize::for_dataset(DatasetKind::Cifar10),
            Some(Augment::standard()),
            9,
        );
        let (a1, _) = b.batch(&[0, 1, 2, 3], 5);
        let (a2, _) = b.batch(&[0, 1, 2, 3], 5);
        let (a3, _) = b.batch(&[0, 1, 2, 3], 6);
        assert_eq!(a1, a2);
        assert_ne!(a1, a3);
        // The same image gets the same augmentation wherever it sits in a batch.
        let (single, _) = b.batch(&[2], 5);
        assert_eq!(single.data(), &a1.data()[2 * IMAGE_BYTES..3 * IMAGE_BYTES]);
        assert_ne!(b.epoch_order(0), b.epoch_order(1));
    }
}
