//! Redis Sentinel (`redis.sentinel`): the master is whichever server the sentinels name
//! (`SENTINEL get-master-addr-by-name <master>`, asked hedged like a cluster's seeds) and
//! that says `master` to `ROLE` (a sentinel may lag behind a failover; a restarted old
//! master is a replica). The answer is kept in a [`Topology`]: learnt on the first call,
//! asked again after any failed or timed-out call or a call skipped by the master's open
//! breaker (at most every 100 ms), and every 15 s while calls keep coming. So after a
//! failover the calls go to the new master within about 100 ms of the sentinels naming
//! it; until then, failed calls follow `on_redis_error`.
//!
//! The current master and the one last named keep their nodes (connection and breaker);
//! any other is forgotten at each lookup, so a sentinel naming a new address every time
//! cannot grow the client. Sentinels and masters are reached over the same TLS
//! settings; the sentinels log in with `sentinel.password_env`, the master with
//! `redis.password_env` (and `sentinel.username`).
//!
//! Why not the `redis` crate's `sentinel` module: it opens its sockets itself, with no way
//! to hand it a stream, so the reply guard ([`super::guard`]) cannot apply; it asks the
//! sentinels one after the other (no hedging: a silent one costs its whole timeout) and
//! makes a new client, hence a new connection, for every `ROLE` check. Asking is one
//! command, done here over the same guarded connections as the rest.

use super::discovery::first_answer;
use super::node::{Endpoint, Node, Nodes, Pass, Request};
use super::topology::{Refresh, Topology};
use super::{RedisError, Value};
use futures::FutureExt;
use redis::RedisConnectionInfo;
use std::sync::Arc;
use std::time::Duration;

struct Inner {
    name: String,
    sentinels: Vec<Arc<Node>>,
    /// How the master is logged in to.
    login: RedisConnectionInfo,
    timeout: Duration,
    /// The current master and the one last named.
    masters: Nodes,
    master: Arc<Topology<Arc<Node>>>,
}

/// A client of the master the sentinels name.
pub struct Sentinel {
    inner: Arc<Inner>,
}

impl Sentinel {
    /// A client asking `sentinels` for `name` (no I/O); connections use `tls` when given.
    pub fn new(
        name: String,
        sentinels: Vec<Endpoint>,
        login: RedisConnectionInfo,
        tls: Option<Arc<tokio_native_tls::TlsConnector>>,
        timeout: Duration,
    ) -> Sentinel {
        let bound = super::node::connect_bound(timeout);
        let sentinels = sentinels
            .into_iter()
            .map(|e| Arc::new(Node::new(e, tls.clone(), bound)))
            .collect();
        Sentinel {
            inner: Arc::new(Inner {
                name,
                sentinels,
                login,
                timeout,
                masters: Nodes::new(tls, bound),
                master: Arc::default(),
            }),
        }
    }

    /// Run `req` on the master; `used` as for [`super::cluster::Cluster::call`].
    pub async fn call(
        &self,
        req: &Request<'_>,
        used: &mut Option<Pass>,
    ) -> Result<Value, RedisError> {
        let inner = &self.inner;
        let master = inner.master.for_call(|| inner.refresher()).await?;
        let Some(pass) = Pass::admit(&master) else {
            self.stale();
            return Err(RedisError::Open);
        };
        *used = Some(pass);
        master.exec(req, false).await.map_err(|e| {
            // Down, demoted (READONLY), loading...: the sentinels may know better.
            self.stale();
            e.into()
        })
    }

    /// The master may have changed: ask the sentinels in the background (rate-limited).
    pub fn stale(&self) {
        self.inner.master.stale(|| self.inner.refresher());
    }
}

impl Inner {
    fn refresher(self: &Arc<Self>) -> Refresh<Arc<Node>> {
        let me = Arc::clone(self);
        async move { me.refresh().await }.boxed()
    }

    /// The master the sentinels name, once it says it is one.
    async fn refresh(&self) -> Result<Arc<Node>, RedisError> {
        let name = self.name.clone();
        let (host, port) = first_answer(self.sentinels.clone(), self.timeout, move |s| {
            master_addr(s, name.clone())
        })
        .await?;
        let node = self.master_at(&host, port);
        let current = self.master.current();
        self.masters.retain(|_, n| {
            Arc::ptr_eq(n, &node) || current.as_deref().is_some_and(|c| Arc::ptr_eq(c, n))
        });
        let role = tokio::time::timeout(
            self.timeout,
            node.exec(&Request::Command(&redis::cmd("ROLE")), false),
        )
        .await
        .map_err(|_| RedisError::Timeout)??;
        match role {
            Value::Array(v) if v.first().is_some_and(|r| is_text(r, "master")) => Ok(node),
            _ => Err(RedisError::Reply(format!(
                "{} named by the sentinels is not a master (yet)",
                node.addr
            ))),
        }
    }

    fn master_at(&self, host: &str, port: u16) -> Arc<Node> {
        self.masters.get(Endpoint {
            host: host.to_string(),
            port,
            login: self.login.clone(),
        })
    }
}

fn is_text(v: &Value, s: &str) -> bool {
    match v {
        Value::BulkString(b) => b == s.as_bytes(),
        Value::SimpleString(t) => t == s,
        _ => false,
    }
}

/// `SENTINEL get-master-addr-by-name <name>` asked to `sentinel`: `[ip, port]`.
async fn master_addr(sentinel: Arc<Node>, name: String) -> Result<(String, u16), RedisError> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("get-master-addr-by-name").arg(&name);
    let v = sentinel.exec(&Request::Command(&cmd), false).await?;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match v {
        Value::Array(a) if a.len() == 2 => {
            let host = text(&a[0]);
            let port = text(&a[1]).and_then(|p| p.parse::<u16>().ok());
            match (host, port) {
                (Some(h), Some(p)) if !h.is_empty() => Ok((h, p)),
                _ => Err(RedisError::Reply("sentinel: bad master address".into())),
            }
        }
        Value::Nil => Err(RedisError::Reply(format!(
            "sentinel {} does not know master `{name}`",
            sentinel.addr
        ))),
        _ => Err(RedisError::Reply("sentinel: unexpected reply".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU16, Ordering};

    #[tokio::test]
    async fn masters_named_once_are_forgotten() {
        // A sentinel that names a new master address at every lookup.
        let next = AtomicU16::new(1);
        let (at, _) = super::super::fake::serve(move |_, _| {
            let port = next.fetch_add(1, Ordering::SeqCst).to_string();
            format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.len())
        })
        .await;
        let login = RedisConnectionInfo::default().set_skip_set_lib_name();
        let sentinel = Endpoint {
            host: at.ip().to_string(),
            port: at.port(),
            login: login.clone(),
        };
        let s = Sentinel::new(
            "m".into(),
            vec![sentinel],
            login,
            None,
            Duration::from_millis(500),
        );
        for _ in 0..20 {
            // Nothing listens at the named ports: each lookup fails on `ROLE`.
            assert!(s.inner.refresh().await.is_err());
        }
        assert!(s.inner.masters.count() <= 2, "{}", s.inner.masters.count());
    }
}
