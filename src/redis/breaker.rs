//! The breaker of one Redis server (or of a discovery: a cluster's first slot map, the
//! master a Sentinel names): after [`TRIP_AFTER`] consecutive failures calls are refused
//! for [`OPEN_FOR`], then one probe call at a time decides whether the server is back.
//! Lock-free: a few atomics read on every call.
//!
//! An admitted call holds a [`Ticket`]; a call cancelled before its outcome (its request
//! went away) hands the ticket back with [`Breaker::abandon`], so a half-open breaker's
//! probe is never claimed for good.

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

    /// Whether a call may go out now (claiming the single probe when half open). Every
    /// admitted call ends in [`Breaker::success`], [`Breaker::failure`] or, cancelled
    /// before it had an outcome, [`Breaker::abandon`].
    pub fn admit(&self) -> Option<Ticket> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Some(Ticket { probe: false });
        }
        (self.now_ms() >= until && !self.probing.swap(true, Ordering::AcqRel))
            .then_some(Ticket { probe: true })
    }

    /// An admitted call was cancelled before its outcome: free the probe it may hold.
    pub fn abandon(&self, ticket: Ticket) {
        if ticket.probe {
            self.probing.store(false, Ordering::Release);
        }
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

    /// The call failed. True when the breaker opens (again) on it: the server has failed
    /// [`TRIP_AFTER`] calls in a row, or its probe.
    pub fn failure(&self) -> bool {
        let f = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let opens = f >= TRIP_AFTER || self.probing.load(Ordering::Acquire);
        if opens {
            let until = self.now_ms() + OPEN_FOR.as_millis() as u64;
            self.open_until_ms.store(until.max(1), Ordering::Release);
        }
        self.probing.store(false, Ordering::Release);
        opens
    }
}

/// A call let through by [`Breaker::admit`].
#[derive(Debug, Clone, Copy)]
#[must_use = "an admitted call ends in success, failure or abandon"]
pub struct Ticket {
    /// The call is the half-open breaker's one probe.
    probe: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_then_probes_once() {
        let mut b = Breaker::new();
        b.epoch -= Duration::from_secs(10);
        for i in 1..=TRIP_AFTER {
            assert!(b.admit().is_some());
            assert_eq!(b.failure(), i == TRIP_AFTER, "opens on the last");
        }
        assert!(b.admit().is_none() && b.is_open());
        b.open_until_ms.store(1, Ordering::Release); // pretend the pause is over
        assert!(b.admit().is_some());
        assert!(b.admit().is_none(), "a single probe at a time");
        b.success();
        assert!(b.admit().is_some() && b.admit().is_some() && !b.is_open());
    }

    #[test]
    fn an_abandoned_probe_is_given_back() {
        let mut b = Breaker::new();
        b.epoch -= Duration::from_secs(10);
        for _ in 0..TRIP_AFTER {
            let _ = b.admit();
            b.failure();
        }
        b.open_until_ms.store(1, Ordering::Release);
        let probe = b.admit().unwrap();
        assert!(b.admit().is_none());
        b.abandon(probe);
        let probe = b.admit().expect("the next call probes");
        assert!(b.failure(), "a failed probe opens it again");
        b.abandon(probe); // late: changes nothing
        assert!(b.admit().is_none());
    }
}
