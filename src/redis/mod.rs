//! Redis access for cluster-scope limits and the shared HMAC replay guard: one server
//! (`redis.url`), a Redis Cluster (`redis.cluster`, see [`cluster`]) or a master found
//! through Redis Sentinel (`redis.sentinel`, see [`sentinel`]), over TCP or TLS
//! (`rediss://`, `redis.tls`).
//!
//! The `redis` crate does the protocol: the RESP codec, the login (`AUTH` with user and
//! password, `SELECT`), pipelining many calls on one connection per server
//! (`MultiplexedConnection`), scripts by SHA with loading on `NOSCRIPT` (`Script`), URL
//! parsing and error kinds (`MOVED`, `ASK`...). moat keeps on top what is its own:
//! - [`guard`]: a bound on what a reply may make moat hold (the crate's parser has none);
//! - [`node`]: the connection's life (made in the background, replaced when dead) and
//!   [`breaker`]: per server, 3 failures in a row skip it for 500 ms, then one probe;
//! - [`cluster`] and [`sentinel`]: routing to the right server and keeping track of the
//!   topology ([`topology`], [`discovery`]), where the crate's clients fall short;
//! - every call bounded by `redis.timeout` as a whole (connect, discovery, redirections
//!   included), each failure counted in `moat_redis_errors_total`.
//!
//! Nothing connects before the first call, so `moat check` never needs Redis. URLs and
//! passwords are never logged.
//!
//! In a cluster a call goes to the master of its key's slot: the first of `keys` for
//! [`Redis::eval`] (a script's keys must share one slot: give them one `{hash tag}`), the
//! second word for [`Redis::command`] (`SET key ...`, `ZREM key ...`).

pub mod breaker;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod guard;
pub mod node;
pub mod script;
pub mod sentinel;
pub mod slots;
pub mod topology;

use breaker::Breaker;
use config::{Mode, Settings};
use node::{Node, Request};
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

pub use breaker::{OPEN_FOR, TRIP_AFTER};
pub use redis::{Cmd, Value};
pub use script::Script;

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum RedisError {
    /// The breaker is open: Redis was not called.
    Open,
    /// No answer within `redis.timeout`.
    Timeout,
    /// Connection or protocol failure.
    Io(String),
    /// Redis answered with an error.
    Reply(String),
}

/// moat's view of an error of the crate: the server's own (`CODE detail`) or a failure.
pub(crate) fn from_crate(e: redis::RedisError) -> RedisError {
    match e.code() {
        Some(code) => RedisError::Reply(match e.detail() {
            Some(d) => format!("{code} {d}"),
            None => code.to_string(),
        }),
        None => RedisError::Io(e.to_string()),
    }
}

enum Backend {
    Single(Box<Node>),
    Cluster(cluster::Cluster),
    Sentinel(sentinel::Sentinel),
}

/// The client shared by every Redis user of a config generation.
pub struct Redis {
    backend: Backend,
    timeout: Duration,
    /// Prefix of every key (`redis.key_prefix`, default `moat:`).
    pub prefix: String,
    /// Identifies the settings it was built from (see [`Settings::fingerprint`]).
    pub fingerprint: [u8; 32],
    errors: IntCounter,
}

impl Redis {
    /// Build from checked settings (no I/O).
    pub fn new(s: Settings, errors: IntCounter) -> Redis {
        let bound = node::connect_bound(s.timeout);
        let backend = match s.mode {
            Mode::Single(e) => Backend::Single(Box::new(Node::new(e, s.tls, bound))),
            Mode::Cluster(seeds) => {
                Backend::Cluster(cluster::Cluster::new(seeds, s.tls, s.timeout))
            }
            Mode::Sentinel {
                master,
                sentinels,
                login,
            } => Backend::Sentinel(sentinel::Sentinel::new(
                master, sentinels, login, s.tls, s.timeout,
            )),
        };
        Redis {
            backend,
            timeout: s.timeout,
            prefix: s.prefix,
            fingerprint: s.fingerprint,
            errors,
        }
    }

    /// Run `script` with `keys` and `args`, bounded by the timeout and the breaker.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, RedisError> {
        self.run(&Request::Eval(script, keys, args)).await
    }

    /// Run one plain command (e.g. `SET k v NX PX ms`), bounded like [`Redis::eval`].
    pub async fn command(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        self.run(&Request::Command(cmd)).await
    }

    async fn run(&self, req: &Request<'_>) -> Result<Value, RedisError> {
        // The breaker of the server the call depends on when it ends.
        let mut used: Option<Arc<Breaker>> = None;
        let call = async {
            match &self.backend {
                Backend::Single(node) => {
                    if !node.breaker.admit() {
                        return Err(RedisError::Open);
                    }
                    used = Some(Arc::clone(&node.breaker));
                    node.exec(req, false).await.map_err(from_crate)
                }
                Backend::Cluster(c) => c.call(req, &mut used).await,
                Backend::Sentinel(s) => s.call(req, &mut used).await,
            }
        };
        let r = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => {
                // No answer is no error: a server may be down or cut off, and replaced.
                match &self.backend {
                    Backend::Single(_) => {}
                    Backend::Cluster(c) => c.stale(),
                    Backend::Sentinel(s) => s.stale(),
                }
                Err(RedisError::Timeout)
            }
        };
        match &r {
            Err(RedisError::Open) => {}
            Ok(_) => {
                if let Some(b) = used {
                    b.success();
                }
            }
            Err(e) => {
                self.errors.inc();
                if let Some(b) = used {
                    b.failure();
                }
                log::warn!("redis call failed: {e:?}");
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(yaml: &str) -> Redis {
        let cfg = crate::config::load::parse(&format!("redis: {yaml}\n")).unwrap();
        let s = Settings::parse(cfg.redis.as_ref().unwrap()).unwrap();
        Redis::new(s, IntCounter::new("x", "x").unwrap())
    }

    #[test]
    fn builds_from_config() {
        let r = client("{ url: \"redis://cache\" }");
        assert!(matches!(r.backend, Backend::Single(_)));
        assert_eq!(
            (r.prefix.as_str(), r.timeout),
            ("moat:", config::DEFAULT_TIMEOUT)
        );
        let r = client("{ cluster: [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"] }");
        assert!(matches!(r.backend, Backend::Cluster(_)));
        let r = client("{ sentinel: { master: m, nodes: [\"127.0.0.1:26379\"] } }");
        assert!(matches!(r.backend, Backend::Sentinel(_)));
    }

    #[tokio::test]
    async fn a_dead_server_fails_fast_then_the_breaker_skips_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let errors = IntCounter::new("x", "x").unwrap();
        let cfg = crate::config::load::parse(&format!(
            "redis: {{ url: \"redis://{addr}\", timeout: 1s }}\n"
        ))
        .unwrap();
        let r = Redis::new(
            Settings::parse(cfg.redis.as_ref().unwrap()).unwrap(),
            errors.clone(),
        );
        let ping = redis::cmd("PING");
        for _ in 0..TRIP_AFTER {
            assert!(matches!(r.command(&ping).await, Err(RedisError::Io(_))));
        }
        assert!(matches!(r.command(&ping).await, Err(RedisError::Open)));
        assert_eq!(errors.get(), u64::from(TRIP_AFTER));
    }

    #[test]
    fn server_errors_keep_their_code() {
        let v = redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n").unwrap();
        let e = from_crate(v.extract_error().unwrap_err());
        assert!(
            matches!(&e, RedisError::Reply(m) if m == "WRONGTYPE Operation against a key"),
            "{e:?}"
        );
    }
}
