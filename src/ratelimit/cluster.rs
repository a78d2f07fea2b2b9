//! Cluster-scope rate limits (`scope: cluster`, `mode: exact`): every decision is one
//! atomic Lua script call on the shared Redis, so two instances can never both take the
//! last token. The script uses Redis's own clock (`TIME`), so instance clocks do not
//! matter, implements the same three algorithms as `algo.rs` (same documented errors),
//! and keeps the whole state of a limiter key in that one key (`moat:{rl:<limiter>:<key>}`:
//! a hash of window totals by window index, or the bucket's time and tokens), expiring it
//! once idle — so on Redis Cluster a decision touches one key, and a resharded slot
//! carries the counts with it.

use super::algo::{Algorithm, Limit, Outcome, SEC};
use crate::redis::{Redis, RedisError, Script, Value};
use once_cell::sync::Lazy;
use std::sync::Arc;

const LUA: &str = r#"
-- KEYS[1]: the limiter key. ARGV: algorithm (0 fixed, 1 sliding, 2 bucket), count,
-- window (us), burst. Returns {allowed, remaining, reset_us, retry_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local algo, n, w, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if algo == 2 then
  local s = redis.call('HMGET', KEYS[1], 't', 'k')
  local last, tok = tonumber(s[1]), tonumber(s[2])
  if not last or not tok then last, tok = now, burst end
  tok = math.min(burst, tok + math.max(0, now - last) * n / w)
  local allowed = 0
  if tok >= 1 then tok = tok - 1; allowed = 1 end
  local full = (burst - tok) * w / n
  redis.call('HSET', KEYS[1], 't', string.format('%.0f', now), 'k', string.format('%.6f', tok))
  redis.call('PEXPIRE', KEYS[1], math.ceil(full / 1000) + 1000)
  local retry = 0
  if tok < 1 then retry = (1 - tok) * w / n end
  return {allowed, math.floor(tok), math.ceil(full), math.ceil(retry)}
end
local idx = math.floor(now / w)
local cur_f = string.format('%.0f', idx)
local prev_f = string.format('%.0f', idx - 1)
local cur = tonumber(redis.call('HGET', KEYS[1], cur_f) or '0')
local left = (idx + 1) * w - now
local prev = 0
if algo == 1 then
  prev = tonumber(redis.call('HGET', KEYS[1], prev_f) or '0')
end
local est = prev * left / w + cur
local allowed = 0
if est + 1 <= n then
  cur = redis.call('HINCRBY', KEYS[1], cur_f, 1)
  redis.call('PEXPIRE', KEYS[1], math.ceil(w / 1000) * 2 + 1000)
  if redis.call('HLEN', KEYS[1]) > 2 then
    for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
      if tonumber(f) < idx - 1 then redis.call('HDEL', KEYS[1], f) end
    end
  end
  allowed = 1
  est = est + 1
end
local retry = 0
if allowed == 0 then
  if algo == 0 then
    retry = left
  elseif cur < n and prev > 0 then
    retry = math.max(0, (w - (n - 1 - cur) * w / prev) - (w - left))
  else
    retry = left + math.max(0, w - (n - 1) * w / math.max(cur, 1))
  end
end
return {allowed, math.max(0, math.floor(n - est)), math.ceil(left), math.ceil(retry)}
"#;

static SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(LUA));

/// A cluster-scope limiter's link to Redis.
pub struct Cluster {
    redis: Arc<Redis>,
    /// Names this limiter's keys: a hash of its place and settings, the same on every
    /// instance running the same config.
    id: String,
}

impl Cluster {
    /// A limiter identified by `fingerprint` on `redis`.
    pub fn new(redis: Arc<Redis>, fingerprint: &str) -> Cluster {
        Cluster {
            redis,
            id: super::limiter_id(fingerprint),
        }
    }

    /// Decide one request for `key` (one Redis round trip).
    pub async fn decide(
        &self,
        key: &str,
        algo: Algorithm,
        l: &Limit,
    ) -> Result<Outcome, RedisError> {
        let k = format!("{}{{rl:{}:{}}}", self.redis.prefix, self.id, key);
        let a = match algo {
            Algorithm::FixedWindow => "0",
            Algorithm::SlidingWindow => "1",
            Algorithm::TokenBucket => "2",
        };
        let v = self
            .redis
            .eval(&SCRIPT, &[&k], (a, l.count, l.window_us, l.burst))
            .await?;
        let ints: Vec<i64> = match v {
            Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    Value::Int(n) => n,
                    _ => 0,
                })
                .collect(),
            _ => Vec::new(),
        };
        let [allowed, remaining, reset_us, retry_us] = ints[..] else {
            return Err(RedisError::Io("unexpected script reply".into()));
        };
        let secs = |us: i64| (us.max(0) as u64).div_ceil(SEC);
        Ok(Outcome {
            allowed: allowed == 1,
            limit: if algo == Algorithm::TokenBucket {
                l.burst
            } else {
                l.count
            },
            remaining: remaining.max(0) as u64,
            reset_s: secs(reset_us),
            retry_after_s: secs(retry_us).max(1),
        })
    }
}
