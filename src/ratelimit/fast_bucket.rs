//! Cluster scope, `mode: fast`, `algorithm: token_bucket`: each instance decides locally
//! and reconciles each active key with Redis at most once per `sync_interval`.
//!
//! The shared bucket lives in Redis (`moat:{rl:<limiter>:<key>}`, a hash of the last
//! refill time and the tokens): one atomic script refills it by Redis's own clock (`TIME`),
//! debits the admissions this instance made since its last sync and returns the tokens
//! left. The bucket may go below zero (debt) when instances together admitted more than it
//! held: refills pay the debt first, so the long-run rate stays exact and any overshoot is
//! taken back from the following requests. Between syncs an instance decides from the
//! tokens it last learnt, refilled at the rate by its own clock since that answer, minus
//! its own admissions since.
//!
//! Overshoot bound: an instance's view misses the other instances' admissions not yet
//! synced, at most what each of them admitted in about two sync intervals, and an
//! instance never admits more than the bucket it believes in (≤ `burst` + refill). So over
//! any period T, allowed ≤ burst + rate × T + (instances − 1) × min(burst + rate × 2 ×
//! sync_interval, requests one instance receives in 2 × sync_interval); with a burst much
//! faster than one sync, at most instances × burst at once, then the debt holds every
//! instance back until the refill has caught up. The integration test checks this bound.
//!
//! When syncing fails the instance keeps its own admissions counted locally and
//! `on_redis_error` applies until a sync succeeds again.

use super::algo::{Limit, Outcome, SEC};
use super::store::{Entry, Store};
use crate::redis::{Redis, Script, Value};
use once_cell::sync::Lazy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Millionths of a token per token.
const MT: i128 = 1_000_000;

const LUA: &str = r#"
-- KEYS[1]: the bucket. ARGV: count, window (us), burst, admissions to debit.
-- Returns the tokens left, in millionths (negative: debt).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, w, burst, used = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 't', 'k')
local last, tok = tonumber(s[1]), tonumber(s[2])
if not last or not tok then last, tok = now, burst end
tok = math.min(burst, tok + math.max(0, now - last) * n / w) - used
redis.call('HSET', KEYS[1], 't', string.format('%.0f', now), 'k', string.format('%.6f', tok))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tok) * w / n / 1000) + 1000)
return string.format('%.0f', tok * 1000000)
"#;

static SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(LUA));

/// One key's local view of the shared bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct BucketView {
    /// Whether the view was ever set (a fresh one starts full).
    init: bool,
    /// Tokens (millionths) at `known_at`: Redis's last answer, refilled and debited by
    /// this instance's own admissions since.
    known: i64,
    /// Local time `known` refers to (µs since the epoch).
    known_at: u64,
    /// Own admissions not yet sent.
    pending: u64,
    /// Own admissions being sent.
    inflight: u64,
    last_sync: u64,
    touched: u64,
}

impl Entry for BucketView {
    fn touched(&self) -> u64 {
        self.touched
    }
    fn touch(&mut self, now: u64) {
        self.touched = now;
    }
}

fn rate(l: &Limit) -> (i128, i128) {
    (l.count.max(1) as i128 * MT, l.window_us.max(1) as i128)
}

impl BucketView {
    /// Refill the view up to `now` (capped at `burst`), advancing its time only by what was
    /// converted into millionths so slow rates refill exactly.
    fn refill(&mut self, l: &Limit, now: u64) {
        let cap = l.burst as i128 * MT;
        let (num, den) = rate(l);
        if !self.init {
            (self.init, self.known, self.known_at) = (true, cap as i64, now);
        }
        let gained = now.saturating_sub(self.known_at) as i128 * num / den;
        let tokens = self.known as i128 + gained;
        if tokens >= cap {
            (self.known, self.known_at) = (cap as i64, now);
        } else {
            self.known = tokens as i64;
            self.known_at += (gained * den / num) as u64;
        }
    }

    /// Decide one request at `now` from this view (pure: no clock, no I/O); an allowed
    /// request is debited and counted as pending.
    pub fn decide(&mut self, l: &Limit, now: u64) -> Outcome {
        self.refill(l, now);
        let allowed = self.known as i128 >= MT;
        if allowed {
            self.known -= MT as i64;
            self.pending += 1;
        }
        let (num, den) = rate(l);
        let left = self.known as i128;
        let to_full =
            (((l.burst as i128 * MT - left).max(0) * den) as u128).div_ceil(num as u128) as u64;
        let to_one = (((MT - left).max(0) * den) as u128).div_ceil(num as u128) as u64;
        Outcome {
            allowed,
            limit: l.burst,
            remaining: (left.max(0) / MT) as u64,
            reset_s: to_full.div_ceil(SEC),
            retry_after_s: to_one.div_ceil(SEC).max(1),
        }
    }

    /// Start a sync at `now` if one is due after `interval_us`: returns the admissions to
    /// send, now in flight.
    pub fn start_sync(&mut self, now: u64, interval_us: u64) -> Option<u64> {
        if self.inflight != 0 || now.saturating_sub(self.last_sync) < interval_us {
            return None;
        }
        (self.inflight, self.pending, self.last_sync) = (self.pending, 0, now);
        Some(self.inflight)
    }

