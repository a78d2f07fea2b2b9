//! HMAC replay protection: a signature is accepted once per replay window
//! (`auth.hmac.replay_window`, the clock skew by default; see `hmac::replay_ttl` for how
//! long each one is remembered and `hmac::replay_key` for what identifies it).
//!
//! Signatures are remembered **per credential** (an HMAC secret: credentials that share
//! one share its memory, since a request signed for one verifies under the other's key
//! id), at most `auth.hmac.replay_capacity` live ones each ([`REPLAY_CAPACITY`] by
//! default). A credential that has that many is refused with [`Use::Full`] (503, reason
//! `replay_capacity`) until some expire; no other credential notices. Live signatures are
//! never dropped to make room: forgetting one inside its window would let it be replayed.
//! Only signatures whose MAC verified are recorded, so filling a credential's room needs
//! its secret.
//!
//! Memory follows live traffic: each credential's [`ReplaySet`] drops what expired
//! whenever it records a signature (a min-heap of expiries: O(log n) per signature, each
//! removed once; a few per request at most, so a second in which many expire costs no
//! request more than that), and [`LocalReplay::sweep`], every [`SWEEP_EVERY`], drops the
//! rest — idle credentials' included —, gives back the room of sets that shrank, and
//! forgets the sets no config generation uses any more once they are empty. The request
//! path takes only its credential's own lock: the set hangs off the compiled credential.
//!
//! Every guard implements [`ReplayGuard`]; the runtime picks one per config generation:
//! - [`LocalReplay`]: this instance's own memory, carried across reloads so a reload never
//!   reopens the window (a new process — restart or `--upgrade` — starts empty);
//! - [`RedisReplay`] (with `redis:`): Redis is the authority, shared by every instance —
//!   one sorted set per credential (`<key_prefix>replay:<key_id>`, member = the 16-byte
//!   signature hash, score = expiry in ms), checked and updated by one Lua script that
//!   drops expired members (a few per call) and applies the bound to live ones. Redis keeps
//!   a member, and the set, `clock_skew` past its expiry: an instance whose clock runs
//!   fast (by less than the clock skew, or it would refuse fresh dates) cannot make Redis
//!   forget a signature the others still accept. The local memory short-cuts "already
//!   seen" (a replay to the same instance costs no Redis call) and, when Redis cannot
//!   answer (timeout, down, breaker open), decides alone (`replay_on_redis_error: local`,
//!   counted and logged) or the request gets 503 (`deny`).

use crate::config::model::ReplayOnRedisError;
use crate::redis::{Redis, Script, Value};
use crate::util::log_every::LogEvery;
use async_trait::async_trait;
use foldhash::fast::RandomState;
use once_cell::sync::Lazy;
use prometheus::IntCounter;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default `hmac.replay_capacity`: live signatures remembered per credential (about 65
/// bytes each here — a hash-map entry and a heap entry —, about 120 in Redis, measured
/// with `MEMORY USAGE`: a full set is ~6.5 MB here, ~12 MB there). 100,000 in a 300 s
/// window is 333 distinct signed requests a second with one credential.
pub const REPLAY_CAPACITY: usize = 100_000;

/// How often [`LocalReplay::sweep`] runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A signature in the replay memory: the first 16 bytes of the SHA-256 of its bytes.
pub type SigKey = [u8; 16];

/// What the guard says about a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Not seen within its window: accepted, and now remembered.
    First,
    /// Already seen within its window.
    Replay,
    /// Not seen, but its credential already has `capacity` live signatures; the oldest
    /// expires in `retry_after` seconds.
    Full { retry_after: i64 },
    /// Redis could not answer and `replay_on_redis_error` is `deny`.
    Unavailable,
}

/// A verified signature to check.
#[derive(Clone, Copy)]
pub struct Signature<'a> {
    /// Its credential's memory on this instance.
    pub set: &'a ReplaySet,
    /// Its credential's set in Redis, after `<key_prefix>replay:`.
    pub name: &'a str,
    /// `hmac::replay_key` of the request.
    pub key: SigKey,
    /// Seconds to remember it (`hmac::replay_ttl`).
    pub ttl: i64,
    /// Most live signatures one credential may have (`hmac.replay_capacity`).
    pub capacity: usize,
    /// Seconds Redis keeps it past its expiry (the clock skew).
    pub margin: i64,
    /// What to do when Redis cannot answer.
    pub on_redis_error: ReplayOnRedisError,
}

