//! Rate-limited log lines: an event that can happen on every request (Redis failing, a
//! decision taken without it) is logged at most once per period, with the number of
//! events that were not logged in between. Lock-free: two atomics per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Says when a message is due: at most once per `every`.
pub struct LogEvery {
    every_ms: u64,
    /// When the last message was due (ms since `epoch`, plus one; 0: never).
    last_ms: AtomicU64,
    /// Events not logged since.
    skipped: AtomicU64,
    epoch: Instant,
}

impl LogEvery {
    /// At most one message per `every`.
    pub fn new(every: Duration) -> LogEvery {
        LogEvery {
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Record an event: `Some(n)` when its message is due (`n` events were not logged
    /// since the last one), `None` when it is only counted.
    pub fn due(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now >= last.saturating_add(self.every_ms);
        if !due
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_period_with_the_count_in_between() {
        let log = LogEvery::new(Duration::from_millis(200));
        assert_eq!(log.due(), Some(0));
        for _ in 0..9 {
            assert_eq!(log.due(), None);
        }
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(log.due(), Some(9), "logged, with the 9 before");
        assert_eq!(log.due(), None);
    }
}
