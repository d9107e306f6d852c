//! Human progress lines for long work: epoch, step, loss, accuracy, images/s, ETA.

use std::time::Instant;

/// A duration for people, rounded to the second: `42s`, `3m07s`, `2h05m`.
pub fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Rate-limited progress printer (to stderr, so stdout stays machine-readable).
pub struct Progress {
    last: Instant,
    every_secs: f64,
    /// Print nothing.
    pub quiet: bool,
}

impl Progress {
    /// A printer that prints at most one line every 10 s (or none, when `quiet`).
    pub fn new(quiet: bool) -> Self {
        Progress { last: Instant::now(), every_secs: 10.0, quiet }
    }
    /// Prints `line()` if enough time has passed since the last line (or `force`).
    pub fn tick(&mut self, force: bool, line: impl FnOnce() -> String) {
        if self.quiet {
            return;
        }
        if force || self.last.elapsed().as_secs_f64() >= self.every_secs {
            eprintln!("{}", line());
            self.last = Instant::now();
        }
    }
}
