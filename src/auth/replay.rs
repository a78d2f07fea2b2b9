//! HMAC replay protection: a signature is accepted once per replay window
//! (`auth.hmac.replay_window`, the clock skew by default; see `hmac::replay_ttl` for how
//! long each one is remembered and `hmac::replay_key` for what identifies it).
//!
//! Signatures are remembered **per consumer**, at most `auth.hmac.replay_capacity` live
//! ones each ([`REPLAY_CAPACITY`] by default). A consumer that has that many is refused
//! with [`Use::Full`] (503, reason `replay_capacity`) until some expire; no other consumer
//! notices. Live signatures are never dropped to make room: forgetting one inside its
//! window would let it be replayed. Only signatures whose MAC verified are recorded, so
//! filling a consumer's room needs its secret.
//!
//! Every guard implements [`ReplayGuard`]; the runtime picks one per config generation:
//! - [`LocalReplay`]: this instance's own memory, carried across reloads so a reload never
//!   reopens the window;
//! - [`RedisReplay`] (with `redis:`): Redis is the authority, shared by every instance —
//!   one sorted set per consumer (`<key_prefix>replay:<consumer>`, member = signature
//!   hash, score = expiry in ms), checked and updated by one Lua script that also applies
//!   the per-consumer bound. The local memory only short-cuts "already seen" (a replay to
//!   the same instance costs no Redis call) and decides alone when Redis cannot answer
//!   (timeout, down, breaker open), so a Redis outage never refuses fresh signatures and
//!   replays to the same instance stay refused.

use crate::redis::{Redis, Script, Value};
use async_trait::async_trait;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Default `hmac.replay_capacity`: live signatures remembered per consumer (about 55
/// bytes each here, about 170 in Redis: a full set is ~5 MB here, ~17 MB there). 100,000
/// in a 300 s window is 333 distinct signed requests a second from one consumer.
pub const REPLAY_CAPACITY: usize = 100_000;

/// What the guard says about a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Not seen within its window: accepted, and now remembered.
    First,
    /// Already seen within its window.
    Replay,
    /// Not seen, but its consumer already has `capacity` live signatures; the oldest
    /// expires in `retry_after` seconds.
    Full { retry_after: i64 },
}

/// A verified signature to check.
#[derive(Debug, Clone, Copy)]
pub struct Signature<'a> {
    /// The consumer it belongs to.
    pub consumer: &'a str,
    /// `hmac::replay_key` of the request.
    pub key: [u8; 32],
    /// Seconds to remember it (`hmac::replay_ttl`).
    pub ttl: i64,
    /// Most live signatures one consumer may have (`hmac.replay_capacity`).
    pub capacity: usize,
}

/// Remembers signatures for the replay window.
#[async_trait]
pub trait ReplayGuard: Send + Sync {
    /// Whether `sig` is used for the first time at `now` (UNIX seconds); a first use is
    /// remembered for `sig.ttl` seconds.
    async fn first_use(&self, sig: Signature<'_>, now: i64) -> Use;
}

/// One consumer's live signatures and when the first of them expires.
struct Signatures {
    expires: HashMap<[u8; 32], i64>,
    /// No entry expires before this (UNIX seconds): a full set is not swept before then.
    next_expiry: i64,
}

impl Default for Signatures {
    fn default() -> Self {
        Signatures {
            expires: HashMap::new(),
            next_expiry: i64::MAX,
        }
    }
}

impl Signatures {
    fn seen(&self, key: &[u8; 32], now: i64) -> bool {
        self.expires.get(key).is_some_and(|&e| e > now)
    }

    fn record(&mut self, sig: &Signature<'_>, now: i64) -> Use {
        if self.seen(&sig.key, now) {
            return Use::Replay;
        }
        if self.expires.len() >= sig.capacity && !self.expires.contains_key(&sig.key) {
            if now >= self.next_expiry {
                // Sweep at most once per expiry, so a full set costs O(1) per request.
                self.expires.retain(|_, e| *e > now);
                self.next_expiry = self.expires.values().copied().min().unwrap_or(i64::MAX);
                if self.expires.len() < self.expires.capacity() / 4 {
                    self.expires.shrink_to_fit();
                }
            }
            if self.expires.len() >= sig.capacity {
                return Use::Full {
                    retry_after: (self.next_expiry - now).max(1),
                };
            }
        }
        let expires = now.saturating_add(sig.ttl.max(1));
        self.expires.insert(sig.key, expires);
        self.next_expiry = self.next_expiry.min(expires);
        Use::First
    }
}

/// This instance's replay memory: a bounded set of live signatures per consumer.
#[derive(Default)]
pub struct LocalReplay {
    consumers: RwLock<HashMap<Arc<str>, Arc<Mutex<Signatures>>>>,
}

impl LocalReplay {
    /// An empty memory.
    pub fn new() -> LocalReplay {
        LocalReplay::default()
    }

