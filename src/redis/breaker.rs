//! The breaker of one Redis server (or of a discovery: a cluster's first slot map, the
//! master a Sentinel names): after [`TRIP_AFTER`] consecutive failures calls are refused
//! for [`OPEN_FOR`], then one probe call at a time decides whether the server is back.
//! Lock-free: a few atomics read on every call.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker skips Redis before probing.
pub const OPEN_FOR: Duration = Duration::from_millis(500);

/// Skips a server that keeps failing.
pub struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go out now (claims the single probe when half open). Every
    /// admitted call must end in [`Breaker::success`] or [`Breaker::failure`].
    pub fn admit(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        self.now_ms() >= until && !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Whether calls are being skipped (claims nothing).
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    /// The server answered.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// The call failed.
    pub fn failure(&self) {
        let f = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if f >= TRIP_AFTER || self.probing.load(Ordering::Acquire) {
            let until = self.now_ms() + OPEN_FOR.as_millis() as u64;
            self.open_until_ms.store(until.max(1), Ordering::Release);
        }
        self.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_then_probes_once() {
        let mut b = Breaker::new();
        b.epoch -= Duration::from_secs(10);
        for _ in 0..TRIP_AFTER {
            assert!(b.admit());
            b.failure();
        }
        assert!(!b.admit() && b.is_open());
        b.open_until_ms.store(1, Ordering::Release); // pretend the pause is over
        assert!(b.admit());
        assert!(!b.admit(), "a single probe at a time");
        b.success();
        assert!(b.admit() && b.admit() && !b.is_open());
    }
}
