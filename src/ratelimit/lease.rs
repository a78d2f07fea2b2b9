//! Cluster-scope `concurrency` (`scope: cluster`): the slots of a key are leases in one
//! Redis sorted set (`moat:{cc:<limiter>:<key>}`, one hash tag per key), member = this
//! process's random instance id and a counter, score = the lease's expiry on Redis's own
//! clock (`TIME`, so instance clocks do not matter).
//!
//! - Acquire: one atomic script drops the expired leases, then adds one if fewer than
//!   `max` remain. The returned [`Lease`] lives in the request context, so it is released
//!   whenever the request ends (completion, error, client abort, upstream timeout): its
//!   drop spawns a `ZREM` without blocking.
//! - Renewal: a background task per limiter pushes the expiry of this instance's live
//!   leases to now + `lease` every `lease / 3`, one script per key (`ZADD XX`: a lease
//!   that is gone is not re-created).
//! - Bound: an instance that dies (or loses Redis) stops renewing, and its leases expire at
//!   most `lease` (default 10 s) after its last renewal, so its slots come back within
//!   `lease` of its death. A request that outlives a lease it could not renew keeps
//!   running: the key may then briefly run more than `max` in flight, by at most that
//!   instance's requests of the key. A `ZREM` that fails, or an acquire that failed after
//!   its command left (Redis may have applied it), leaves a lease that expires the same
//!   way; such an acquire sends its `ZREM` too.

use crate::redis::{Redis, RedisError, Script, Value};
use futures::future::join_all;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Lease length unless configured.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Shortest lease accepted.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
/// Keys renewed concurrently.
const RENEW_BATCH: usize = 16;

const ACQUIRE_LUA: &str = r#"
-- KEYS[1]: the key's leases. ARGV: max, lease (us), member. Returns 1 if taken, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[3])
local ttl = math.ceil(lease / 1000) + 1000
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"#;

const RENEW_LUA: &str = r#"
-- KEYS[1]: the key's leases. ARGV: lease (us), members. Returns how many were renewed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[1])
local exp = string.format('%.0f', now + lease)
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', exp, ARGV[i])
end
local ttl = math.ceil(lease / 1000) + 1000
if n > 0 and redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return n
"#;

static ACQUIRE: Lazy<Script> = Lazy::new(|| Script::new(ACQUIRE_LUA));
static RENEW: Lazy<Script> = Lazy::new(|| Script::new(RENEW_LUA));

/// This process's lease-member prefix: random, so two instances never share a member.
static INSTANCE: Lazy<String> = Lazy::new(|| format!("{:016x}", rand::random::<u64>()));

/// A cluster concurrency limiter's leases on this instance.
pub struct Leases {
    redis: Arc<Redis>,
    id: String,
    lease_us: u64,
    /// This instance's live leases by key (counters of their members).
    live: Mutex<HashMap<Box<str>, Vec<u64>>>,
    next: AtomicU64,
    renewing: AtomicBool,
}

/// One held cluster slot; released when dropped.
pub struct Lease {
    leases: Arc<Leases>,
    key: Box<str>,
    n: u64,
    /// Whether Redis may hold the lease (a `ZREM` is due on drop).
    armed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Leases {
    /// Leases of the limiter named `fingerprint` (the same on every instance running the
    /// same config), each lasting `lease` unless renewed.
    pub fn new(redis: Arc<Redis>, fingerprint: &str, lease: Duration) -> Leases {
        Leases {
            redis,
            id: super::limiter_id(fingerprint),
            lease_us: lease.max(MIN_LEASE).as_micros() as u64,
            live: Mutex::default(),
            next: AtomicU64::new(0),
            renewing: AtomicBool::new(false),
        }
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}{{cc:{}:{}}}", self.redis.prefix, self.id, key)
    }

