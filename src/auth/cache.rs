//! A small bounded cache with per-entry expiry, keyed by 32 bytes (a seeded hash and length
//! of a verified JWT, whose entry keeps the token to compare). Used for verified JWTs.
//!
//! It is sharded (16 mutex-protected maps chosen by the key's first byte) so concurrent
//! requests rarely contend. Eviction is an approximate LRU: when a shard is full, expired
//! entries go first, then the least recently used eighth of the shard, so one insert
//! costs O(1) amortized and the size never exceeds the bound.

use std::collections::HashMap;
use std::sync::Mutex;

/// A cache key: 32 bytes whose first byte picks the shard (so it must be well mixed).
pub type Key = [u8; 32];

const SHARDS: usize = 16;

struct Entry<V> {
    value: V,
    /// UNIX seconds after which the entry is gone.
    expires: i64,
    used: u64,
}

struct Shard<V> {
    map: HashMap<Key, Entry<V>>,
    tick: u64,
}

/// The cache. `V` is cloned out on hits, so use an `Arc` for anything large.
pub struct ExpiringCache<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_shard: usize,
}

impl<V> Shard<V> {
    /// Insert as the most recently used entry.
    fn put(&mut self, key: Key, value: V, expires: i64) {
        self.tick += 1;
        let used = self.tick;
        self.map.insert(
            key,
            Entry {
                value,
                expires,
                used,
            },
        );
    }
}

impl<V: Clone> ExpiringCache<V> {
    /// A cache holding at most about `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> ExpiringCache<V> {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        ExpiringCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        tick: 0,
                    })
                })
                .collect(),
            per_shard,
        }
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard<V>> {
        let m = &self.shards[key[0] as usize % SHARDS];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live value for `key` at time `now`; expired entries are dropped.
    pub fn get(&self, key: &Key, now: i64) -> Option<V> {
        let mut s = self.shard(key);
        s.tick += 1;
        let tick = s.tick;
        match s.map.get_mut(key) {
            Some(e) if e.expires > now => {
                e.used = tick;
                Some(e.value.clone())
            }
            Some(_) => {
                s.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Store `value` until `expires` (UNIX seconds), evicting when full.
    pub fn insert(&self, key: Key, value: V, expires: i64, now: i64) {
        let mut s = self.shard(&key);
        self.make_room(&mut s, now);
        s.put(key, value, expires);
    }

    /// Drop every entry.
    pub fn clear(&self) {
        for m in &self.shards {
            m.lock().unwrap_or_else(|p| p.into_inner()).map.clear();
        }
    }

    /// Entries held (live or not yet swept).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }

    /// True when nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn make_room(&self, s: &mut Shard<V>, now: i64) {
        if s.map.len() < self.per_shard {
            return;
        }
        s.map.retain(|_, e| e.expires > now);
        if s.map.len() < self.per_shard {
            return;
        }
        // Drop the least recently used eighth (at least one).
        let n = (self.per_shard / 8).max(1);
        let mut ages: Vec<u64> = s.map.values().map(|e| e.used).collect();
        let idx = (n - 1).min(ages.len() - 1);
        let (_, cut, _) = ages.select_nth_unstable(idx);
        let cut = *cut;
        s.map.retain(|_, e| e.used > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u32) -> Key {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k[0] = 0; // same shard
        k
    }

    #[test]
    fn expiry_and_hits() {
        let c = ExpiringCache::new(100);
        c.insert(k(1), 7, 100, 0);
        assert_eq!(c.get(&k(1), 99), Some(7));
        assert_eq!(c.get(&k(1), 100), None);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_and_lru() {
        let c = ExpiringCache::new(16 * 8); // 8 per shard
        for i in 0..8 {
            c.insert(k(i), i, 1000, 0);
        }
        // Touch 0 so it is recent; 1 is now the oldest.
        assert_eq!(c.get(&k(0), 1), Some(0));
        c.insert(k(100), 100, 1000, 1);
        assert!(c.len() <= 8);
        assert_eq!(c.get(&k(0), 1), Some(0));
        assert_eq!(c.get(&k(1), 1), None);
        for i in 200..1000 {
            c.insert(k(i), i, 1000, 1);
        }
        assert!(c.len() <= 8);
    }
}