/// Remembers signatures for the replay window.
#[async_trait]
pub trait ReplayGuard: Send + Sync {
    /// Whether `sig` is used for the first time at `now` (UNIX seconds); a first use is
    /// remembered for `sig.ttl` seconds.
    async fn first_use(&self, sig: Signature<'_>, now: i64) -> Use;
}

/// Expired signatures a record drops at most (besides those it needs for room): it keeps
/// up with bursts of 8 times the steady rate, and bounds what one request pays when many
/// signatures expire in the same second; the sweep drops the rest.
const FORGET_PER_RECORD: usize = 8;
/// Expired signatures the sweep drops per hold of a set's lock.
const SWEEP_CHUNK: usize = 4096;

/// One credential's signatures: expiry by key, and (expiry, key) in a min-heap. A key
/// recorded again after it expired leaves a stale heap entry, dropped when it comes up.
#[derive(Default)]
struct Signatures {
    expires: HashMap<SigKey, i64, RandomState>,
    by_expiry: BinaryHeap<Reverse<(i64, SigKey)>>,
}

impl Signatures {
    /// Drop up to `at_most` signatures expired at `now`, soonest first (O(log n) each);
    /// how many heap entries went.
    fn forget_expired(&mut self, now: i64, at_most: usize) -> usize {
        let mut n = 0;
        while n < at_most {
            match self.by_expiry.peek() {
                Some(&Reverse((expiry, key))) if expiry <= now => {
                    self.by_expiry.pop();
                    if self.expires.get(&key) == Some(&expiry) {
                        self.expires.remove(&key);
                    }
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }

    fn seen(&self, key: &SigKey, now: i64) -> bool {
        self.expires.get(key).is_some_and(|&e| e > now)
    }

    fn record(&mut self, sig: &Signature<'_>, now: i64) -> Use {
        self.forget_expired(now, FORGET_PER_RECORD);
        if self.seen(&sig.key, now) {
            return Use::Replay;
        }
        if !self.expires.contains_key(&sig.key) {
            // Room: an expired signature still held makes some (the soonest goes first).
            while self.expires.len() >= sig.capacity {
                if self.forget_expired(now, 1) == 0 {
                    let next = self.by_expiry.peek().map_or(now, |Reverse((e, _))| *e);
                    return Use::Full {
                        retry_after: (next - now).max(1),
                    };
                }
            }
        }
        let expiry = now.saturating_add(sig.ttl.max(1));
        self.expires.insert(sig.key, expiry);
        self.by_expiry.push(Reverse((expiry, sig.key)));
        Use::First
    }

    /// Give back the room a burst left behind.
    fn shrink(&mut self) {
        let len = self.expires.len().max(16);
        if self.expires.capacity() > 4 * len || self.by_expiry.capacity() > 4 * len {
            self.expires.shrink_to_fit();
            self.by_expiry.shrink_to_fit();
        }
    }
}

/// One credential's replay memory on this instance (shared by credentials with the same
/// secret); made by [`LocalReplay::set`].
#[derive(Default)]
pub struct ReplaySet {
    signatures: Mutex<Signatures>,
}

impl ReplaySet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Signatures> {
        self.signatures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check and record `sig` here.
    pub fn record(&self, sig: &Signature<'_>, now: i64) -> Use {
        self.lock().record(sig, now)
    }

    /// Whether `key` is remembered here as used within its window.
    pub fn seen(&self, key: &SigKey, now: i64) -> bool {
        self.lock().seen(key, now)
    }

    /// Signatures held (live, or expired and not dropped yet).
    pub fn len(&self) -> usize {
        self.lock().expires.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every expired signature, [`SWEEP_CHUNK`] per hold of the lock (requests get
    /// in between), and give back room; the number left.
    fn sweep(&self, now: i64) -> usize {
        loop {
            let mut s = self.lock();
            if s.forget_expired(now, SWEEP_CHUNK) < SWEEP_CHUNK {
                s.shrink();
                return s.expires.len();
            }
        }
    }
}

/// This instance's replay memory: a [`ReplaySet`] per secret, carried across reloads.
#[derive(Default)]
pub struct LocalReplay {
    /// By SHA-256 of the secret (never leaves the process).
    sets: Mutex<HashMap<[u8; 32], Arc<ReplaySet>>>,
    sweeping: AtomicBool,
}

impl LocalReplay {
    /// An empty memory.
    pub fn new() -> LocalReplay {
        LocalReplay::default()
    }

    /// The memory of the credentials whose secret hashes to `secret_sha256`: the one of
    /// the previous generations while it holds anything, else a new one.
    pub fn set(&self, secret_sha256: [u8; 32]) -> Arc<ReplaySet> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(sets.entry(secret_sha256).or_default())
    }

    /// Drop expired signatures from every set, give back room, and forget the sets that
    /// are empty and used by no config generation (a removed credential's set lives until
    /// its signatures expire, so removing and restoring it never reopens its window).
    pub fn sweep(&self, now: i64) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        // `set` clones under the same lock: a count of 1 cannot grow meanwhile.
        sets.retain(|_, s| s.sweep(now) > 0 || Arc::strong_count(s) > 1);
    }

    /// Sets held (for tests).
    pub fn sets(&self) -> usize {
        self.sets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Run [`LocalReplay::sweep`] every [`SWEEP_EVERY`] on the current tokio runtime, once
    /// per memory (later calls do nothing); the task ends when the memory is dropped.
    pub fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(memory) = weak.upgrade() else {
                    break;
                };
                memory.sweep(super::dates::now_secs());
            }
        });
    }
}

#[async_trait]
impl ReplayGuard for LocalReplay {
    async fn first_use(&self, sig: Signature<'_>, now: i64) -> Use {
        sig.set.record(&sig, now)
    }
}

/// KEYS[1]: the credential's sorted set (member: signature hash, score: expiry in ms).
/// ARGV: member, now (ms), expiry (ms), capacity, margin (ms). Returns 1 (first use),
/// 0 (replay) or -N (full: the next live signature expires in N seconds). Every call
/// drops up to 32 members expired for longer than the margin, soonest first (each once:
/// about the cost of its ZADD; a burst that expires at once is dropped over the next
/// calls, never in one long call that would hold Redis up), so the set follows live
/// traffic; only live members count against the capacity. The set expires `margin`
/// after its last member.
const LUA: &str = r#"
local now = tonumber(ARGV[2])
local margin = tonumber(ARGV[5])
local old = redis.call('ZCOUNT', KEYS[1], '-inf', now - margin)
if old > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, math.min(old, 32) - 1) end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then return 0 end
if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf') >= tonumber(ARGV[4]) then
  local next = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return -math.max(1, math.ceil((tonumber(next[2]) - now) / 1000))