    /// Apply a sync's answer received at `now`: Redis's tokens after debiting the
    /// admissions sent, or `None` when the call failed: the view, already debited by every
    /// own admission, stays as it is, and the admissions of the failed sync are not sent
    /// again. Carrying them over would pile up, during a long Redis outage, admissions
    /// that `on_redis_error` may have refused anyway, and lock the key out for as long
    /// once Redis is back; so the shared bucket misses at most what one failed sync
    /// carried (the long-run rate is exact while syncs succeed).
    pub fn finish_sync(&mut self, answer: Option<i64>, now: u64) {
        if let Some(tokens) = answer {
            // Admissions made while the sync was in flight are not in Redis's answer yet.
            self.known = tokens.saturating_sub(self.pending as i64 * MT as i64);
            self.known_at = now;
            self.init = true;
        }
        self.inflight = 0;
    }
}

/// A `mode: fast` token-bucket limiter's shared state.
pub struct FastBucket {
    store: Store<BucketView>,
    redis: Arc<Redis>,
    id: String,
    interval_us: u64,
    healthy: AtomicBool,
}

impl FastBucket {
    /// A limiter named `fingerprint` (same on every instance with the same config).
    pub fn new(
        redis: Arc<Redis>,
        fingerprint: &str,
        interval_us: u64,
        max_keys: usize,
    ) -> FastBucket {
        FastBucket {
            store: Store::new(max_keys),
            redis,
            id: super::limiter_id(fingerprint),
            interval_us: interval_us.max(1_000),
            healthy: AtomicBool::new(true),
        }
    }

    /// Whether the last sync succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Decide locally for `key` at `now`; starts a background sync when one is due.
    pub fn decide(self: &Arc<Self>, key: &str, l: &Limit, now: u64, idle_after: u64) -> Outcome {
        let (out, sync) = self.store.with_slot(key, now, idle_after, |v| {
            let out = v.decide(l, now);
            (out, v.start_sync(now, self.interval_us))
        });
        if let (Some(used), Ok(rt)) = (sync, tokio::runtime::Handle::try_current()) {
            let me = Arc::clone(self);
            let (key, l) = (key.to_string(), *l);
            rt.spawn(async move {
                let k = format!("{}{{rl:{}:{}}}", me.redis.prefix, me.id, key);
                let args = (l.count, l.window_us, l.burst, used);
                let r = me.redis.eval(&SCRIPT, &[&k], args).await;
                let answer = match r {
                    Ok(Value::BulkString(b)) => std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .map(|f| f as i64),
                    Ok(Value::Int(n)) => Some(n),
                    _ => None,
                };
                me.healthy.store(answer.is_some(), Ordering::Relaxed);
                let now = super::algo::now_us();
                me.store
                    .with_slot(&key, now, idle_after, |v| v.finish_sync(answer, now));
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_699_920_000 * SEC;

    fn lim() -> Limit {
        Limit {
            count: 2,
            window_us: SEC,
            burst: 4,
        }
    }

    fn run(v: &mut BucketView, now: u64, n: usize) -> usize {
        (0..n).filter(|_| v.decide(&lim(), now).allowed).count()
    }

    #[test]
    fn fresh_view_spends_the_burst_then_refills() {
        let mut v = BucketView::default();
        assert_eq!(run(&mut v, T0, 10), 4);
        let o = v.decide(&lim(), T0);
        assert_eq!((o.allowed, o.retry_after_s, o.reset_s), (false, 1, 2));
        assert_eq!(run(&mut v, T0 + SEC / 2, 10), 1);
        assert_eq!(run(&mut v, T0 + 100 * SEC, 10), 4);
    }

    #[test]
    fn sync_answers_replace_the_view_and_own_admissions_stay_counted() {
        let mut v = BucketView::default();
        assert_eq!(run(&mut v, T0, 2), 2);
        assert_eq!(v.start_sync(T0, 100_000), Some(2));
        assert_eq!(v.start_sync(T0 + SEC, 100_000), None, "one sync at a time");
        // Pending again while the sync flies.
        assert_eq!(run(&mut v, T0, 1), 1);
        // Redis debited our 2 and another instance's 2: 0 left.
        v.finish_sync(Some(0), T0);
        // The admission made during the sync is still subtracted: no token.
        assert_eq!(run(&mut v, T0, 5), 0);
        // Half a second refills one token, spent by the pending admission.
        assert_eq!(run(&mut v, T0 + SEC / 2, 5), 0);
        assert_eq!(run(&mut v, T0 + SEC, 5), 1);
    }

    #[test]
    fn debt_from_redis_holds_the_instance_back() {
        let mut v = BucketView::default();
        let _ = v.decide(&lim(), T0);
        let _ = v.start_sync(T0, 1);
        v.finish_sync(Some(-4 * MT as i64), T0);
        // 4 tokens of debt need 2 s to be paid, a further 0.5 s for one token.
        assert_eq!(run(&mut v, T0 + 2 * SEC, 5), 0);
        assert_eq!(run(&mut v, T0 + 2 * SEC + SEC / 2, 5), 1);
    }

    #[test]
    fn a_failed_sync_keeps_admissions_local() {
        let mut v = BucketView::default();
        assert_eq!(run(&mut v, T0, 3), 3);
        let _ = v.start_sync(T0, 1);
        v.finish_sync(None, T0);
        assert_eq!(run(&mut v, T0, 5), 1);
        // The failed sync's admissions are not sent again (no backlog piles up during an
        // outage): the next sync carries only what was admitted since.
        assert_eq!(v.start_sync(T0 + 10, 1), Some(1));
    }
}
