//! HMAC replay protection: a signature is accepted once per replay window
//! (`auth.hmac.replay_window`; see `hmac::replay_ttl` for how long each one is remembered
//! and `hmac::replay_key` for what identifies it). Every guard implements
//! [`ReplayGuard`]; the runtime picks one per config generation:
//! - [`LocalReplay`]: this instance's own bounded memory ([`REPLAY_CAPACITY`] signatures,
//!   oldest dropped first), carried across reloads so a reload never reopens the window;
//! - [`RedisReplay`] (with `redis:`): shared by every instance through Redis — the first
//!   use of a signature is `SET <key_prefix>replay:<hash> 1 NX PX <ttl>`, so a signature
//!   replayed on another instance is refused too. The local guard always records the
//!   signature as well, and decides alone when Redis cannot (timeout, down, breaker open),
//!   so replays to the same instance stay refused and a Redis outage never refuses fresh
//!   signatures.

use super::cache::ExpiringCache;
use crate::redis::{Cmd, Redis, Value};
use async_trait::async_trait;
use std::sync::Arc;

/// Signatures remembered by the local replay guard.
pub const REPLAY_CAPACITY: usize = 100_000;

/// Remembers signatures for the replay window.
#[async_trait]
pub trait ReplayGuard: Send + Sync {
    /// True the first time `key` is seen within `window` seconds of `now`.
    async fn first_use(&self, key: [u8; 32], window: i64, now: i64) -> bool;
}

/// A bounded in-memory replay guard.
pub struct LocalReplay(ExpiringCache<()>);

impl LocalReplay {
    /// Remember up to `capacity` signatures.
    pub fn new(capacity: usize) -> LocalReplay {
        LocalReplay(ExpiringCache::new(capacity))
    }
}

#[async_trait]
impl ReplayGuard for LocalReplay {
    async fn first_use(&self, key: [u8; 32], window: i64, now: i64) -> bool {
        self.0.insert_new(key, (), now + window, now)
    }
}

/// Redis first, the local guard when Redis cannot answer.
pub struct RedisReplay {
    redis: Arc<Redis>,
    local: Arc<dyn ReplayGuard>,
}

impl RedisReplay {
    /// Share through `redis`, falling back on `local`.
    pub fn new(redis: Arc<Redis>, local: Arc<dyn ReplayGuard>) -> RedisReplay {
        RedisReplay { redis, local }
    }
}

#[async_trait]
impl ReplayGuard for RedisReplay {
    async fn first_use(&self, key: [u8; 32], window: i64, now: i64) -> bool {
        // The local guard always records the signature, so a fallback later still knows it.
        let local = self.local.first_use(key, window, now).await;
        let mut set = Cmd::new();
        set.arg("SET")
            .arg(format!("{}replay:{}", self.redis.prefix, hex::encode(key)))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(window.max(1) * 1000);
        match self.redis.command(&set).await {
            Ok(Value::Nil) => false,
            Ok(_) | Err(_) => local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_guard() {
        let g = LocalReplay::new(100);
        let k = [7u8; 32];
        assert!(g.first_use(k, 300, 1000).await);
        assert!(!g.first_use(k, 300, 1100).await);
        assert!(g.first_use(k, 300, 1300).await);
    }
}
