//! Allocator tuning for training workloads.
//!
//! A training step frees and reallocates the same few hundred megabytes of
//! activations and gradients every step. With glibc's defaults, blocks above the
//! (adaptive) mmap threshold are returned to the kernel on free and page-faulted back
//! in, zero-filled, on the next step: measured on ResNet20 at batch 128, that is ~7 M
//! page faults per 40 steps and a third of the step time. Never mmapping a block and
//! raising the trim threshold keeps freed memory in the process for reuse. (Raising
//! the mmap threshold instead stops at glibc's cap of 32 MiB, below a VGG8 activation
//! at batch 128, 64 MiB: a VGG8 CIM benchmark of 3 steps then took 1.68 M page faults,
//! 0.88 M without mmap, every one of the rest a first touch.) The peak resident memory
//! is unchanged (the same blocks are reused; that bench peaked at 3.51 GB either way)
//! and only the churn goes; memory freed after the peak stays with the process.
//!
//! Freed memory in glibc's per-thread arenas (where the rayon workers allocate their
//! im2col buffers, partial sums and slopes) is not covered by the trim threshold and
//! was page-faulted back in every step: a ResNet20 CIM step took 2.7× the page faults
//! of one arena. One arena keeps all of it reusable; the workers' allocations are few
//! and large, so they do not contend on its lock.
//!
//! The `dnat` binary calls [`tune_allocator`] at start-up, and the library's training and
//! evaluation entry points (`train::train`, `train::evaluate`, `train::evaluate_mc`)
//! call it on first use, so programs that link the crate need not know about it. It
//! applies once per process and is a no-op off glibc.

/// Keeps freed memory in the process (glibc `mallopt`), once per process; returns
/// whether it applied.
pub fn tune_allocator() -> bool {
    static APPLIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *APPLIED.get_or_init(apply)
}

fn apply() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes allocator parameters; called before heavy use.
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
