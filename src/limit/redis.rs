//! The Redis client of cluster-scope limits: one server (`redis.url`) or a Redis Cluster
//! (`redis.cluster`, see [`super::redis_cluster`]). RESP over pooled tokio `TcpStream`s
//! ([`super::redis_node`]), Lua scripts called by their SHA (`EVALSHA`, falling back to
//! `EVAL` — which caches the script on that server — on `NOSCRIPT`), every call bounded
//! by `redis.timeout` as a whole (connect, slot discovery, redirections, retry and reply
//! included), and a breaker per server: after [`TRIP_AFTER`] consecutive failures calls
//! to it are skipped for [`OPEN_FOR`], then one probe call at a time decides whether it
//! is back. Each failed call counts in `moat_redis_errors_total`. Nothing connects before
//! the first call, so `moat check` never needs Redis. URLs (which may hold a password)
//! are never logged.
//!
//! In a cluster a call goes to the master of its key's slot: the first of `keys` for
//! [`Redis::eval`] (a script's keys must share one slot: give them one `{hash tag}`), the
//! second word for [`Redis::command`] (`SET key ...`, `GET key`, `INCR key`...).

use super::redis_cluster::ClusterClient;
use super::redis_node::{call, Breaker, Conn, Endpoint, Node};
use crate::config::model::RedisConfig;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

pub use super::redis_node::{OPEN_FOR, TRIP_AFTER};

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
}

/// Why a call failed.
#[derive(Debug)]
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

/// A Lua script and its SHA-1.
pub struct Script {
    text: &'static str,
    sha: String,
}

impl Script {
    /// Prepare `text`.
    pub fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: hex::encode(openssl::sha::sha1(text.as_bytes())),
        }
    }
}

/// One call, before it is routed.
pub enum Request<'a> {
    /// A script with its keys and arguments.
    Eval(&'a Script, &'a [&'a str], &'a [&'a str]),
    /// A plain command, words in order.
    Command(&'a [&'a [u8]]),
}

impl Request<'_> {
    /// The key that routes the call in a cluster: a script's first key, a command's second
    /// word; `None` (any master) without one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Request::Eval(_, keys, _) => keys.first().map(|k| k.as_bytes()),
            Request::Command(args) => args.get(1).copied(),
        }
    }
}

enum Backend {
    Single(Arc<Node>),
    Cluster(ClusterClient),
}

/// The client shared by every cluster-scope limiter of a config.
pub struct Redis {
    backend: Backend,
    timeout: Duration,
    /// Prefix of every key (`redis.key_prefix`, default `moat:`).
    pub prefix: String,
    errors: IntCounter,
}

impl Redis {
    /// Build from `redis:` (no I/O). Errors are operator messages.
    pub fn new(c: &RedisConfig, errors: IntCounter) -> Result<Redis, String> {
        let timeout = c.timeout.map(|d| d.get()).unwrap_or(DEFAULT_TIMEOUT);
        let backend = match (&c.url, &c.cluster) {
            (Some(url), None) => Backend::Single(Arc::new(Node::new(Endpoint::parse(url)?))),
            (None, Some(urls)) => Backend::Cluster(ClusterClient::new(urls, timeout)?),
            (Some(_), Some(_)) => return Err("give url or cluster, not both".into()),
            (None, None) => return Err("give url or cluster".into()),
        };
        Ok(Redis {
            backend,
            timeout,
            prefix: c.key_prefix.clone().unwrap_or_else(|| "moat:".into()),
            errors,
        })
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
    pub async fn command(&self, args: &[&[u8]]) -> Result<Value, RedisError> {
        self.run(&Request::Command(args)).await
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
                    exec(node, req, false).await?.map_err(RedisError::Reply)
                }
                Backend::Cluster(c) => c.call(req, &mut used).await,
            }
        };
        let r = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => {
                // No answer is no error: a master may be down or cut off.
                if let Backend::Cluster(c) = &self.backend {
                    c.timed_out();
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

/// Run `req` on `node` (after `ASKING` when `asking`): the outer error is the
/// connection's, the inner one Redis's reply.
pub(super) async fn exec(
    node: &Node,
    req: &Request<'_>,
    asking: bool,
) -> Result<Result<Value, String>, RedisError> {
    let mut conn = node.conn().await?;
    let r = match req {
        Request::Command(args) => send(&mut conn, asking, args).await?,
        Request::Eval(script, keys, args) => {
            let n = keys.len().to_string();
            let mut cmd: Vec<&[u8]> = vec![b"EVALSHA", script.sha.as_bytes(), n.as_bytes()];
            cmd.extend(keys.iter().map(|k| k.as_bytes()));
            cmd.extend(args.iter().map(|a| a.as_bytes()));
            let mut v = send(&mut conn, asking, &cmd).await?;
            if matches!(&v, Err(e) if e.starts_with("NOSCRIPT")) {
                cmd[0] = b"EVAL";
                cmd[1] = script.text.as_bytes();
                v = send(&mut conn, asking, &cmd).await?;
            }
            v
        }
    };
    node.put_back(conn);
    Ok(r)
}

/// `cmd`, preceded by `ASKING` (which holds for the next command only) when `asking`.
async fn send(
    conn: &mut Conn,
    asking: bool,
    cmd: &[&[u8]],
) -> Result<Result<Value, String>, RedisError> {
    if asking {
        if let Err(e) = call(conn, &[b"ASKING"]).await? {
            return Ok(Err(e));
        }
    }
    call(conn, cmd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: Option<&str>, cluster: Option<&[&str]>) -> RedisConfig {
        RedisConfig {
            url: url.map(Into::into),
            cluster: cluster.map(|c| c.iter().map(|u| u.to_string()).collect()),
            timeout: None,
            key_prefix: None,
        }
    }

    #[test]
    fn builds_from_config() {
        let c = IntCounter::new("x", "x").unwrap();
        let r = Redis::new(&cfg(Some("redis://cache"), None), c.clone()).unwrap();
        assert!(matches!(r.backend, Backend::Single(_)));
        assert_eq!((r.prefix.as_str(), r.timeout), ("moat:", DEFAULT_TIMEOUT));
        let seeds = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"];
        let r = Redis::new(&cfg(None, Some(&seeds)), c.clone()).unwrap();
        assert!(matches!(r.backend, Backend::Cluster(_)));
        assert!(Redis::new(&cfg(Some("http://x"), None), c.clone()).is_err());
        assert!(Redis::new(&cfg(Some("redis://h"), Some(&seeds)), c.clone()).is_err());
        assert!(Redis::new(&cfg(None, None), c.clone()).is_err());
        assert!(Redis::new(&cfg(None, Some(&[])), c).is_err());
    }

    #[test]
    fn routing_keys() {
        let s = Script::new("return 1");
        assert_eq!(
            Request::Eval(&s, &["a", "b"], &["1"]).key(),
            Some(&b"a"[..])
        );
        assert_eq!(Request::Eval(&s, &[], &[]).key(), None);
        let set: [&[u8]; 3] = [b"SET", b"k", b"1"];
        assert_eq!(Request::Command(&set).key(), Some(&b"k"[..]));
        assert_eq!(Request::Command(&[b"PING"]).key(), None);
    }
}