end
local exp = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], exp, ARGV[1])
local keep = exp - now + margin
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return 1
"#;

static SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(LUA));

/// Least time between two "deciding without Redis" messages.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Redis decides; the local memory short-cuts known replays and, as
/// `replay_on_redis_error` says, stands in when Redis cannot answer.
pub struct RedisReplay {
    redis: Arc<Redis>,
    /// `moat_auth_replay_fallback_total{action="local"}` and `{action="deny"}`.
    fallback: [IntCounter; 2],
    log: LogEvery,
}

impl RedisReplay {
    /// Share through `redis`; `fallback` is `moat_auth_replay_fallback_total`.
    pub fn new(redis: Arc<Redis>, fallback: &prometheus::IntCounterVec) -> RedisReplay {
        RedisReplay {
            redis,
            fallback: ["local", "deny"].map(|a| fallback.with_label_values(&[a])),
            log: LogEvery::new(LOG_EVERY),
        }
    }

    /// Redis could not answer (`why`): decide as `sig.on_redis_error` says.
    fn without_redis(&self, sig: &Signature<'_>, now: i64, why: &dyn std::fmt::Debug) -> Use {
        let (counter, decision) = match sig.on_redis_error {
            ReplayOnRedisError::Local => (&self.fallback[0], "this instance decides alone"),
            ReplayOnRedisError::Deny => (&self.fallback[1], "answered 503"),
        };
        counter.inc();
        if let Some(skipped) = self.log.due() {
            log::warn!(
                "HMAC replay check without Redis ({why:?}): {decision} (replay_on_redis_error); \
                 {skipped} more such requests since the last message"
            );
        }
        match sig.on_redis_error {
            ReplayOnRedisError::Local => sig.set.record(sig, now),
            ReplayOnRedisError::Deny => Use::Unavailable,
        }
    }
}

