//! Local limiter state: exact per key (the key string itself is stored, no sketch, no
//! hash-only identity), in [`SHARDS`] shards of `Mutex<HashMap>` so concurrent requests
//! rarely meet on one lock, each held for one decision (tens of nanoseconds).
//!
//! Memory is bounded:
//! - idle keys (whose state equals a fresh one: two windows without use, or a bucket that
//!   has refilled) are swept from a shard whenever it has doubled since its last sweep,
//!   so sweeping is amortised O(1) per new key;
//! - a store holds about `max_keys` keys (default [`DEFAULT_MAX_KEYS`]; each shard takes
//!   `max_keys / 64` plus three standard deviations, so `max_keys` distinct keys fit and
//!   the hard cap is ≤ 2.5 % above it at one million). When a shard is
//!   full of keys that are all still active, a **new** key is counted in that shard's one
//!   shared overflow slot: it is still limited (never unlimited), together with the other
//!   new keys of that shard, until sweeps free room (a full shard re-sweeps at most once a
//!   second). Keys already tracked are never evicted early, so flooding the store with
//!   fresh keys cannot reset anyone's counter.
//!
//! Measured cost: ~145 bytes of RSS per key with 1,000,000 IP-sized keys (hash-table slot
//! with its growth slack, the key's allocation, 32 bytes of state; see `memory_per_key`
//! below and `benches/limits.rs`).

use super::algo::Slot;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

/// Number of shards of a store.
pub const SHARDS: usize = 64;
/// Keys a store tracks unless configured otherwise.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
const MIN_SWEEP: usize = 1024;
const FULL_RESWEEP_US: u64 = 1_000_000;

struct Shard<V> {
    map: HashMap<Box<str>, V>,
    sweep_at: usize,
    next_full_sweep: u64,
    overflow: V,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_index(h: &RandomState, key: &str) -> usize {
    (h.hash_one(key) >> 32) as usize % SHARDS
}

/// A per-key state a [`Store`] can sweep: it knows when it was last used.
pub trait Entry: Default {
    /// Last use, µs since the epoch.
    fn touched(&self) -> u64;
    /// Mark used at `now`.
    fn touch(&mut self, now: u64);
}

impl Entry for Slot {
    fn touched(&self) -> u64 {
        self.touched
    }
    fn touch(&mut self, now: u64) {
        self.touched = now;
    }
}

/// Rate-limit state of one limiter, by key.
pub struct Store<V = Slot> {
    shards: Box<[Mutex<Shard<V>>]>,
    shard_cap: usize,
    hasher: RandomState,
}

impl<V: Entry> Store<V> {
    /// A store tracking at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Store<V> {
        // Keys hash unevenly over shards: 3 standard deviations of slack per shard let
        // `max_keys` distinct keys fit (the cap is then up to ~2.5 % above it at 1M).
        let per = max_keys.div_ceil(SHARDS);
        let shard_cap = (per + 3 * (per as f64).sqrt() as usize).max(1);
        Store {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        sweep_at: MIN_SWEEP.min(shard_cap),
                        next_full_sweep: 0,
                        overflow: V::default(),
                    })
                })
                .collect(),
            shard_cap,
            hasher: RandomState::new(),
        }
    }

    /// Run `f` on `key`'s slot at time `now`; a key idle for `idle_after` µs counts as
    /// fresh and may be swept.
    pub fn with_slot<R>(
        &self,
        key: &str,
        now: u64,
        idle_after: u64,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let Some(m) = self.shards.get(shard_index(&self.hasher, key)) else {
            return f(&mut V::default());
        };
        let mut g = lock(m);
        let sh = &mut *g;
        if let Some(s) = sh.map.get_mut(key) {
            s.touch(now);
            return f(s);
        }
        if sh.map.len() >= sh.sweep_at && now >= sh.next_full_sweep {
            sh.map
                .retain(|_, s| now.saturating_sub(s.touched()) < idle_after);
            let len = sh.map.len();
            if len < sh.map.capacity() / 4 {
                sh.map.shrink_to(len * 2);
            }
            sh.sweep_at = (len * 2).clamp(MIN_SWEEP.min(self.shard_cap), self.shard_cap);
            if len >= self.shard_cap {
                sh.next_full_sweep = now + FULL_RESWEEP_US;
            }
        }
        if sh.map.len() >= self.shard_cap {
            return f(&mut sh.overflow);
        }
        let slot = sh.map.entry(key.into()).or_default();
        slot.touch(now);
        f(slot)
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|m| lock(m).map.len()).sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Counts = HashMap<Box<str>, u32>;

/// In-flight counts by key; entries are removed when they reach zero, so memory follows
/// the requests in flight. Exact per key: `pingora-limits`' `Inflight`, a count-min sketch,
/// counts other keys' requests against a key and refuses consumers under their limit once
/// thousands of keys are in flight (`benches/limits.rs`, `docs/performance.md`).
pub struct Inflight {
    shards: Box<[Mutex<Counts>]>,
    hasher: RandomState,
}

