//! Redis access for cluster-scope limits and the shared HMAC replay guard: one server
//! (`redis.url`), a Redis Cluster (`redis.cluster`, see [`cluster`]) or a master found
//! through Redis Sentinel (`redis.sentinel`, see [`sentinel`]), over TCP or TLS
//! (`rediss://`, `redis.tls`).
//!
//! The `redis` crate does the protocol: the RESP codec, the login (`AUTH` with user and
//! password, `SELECT`), pipelining many calls on one connection per server
//! (`MultiplexedConnection`), URL parsing and error kinds (`MOVED`, `ASK`...). moat keeps
//! on top what is its own:
//! - [`guard`]: a bound on what a reply may make moat hold (the crate's parser has none);
//! - [`script`]: calls by SHA, again by text on `NOSCRIPT`;
//! - [`node`]: the connection's life (made in the background, replaced when dead, when
//!   the server says it cannot serve, or when its breaker opens) and [`breaker`]: per
//!   server, 3 failures in a row skip it for 500 ms, then one probe. A failure is no
//!   answer (timeout, I/O, no connection) or `READONLY`/`LOADING`/`MASTERDOWN`/
//!   `CLUSTERDOWN`; any other error reply (a script error, `OOM`, `BUSY`) comes from a
//!   server that answers, which counts as up;
//! - [`cluster`] and [`sentinel`]: routing to the right server and keeping track of the
//!   topology ([`topology`], [`discovery`]), where the crate's clients fall short;
//! - every call bounded by `redis.timeout` as a whole (connect, discovery, redirections
//!   included), each failure counted in `moat_redis_errors_total` and logged (at most one
//!   message per [`LOG_EVERY`], with the number of failures in between).
//!
//! Nothing connects before the first call, so `moat check` never needs Redis. URLs and
//! passwords are never logged.
//!
//! In a cluster a call goes to the master of its key's slot: the first of `keys` for
//! [`Redis::eval`] (a script's keys must share one slot: give them one `{hash tag}`), the
//! second word for [`Redis::command`] (`SET key ...`, `ZREM key ...`).

pub(crate) mod breaker;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod discovery;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod guard;
pub(crate) mod node;
pub(crate) mod script;
pub(crate) mod sentinel;
pub(crate) mod slots;
pub(crate) mod topology;

use config::{Mode, Settings};
use node::{Failure, Node, Pass, Request};
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

pub use breaker::{OPEN_FOR, TRIP_AFTER};
pub use redis::{Cmd, ToRedisArgs, Value};
pub use script::Script;

use crate::util::log_every::LogEvery;

/// Least time between two "redis call failed" messages.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum RedisError {
    /// The breaker is open: Redis was not called.
    Open,
    /// No answer within `redis.timeout`.
    Timeout,
    /// Nothing was sent: no connection to the server the call needs (connect, TLS, login
    /// or discovery failed), or no master serves the key's slot.
    Unreachable(String),
    /// Connection or protocol failure after the command may have left.
    Io(String),
    /// The server answered that it cannot serve now (`READONLY`, `LOADING`, `MASTERDOWN`,
    /// `CLUSTERDOWN`): it did not run the call.
    Unavailable(String),
    /// Redis answered with another error (a script error, `OOM`, `BUSY`...).
    Reply(String),
}

impl RedisError {
    /// Whether Redis may have run the call (so its effect, e.g. a lease taken, may need
    /// undoing): unless nothing was sent, or the server said it did not run it.
    pub fn may_have_run(&self) -> bool {
        matches!(
            self,
            RedisError::Timeout | RedisError::Io(_) | RedisError::Reply(_)
        )
    }

    /// Whether the server the call went to counts as failing (its breaker).
    fn blames_server(&self) -> bool {
        !matches!(self, RedisError::Open | RedisError::Reply(_))
    }
}

/// moat's view of an error of the crate: the server's own (`CODE detail`) or a failure.
pub(crate) fn from_crate(e: redis::RedisError) -> RedisError {
    match e.code() {
        Some(code) => {
            let text = match e.detail() {
                Some(d) => format!("{code} {d}"),
                None => code.to_string(),
            };
            let down = redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown);
            if node::cannot_serve(&e) || e.kind() == down {
                RedisError::Unavailable(text)
            } else {
                RedisError::Reply(text)
            }
        }
        None => RedisError::Io(e.to_string()),
    }
}

impl From<Failure> for RedisError {
    fn from(f: Failure) -> RedisError {
        match f {
            Failure::Unreachable(why) => RedisError::Unreachable(why),
            Failure::Call(e) => from_crate(e),
        }
    }
}

enum Backend {
    Single(Arc<Node>),
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
    log: LogEvery,
}

impl Redis {
    /// Build from checked settings (no I/O).
    pub fn new(s: Settings, errors: IntCounter) -> Redis {
        let bound = node::connect_bound(s.timeout);
        let backend = match s.mode {
            Mode::Single(e) => Backend::Single(Arc::new(Node::new(e, s.tls, bound))),
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
            log: LogEvery::new(LOG_EVERY),
        }
    }