    /// Take a slot of `key` if fewer than `max` are held across the cluster (one Redis
    /// call). `Ok(None)`: refused; `Err`: Redis could not decide.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &str,
        max: u32,
    ) -> Result<Option<Lease>, RedisError> {
        self.start_renewer();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).entry(key.into()).or_default().push(n);
        // Built before the call: if the request goes away meanwhile, the drop releases it.
        let mut lease = Lease {
            leases: Arc::clone(self),
            key: key.into(),
            n,
            armed: true,
        };
        let k = self.redis_key(key);
        let member = format!("{}:{n}", *INSTANCE);
        let args = (max, self.lease_us, &member);
        match self.redis.eval(&ACQUIRE, &[&k], args).await {
            Ok(Value::Int(1)) => Ok(Some(lease)),
            Ok(Value::Int(_)) => {
                lease.armed = false;
                Ok(None)
            }
            Ok(_) => Err(RedisError::Io("unexpected script reply".into())),
            Err(e) => {
                // The script may have run (a timeout, a connection lost after the command
                // left...) unless nothing was sent or the server refused it.
                lease.armed = e.may_have_run();
                Err(e)
            }
        }
    }

    /// Start the renewal task once, on the current tokio runtime. It holds the limiter
    /// weakly and ends once the limiter and all its leases are gone.
    fn start_renewer(self: &Arc<Self>) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.renewing.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Leases> = Arc::downgrade(self);
        let every = Duration::from_micros(self.lease_us / 3);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { break };
                me.renew().await;
            }
        });
    }

    /// Renew every live lease of this instance (one script per key, a few keys at once).
    async fn renew(&self) {
        let batch: Vec<(String, Vec<String>)> = lock(&self.live)
            .iter()
            .filter(|(_, ns)| !ns.is_empty())
            .map(|(k, ns)| {
                let members = ns.iter().map(|n| format!("{}:{n}", *INSTANCE)).collect();
                (self.redis_key(k), members)
            })
            .collect();
        for chunk in batch.chunks(RENEW_BATCH) {
            join_all(chunk.iter().map(|(k, members)| async move {
                let args = (self.lease_us, &members[..]);
                let _ = self.redis.eval(&RENEW, &[k], args).await;
            }))
            .await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut live = lock(&self.leases.live);
            if let Some(ns) = live.get_mut(&*self.key) {
                ns.retain(|&n| n != self.n);
                if ns.is_empty() {
                    live.remove(&*self.key);
                }
            }
        }
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // The lease expires by itself.
        };
        let leases = Arc::clone(&self.leases);
        let k = leases.redis_key(&self.key);
        let member = format!("{}:{}", *INSTANCE, self.n);
        rt.spawn(async move {
            let mut zrem = crate::redis::Cmd::new();
            zrem.arg("ZREM").arg(&k).arg(&member);
            let _ = leases.redis.command(&zrem).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::{config::Settings, fake};
    use std::time::Instant;

    #[tokio::test]
    async fn an_acquire_whose_reply_was_lost_is_released() {
        // Redis runs the script, then its reply is lost: garbage, on which the guard
        // drops the connection (an I/O error after the command left).
        let released = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&released);
        let (addr, _) = fake::serve(move |_, cmd| {
            if fake::is(cmd, "EVALSHA") {
                "\x00garbage"
            } else if fake::is(cmd, "ZREM") {
                seen.store(true, Ordering::SeqCst);
                ":1\r\n"
            } else {
                "+OK\r\n"
            }
        })
        .await;
        let cfg = crate::config::load::parse(&format!(
            "redis: {{ url: \"redis://{addr}\", timeout: 1s }}\n"
        ))
        .unwrap();
        let settings = Settings::parse(cfg.redis.as_ref().unwrap()).unwrap();
        let errors = prometheus::IntCounter::new("x", "x").unwrap();
        let leases = Arc::new(Leases::new(
            Arc::new(Redis::new(settings, errors)),
            "fp",
            DEFAULT_LEASE,
        ));
        let r = leases.acquire("k", 1).await;
        assert!(matches!(r, Err(RedisError::Io(_))), "{:?}", r.err());
        let start = Instant::now();
        while !released.load(Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(5), "no ZREM sent");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