    /// `consumer`'s set, made on first use.
    fn of(&self, consumer: &str) -> Arc<Mutex<Signatures>> {
        let found = self
            .consumers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(consumer)
            .cloned();
        found.unwrap_or_else(|| {
            let mut all = self.consumers.write().unwrap_or_else(|p| p.into_inner());
            Arc::clone(all.entry(Arc::from(consumer)).or_default())
        })
    }

    fn record(&self, sig: &Signature<'_>, now: i64) -> Use {
        let set = self.of(sig.consumer);
        let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
        set.record(sig, now)
    }

    /// Whether `sig` is remembered here as used within its window.
    fn seen(&self, sig: &Signature<'_>, now: i64) -> bool {
        let set = self
            .consumers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sig.consumer)
            .cloned();
        set.is_some_and(|s| {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .seen(&sig.key, now)
        })
    }
}

#[async_trait]
impl ReplayGuard for LocalReplay {
    async fn first_use(&self, sig: Signature<'_>, now: i64) -> Use {
        self.record(&sig, now)
    }
}

/// KEYS[1]: the consumer's sorted set (member: signature hash, score: expiry in ms).
/// ARGV: member, now (ms), expiry (ms), capacity. Returns 1 (first use), 0 (replay) or
/// -N (full: the oldest live signature expires in N seconds). Expired members are swept
/// only when the set is full; the set expires with its last member.
const LUA: &str = r#"
local now = tonumber(ARGV[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then return 0 end
local cap = tonumber(ARGV[4])
if redis.call('ZCARD', KEYS[1]) >= cap then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= cap then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return -math.max(1, math.ceil((tonumber(oldest[2]) - now) / 1000))
  end
end
local exp = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], exp, ARGV[1])
if redis.call('PTTL', KEYS[1]) < exp - now then
  redis.call('PEXPIRE', KEYS[1], exp - now)
end
return 1
"#;

static SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(LUA));

/// Redis decides; the local memory short-cuts known replays and stands in when Redis
/// cannot answer.
pub struct RedisReplay {
    redis: Arc<Redis>,
    local: Arc<LocalReplay>,
}

impl RedisReplay {
    /// Share through `redis`, with `local` as short-cut and fallback.
    pub fn new(redis: Arc<Redis>, local: Arc<LocalReplay>) -> RedisReplay {
        RedisReplay { redis, local }
    }
}

#[async_trait]
impl ReplayGuard for RedisReplay {
    async fn first_use(&self, sig: Signature<'_>, now: i64) -> Use {
        if self.local.seen(&sig, now) {
            return Use::Replay;
        }
        let key = format!("{}replay:{}", self.redis.prefix, sig.consumer);
        let now_ms = now.saturating_mul(1000);
        let expiry_ms = now.saturating_add(sig.ttl.max(1)).saturating_mul(1000);
        let args = [
            hex::encode(sig.key),
            now_ms.to_string(),
            expiry_ms.to_string(),
            sig.capacity.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.redis.eval(&SCRIPT, &[&key], &args).await {
            Ok(Value::Int(1)) => {
                // Remembered here too (when there is room), so a replay to this instance
                // is refused without Redis, and while Redis is down.
                self.local.record(&sig, now);
                Use::First
            }
            Ok(Value::Int(0)) => Use::Replay,
            Ok(Value::Int(n)) if n < 0 => Use::Full { retry_after: -n },
            Ok(_) | Err(_) => self.local.record(&sig, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(consumer: &str, i: u32, capacity: usize) -> Signature<'_> {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        Signature {
            consumer,
            key,
            ttl: 300,
            capacity,
        }
    }

    #[tokio::test]
    async fn local_guard() {
        let g = LocalReplay::new();
        let s = sig("a", 7, 100);
        assert_eq!(g.first_use(s, 1000).await, Use::First);
        assert_eq!(g.first_use(s, 1100).await, Use::Replay);
        assert_eq!(g.first_use(s, 1300).await, Use::First);
        // The same signature bytes under another consumer are another signature.
        assert_eq!(g.first_use(sig("b", 7, 100), 1300).await, Use::First);
    }

    #[tokio::test]
    async fn one_consumer_cannot_lock_out_another() {
        // Regression: one cache for everyone; a consumer sending more distinct signed
        // requests than it held filled it, and every other consumer's fresh request was
        // then refused as a replay.
        let g = LocalReplay::new();
        for i in 0..64 {
            assert_eq!(g.first_use(sig("flood", i, 64), 1000).await, Use::First);
        }
        for i in 64..200 {
            assert_eq!(
                g.first_use(sig("flood", i, 64), 1000).await,
                Use::Full { retry_after: 300 }
            );
        }
        for i in 0..64 {
            assert_eq!(g.first_use(sig("other", i, 64), 1000).await, Use::First);
        }
        // The flood's live signatures are all still remembered (none evicted)...
        assert_eq!(g.first_use(sig("flood", 3, 64), 1010).await, Use::Replay);
        // ...and room comes back as they expire.
        assert_eq!(
            g.first_use(sig("flood", 500, 64), 1299).await,
            Use::Full { retry_after: 1 }
        );
        assert_eq!(g.first_use(sig("flood", 500, 64), 1300).await, Use::First);
    }
}
