//! Deterministic randomness.
//!
//! Two kinds of draws exist in dnat:
//! * *streams* (weight initialisation, the per-epoch shuffle) come from a seeded
//!   [`Xoshiro256PlusPlus`], consumed on one thread in a fixed order;
//! * *keyed draws* (augmentation of image `i` in epoch `e`, later the readout of tile
//!   `t` of layer `l` at step `s`) are a pure function of their key, computed by a
//!   counter-based hash, so they can be produced in parallel in any order and replayed.

use rand::Rng;
use rand::SeedableRng;
pub use rand_xoshiro::Xoshiro256PlusPlus;

/// SplitMix64 finaliser: a bijective 64-bit mixer with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of an ordered key: `key(&[seed, layer, step, tile])`.
#[inline]
pub fn key(parts: &[u64]) -> u64 {
    let mut h = 0x6A09_E667_F3BC_C909u64;
    for &p in parts {
        h = mix64(h ^ p);
    }
    h
}

/// Uniform in [0, 1) from 24 random bits of `bits` (exact in f32).
#[inline]
pub fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// A small counter-based generator for a keyed sequence of draws.
#[derive(Clone, Debug)]
pub struct KeyedRng {
    base: u64,
    counter: u64,
}

impl KeyedRng {
    /// The sequence keyed by `parts` ([`key`]): the same parts give the same draws.
    pub fn new(parts: &[u64]) -> Self {
        KeyedRng { base: key(parts), counter: 0 }
    }
    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.counter += 1;
        mix64(self.base ^ mix64(self.counter))
    }
    /// A draw in `0..n`, for `n` < 2^32 (multiply-shift of 32 random bits; bias ≈ n/2^32).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for n << 2^32 (augmentation offsets, shuffles).
        ((self.next_u64() >> 32) * n) >> 32
    }
    /// A draw uniform in [0, 1) ([`unit_f32`]).
    #[inline]
    pub fn unit(&mut self) -> f32 {
        unit_f32(self.next_u64())
    }
}

/// A seeded stream generator.
pub fn stream(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// Standard normal draw (Box–Muller on two stream draws), in f64 for accuracy.
pub fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    let u2 = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Fisher–Yates permutation of `0..n` from a stream.
pub fn permutation(n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}
