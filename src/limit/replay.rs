//! HMAC replay protection shared by every instance through the limiters' Redis
//! connection (`auth.hmac.replay_window` with `redis:` configured): the first use of a
//! signature is `SET moat:replay:<hash> 1 NX PX <window>`, so a signature replayed on
//! another instance is refused too. When Redis fails (timeout, down, breaker open), this
//! instance's own in-memory guard decides, so replays to the same instance stay refused
//! and a Redis outage never refuses fresh signatures.

use super::redis::{Redis, Value};
use crate::auth::hmac::ReplayGuard;
use async_trait::async_trait;
use std::sync::Arc;

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
        let k = format!("{}replay:{}", self.redis.prefix, hex::encode(key));
        let ms = (window.max(1) * 1000).to_string();
        let cmd: [&[u8]; 6] = [b"SET", k.as_bytes(), b"1", b"NX", b"PX", ms.as_bytes()];
        match self.redis.command(&cmd).await {
            Ok(Value::Nil) => false,
            Ok(_) => local,
            Err(_) => local,
        }
    }
}