    /// Run `script` with `keys` and `args` (one value, a tuple or a slice: see
    /// [`Script::call`]), bounded by the timeout and the breaker.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: impl ToRedisArgs,
    ) -> Result<Value, RedisError> {
        let call = script.call(keys, args);
        self.run(&Request::Eval(script, &call)).await
    }

    /// Run one plain command (e.g. `SET k v NX PX ms`), bounded like [`Redis::eval`].
    pub async fn command(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        self.run(&Request::Command(cmd)).await
    }

    async fn run(&self, req: &Request<'_>) -> Result<Value, RedisError> {
        // The server the call depends on when it ends.
        let mut used: Option<Pass> = None;
        let call = async {
            match &self.backend {
                Backend::Single(node) => {
                    used = Some(Pass::admit(node).ok_or(RedisError::Open)?);
                    Ok(node.exec(req, false).await?)
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
        if let Some(pass) = used {
            match &r {
                Err(e) if e.blames_server() => pass.failed(),
                _ => pass.answered(),
            }
        }
        if let Err(e) = &r {
            if !matches!(e, RedisError::Open) {
                self.errors.inc();
                match self.log.due() {
                    None => {}
                    Some(0) => log::warn!("redis call failed: {e:?}"),
                    Some(n) => log::warn!(
                        "redis call failed: {e:?} ({n} more failures since the last message)"
                    ),
                }
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
            let e = r.command(&ping).await;
            assert!(matches!(e, Err(RedisError::Unreachable(_))), "{e:?}");
        }
        assert!(matches!(r.command(&ping).await, Err(RedisError::Open)));
        assert_eq!(errors.get(), u64::from(TRIP_AFTER));
    }

    /// A client of the scripted server at `addr`, with `timeout`.
    fn client_of(addr: std::net::SocketAddr, timeout: &str) -> Redis {
        client(&format!(
            "{{ url: \"redis://{addr}\", timeout: {timeout} }}"
        ))
    }

    /// Answers the login (`CLIENT SETINFO`) like Redis, and every other command with
    /// `reply(connection number)`.
    async fn server(
        reply: fn(usize) -> &'static str,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        fake::serve(move |n, cmd| {
            if fake::is(cmd, "CLIENT") {
                "+OK\r\n"
            } else {
                reply(n)
            }
        })
        .await
    }

    async fn past_open_for() {
        tokio::time::sleep(OPEN_FOR + Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_cancelled_probe_does_not_keep_the_server_skipped() {
        let (addr, _) = server(|_| "").await; // never answers
        let r = client_of(addr, "50ms");
        let ping = redis::cmd("PING");
        for _ in 0..TRIP_AFTER {
            assert!(matches!(r.command(&ping).await, Err(RedisError::Timeout)));
        }
        assert!(matches!(r.command(&ping).await, Err(RedisError::Open)));
        past_open_for().await;
        // The probe's request goes away before the call ends.
        let cut = tokio::time::timeout(Duration::from_millis(10), r.command(&ping)).await;
        assert!(cut.is_err());
        // The next call probes: the server is tried, not skipped for good.
        let e = r.command(&ping).await;
        assert!(matches!(e, Err(RedisError::Timeout)), "{e:?}");
    }

    #[tokio::test]
    async fn error_replies_do_not_open_the_breaker() {
        let (addr, accepted) = server(|_| "-ERR Error running script\r\n").await;
        let r = client_of(addr, "1s");
        let ping = redis::cmd("PING");
        for _ in 0..3 * TRIP_AFTER {
            let e = r.command(&ping).await;
            assert!(
                matches!(&e, Err(RedisError::Reply(m)) if m.starts_with("ERR")),
                "{e:?}"
            );
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(r.errors.get(), 3 * u64::from(TRIP_AFTER));
    }

    #[tokio::test]
    async fn a_server_that_cannot_serve_is_reconnected_to() {
        // The first connection reaches a demoted primary, the next ones a primary.
        let (addr, accepted) = server(|n| match n {
            0 => "-READONLY You can't write against a read only replica.\r\n",
            _ => "+PONG\r\n",
        })
        .await;
        let r = client_of(addr, "1s");
        let ping = redis::cmd("PING");
        let e = r.command(&ping).await;
        assert!(
            matches!(&e, Err(RedisError::Unavailable(m)) if m.starts_with("READONLY")),
            "{e:?}"
        );
        assert_eq!(
            r.command(&ping).await.unwrap(),
            Value::SimpleString("PONG".into())
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_opened_breaker_drops_a_silent_connection() {
        // The first connection logs in, then goes silent (a dead host, a blackholed path);
        // a new one is answered.
        let (addr, accepted) = server(|n| match n {
            0 => "",
            _ => "+PONG\r\n",
        })
        .await;
        let r = client_of(addr, "100ms");
        let ping = redis::cmd("PING");
        for _ in 0..TRIP_AFTER {
            assert!(matches!(r.command(&ping).await, Err(RedisError::Timeout)));
        }
        past_open_for().await;
        assert_eq!(
            r.command(&ping).await.unwrap(),
            Value::SimpleString("PONG".into())
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
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