/// One held concurrency slot; released when dropped (request done, failed, aborted or
/// timed out: the request context owning it drops in every case).
pub struct Held {
    store: Arc<Inflight>,
    key: Box<str>,
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Inflight {
    /// Take a slot for `key` if fewer than `max` are held.
    pub fn acquire(self: &Arc<Self>, key: &str, max: u32) -> Option<Held> {
        let m = self.shards.get(shard_index(&self.hasher, key))?;
        let mut g = lock(m);
        match g.get_mut(key) {
            Some(n) if *n >= max => return None,
            Some(n) => *n += 1,
            None if max == 0 => return None,
            None => {
                g.insert(key.into(), 1);
            }
        }
        Some(Held {
            store: Arc::clone(self),
            key: key.into(),
        })
    }

    /// Slots held for `key`.
    pub fn held(&self, key: &str) -> u32 {
        self.shards
            .get(shard_index(&self.hasher, key))
            .and_then(|m| lock(m).get(key).copied())
            .unwrap_or(0)
    }
}

impl Held {
    /// Slots held for this key, this one included.
    pub fn count(&self) -> u32 {
        self.store.held(&self.key)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(m) = self
            .store
            .shards
            .get(shard_index(&self.store.hasher, &self.key))
        {
            let mut g = lock(m);
            if let Some(n) = g.get_mut(&*self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.remove(&*self.key);
                }
            }
        }
    }
}

/// Approximate heap bytes per key of a store holding `n` fresh keys of about `key_len`
/// bytes (hash-table slot, key allocation rounded to the allocator's 16-byte classes).
pub fn approx_bytes_per_key(key_len: usize) -> usize {
    let entry = std::mem::size_of::<(Box<str>, Slot)>() + 1; // + control byte
                                                             // hashbrown keeps load ≤ 7/8 and doubles: on average ~1.3 slots per key.
    entry * 13 / 10 + key_len.div_ceil(16) * 16
}

#[cfg(test)]
mod tests {
    use super::super::algo::{Algorithm, Limit, SEC};
    use super::*;

    #[test]
    fn keys_are_exact_and_idle_ones_are_swept() {
        let st = Store::new(SHARDS * 2048);
        let l = Limit {
            count: 1,
            window_us: SEC,
            burst: 1,
        };
        let a = Algorithm::FixedWindow;
        let idle = a.idle_after_us(&l);
        let t = 1_000 * SEC;
        for i in 0..5000 {
            let k = format!("k{i}");
            assert!(st.with_slot(&k, t, idle, |s| a.decide(s, &l, t).allowed));
            assert!(!st.with_slot(&k, t, idle, |s| a.decide(s, &l, t).allowed));
        }
        assert_eq!(st.len(), 5000);
        // Much later, inserting new keys sweeps the idle ones.
        let later = t + 10 * SEC;
        for i in 0..SHARDS * 1100 {
            st.with_slot(&format!("n{i}"), later, idle, |s| a.decide(s, &l, later));
        }
        assert!(st.len() < SHARDS * 1100 + 1000, "{}", st.len());
    }

    #[test]
    fn a_full_store_limits_new_keys_together_and_keeps_old_ones() {
        let st = Store::new(SHARDS); // a few keys per shard
        let l = Limit {
            count: 3,
            window_us: 60 * SEC,
            burst: 3,
        };
        let a = Algorithm::FixedWindow;
        let t = 1_000 * 60 * SEC;
        let mut allowed = 0;
        for i in 0..SHARDS * 20 {
            let k = format!("k{i}");
            allowed += usize::from(st.with_slot(&k, t, 120 * SEC, |s| a.decide(s, &l, t).allowed));
        }
        assert!(st.len() <= SHARDS * 4);
        // Tracked keys got 1 each; the overflow slots at most 3 per shard.
        assert!(allowed <= st.len() + 3 * SHARDS, "{allowed}");
        assert!(allowed < SHARDS * 20);
    }

    #[test]
    fn inflight_released_on_drop() {
        let st = Arc::new(Inflight::default());
        let a = st.acquire("x", 2);
        let b = st.acquire("x", 2);
        assert!(a.is_some() && b.is_some());
        assert!(st.acquire("x", 2).is_none());
        drop(a);
        assert_eq!(st.held("x"), 1);
        let c = st.acquire("x", 2);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(st.held("x"), 0);
        assert!(st.shards.iter().all(|m| lock(m).is_empty()));
    }

    /// 1,000,000 distinct keys: prints bytes per key measured from the process's resident
    /// memory (Linux) next to the structural estimate. Run with
    /// `cargo test --release --lib memory_per_key -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn memory_per_key() {
        fn rss() -> usize {
            std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
                .unwrap_or(0)
                * 4096
        }
        let n = 1_000_000;
        let before = rss();
        let st = Store::new(n);
        let l = Limit {
            count: 10,
            window_us: SEC,
            burst: 10,
        };
        let t = 1_000 * SEC;
        for i in 0..n {
            let k = format!("198.51.{}.{}", i / 256 % 65536, i % 256);
            let k = format!("{k}#{i}");
            st.with_slot(&k, t, 2 * SEC, |s| {
                Algorithm::SlidingWindow.decide(s, &l, t)
            });
        }
        let after = rss();
        println!(
            "1M keys: {} keys tracked, RSS +{} MB, {} bytes/key measured, ~{} estimated",
            st.len(),
            (after - before) / 1_000_000,
            (after - before) / n,
            approx_bytes_per_key(20)
        );
    }
}
