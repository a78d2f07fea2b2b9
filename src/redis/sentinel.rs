//! Redis Sentinel (`redis.sentinel`): the master is whichever server the sentinels name
//! (`SENTINEL get-master-addr-by-name <master>`, asked hedged like a cluster's seeds) and
//! that says `master` to `ROLE` (a sentinel may lag behind a failover; a restarted old
//! master is a replica). The answer is kept in a [`Topology`]: learnt on the first call,
//! asked again after any failed or timed-out call or a call skipped by the master's open
//! breaker (at most every 100 ms), and every 15 s while calls keep coming. So after a
//! failover the calls go to the new master within about 100 ms of the sentinels naming
//! it; until then, failed calls follow `on_redis_error`.
//!
//! Each master met keeps its node (connection and breaker) by address, so flipping back
//! to a previous master reuses it. Sentinels and masters are reached over the same TLS
//! settings; the sentinels log in with `sentinel.password_env`, the master with
//! `redis.password_env` (and `sentinel.username`).
//!
//! Why not the `redis` crate's `sentinel` module: it opens its sockets itself (replies
//! unbounded, see [`super::guard`]), builds a new client per lookup and bounds nothing in
//! time; asking is one command, done here over the same guarded connections as the rest.

use super::breaker::Breaker;
use super::discovery::first_answer;
use super::node::{Endpoint, Node, Nodes, Request};
use super::topology::{Refresh, Topology};
use super::{from_crate, RedisError, Value};
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
    /// Every master met.
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
        used: &mut Option<Arc<Breaker>>,
    ) -> Result<Value, RedisError> {
        let inner = &self.inner;
        let master = inner.master.for_call(|| inner.refresher()).await?;
        if !master.breaker.admit() {
            self.stale();
            return Err(RedisError::Open);
        }
        *used = Some(Arc::clone(&master.breaker));
        master.exec(req, false).await.map_err(|e| {
            // Down, demoted (READONLY), loading...: the sentinels may know better.
            self.stale();
            from_crate(e)
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
        let role = tokio::time::timeout(
            self.timeout,
            node.exec(&Request::Command(&redis::cmd("ROLE")), false),
        )
        .await
        .map_err(|_| RedisError::Timeout)?
        .map_err(from_crate)?;
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
    let v = sentinel
        .exec(&Request::Command(&cmd), false)
        .await
        .map_err(from_crate)?;
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
