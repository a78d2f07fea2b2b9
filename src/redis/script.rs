//! Lua scripts, run through the `redis` crate's `Script`: called by their SHA-1
//! (`EVALSHA`), loaded with `SCRIPT LOAD` and called again when the server answers
//! `NOSCRIPT` (a restarted server, a new cluster node, a failover).

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

/// A Lua script and its SHA-1.
pub struct Script(redis::Script);

impl Script {
    /// Prepare `text`.
    pub fn new(text: &str) -> Script {
        Script(redis::Script::new(text))
    }

    /// Run on `conn` with `keys` and `args`.
    pub(super) async fn run(
        &self,
        conn: &mut impl ConnectionLike,
        keys: &[&str],
        args: &[&str],
    ) -> RedisResult<Value> {
        let mut call = self.0.prepare_invoke();
        for k in keys {
            call.key(*k);
        }
        for a in args {
            call.arg(*a);
        }
        call.invoke_async(conn).await
    }
}