#[async_trait]
impl ReplayGuard for RedisReplay {
    async fn first_use(&self, sig: Signature<'_>, now: i64) -> Use {
        if sig.set.seen(&sig.key, now) {
            return Use::Replay;
        }
        let key = format!("{}replay:{}", self.redis.prefix, sig.name);
        let args = (
            &sig.key[..],
            now.saturating_mul(1000),
            now.saturating_add(sig.ttl.max(1)).saturating_mul(1000),
            sig.capacity,
            sig.margin.max(0).saturating_mul(1000),
        );
        match self.redis.eval(&SCRIPT, &[&key], args).await {
            Ok(Value::Int(1)) => {
                // Remembered here too (when there is room), so a replay to this instance
                // is refused without Redis, and while Redis is down.
                sig.set.record(&sig, now);
                Use::First
            }
            Ok(Value::Int(0)) => Use::Replay,
            Ok(Value::Int(n)) if n < 0 => Use::Full { retry_after: -n },
            Ok(_) => self.without_redis(&sig, now, &"unexpected reply"),
            Err(e) => self.without_redis(&sig, now, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> SigKey {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k
    }

    fn sig(set: &ReplaySet, i: u32, ttl: i64, capacity: usize) -> Signature<'_> {
        Signature {
            set,
            name: "k",
            key: key(i),
            ttl,
            capacity,
            margin: 300,
            on_redis_error: ReplayOnRedisError::Local,
        }
    }

    #[tokio::test]
    async fn local_guard() {
        let g = LocalReplay::new();
        let (a, b) = (g.set([1; 32]), g.set([2; 32]));
        assert_eq!(g.first_use(sig(&a, 7, 300, 100), 1000).await, Use::First);
        assert_eq!(g.first_use(sig(&a, 7, 300, 100), 1100).await, Use::Replay);
        assert_eq!(g.first_use(sig(&a, 7, 300, 100), 1300).await, Use::First);
        // The same signature bytes under another credential are another signature.
        assert_eq!(g.first_use(sig(&b, 7, 300, 100), 1300).await, Use::First);
        // The same secret is the same memory.
        assert!(Arc::ptr_eq(&a, &g.set([1; 32])));
    }

    #[tokio::test]
    async fn one_credential_cannot_lock_out_another() {
        // Regression: one cache for everyone; a consumer sending more distinct signed
        // requests than it held filled it, and every other consumer's fresh request was
        // then refused as a replay.
        let g = LocalReplay::new();
        let (flood, other) = (g.set([1; 32]), g.set([2; 32]));
        for i in 0..64 {
            assert_eq!(g.first_use(sig(&flood, i, 300, 64), 1000).await, Use::First);
        }
        for i in 64..200 {
            assert_eq!(
                g.first_use(sig(&flood, i, 300, 64), 1000).await,
                Use::Full { retry_after: 300 }
            );
        }
        for i in 0..64 {
            assert_eq!(g.first_use(sig(&other, i, 300, 64), 1000).await, Use::First);
        }
        // The flood's live signatures are all still remembered (none evicted)...
        assert_eq!(
            g.first_use(sig(&flood, 3, 300, 64), 1010).await,
            Use::Replay
        );
        // ...and room comes back as they expire.
        assert_eq!(
            g.first_use(sig(&flood, 500, 300, 64), 1299).await,
            Use::Full { retry_after: 1 }
        );
        assert_eq!(
            g.first_use(sig(&flood, 500, 300, 64), 1300).await,
            Use::First
        );
    }

    #[test]
    fn a_set_holds_its_live_signatures_only() {
        // Regression: expired signatures were dropped only once a set was full, so steady
        // traffic filled every set to its capacity (100,000 by default) and a full set was
        // then swept whole, under its lock, once per expiry.
        let set = ReplaySet::default();
        for i in 0..2000 {
            let now = 1000 + i64::from(i);
            assert_eq!(set.record(&sig(&set, i, 10, 100_000), now), Use::First);
            assert!(set.len() <= 10, "{} held at {now}", set.len());
        }
        // Expiries out of order (longer and shorter windows mixed) leave in order too.
        let set = ReplaySet::default();
        for i in 0..100 {
            let ttl = if i % 2 == 0 { 50 } else { 5 };
            set.record(&sig(&set, i, ttl, 1000), 1000);
        }
        for i in 0..10 {
            set.record(&sig(&set, 1000 + i, 50, 1000), 1005);
        }
        assert_eq!(set.len(), 60, "the 50 short ones left, the long ones stay");
        assert_eq!(set.record(&sig(&set, 2, 50, 1000), 1049), Use::Replay);
        // A signature used again once expired, before it was dropped, is a new one; its old
        // heap entry, when it comes up, leaves the new one alone.
        let set = ReplaySet::default();
        for i in 0..9 {
            set.record(&sig(&set, i, 1, 100), 1000);
        }
        set.record(&sig(&set, 99, 2, 100), 1000);
        assert_eq!(set.record(&sig(&set, 99, 100, 100), 1002), Use::First);
        assert_eq!(set.record(&sig(&set, 50, 100, 100), 1002), Use::First);
        assert_eq!(set.sweep(1003), 2);
        assert_eq!(set.record(&sig(&set, 99, 100, 100), 1003), Use::Replay);
    }

    #[test]
    fn a_request_pays_for_a_few_expired_signatures_at_most() {
        // 10,000 signatures expire in the same second: the next request drops a few of
        // them, not all (what it would pay under its credential's lock); the sweep the rest.
        let set = ReplaySet::default();
        for i in 0..10_000 {
            set.record(&sig(&set, i, 10, 10_000), 1000);
        }
        assert_eq!(set.record(&sig(&set, 20_000, 10, 10_000), 1010), Use::First);
        assert_eq!(set.len(), 10_000 - FORGET_PER_RECORD + 1);
        // Full, with expired ones held: one makes room, still no sweep of the whole set.
        let full = ReplaySet::default();
        for i in 0..100 {
            full.record(&sig(&full, i, 10, 100), 1000);
        }
        assert_eq!(
            full.record(&sig(&full, 500, 10, 100), 1005),
            Use::Full { retry_after: 5 }
        );
        assert_eq!(full.record(&sig(&full, 500, 10, 100), 1010), Use::First);
        assert_eq!(full.len(), 100 - FORGET_PER_RECORD + 1);
        assert_eq!(set.sweep(1010), 1);
    }

    #[test]
    fn sweeping_empties_idle_sets_and_forgets_unused_ones() {
        let g = LocalReplay::new();
        let used = g.set([1; 32]);
        let removed = g.set([2; 32]);
        for i in 0..10_000 {
            used.record(&sig(&used, i, 60, 100_000), 1000);
        }
        removed.record(&sig(&removed, 1, 60, 100), 1000);
        let room = used.lock().expires.capacity();
        // The credential of `removed` leaves the config: its set stays while it holds a live
        // signature (restoring the credential must not reopen its window)...
        drop(removed);
        g.sweep(1030);
        assert_eq!(g.sets(), 2);
        assert_eq!(used.len(), 10_000);
        assert!(
            g.set([2; 32]).seen(&key(1), 1030),
            "restored within the window: the signature is still known"
        );
        // ...and goes once they expired; an idle set still in use is emptied and shrunk.
        g.sweep(1060);
        assert_eq!(g.sets(), 1);
        assert!(used.is_empty());
        assert!(
            used.lock().expires.capacity() < room / 4,
            "room given back: {} of {room}",
            used.lock().expires.capacity()
        );
        drop(used);
        g.sweep(1061);
        assert_eq!(g.sets(), 0);
    }
}
