//! Cluster scope, `mode: fast`: each instance decides locally (no Redis round trip on the
//! request path) from the cluster-wide counts it learnt at its last sync plus its own
//! admissions since, and reconciles each active key with Redis at most once per
//! `sync_interval` (default 100 ms) in a background task: one atomic script adds this
//! instance's new admissions to the window's shared counter and returns the totals of
//! the current and previous windows. Windows are aligned on the instances' own clocks
//! (keep them in NTP sync); `fixed_window` and `sliding_window` (token buckets: see
//! `fast_bucket`).
//!
//! Overshoot bound: an instance's view lags the truth by the other instances'
//! admissions not yet synced, at most what each of them received within about two sync
//! intervals. So over a window, allowed ≤ N + (instances − 1) × min(N, requests one
//! instance receives in 2 × sync_interval); with a burst much faster than the interval,
//! at most instances × N. The integration test checks this bound and that all instances
//! refuse once one interval has passed.
//!
//! When syncing fails, the instance keeps counting locally (its own admissions stay
//! counted) and `on_redis_error` applies until a sync succeeds again.

use super::algo::{Algorithm, Limit, Outcome, SEC};
use super::store::{Entry, Store};
use crate::redis::{Redis, Script, Value};
use once_cell::sync::Lazy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const LUA: &str = r#"
-- KEYS[1]: the limiter key, a hash of window totals by window index (so the whole state
-- is the declared key: it moves with its slot). ARGV: window (us), window index,
-- admissions to add. Returns {current window total, previous window total}.
local idx = ARGV[2]
local prevf = string.format('%.0f', tonumber(idx) - 1)
local add = tonumber(ARGV[3])
local cur
if add > 0 then
  cur = redis.call('HINCRBY', KEYS[1], idx, add)
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) / 1000) * 2 + 1000)
  if redis.call('HLEN', KEYS[1]) > 2 then
    for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
      if tonumber(f) < tonumber(idx) - 1 then redis.call('HDEL', KEYS[1], f) end
    end
  end
else
  cur = tonumber(redis.call('HGET', KEYS[1], idx) or '0')
end
local prev = redis.call('HGET', KEYS[1], prevf)
return {cur, tonumber(prev or '0')}
"#;

static SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(LUA));

/// Default reconciliation interval.
pub const DEFAULT_SYNC_US: u64 = 100_000;

/// One key's view.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastSlot {
    /// Window index + 1 (0 = fresh).
    idx: u64,
    /// Cluster total of this window at the last sync (own synced admissions included).
    cur_known: u64,
    /// Cluster total of the previous window.
    prev_known: u64,
    /// Own admissions not yet sent.
    pending: u64,
    /// Own admissions being sent.
    inflight: u64,
    last_sync: u64,
    touched: u64,
}

impl Entry for FastSlot {
    fn touched(&self) -> u64 {
        self.touched
    }
    fn touch(&mut self, now: u64) {
        self.touched = now;
    }
}

/// A `mode: fast` limiter's shared state.
pub struct Fast {
    store: Store<FastSlot>,
    redis: Arc<Redis>,
    id: String,
    interval_us: u64,
    healthy: AtomicBool,
}

impl Fast {
    /// A limiter named `fingerprint` (same on every instance with the same config).
    pub fn new(redis: Arc<Redis>, fingerprint: &str, interval_us: u64, max_keys: usize) -> Fast {
        Fast {
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
    pub fn decide(
        self: &Arc<Self>,
        key: &str,
        algo: Algorithm,
        l: &Limit,
        now: u64,
        idle_after: u64,
    ) -> Outcome {
        let w = l.window_us.max(SEC);
        let idx = now / w;
        let mut syncs: [Option<(u64, u64)>; 2] = [None, None];
        let out = self.store.with_slot(key, now, idle_after, |s| {
            if s.idx != idx + 1 {
                let own = s.cur_known + s.inflight + s.pending;
                if s.pending > 0 && s.idx > 0 {
                    // The old window's last admissions still go to its counter.
                    syncs[0] = Some((s.idx - 1, s.pending));
                }
                s.prev_known = if s.idx == idx { own } else { 0 };
                (s.cur_known, s.pending, s.inflight, s.last_sync) = (0, 0, 0, 0);
                s.idx = idx + 1;
            }
            let left = (idx + 1) * w - now;
            let cur = (s.cur_known + s.inflight + s.pending) as u128;
            let prev = if algo == Algorithm::SlidingWindow {
                s.prev_known as u128 * left as u128 / w as u128
            } else {
                0
            };
            let allowed = prev + cur < l.count as u128;
            if allowed {
                s.pending += 1;
            }
            if s.inflight == 0 && now.saturating_sub(s.last_sync) >= self.interval_us {
                syncs[1] = Some((idx, s.pending));
                s.inflight = s.pending;
                s.pending = 0;
                s.last_sync = now;
            }
            let used = prev + cur + u128::from(allowed);
            Outcome {
                allowed,
                limit: l.count,
                remaining: (l.count as u128).saturating_sub(used) as u64,
                reset_s: left.div_ceil(SEC),
                retry_after_s: left.div_ceil(SEC).max(1),
            }
        });
        let [old, current] = syncs;
        if let Some((widx, add)) = old {
            self.spawn_sync(key, widx, add, false, w, idle_after);
        }
        if let Some((widx, add)) = current {
            self.spawn_sync(key, widx, add, true, w, idle_after);
        }
        out
    }

    fn spawn_sync(
        self: &Arc<Self>,
        key: &str,
        idx: u64,
        add: u64,
        apply: bool,
        w: u64,
        idle_after: u64,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(self);
        let key = key.to_string();
        rt.spawn(async move {
            let k = format!("{}{{rl:{}:{}}}", me.redis.prefix, me.id, key);
            let r = me.redis.eval(&SCRIPT, &[&k], (w, idx, add)).await;
            let totals = match r {
                Ok(Value::Array(v)) => match v[..] {
                    [Value::Int(c), Value::Int(p)] => Some((c.max(0) as u64, p.max(0) as u64)),
                    _ => None,
                },
                _ => None,
            };
            me.healthy.store(totals.is_some(), Ordering::Relaxed);
            if !apply {
                return;
            }
            let now = super::algo::now_us();
            me.store.with_slot(&key, now, idle_after, |s| {
                if s.idx != idx + 1 {
                    return;
                }
                match totals {
                    Some((cur, prev)) => {
                        s.cur_known = cur;
                        s.prev_known = s.prev_known.max(prev);
                    }
                    None => s.cur_known += s.inflight,
                }
                s.inflight = 0;
            });
        });
    }
}
