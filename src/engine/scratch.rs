//! Scratch buffers for values that are written whole before they are read: a
//! convolution's patch matrix, the patch gradient a data-gradient product writes, a CIM
//! layer's staged rows and slope-weighted gradients. A fresh `vec![0.0; n]` would zero them first — measured at a
//! tenth of a ResNet20 CIM training step in `memset`, for buffers of up to 75 MB per
//! layer that are overwritten at once. A [`Scratch`] instead reuses a buffer an earlier
//! call on the same thread left behind, as it is.
//!
//! Its contents are unspecified (initialised memory, never uninitialised: whatever the
//! previous user wrote), so a caller must write every element it later reads. That is
//! what keeps results independent of which buffer a call happens to get.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread: a group's simultaneous scratch needs (two to four).
const POOLED: usize = 4;
/// Bytes kept per thread at most (a VGG8 group's patch-gradient matrix, ~19 MB, and its
/// padded images, a few MB, fit); a buffer that would exceed it is freed instead of
/// pooled, so a machine with many threads does not hold many copies of the largest
/// layer's buffers.
const POOLED_BYTES: usize = 64 << 20;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` floats of unspecified contents, returned to this thread's pool when dropped.
pub struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// A buffer of `len` floats whose contents are whatever an earlier user left: write
    /// every element before reading it.
    pub fn take(len: usize) -> Scratch {
        // The smallest pooled buffer that fits, else the largest (grown): sizes settle
        // after the first step, and small requests do not take the large buffers.
        let mut buf = POOL
            .with_borrow_mut(|pool| {
                let fits = (0..pool.len())
                    .filter(|&i| pool[i].len() >= len)
                    .min_by_key(|&i| pool[i].len());
                let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()))?;
                Some(pool.swap_remove(pick))
            })
            .unwrap_or_default();
        if buf.len() < len {
            // Growing copies nothing: the old contents are unspecified anyway.
            buf.clear();
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // `try_with`: a buffer dropped while the thread's locals are torn down is freed.
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                let held: usize = pool.iter().map(|b| b.len() * 4).sum();
                if pool.len() < POOLED && held + buf.len() * 4 <= POOLED_BYTES {
                    pool.push(buf);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_with_their_contents_and_have_the_asked_length() {
        let mut a = Scratch::take(10);
        a.fill(3.0);
        let ptr = a.as_ptr();
        drop(a);
        let b = Scratch::take(5);
        assert_eq!((b.len(), b.as_ptr()), (5, ptr), "the pooled buffer is handed out again");
        assert!(b.iter().all(|&v| v == 3.0), "contents are left as they were, not zeroed");
        let c = Scratch::take(20);
        assert_eq!(c.len(), 20);
        assert!(c.iter().all(|&v| v == 0.0), "a fresh buffer is zeroed memory");
    }
}
